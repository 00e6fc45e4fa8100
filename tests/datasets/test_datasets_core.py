"""Dataset core: the bundled `digits` split (sizes, disjointness, normalisation, split seeds),
`stratified_holdout`, batched `augment_batch`, bring-your-own `npz:PATH` data and unknown names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worstforget.core.errors import ConfigError
from worstforget.datasets import Augment, augment_batch, load_dataset
from worstforget.datasets.bundle import stratified_holdout


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.flatten(1).numpy()}


# ----------------------------------------------------------------------------- digits


def test_digits_splits_cover_all_1797_images_without_overlap(digits):
    n_train, n_val, n_test = digits.num_train, len(digits.y_val), len(digits.y_test)
    assert n_train + n_val + n_test == 1797
    assert min(n_train, n_val, n_test) > 0
    assert digits.input_shape == (1, 8, 8) and digits.is_image and digits.num_classes == 10
    # the raw digits images are all distinct, so shared rows would mean a sample sits in two splits
    train, val, test = rows(digits.x_train), rows(digits.x_val), rows(digits.x_test)
    assert len(train) == n_train and len(val) == n_val and len(test) == n_test
    assert not train & val and not train & test and not val & test


def test_digits_test_split_is_stratified(digits):
    counts_all = torch.bincount(torch.cat([digits.y_train, digits.y_val, digits.y_test]), minlength=10)
    counts_test = torch.bincount(digits.y_test, minlength=10)
    assert torch.all((counts_test.float() - 0.2 * counts_all.float()).abs() <= 1)


def test_digits_is_normalised_with_train_statistics(digits):
    assert abs(float(digits.x_train.mean())) < 1e-4
    assert float(digits.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.long


def test_digits_split_is_deterministic_per_split_seed_and_differs_across_seeds(digits):
    again = load_dataset("digits", split_seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_train, digits.y_train)
    assert torch.equal(again.x_test, digits.x_test) and again.fingerprint == digits.fingerprint
    other = load_dataset("digits", split_seed=1)
    assert other.num_train == digits.num_train
    assert other.fingerprint != digits.fingerprint
    assert rows(other.x_test) != rows(digits.x_test)


# ----------------------------------------------------------------------------- stratified_holdout


def test_stratified_holdout_takes_the_fraction_of_every_class():
    y = np.repeat([0, 1, 2], [40, 24, 12])
    kept, held = stratified_holdout(y, 0.25, seed=0, purpose="t")
    assert np.bincount(y[held], minlength=3).tolist() == [10, 6, 3]
    assert np.bincount(y[kept], minlength=3).tolist() == [30, 18, 9]
    assert not set(kept) & set(held)
    assert sorted([*kept, *held]) == list(range(len(y)))
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)


def test_stratified_holdout_is_seeded():
    y = np.arange(200) % 4
    a = stratified_holdout(y, 0.1, seed=0, purpose="t")[1]
    assert np.array_equal(a, stratified_holdout(y, 0.1, seed=0, purpose="t")[1])
    assert not np.array_equal(a, stratified_holdout(y, 0.1, seed=1, purpose="t")[1])
    assert not np.array_equal(a, stratified_holdout(y, 0.1, seed=0, purpose="other")[1])


# ----------------------------------------------------------------------------- augment_batch


def images(b=32, c=3, h=8, w=8):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0))


def test_augment_batch_with_crop_and_flip_keeps_shape_and_is_deterministic_per_generator():
    x = images()
    spec = Augment(crop_pad=2, flip=True)
    a = augment_batch(x, spec, torch.Generator().manual_seed(7))
    b = augment_batch(x, spec, torch.Generator().manual_seed(7))
    c = augment_batch(x, spec, torch.Generator().manual_seed(8))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augment_batch_crop_is_a_window_of_the_zero_padded_image():
    x, p = images(b=16), 2
    out = augment_batch(x, Augment(crop_pad=p), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        assert any(torch.equal(out[i], win) for win in windows), i


def test_augment_batch_flip_mirrors_some_images_and_leaves_the_rest():
    x = images(b=64)
    out = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(2))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def test_augment_batch_disabled_returns_the_input_unchanged():
    x = images()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert augment_batch(x, Augment(crop_pad=0, flip=False), g) is x
    assert torch.equal(g.get_state(), state)  # no randomness consumed
    flat = torch.randn(10, 5)
    assert augment_batch(flat, Augment(crop_pad=4, flip=True), g) is flat  # non-images are never augmented


# ----------------------------------------------------------------------------- npz and unknown names


def test_npz_dataset_with_flat_features_loads_through_load_dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.normal(5, 3, (100, 5)).astype(np.float32), y_train=np.arange(100) % 3,
             x_test=rng.normal(5, 3, (30, 5)).astype(np.float32), y_test=np.arange(30) % 3)
    data = load_dataset(f"npz:{path}")
    assert data.name == "npz:mine.npz"
    assert data.input_shape == (5,) and not data.is_image
    assert data.num_classes == 3
    assert len(data.y_test) == 30
    assert len(data.y_val) == 9 and data.num_train == 91  # 10% of every class held out for validation
    assert not data.augment.enabled
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x_train.std(0), torch.ones(5), atol=1e-4, rtol=0)


def test_npz_dataset_without_path_is_a_config_error():
    with pytest.raises(ConfigError, match="npz:PATH"):
        load_dataset("npz")


def test_unknown_dataset_name_suggests_close_names():
    with pytest.raises(ConfigError, match="Did you mean") as info:
        load_dataset("digitz")
    assert "digits" in str(info.value)


def test_train_subset_is_seeded_keeps_every_class_and_changes_the_fingerprint():
    from worstforget.core.errors import ConfigError
    from worstforget.datasets import load_dataset

    full = load_dataset("digits")
    a, b = load_dataset("digits", train_subset=100), load_dataset("digits", train_subset=100)
    other = load_dataset("digits", train_subset=100, split_seed=1)
    assert a.num_train == 100 and torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, other.x_train)
    assert set(a.y_train.tolist()) == set(range(full.num_classes))
    assert a.fingerprint != full.fingerprint and a.fingerprint == b.fingerprint
    assert torch.equal(a.x_test, full.x_test) and torch.equal(a.x_val, full.x_val)
    rows = {tuple(r) for r in full.x_train.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in a.x_train.flatten(1).tolist())  # samples of the training split, not new ones
    with pytest.raises(ConfigError, match="--train-subset"):
        load_dataset("digits", train_subset=5)
