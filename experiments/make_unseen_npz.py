"""Write a dataset the library's defaults were never chosen on, as an `npz:PATH` file: Fashion-MNIST
(Debian's `dataset-fashion-mnist`, or the IDX files under --data-dir) averaged over 2×2 pixel blocks to
14×14, with a seeded draw of --train training and --test test images.

    python experiments/make_unseen_npz.py data/unseen/fm14.npz
    worstforget run experiments/configs/unseen_npz.json --out results/unseen_npz

Its shape (14×14), size (4,000 training images by default) and recipe (the `npz` dataset's: 30 epochs, batch
128) differ from every setting a default of the search was measured on (digits; Fashion-MNIST at 28×28), so the
audits run on it check the search the way a user's own data would. Pixels are stored as float32 in [0, 1].
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def pool(images: np.ndarray, block: int) -> np.ndarray:
    """(N, 1, H, W) uint8 → (N, 1, H/block, W/block) float32 in [0, 1]: the mean of each block × block tile."""
    n, c, h, w = images.shape
    if h % block or w % block:
        raise SystemExit(f"error: images of {h}×{w} do not split into {block}×{block} blocks: "
                         "choose --block dividing both")
    tiles = images.reshape(n, c, h // block, block, w // block, block).astype(np.float64)
    return (tiles.mean(axis=(3, 5)) / 255.0).astype(np.float32)


def build(data_dir: str, *, train: int, test: int, seed: int, block: int) -> dict[str, np.ndarray]:
    from worstforget.datasets.formats import load_fashion_mnist

    raw = load_fashion_mnist(Path(data_dir))
    if not (0 < train <= len(raw.x_train) and 0 < test <= len(raw.x_test)):
        raise SystemExit(f"error: --train must lie in 1..{len(raw.x_train)} and --test in 1..{len(raw.x_test)}")
    rng = np.random.default_rng(seed)
    rows_train = np.sort(rng.choice(len(raw.x_train), size=train, replace=False))
    rows_test = np.sort(rng.choice(len(raw.x_test), size=test, replace=False))
    return {"x_train": pool(raw.x_train[rows_train], block), "y_train": raw.y_train[rows_train].astype(np.int64),
            "x_test": pool(raw.x_test[rows_test], block), "y_test": raw.y_test[rows_test].astype(np.int64)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--data-dir", default="data", help="where Fashion-MNIST's IDX files are (Debian's also)")
    parser.add_argument("--train", type=int, default=4000, help="training images drawn (default 4000)")
    parser.add_argument("--test", type=int, default=1000, help="test images drawn (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the draw")
    parser.add_argument("--block", type=int, default=2, help="pixels averaged per side (2: 28×28 → 14×14)")
    args = parser.parse_args(argv)
    from worstforget.core.errors import WorstforgetError
    from worstforget.core.io import atomic_path, check_output_file

    try:  # a folder in the file's place or an unwritable one is refused before the images are read
        out = check_output_file(args.out, what="OUT")
        arrays = build(args.data_dir, train=args.train, test=args.test, seed=args.seed, block=args.block)
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:  # never a half-written file under the asked name
            np.savez(fh, **arrays)
    except WorstforgetError as exc:  # one line that says where and how to fix (files missing or damaged...)
        raise SystemExit(f"error: {exc}") from None
    shape = "×".join(str(s) for s in arrays["x_train"].shape[1:])
    print(f"wrote {out}: {len(arrays['x_train'])} training and {len(arrays['x_test'])} test images of {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
