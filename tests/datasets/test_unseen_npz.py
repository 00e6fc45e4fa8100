"""experiments/make_unseen_npz.py: the pooled Fashion-MNIST draw that the unseen-dataset audits read as npz:PATH."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import idx_bytes, load_script

from worstforget.datasets import formats


def _script():
    return load_script("experiments/make_unseen_npz.py")


@pytest.fixture
def fashion(tmp_path):
    """Four-by-four 'Fashion-MNIST' files whose image i holds the pixel values i*16 + (0..15), label i % 10."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    images = {n: (np.arange(n)[:, None] * 16 + np.arange(16)).reshape(n, 4, 4) for n in (12, 6)}
    for prefix, n in (("train", 12), ("t10k", 6)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images[n]))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    return tmp_path


def test_the_file_holds_block_means_of_a_seeded_draw_and_loads_as_npz(fashion, tmp_path):
    out = tmp_path / "unseen" / "d.npz"
    assert _script().main([str(out), "--data-dir", str(fashion), "--train", "5", "--test", "3", "--seed", "3"]) == 0
    arrays = dict(np.load(out))
    rng = np.random.default_rng(3)  # the draw the script documents: train rows first, then test rows, sorted
    rows_train, rows_test = np.sort(rng.choice(12, 5, replace=False)), np.sort(rng.choice(6, 3, replace=False))
    np.testing.assert_array_equal(arrays["y_train"], rows_train % 10)
    np.testing.assert_array_equal(arrays["y_test"], rows_test % 10)
    assert arrays["x_train"].shape == (5, 1, 2, 2) and arrays["x_train"].dtype == np.float32
    # image i, top-left 2×2 block: pixels i*16 + {0, 1, 4, 5}, mean i*16 + 2.5; bottom-right: i*16 + 12.5
    for k, i in enumerate(rows_train):
        expected = np.array([[i * 16 + 2.5, i * 16 + 4.5], [i * 16 + 10.5, i * 16 + 12.5]]) / 255
        np.testing.assert_allclose(arrays["x_train"][k, 0], expected, rtol=1e-6)
    raw = formats.load_npz(out)  # what `--dataset npz:PATH` reads
    assert raw.x_train.shape == (5, 1, 2, 2) and len(raw.y_test) == 3
    assert list(out.parent.iterdir()) == [out]  # no temporary file left beside it


def test_sizes_beyond_the_files_or_blocks_that_do_not_divide_are_one_line(fashion, tmp_path):
    script = _script()
    with pytest.raises(SystemExit, match=r"^error: --train must lie in 1\.\.12 and --test in 1\.\.6$"):
        script.main([str(tmp_path / "d.npz"), "--data-dir", str(fashion), "--train", "13"])
    with pytest.raises(SystemExit, match=r"^error: images of 4×4 do not split into 3×3 blocks: [^\n]*$"):
        script.main([str(tmp_path / "d.npz"), "--data-dir", str(fashion), "--train", "2", "--test", "2", "--block",
                     "3"])
    assert not (tmp_path / "d.npz").exists()


def test_missing_fashion_mnist_files_are_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", (tmp_path / "usr-share",))
    with pytest.raises(SystemExit) as exit_info:
        _script().main([str(tmp_path / "d.npz"), "--data-dir", str(tmp_path / "nothing")])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "d.npz").exists()


def test_a_folder_in_the_files_place_is_one_line_before_any_image_is_read(fashion, tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "build", lambda *a, **k: pytest.fail("read the images before checking OUT"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "taken"), "--data-dir", str(fashion)])
    assert str(exit_info.value.code).startswith("error: OUT ") and "is a folder" in str(exit_info.value.code)
    assert list((tmp_path / "taken").iterdir()) == []
