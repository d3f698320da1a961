"""A reader for the IDX format of the MNIST family of data sets, gzipped or not.

An IDX file is a header and the array's values in C order, all big-endian:

- a 4-byte magic number ``0x0000TTDD``: two zero bytes, the type code ``TT`` and the number of
  dimensions ``DD``;
- ``DD`` sizes, each an unsigned 32-bit integer;
- the values: ``prod(sizes)`` items of the type ``TT``, one of ``0x08`` (uint8), ``0x09``
  (int8), ``0x0B`` (int16), ``0x0C`` (int32), ``0x0D`` (float32) or ``0x0E`` (float64).

:func:`read_idx` checks every part of that layout (and that there are no more dimensions than
a NumPy array can have), and that the file holds exactly the bytes the header announces (no
fewer: truncated; no more: trailing data), and raises :class:`IDXFormatError` otherwise. It
reads the file as a stream and stops one byte past the announced size, so a file (or a gzip
file's decompressed data) longer than its header says costs no more memory than the announced
array. Gzipped files are recognised by their content (the gzip magic bytes ``1f 8b``), not by
their name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["IDX_DTYPES", "IDXFormatError", "parse_idx", "read_idx"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""The IDX type codes and the big-endian NumPy dtypes they stand for."""

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 2**20
_MAX_NDIM = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
"""The most dimensions a NumPy array can have (``NPY_MAXDIMS``)."""


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (or not a readable gzip file holding one)."""


class _Readable(Protocol):
    """A binary stream: a file, a :class:`gzip.GzipFile`, a :class:`io.BytesIO`."""

    def read(self, size: int, /) -> bytes: ...


def _read_up_to(stream: _Readable, size: int) -> bytearray:
    """At most ``size`` bytes of ``stream``, fewer only at its end; read in bounded chunks, so
    that memory grows with the bytes that are there, not with the bytes that are asked for."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = stream.read(min(_CHUNK_BYTES, size - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


def _read_idx_stream(
    stream: _Readable, name: str, what: str, total: int | None = None
) -> np.ndarray:
    """Read an IDX file from ``stream``, and no byte past the end that its header announces.

    ``what`` says what the lengths in the messages count ("the file", "the decompressed
    data"); ``total`` is its length in bytes where known without reading it all.
    """
    magic_bytes = _read_up_to(stream, 4)
    if len(magic_bytes) < 4:
        raise IDXFormatError(
            f"{name}: {len(magic_bytes)} bytes, too short for the 4-byte IDX magic number."
        )
    magic = int.from_bytes(magic_bytes, "big")
    code, ndim = magic_bytes[2], magic_bytes[3]
    if magic_bytes[0] != 0 or magic_bytes[1] != 0 or code not in IDX_DTYPES or ndim == 0:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXFormatError(
            f"{name}: magic number 0x{magic:08X} is not an IDX magic number 0x0000TTDD (two "
            f"zero bytes, a type code TT among {codes}, and DD >= 1 dimensions); the file is "
            "not an IDX file, or is compressed in a format other than gzip."
        )
    if ndim > _MAX_NDIM:
        raise IDXFormatError(
            f"{name}: the header announces {ndim} dimensions, more than the {_MAX_NDIM} that "
            "NumPy arrays can have; the file is damaged or not an IDX file."
        )
    header = 4 + 4 * ndim
    size_bytes = _read_up_to(stream, 4 * ndim)
    if len(size_bytes) < 4 * ndim:
        raise IDXFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header} header bytes, {what} "
            f"has {4 + len(size_bytes)}."
        )
    shape = struct.unpack(f">{ndim}I", size_bytes)
    dtype = IDX_DTYPES[code]
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    values = _read_up_to(stream, count * dtype.itemsize)
    if len(values) < count * dtype.itemsize:
        raise IDXFormatError(
            f"{name}: truncated: the header announces shape {tuple(shape)} of {dtype.name} "
            f"({expected} bytes in all), {what} has {header + len(values)} bytes."
        )
    if _read_up_to(stream, 1):
        length = "more" if total is None else f"{total} bytes"
        raise IDXFormatError(
            f"{name}: trailing data after the values: the header announces shape "
            f"{tuple(shape)} of {dtype.name} ({expected} bytes in all), {what} has {length}."
        )
    array = np.frombuffer(values, dtype=dtype).reshape(shape)  # writable: a bytearray's
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file.

    Parameters
    ----------
    data
        The whole file.
    name
        How error messages call the data (a path, typically).

    Returns
    -------
    numpy.ndarray
        A writable array of the header's shape, in the header's type, native byte order.

    Raises
    ------
    IDXFormatError
        If the magic number, the number of dimensions (at most what NumPy supports: 64 with
        NumPy 2, 32 before), the sizes or the length of ``data`` do not fit the format.
    """
    return _read_idx_stream(io.BytesIO(data), name, "the data", len(data))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzipped.

    The file is read as a stream, decompressed on the fly if gzipped: the header first, then
    exactly the bytes it announces and one more to tell whether data trail them. Memory and
    time are thus bounded by the size of the announced array, whatever the file holds beyond
    it (a small gzip file can decompress to gigabytes).

    Parameters
    ----------
    path
        The file. Whether it is gzipped is told by its first two bytes, whatever its name.

    Returns
    -------
    numpy.ndarray
        See :func:`parse_idx`.

    Raises
    ------
    FileNotFoundError, PermissionError
        If the file cannot be opened.
    IDXFormatError
        If it is a damaged gzip file or not a well-formed IDX file.
    """
    path = Path(path)
    with open(path, "rb") as file:
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not gzipped:
            return _read_idx_stream(file, str(path), "the file", os.fstat(file.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                return _read_idx_stream(stream, str(path), "the decompressed data")
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise IDXFormatError(
                f"{path}: starts like a gzip file but cannot be decompressed ({error}); the "
                "download or copy was probably cut short."
            ) from error
