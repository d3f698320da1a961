"""Zalando's Fashion-MNIST from its original IDX files, offline.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; MIT licence) has 60,000 training and 10,000
test greyscale images of 28x28 pixels in 10 classes of clothing (:data:`FASHION_MNIST_CLASSES`).
:func:`load_fashion_mnist` reads one split from the four files the authors publish::

    train-images-idx3-ubyte  train-labels-idx1-ubyte     (training split)
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte      (test split)

each plain or gzipped (the same name with ``.gz``; the plain file is preferred when both are
there). It looks for them in the first of these places that is given:

1. the ``root`` argument;
2. the directory in the environment variable ``ISBO_FASHION_MNIST_DIR``
   (:data:`FASHION_MNIST_DIR_ENV`);
3. ``/usr/share/datasets/fashion-mnist`` (:data:`DEBIAN_FASHION_MNIST_DIR`), where the
   Debian/Ubuntu package ``dataset-fashion-mnist`` puts them
   (``sudo apt-get install dataset-fashion-mnist``).

A directory given by 1. or 2. may hold the files itself, or be the ``root`` given to
``torchvision.datasets.FashionMNIST(root, download=True)``, which keeps them in
``root/FashionMNIST/raw``. A given directory that holds no files is an error; the search does
not move on to the next place, so that a typo does not silently load other data. When nothing
is found, the :class:`FileNotFoundError` lists every directory tried and why it did not do,
and how to get the data.

Example
-------
.. code-block:: python

    from optuna_isbo.data import load_fashion_mnist

    images, labels = load_fashion_mnist("train", as_float=True)
    # images: (60000, 1, 28, 28) float32 in [0, 1]; labels: (60000,) int64 in 0..9
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from optuna_isbo.data.idx import IDXFormatError, read_idx

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR_ENV",
    "OFFICIAL_COUNTS",
    "fashion_mnist_files",
    "load_fashion_mnist",
]

_logger = logging.getLogger(__name__)

Split = Literal["train", "test"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The class names, indexed by label."""

FASHION_MNIST_DIR_ENV = "ISBO_FASHION_MNIST_DIR"
"""Environment variable naming a directory that holds the IDX files."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the files."""

OFFICIAL_COUNTS: dict[str, int] = {"train": 60_000, "test": 10_000}
"""Images per split in the published data set."""

IMAGE_SIZE = 28
N_CLASSES = len(FASHION_MNIST_CLASSES)

_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_SUBDIR = Path("FashionMNIST", "raw")
_HOW_TO_GET = (
    "To get the data: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files in "
    f"{DEBIAN_FASHION_MNIST_DIR}); or set {FASHION_MNIST_DIR_ENV} (or pass root=) to a "
    "directory holding the four IDX files, plain or gzipped, as published at "
    "https://github.com/zalandoresearch/fashion-mnist; or to the root of "
    "torchvision.datasets.FashionMNIST(root, download=True)."
)


def _check_split(split: str) -> None:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _candidates(root: str | os.PathLike[str] | None) -> tuple[list[tuple[Path, str]], bool]:
    """Directories to search, each with how it was chosen, and whether they were given."""
    if root is not None:
        given, origin = Path(root).expanduser(), "root argument"
    elif os.environ.get(FASHION_MNIST_DIR_ENV):
        given = Path(os.environ[FASHION_MNIST_DIR_ENV]).expanduser()
        origin = f"${FASHION_MNIST_DIR_ENV}"
    else:
        return [(DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist")], False
    torchvision = (given / _TORCHVISION_SUBDIR, f"{origin}, torchvision layout")
    return [(given, origin), torchvision], True


def fashion_mnist_files(
    split: Split = "train", root: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """The image and label files of a split that :func:`load_fashion_mnist` would read.

    Parameters
    ----------
    split
        ``"train"`` or ``"test"``.
    root
        A directory holding the files, or torchvision's root (see the module docstring); by
        default ``$ISBO_FASHION_MNIST_DIR``, else the Debian package's directory.

    Returns
    -------
    images, labels
        Paths of the two files (each plain or gzipped).

    Raises
    ------
    FileNotFoundError
        If no searched directory holds both files; the message lists each directory tried,
        what was missing there, and how to get the data.
    """
    _check_split(split)
    names = _FILES[split]
    candidates, given = _candidates(root)
    tried = []
    for directory, origin in candidates:
        if not directory.is_dir():
            tried.append(f"  {directory} ({origin}): no such directory")
            continue
        found = [_find_file(directory, name) for name in names]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
        missing = ", ".join(f"{n}[.gz]" for n, f in zip(names, found, strict=True) if f is None)
        tried.append(f"  {directory} ({origin}): missing {missing}")
    note = (
        ""
        if given
        else f"Neither root= nor ${FASHION_MNIST_DIR_ENV} was given, so only the default "
        "directory was searched. "
    )
    raise FileNotFoundError(
        f"Fashion-MNIST {split} split not found. Looked for {names[0]}[.gz] and "
        f"{names[1]}[.gz] in:\n" + "\n".join(tried) + f"\n{note}{_HOW_TO_GET}"
    )


def _check_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    paths: tuple[Path, Path],
    split: str,
    expect_official_counts: bool,
) -> None:
    image_path, label_path = paths
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(
            f"{image_path}: expected uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"found {images.dtype} of shape {images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(
            f"{label_path}: expected uint8 labels of shape (N,), found {labels.dtype} of shape "
            f"{labels.shape}."
        )
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            "labels; the two files do not belong together."
        )
    if len(labels) and int(labels.max()) >= N_CLASSES:
        bad = int(np.argmax(labels >= N_CLASSES))
        raise IDXFormatError(
            f"{label_path}: label {int(labels[bad])} at index {bad} is outside [0, {N_CLASSES})."
        )
    official = OFFICIAL_COUNTS[split]
    if expect_official_counts and len(labels) != official:
        raise IDXFormatError(
            f"{image_path}: {len(labels)} {split} images, but Fashion-MNIST has {official}. "
            "Pass expect_official_counts=False to load a subset or another data set in the "
            "same format."
        )


def load_fashion_mnist(
    split: Split = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    as_float: bool = False,
    expect_official_counts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST from its IDX files.

    Parameters
    ----------
    split
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
    root
        A directory holding the files, or torchvision's root (see the module docstring); by
        default ``$ISBO_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``.
    as_float
        ``False``: the images as stored, uint8 grey levels 0-255 of shape ``(N, 28, 28)``.
        ``True``: float32 in ``[0, 1]`` (grey level / 255) of shape ``(N, 1, 28, 28)``, the
        channel axis included, ready for a convolutional network.
    expect_official_counts
        ``True``: the split must have its published size (60,000 or 10,000 images), which
        catches a truncated or mismatched copy. ``False``: any size, for subsets or other
        data sets in the same format; the image and label files must still agree.

    Returns
    -------
    images
        See ``as_float``.
    labels
        Shape ``(N,)``, int64 in ``0..9``; names in :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    FileNotFoundError
        If the files are not found (see :func:`fashion_mnist_files`).
    IDXFormatError
        If a file is damaged, not IDX, of the wrong type or shape, has a label outside
        ``[0, 10)``, the files disagree in length, or (``expect_official_counts``) a split
        has the wrong size.
    """
    paths = fashion_mnist_files(split, root)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    _check_arrays(images, labels, paths, split, expect_official_counts)
    _logger.info("Fashion-MNIST %s split: %d images from %s and %s", split, len(labels), *paths)
    image_tensor = torch.from_numpy(images)
    if as_float:
        image_tensor = image_tensor.unsqueeze(1).to(torch.float32).div_(255.0)
    return image_tensor, torch.from_numpy(labels.astype(np.int64))
