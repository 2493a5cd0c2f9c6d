"""Writes RETURNN's HDF layout; ``SimpleHDFWriter`` keeps Mini-RETURNN's signature (forward hooks use it).

Layout: ``inputs`` [total_time, dim] (or [total_time] sparse), ``seqLengths`` [num_seqs, 1 + num_targets]
(column 0: inputs; column 1 + i: the i-th target key in sorted order), ``seqTags``, ``labels``, and per target key
``targets/data/<key>``, ``targets/size`` attribute ``<key>`` = [dim, ndim] and ``targets/labels/<key>``.
Root attributes ``inputPattSize``, ``numLabels``, ``numSeqs``, ``numTimesteps``, ``numDims``.

The file is written to a temp name in the target folder and renamed on :func:`SimpleHDFWriter.close`, so an
unfinished writer leaves no file under the final name. On close, the growable (chunked) data arrays are
rewritten contiguously, which readers can load with plain positioned reads (see :mod:`.hdf`).
A full disk or quota raises :class:`~i6_minireturnn.errors.DiskFullError` naming the file and removes the temp file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic_file import commit_temp, disk_full_error, temp_path_for
from ..log import log

ExtraType = Dict[str, Tuple[Optional[int], int, str]]  # key -> (dim, ndim, dtype)


def _h5py():
    import h5py  # imported on use: only runs that touch HDF need it

    return h5py


class SimpleHDFWriter:
    """Appends batches of sequences; ``close()`` finishes the file."""

    def __init__(
        self,
        filename: str,
        dim: Optional[int],
        labels: Optional[Sequence[str]] = None,
        ndim: Optional[int] = None,
        extra_type: Optional[ExtraType] = None,
        swmr: bool = False,
        extend_existing_file: bool = False,
    ):
        if swmr or extend_existing_file:
            raise NotImplementedError("SimpleHDFWriter: swmr and extend_existing_file are not supported")
        h5py = _h5py()
        self.filename = filename
        self.dim = dim
        self.ndim = ndim if ndim is not None else (1 if dim is None else 2)
        if labels and dim is not None and len(labels) != dim:
            raise ValueError(f"SimpleHDFWriter: {len(labels)} labels for dim {dim}")
        self._inputs = None
        self._extra: Dict[str, object] = {}
        self._extra_steps: Dict[str, int] = {}
        self._file = None
        self._guard: Optional[_GuardedFile] = None
        self._tmp: Optional[str] = temp_path_for(filename)
        self._guard = _GuardedFile(self._tmp)
        with self._watch_writes():
            self._file = h5py.File(self._guard, "w")
            self._init_layout(labels, extra_type)

    def _init_layout(self, labels: Optional[Sequence[str]], extra_type: Optional[ExtraType]) -> None:
        h5py = _h5py()
        dim = self.dim
        attrs = self._file.attrs
        attrs["numTimesteps"] = 0
        attrs["inputPattSize"] = dim or 1
        attrs["numDims"] = 1
        attrs["numLabels"] = dim or 1
        attrs["numSeqs"] = 0
        string_type = h5py.special_dtype(vlen=str)
        self._file.create_dataset("labels", data=np.array(list(labels or []), dtype=object), dtype=string_type)
        self._seq_lengths = self._file.create_dataset("seqLengths", (0, 2), dtype="int32", maxshape=(None, None))
        self._seq_tags = self._file.create_dataset("seqTags", (0,), dtype=string_type, maxshape=(None,))
        if extra_type:
            self._add_extra_keys(extra_type)

    def _add_extra_keys(self, extra_type: ExtraType) -> None:
        h5py = _h5py()
        new = {k: v for k, v in extra_type.items() if k not in self._extra}
        if not new:
            return
        if self._file.attrs["numSeqs"] > 0:
            raise ValueError(f"SimpleHDFWriter: new extra keys {sorted(new)} after the first sequence")
        if "targets" not in self._file:
            for group in ("targets/data", "targets/size", "targets/labels"):
                self._file.create_group(group)
        for key, (dim, ndim, dtype) in new.items():
            if key == "inputs":
                raise ValueError("SimpleHDFWriter: 'inputs' is no extra key")
            ndim = max(ndim, 1)
            maxshape = [None] * ndim
            if ndim >= 2:
                maxshape[-1] = dim
            dtype = h5py.special_dtype(vlen=str) if dtype == "string" else dtype
            self._extra[key] = self._file["targets/data"].create_dataset(
                key, shape=[d or 0 for d in maxshape], dtype=dtype, maxshape=maxshape
            )
            self._file["targets/size"].attrs[key] = [dim or 1, ndim]
            self._file["targets/labels"].create_dataset(
                key, data=np.array(["dummy-label"], dtype=object), dtype=h5py.special_dtype(vlen=str)
            )
            self._extra_steps[key] = 0
        self._seq_lengths.resize(1 + len(self._extra), axis=1)

    def insert_batch(
        self,
        inputs: np.ndarray,
        seq_len: Union[Sequence[int], np.ndarray, Dict[int, Sequence[int]]],
        seq_tag: Sequence[Union[str, bytes]],
        extra: Optional[Dict[str, np.ndarray]] = None,
    ) -> None:
        """Adds ``len(seq_tag)`` sequences: ``inputs`` [batch, time, ...] padded, ``seq_len`` their lengths."""
        if self._file is None:
            raise ValueError(f"SimpleHDFWriter: {self.filename} is closed (or was dropped after a failed write)")
        with self._watch_writes():
            self._insert_batch(inputs, seq_len, seq_tag, extra)

    def _insert_batch(
        self,
        inputs: np.ndarray,
        seq_len: Union[Sequence[int], np.ndarray, Dict[int, Sequence[int]]],
        seq_tag: Sequence[Union[str, bytes]],
        extra: Optional[Dict[str, np.ndarray]],
    ) -> None:
        inputs = np.asarray(inputs)
        num = len(seq_tag)
        if inputs.shape[0] != num or inputs.ndim != self.ndim + 1:
            raise ValueError(
                f"SimpleHDFWriter: inputs of shape {inputs.shape} do not fit {num} tags and ndim {self.ndim}"
            )
        lengths = dict(seq_len) if isinstance(seq_len, dict) else {0: seq_len}
        dynamic_axes = max(lengths) + 1
        sparse = dynamic_axes == self.ndim
        if self.dim and not sparse and inputs.shape[-1] != self.dim:
            raise ValueError(f"SimpleHDFWriter: feature dim {inputs.shape[-1]} != {self.dim}")
        if extra:
            extra = {k: np.asarray(v) for k, v in extra.items()}
            self._add_extra_keys(
                {
                    k: (v.shape[-1] if v.ndim > 2 else 1, v.ndim - 1, "string" if v.dtype == object else v.dtype.name)
                    for k, v in extra.items()
                    if k not in self._extra
                }
            )
        first = self._seq_lengths.shape[0]
        self._seq_lengths.resize(first + num, axis=0)
        self._seq_tags.resize(first + num, axis=0)
        for i in range(num):
            tag = seq_tag[i]
            self._seq_tags[first + i] = tag.decode("utf-8") if isinstance(tag, bytes) else str(tag)
            axis_lengths = [int(lengths[a][i]) for a in range(dynamic_axes)]
            data = inputs[i][tuple(slice(0, n) for n in axis_lengths)]
            flat = int(np.prod(axis_lengths))  # several dynamic axes are stored flattened, as RETURNN does
            data = data.reshape([flat] + ([self.dim] if self.dim and not sparse else list(data.shape[dynamic_axes:])))
            self._append_inputs(data)
            self._seq_lengths[first + i, 0] = flat
            row = {}
            if extra:
                for key, value in extra.items():
                    row[key] = self._append_extra(key, value[i])
            for column, key in enumerate(sorted(self._extra), 1):
                self._seq_lengths[first + i, column] = row.get(key, 0)

    def _append_inputs(self, data: np.ndarray) -> None:
        if self._inputs is None:
            self._inputs = self._file.create_dataset(
                "inputs", shape=(0,) + data.shape[1:], dtype=data.dtype, maxshape=(None,) + data.shape[1:]
            )
        start = self._inputs.shape[0]
        self._inputs.resize(start + data.shape[0], axis=0)
        self._inputs[start:] = data
        self._file.attrs["numTimesteps"] += data.shape[0]
        self._file.attrs["numSeqs"] += 1

    def _append_extra(self, key: str, value: np.ndarray) -> int:
        value = np.asarray(value)
        if value.ndim == 0:
            value = value[None]
        dataset = self._extra[key]
        if dataset.shape[0] == 0 and dataset.shape[1:] != value.shape[1:]:
            dataset.resize((0,) + value.shape[1:])  # inner axes of a [time, a, b] key are known with the first value
        start = self._extra_steps[key]
        self._extra_steps[key] = start + value.shape[0]
        dataset.resize(start + value.shape[0], axis=0)
        if value.shape[0]:
            dataset[start:] = value.astype(dataset.dtype) if dataset.dtype != object else value
        return int(value.shape[0])

    @contextlib.contextmanager
    def _watch_writes(self) -> Iterator[None]:
        """Around each call into h5py: a failed write drops the file and raises (DiskFullError for a full disk)."""
        guard = self._guard
        try:
            yield
        except Exception as exc:
            if guard is None or guard.error is None:
                raise  # not a write failure (bad input, ...): the writer stays usable
            self._discard()
            guard.raise_error(self.filename, cause=exc)
        if guard is not None and guard.error is not None:
            self._discard()
            guard.raise_error(self.filename)

    def _discard(self) -> None:
        """Closes and removes the temp file; nothing of this writer stays on disk."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):  # the file is dropped anyway
                file.close()
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def close(self) -> None:
        """Finishes the file and moves it to its final name."""
        if self._file is None:
            return
        with self._watch_writes():
            if self._inputs is None:  # no sequence at all: still a valid, empty file
                shape = (0,) if self.ndim == 1 else (0, self.dim or 1)
                self._file.create_dataset("inputs", shape=shape, dtype="float32")
            file, self._file = self._file, None  # closed once only, even when the close fails
            file.close()
        self._guard.close()
        self._guard = None
        compact = None
        try:
            compact = temp_path_for(self.filename)
            write_contiguous_copy(self._tmp, compact, report_as=self.filename)
        except BaseException:
            self._discard()
            if compact is not None:
                with contextlib.suppress(OSError):
                    os.remove(compact)
            raise
        os.remove(self._tmp)
        self._tmp = compact
        if os.path.exists(self.filename):
            print(f"SimpleHDFWriter: replacing existing {self.filename}", file=log.v3)
        try:
            commit_temp(self._tmp, self.filename)
        except BaseException:
            self._discard()
            raise
        self._tmp = None

    def __del__(self) -> None:
        # a writer that was never closed leaves nothing behind: neither the final file nor its temp file
        if getattr(self, "_tmp", None) is not None or getattr(self, "_file", None) is not None:
            self._discard()


def write_contiguous_copy(
    source: str, target: str, block_bytes: int = 64 * 2**20, *, report_as: Optional[str] = None
) -> None:
    """Copies an HDF file; numeric datasets become contiguous (copied in blocks: memory stays bounded).

    A failed write (full disk, ...) raises naming `report_as` (the file the user asked for; default `target`); the
    caller removes `target`.
    """
    guard = _GuardedFile(target)
    try:
        _copy_contiguous(source, guard, block_bytes)
    except Exception as exc:
        if guard.error is None:
            raise
        guard.raise_error(report_as or target, cause=exc)
    finally:
        guard.close()
    guard.raise_error(report_as or target)


def _copy_contiguous(source: str, target: _GuardedFile, block_bytes: int) -> None:
    h5py = _h5py()
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        dst.attrs.update(dict(src.attrs))

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group):
                group = dst.require_group(name)
                group.attrs.update(dict(obj.attrs))
            elif obj.dtype.kind in "OSUV" or obj.ndim == 0:
                src.copy(obj, dst, name=name)
            else:
                out = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype)  # contiguous
                row_bytes = max(obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64)), 1)
                step = max(block_bytes // row_bytes, 1)
                for start in range(0, obj.shape[0], step):
                    out[start : start + step] = obj[start : start + step]
                out.attrs.update(dict(obj.attrs))

        src.visititems(visit)


class _GuardedFile:
    """The file object h5py's ``fileobj`` driver writes the HDF file through; a failed write is kept, not raised.

    HDF5 2.0 crashes the process (segfault) when objects of a file whose write failed are freed or the file is closed
    twice (seen on a full disk). Behind this object HDF5 never sees the failure: from the first failed write on, what
    HDF5 writes is kept in memory (so that its reads stay consistent) until the writer, which checks :attr:`error`
    after each call into h5py, drops the file. Positioned reads and writes on the descriptor: no Python buffer whose
    flush could fail later, at a point HDF5 does not expect.
    """

    def __init__(self, path: str):
        self._fd: Optional[int] = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self._pos = 0
        self.error: Optional[OSError] = None
        self._lost: List[Tuple[int, bytes]] = []  # (offset, data) written after the first failure, in order

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._size() + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _size(self) -> int:
        size = os.fstat(self._fd).st_size
        return max([size] + [offset + len(data) for offset, data in self._lost])

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(self._size() - self._pos, 0)
        data = bytearray(os.pread(self._fd, size, self._pos))
        data.extend(bytes(size - len(data)))  # zeros past the end, as HDF5's own (sec2) driver reads there
        if self._lost:  # HDF5 reads back what it wrote: answer with the data that did not reach the disk
            for offset, lost in self._lost:
                start, end = max(offset, self._pos), min(offset + len(lost), self._pos + size)
                if start < end:
                    data[start - self._pos : end - self._pos] = lost[start - offset : end - offset]
        self._pos += len(data)
        return bytes(data)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                written = 0
                while written < len(view):  # a write may be partial just before the disk is full
                    written += os.pwrite(self._fd, view[written:], self._pos + written)
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._lost.append((self._pos, bytes(view)))
        self._pos += len(view)
        return len(view)

    def truncate(self, size: Optional[int] = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        """Nothing is buffered here; the data reaches the disk with :func:`commit_temp`'s fsync."""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lost = []

    def raise_error(self, filename: str, cause: Optional[BaseException] = None) -> None:
        """Raises for the kept write failure (DiskFullError for a full disk or quota); returns when there is none."""
        if self.error is None:
            return
        disk_full = disk_full_error(self.error, filename)
        if disk_full is not None:
            raise disk_full from cause
        raise OSError(self.error.errno, f"Cannot write {filename}: {self.error.strerror}") from cause
