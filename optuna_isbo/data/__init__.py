"""Loaders for real data sets that work offline, returning PyTorch tensors.

- :func:`load_fashion_mnist` (``optuna_isbo.data.fashion_mnist``): Zalando's Fashion-MNIST
  from its original IDX files, by default those of the Debian/Ubuntu package
  ``dataset-fashion-mnist``.
- :func:`read_idx` (``optuna_isbo.data.idx``): the IDX reader underneath, for any file of
  the MNIST family, plain or gzipped.

Nothing here is imported by ``import optuna_isbo``; import ``optuna_isbo.data`` explicitly.
"""

from __future__ import annotations

from optuna_isbo.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR_ENV,
    OFFICIAL_COUNTS,
    fashion_mnist_files,
    load_fashion_mnist,
)
from optuna_isbo.data.idx import IDXFormatError, parse_idx, read_idx

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR_ENV",
    "IDXFormatError",
    "OFFICIAL_COUNTS",
    "fashion_mnist_files",
    "load_fashion_mnist",
    "parse_idx",
    "read_idx",
]
