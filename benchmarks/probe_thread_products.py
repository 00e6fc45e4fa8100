"""Which small linear products round differently at 1 and 2 torch threads under the package's MKL strict mode.

    python benchmarks/probe_thread_products.py

Computes F.linear(x, W, b) for every (outputs n, inputs k, rows m) of the grid below in two fresh processes, one
at 1 and one at 2 threads (the package imported first, so MKL_CBWR=AUTO,STRICT is set before torch's first
product), and prints the shapes whose results differ in any bit, grouped by (n, k).
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OUTPUTS, INPUTS, ROWS = (2, 10, 16, 20, 32, 47, 100, 200, 1000), (64, 256, 512, 784), range(1, 80)


def products(threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    import numpy as np

    import worstforget  # noqa: F401  (sets MKL_CBWR before the first product)

    g = torch.Generator().manual_seed(0)
    results = {}
    for n in OUTPUTS:
        for k in INPUTS:
            w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
            for m in ROWS:
                results[f"{n}-{k}-{m}"] = torch.nn.functional.linear(torch.randn(m, k, generator=g), w, b).numpy()
    np.savez(out, **results)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        products(int(sys.argv[2]), sys.argv[3])
        return 0
    import numpy as np

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for threads in (1, 2):
            files[threads] = os.path.join(tmp, f"{threads}.npz")
            subprocess.run([sys.executable, __file__, "--one", str(threads), files[threads]], env=env, check=True)
        one, two = np.load(files[1]), np.load(files[2])
        differ = [key for key in one.files if not np.array_equal(one[key], two[key])]
        print(f"{len(differ)} of {len(one.files)} shapes differ between 1 and 2 threads")
        groups = collections.defaultdict(list)
        for key in differ:
            n, k, m = map(int, key.split("-"))
            groups[(n, k)].append(m)
        for (n, k), rows in sorted(groups.items()):
            print(f"  outputs {n}, inputs {k}: rows {sorted(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
