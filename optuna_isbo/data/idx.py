"""A reader for the IDX format of the MNIST family of data sets, gzipped or not.

An IDX file is a header and the array's values in C order, all big-endian:

- a 4-byte magic number ``0x0000TTDD``: two zero bytes, the type code ``TT`` and the number of
  dimensions ``DD``;
- ``DD`` sizes, each an unsigned 32-bit integer;
- the values: ``prod(sizes)`` items of the type ``TT``, one of ``0x08`` (uint8), ``0x09``
  (int8), ``0x0B`` (int16), ``0x0C`` (int32), ``0x0D`` (float32) or ``0x0E`` (float64).

:func:`read_idx` checks every part of that layout, and that the file holds exactly the bytes
the header announces (no fewer: truncated; no more: trailing data), and raises
:class:`IDXFormatError` otherwise. Gzipped files are recognised by their content (the gzip
magic bytes ``1f 8b``), not by their name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

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


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (or not a readable gzip file holding one)."""


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
        If the magic number, the sizes or the length of ``data`` do not fit the format.
    """
    if len(data) < 4:
        raise IDXFormatError(
            f"{name}: {len(data)} bytes, too short for the 4-byte IDX magic number."
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in IDX_DTYPES or ndim == 0:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXFormatError(
            f"{name}: magic number 0x{magic:08X} is not an IDX magic number 0x0000TTDD (two "
            f"zero bytes, a type code TT among {codes}, and DD >= 1 dimensions); the file is "
            "not an IDX file, or is compressed in a format other than gzip."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header} header bytes, the file "
            f"has {len(data)}."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing data after the values"
        raise IDXFormatError(
            f"{name}: {problem}: the header announces shape {tuple(shape)} of {dtype.name} "
            f"({expected} bytes in all), the file has {len(data)} bytes."
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzipped.

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
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise IDXFormatError(
                f"{path}: starts like a gzip file but cannot be decompressed ({error}); the "
                "download or copy was probably cut short."
            ) from error
    return parse_idx(data, str(path))
