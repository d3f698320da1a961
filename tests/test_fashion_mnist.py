"""The IDX reader and the Fashion-MNIST loader of ``optuna_isbo.data``.

Tiny IDX files are written here with an independent writer (``struct``, not the code under
test). The tests on the real data set run where the files are installed (Debian/Ubuntu:
``apt-get install dataset-fashion-mnist``, or ``ISBO_FASHION_MNIST_DIR``) and skip otherwise.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import optuna_isbo.data.fashion_mnist as fashion_mnist_module
from optuna_isbo.data import (
    FASHION_MNIST_DIR_ENV,
    IDXFormatError,
    fashion_mnist_files,
    load_fashion_mnist,
    parse_idx,
    read_idx,
)

TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CODES = {
    "uint8": (0x08, ">u1"),
    "int16": (0x0B, ">i2"),
    "int32": (0x0C, ">i4"),
    "float32": (0x0D, ">f4"),
    "float64": (0x0E, ">f8"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written from the format's definition."""
    code, big_endian = _CODES[array.dtype.name]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian).tobytes()


def write_idx(path: Path, array: np.ndarray | bytes, *, gz: bool = False) -> Path:
    data = array if isinstance(array, bytes) else idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_split(n: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_split(
    directory: Path,
    images: np.ndarray | bytes,
    labels: np.ndarray | bytes,
    *,
    names: tuple[str, str] = TRAIN,
    gz: bool = False,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / names[0], images, gz=gz)
    write_idx(directory / names[1], labels, gz=gz)


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests on tiny files must not see a directory configured in the environment."""
    monkeypatch.delenv(FASHION_MNIST_DIR_ENV, raising=False)


# -- the IDX format ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: str, gz: bool) -> None:
    # negative values and non-integers where the type has them: byte order and sign matter
    scale = 1.5 if dtype.startswith("float") else 1
    offset = 0 if dtype == "uint8" else 7
    array = ((np.arange(30).reshape(2, 3, 5) - offset) * scale).astype(dtype)
    array.flat[-1] = np.iinfo(dtype).max if dtype.startswith(("u", "i")) else 1e30
    path = write_idx(tmp_path / "a-idx3", array, gz=gz)
    read = read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    assert read.shape == (2, 3, 5) and np.array_equal(read, array)
    read[0, 0, 0] = 1  # writable


def test_gzip_is_told_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(4, dtype=np.uint8)
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00",  # first byte not zero
        b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00",  # unknown type code
        b"\x00\x00\x08\x00",  # no dimensions
        b"\x89PNG\r\n\x1a\n",  # not IDX at all
    ],
)
def test_bad_magic_number(data: bytes) -> None:
    with pytest.raises(IDXFormatError, match="not an IDX magic number"):
        parse_idx(data, "f")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header"),
        (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], "truncated: .* shape \\(3, 4\\)"),
        (idx_bytes(np.zeros((3, 4), np.int32))[:-2], "truncated"),
        (idx_bytes(np.zeros((3, 4), np.uint8)) + b"\x00", "trailing data"),
    ],
)
def test_bad_length(data: bytes, match: str) -> None:
    with pytest.raises(IDXFormatError, match=match):
        parse_idx(data, "f")


def test_truncated_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-20])
    with pytest.raises(IDXFormatError, match="gzip.*cut short"):
        read_idx(path)


def test_gzip_bomb_is_read_no_further_than_its_header_announces(tmp_path: Path) -> None:
    # 64 MiB of zeros after a one-byte array compress to about 64 KB. Before the fix the whole
    # file was decompressed (64 MiB at peak) before its length was checked.
    decompressed = 64 * 2**20
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_bytes(np.array([7], np.uint8)))
        zeros = bytes(2**20)
        for _ in range(decompressed // len(zeros)):
            f.write(zeros)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(IDXFormatError, match=r"trailing data.*shape \(1,\)"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < decompressed / 16, peak


@pytest.mark.parametrize("gz", [False, True])
def test_huge_announced_size_of_a_short_file_is_truncated_not_allocated(
    tmp_path: Path, gz: bool
) -> None:
    # 2**32 - 1 rows of 2**32 - 1 float64 values announced, 16 bytes there.
    data = b"\x00\x00\x0e\x02" + struct.pack(">2I", 2**32 - 1, 2**32 - 1) + bytes(16)
    path = write_idx(tmp_path / "huge-idx2", data, gz=gz)
    tracemalloc.start()
    try:
        with pytest.raises(IDXFormatError, match=r"truncated: .*has 28 bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


@pytest.mark.parametrize("ndim", [65, 255])
@pytest.mark.parametrize("gz", [False, True])
def test_more_dimensions_than_numpy_supports(tmp_path: Path, ndim: int, gz: bool) -> None:
    data = struct.pack(">BBBB", 0, 0, 0x08, ndim) + struct.pack(f">{ndim}I", *[1] * ndim) + b"\0"
    match = rf"header announces {ndim} dimensions, more than the \d+ that NumPy"
    with pytest.raises(IDXFormatError, match=match):
        parse_idx(data, "f")
    with pytest.raises(IDXFormatError, match=match):
        read_idx(write_idx(tmp_path / "deep-idx", data, gz=gz))


def test_thirty_two_dimensions_are_read(tmp_path: Path) -> None:
    array = np.arange(4, dtype=np.int16).reshape((2, 2) + (1,) * 30)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx", array, gz=True)), array)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing")


# -- the Fashion-MNIST loader ------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_load_round_trip(tmp_path: Path, gz: bool) -> None:
    images, labels = tiny_split()
    write_split(tmp_path, images, labels, gz=gz)
    write_split(tmp_path, *tiny_split(3, seed=1), names=TEST, gz=gz)
    x, y = load_fashion_mnist("train", tmp_path, expect_official_counts=False)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    xf, yf = load_fashion_mnist(
        "train", str(tmp_path), as_float=True, expect_official_counts=False
    )
    assert xf.dtype == torch.float32 and xf.shape == (7, 1, 28, 28)
    assert torch.equal(xf, x.unsqueeze(1).float() / 255) and torch.equal(yf, y)
    assert 0.0 <= float(xf.min()) and float(xf.max()) <= 1.0
    x_test, _ = load_fashion_mnist("test", tmp_path, expect_official_counts=False)
    assert np.array_equal(x_test.numpy(), tiny_split(3, seed=1)[0])
    suffix = ".gz" if gz else ""
    assert fashion_mnist_files("test", tmp_path) == (
        tmp_path / f"{TEST[0]}{suffix}",
        tmp_path / f"{TEST[1]}{suffix}",
    )


def test_plain_file_is_preferred_over_gzipped(tmp_path: Path) -> None:
    write_split(tmp_path, *tiny_split(4, seed=0))
    write_split(tmp_path, *tiny_split(5, seed=1), gz=True)
    x, _ = load_fashion_mnist(root=tmp_path, expect_official_counts=False)
    assert len(x) == 4


def test_environment_variable_and_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir, torchvision_root = tmp_path / "env", tmp_path / "tv"
    write_split(env_dir, *tiny_split(4))
    write_split(torchvision_root / "FashionMNIST" / "raw", *tiny_split(6), gz=True)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(env_dir))
    assert len(load_fashion_mnist(expect_official_counts=False)[1]) == 4
    # root= wins over the environment variable
    assert len(load_fashion_mnist(root=torchvision_root, expect_official_counts=False)[1]) == 6
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(torchvision_root))
    assert len(load_fashion_mnist(expect_official_counts=False)[1]) == 6


def test_label_out_of_range(tmp_path: Path) -> None:
    images, labels = tiny_split()
    labels[3] = 10
    write_split(tmp_path, images, labels)
    with pytest.raises(IDXFormatError, match=r"label 10 at index 3 is outside \[0, 10\)"):
        load_fashion_mnist(root=tmp_path, expect_official_counts=False)


def test_images_and_labels_disagree(tmp_path: Path) -> None:
    images, labels = tiny_split(7)
    write_split(tmp_path, images, labels[:6])
    with pytest.raises(IDXFormatError, match="7 images but .* 6 labels"):
        load_fashion_mnist(root=tmp_path, expect_official_counts=False)


def test_official_counts_are_expected_by_default(tmp_path: Path) -> None:
    write_split(tmp_path, *tiny_split(7))
    match = "7 train images, but Fashion-MNIST has 60000.*expect_official_counts=False"
    with pytest.raises(IDXFormatError, match=match):
        load_fashion_mnist(root=tmp_path)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.uint8), r"shape \(N, 28, 28\)"),
        (np.zeros((2, 784), np.uint8), np.zeros(2, np.uint8), r"shape \(N, 28, 28\)"),
        (np.zeros((2, 28, 28), np.float32), np.zeros(2, np.uint8), "uint8 images"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int32), "uint8 labels"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8), "uint8 labels"),
    ],
)
def test_wrong_type_or_shape(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, match: str
) -> None:
    write_split(tmp_path, images, labels)
    with pytest.raises(IDXFormatError, match=match):
        load_fashion_mnist(root=tmp_path, expect_official_counts=False)


def test_damaged_file_in_the_data_directory(tmp_path: Path) -> None:
    images, labels = tiny_split()
    write_split(tmp_path, idx_bytes(images)[:-100], labels, gz=True)
    with pytest.raises(IDXFormatError, match="truncated"):
        load_fashion_mnist(root=tmp_path, expect_official_counts=False)


def test_missing_directory_says_what_was_tried_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test", missing)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    assert f"{missing} (root argument): no such directory" in message
    assert str(missing / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert FASHION_MNIST_DIR_ENV in message and "torchvision" in message


def test_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path.joinpath(TRAIN[0]).write_bytes(idx_bytes(tiny_split()[0]))
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"missing {TRAIN[1]}\\[.gz\\]") as info:
        load_fashion_mnist()
    assert f"${FASHION_MNIST_DIR_ENV}" in str(info.value)
    # a directory that was named is not silently replaced by the default one
    assert str(fashion_mnist_module.DEBIAN_FASHION_MNIST_DIR) not in str(info.value).split("\n")[1]


def test_default_directory_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError, match="Neither root= nor") as info:
        load_fashion_mnist()
    assert "Debian package dataset-fashion-mnist" in str(info.value)


def test_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path)  # type: ignore[arg-type]


# -- the real data set -------------------------------------------------------------------------
def _real_files_or_skip() -> None:
    try:
        for split in ("train", "test"):
            fashion_mnist_files(split)
    except FileNotFoundError as error:
        tried = "; ".join(line.strip() for line in str(error).splitlines()[1:-1])
        pytest.skip(
            f"Fashion-MNIST not found ({tried}); `apt-get install dataset-fashion-mnist` or set "
            f"{FASHION_MNIST_DIR_ENV}"
        )


@pytest.fixture(scope="module")
def real() -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    _real_files_or_skip()
    yield {split: load_fashion_mnist(split) for split in ("train", "test")}


@pytest.mark.parametrize(("split", "n"), [("train", 60_000), ("test", 10_000)])
def test_real_fashion_mnist(
    real: dict[str, tuple[torch.Tensor, torch.Tensor]], split: str, n: int
) -> None:
    images, labels = real[split]
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    # the published splits are balanced: a tenth of the images in each class
    assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10
    assert int(images.min()) == 0 and int(images.max()) == 255
    # the mean grey level of the published data: 0.2860 (train) and 0.2868 (test)
    mean = float(images.float().mean()) / 255
    assert mean == pytest.approx(0.2860 if split == "train" else 0.2868, abs=5e-4)
    # no two splits share their first image (the files are not mixed up)
    other = real["test" if split == "train" else "train"][0]
    assert not torch.equal(images[0], other[0])


def test_real_fashion_mnist_as_float(real: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    images, labels = load_fashion_mnist("test", as_float=True)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], real["test"][0].float() / 255)
    assert torch.equal(labels, real["test"][1])
