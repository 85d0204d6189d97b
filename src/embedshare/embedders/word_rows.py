"""The fp32 graph's word-embedding table, read from the safetensors row by row as ids appear.

Why: all-MiniLM-L6-v2's table is 30522 x 384 float32, 47 MB, half the model's weights, yet a
workload reads only the rows of the tokens it sees (Zipfian; the WordPiece ids of common words
cluster low). So the fp32 graph takes the table as an input (``bert_graph``) and the service
feeds it this one: an anonymous private mapping, whose pages are resident only once a row in
them is written, filled by :meth:`WordRows.ensure` with the rows a forward's ids need.

Why hand-written: safetensors' own readers (``safe_open``, ``load_file``) map the file, and
page cache pages of a mapped file count in the process's PSS; a file-backed mapping also gets
the kernel's fault-around, and the whole file became resident when the table was a
``numpy.memmap`` of it. Here nothing of the file is mapped: its 8-byte length + JSON header is
parsed below and the rows are read with ``os.pread``, each run of consecutive ids in one read.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedderError

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"  # the tensor bert_graph reads
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# safetensors dtypes read as float32 (bfloat16 by hand: numpy has no such dtype)
_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}


class WordRows:
    """A ``[vocab, hidden]`` float32 table whose rows are read from ``model.safetensors`` on demand."""

    def __init__(self, weights: Path, name: str = WORD_EMBEDDINGS) -> None:
        self.path = Path(weights)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._dtype_name, (rows, hidden), self._offset = _tensor_location(fd, self.path, name)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept open: every row comes from the file the graph was built from
        self._closer = weakref.finalize(self, os.close, fd)
        self._source_dtype = _DTYPES[self._dtype_name]
        self._row_bytes = hidden * self._source_dtype.itemsize
        # MAP_PRIVATE + anonymous: a page never written is never resident (not even zero-filled)
        self._memory = mmap.mmap(-1, rows * hidden * 4, flags=mmap.MAP_PRIVATE)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a 2 MB huge page would make ~1,300 rows resident at once
            with contextlib.suppress(OSError):
                self._memory.madvise(mmap.MADV_NOHUGEPAGE)
        self.table = np.frombuffer(self._memory, dtype=np.float32).reshape(rows, hidden)
        self.loaded = np.zeros(rows, dtype=bool)

    @property
    def loaded_rows(self) -> int:
        return int(np.count_nonzero(self.loaded))

    def ensure(self, ids: np.ndarray) -> None:
        """Read the rows of ``ids`` not read yet (the caller serialises calls: the embedder's lock)."""
        wanted = np.unique(ids)
        outside = wanted[(wanted < 0) | (wanted >= len(self.loaded))]
        if outside.size:
            raise EmbedderError(f"token id {int(outside[0])} is outside {self.path}'s {len(self.loaded)} rows")
        missing = wanted[~self.loaded[wanted]]
        if missing.size == 0:
            return
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1
        for run in np.split(missing, breaks):
            self._read(int(run[0]), len(run))
        self.loaded[missing] = True

    def _read(self, first: int, count: int) -> None:
        size = count * self._row_bytes
        data = os.pread(self._fd, size, self._offset + first * self._row_bytes)
        if len(data) != size:
            raise EmbedderError(f"{self.path} is truncated: rows {first}..{first + count - 1} of the word embeddings")
        rows = np.frombuffer(data, dtype=self._source_dtype).reshape(count, -1)
        if self._dtype_name == "BF16":  # bfloat16 is float32's upper half
            rows = (rows.astype(np.uint32) << 16).view(np.float32)
        self.table[first : first + count] = rows


def _tensor_location(fd: int, path: Path, name: str) -> tuple[str, tuple[int, int], int]:
    """dtype, 2-D shape and absolute byte offset of tensor ``name``, checked against the file's size."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) != 8:
        raise EmbedderError(f"{path} is not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(MAX_HEADER, size - 8):
        raise EmbedderError(f"{path} is truncated or not a safetensors file: header of {header_len} bytes")
    try:
        header = json.loads(os.pread(fd, header_len, 8))
        entry = header[name]
        dtype, shape, (start, end) = entry["dtype"], [int(n) for n in entry["shape"]], entry["data_offsets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EmbedderError(
            f"{path} has no readable tensor {name!r} in its header ({type(exc).__name__}: {exc})"
        ) from None
    if dtype not in _DTYPES or len(shape) != 2:
        raise EmbedderError(f"{path}: tensor {name!r} is {dtype} {shape}, not a 2-D float table")
    if end - start != shape[0] * shape[1] * _DTYPES[dtype].itemsize:
        raise EmbedderError(f"{path}: tensor {name!r} spans {end - start} bytes, not its shape's {shape}")
    if 8 + header_len + end > size:
        raise EmbedderError(f"{path} is truncated: {size} bytes, tensor {name!r} ends at {8 + header_len + end}")
    return dtype, (shape[0], shape[1]), 8 + header_len + int(start)
