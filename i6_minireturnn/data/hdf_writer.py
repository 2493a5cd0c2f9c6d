"""Writes RETURNN's HDF layout; ``SimpleHDFWriter`` keeps RETURNN's and Mini-RETURNN's signature (forward hooks use it).

Layout (what RETURNN's SimpleHDFWriter writes and both HDFDataset readers expect): ``inputs`` [total_time, dim] (or
[total_time] for sparse data and for ``dim=None``), ``seqLengths`` int32 [num_seqs, max(2, 1 + num_targets)]
(column 0: inputs; column 1 + i: the i-th extra key in sorted order), ``seqTags`` (variable-length strings),
``labels``, and per extra key ``targets/data/<key>``, ``targets/size`` attribute ``<key>`` = [dim, ndim] and
``targets/labels/<key>``. Root attributes ``inputPattSize``, ``numLabels``, ``numSeqs``, ``numTimesteps``,
``numDims``. Several dynamic axes (``seq_len`` given as {axis: lengths}) are stored flattened, with the lengths of
each axis in the extra key ``sizes``, as RETURNN does.

Fork safety: forward hooks create the writer in ``forward_init_hook`` and then fork (``multiprocessing.Pool``).
An HDF5 file held open across a fork is shared with the children (same descriptor, same file lock, HDF5's
library state copied mid-use), which breaks the parent's close when the file is reopened. So no HDF5 file is open
between calls: the sequences go to plain, already unlinked spool files (one per key, appended in order, so memory
does not grow with the output; only tags and lengths stay in memory), and :func:`SimpleHDFWriter.close` writes the
HDF5 file in one go, with contiguous datasets (which :mod:`.hdf` reads with positioned reads). A writer inherited
by a forked child is inert there: its spool descriptors are closed in the child, its files are never removed by the
child, and using it there raises. A writer created in the child is the child's own and works as usual.

The file is written to a temp name in the target folder and renamed on close (modes follow the umask), so an
unfinished writer leaves no file under the final name. A full disk or quota raises
:class:`~i6_minireturnn.errors.DiskFullError` naming the file, and nothing of the writer stays on disk.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic_file import commit_temp, disk_full_error, temp_path_for
from ..log import log

ExtraType = Dict[str, Tuple[Optional[int], int, str]]  # key -> (dim, ndim, dtype)
SeqLen = Union[Sequence[int], np.ndarray, Dict[int, Union[Sequence[int], np.ndarray]]]

BLOCK_BYTES = 64 * 2**20  # close() copies spooled data into the HDF5 file in blocks of this size: bounded memory


def _h5py():
    import h5py  # imported on use: only runs that touch HDF need it

    return h5py


def _to_numpy(value: Any) -> np.ndarray:
    """numpy arrays, lists, scalars and torch tensors (hooks often pass those, also on the GPU) as numpy."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ---- fork handling ---------------------------------------------------------------------------------------------

_live_writers: weakref.WeakSet[SimpleHDFWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child drops its copies of the parent's spool descriptors (the parent keeps its own)."""
    for writer in list(_live_writers):
        writer._forget_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Spool:
    """Rows of one key, appended to an unlinked temp file: nothing to clean up after a crash, no HDF5 handle."""

    def __init__(self, near: str, dtype: Optional[np.dtype], row_shape: Optional[Tuple[int, ...]]):
        tmp = temp_path_for(near)  # in the output folder: same filesystem and quota as the result
        self._fd: Optional[int] = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        os.remove(tmp)  # the descriptor keeps the data; a killed run leaves no spool file behind
        self.dtype = dtype
        self.row_shape = row_shape
        self.rows = 0
        self._bytes = 0
        self.strings: Optional[List[str]] = None  # string keys stay in memory: per sequence a few words at most

    def check(self, key: str, value: np.ndarray) -> np.ndarray:
        """`value` [rows, ...] in this key's dtype; the first value fixes unknown inner axes and dtype."""
        if value.dtype == object or value.dtype.kind in "SU" or self.strings is not None:
            if self.rows == 0 and self.dtype is None:
                self.strings = []
            if self.strings is None:
                raise ValueError(f"SimpleHDFWriter: {key!r} holds numbers, got strings")
            return value.reshape(-1)  # string keys are stored one string per row
        if self.dtype is None:
            self.dtype = value.dtype
        if self.row_shape is None or (self.rows == 0 and None in self.row_shape):
            known = self.row_shape or tuple([None] * (value.ndim - 1))
            if len(known) != value.ndim - 1 or any(k is not None and k != v for k, v in zip(known, value.shape[1:])):
                raise ValueError(f"SimpleHDFWriter: {key!r} expects rows of shape {known}, got {value.shape[1:]}")
            self.row_shape = tuple(value.shape[1:])
        if tuple(value.shape[1:]) != self.row_shape:
            raise ValueError(
                f"SimpleHDFWriter: {key!r} has rows of shape {self.row_shape}, got a value of shape {value.shape}"
            )
        return np.ascontiguousarray(value, dtype=self.dtype)

    def append(self, value: np.ndarray) -> None:
        if self.strings is not None:
            self.strings.extend(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1))
            self.rows += value.shape[0]
            return
        view = memoryview(value).cast("B")
        written = 0
        while written < len(view):  # a write may be partial just before the disk is full
            written += os.pwrite(self._fd, view[written:], self._bytes + written)
        self._bytes += len(view)
        self.rows += value.shape[0]

    def blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(first row, rows) of the spooled data, in blocks of at most BLOCK_BYTES."""
        row_bytes = max(self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)), 1)
        step = max(BLOCK_BYTES // row_bytes, 1)
        for start in range(0, self.rows, step):
            out = np.empty((min(step, self.rows - start),) + self.row_shape, dtype=self.dtype)
            if out.nbytes and os.preadv(self._fd, [memoryview(out).cast("B")], start * row_bytes) != out.nbytes:
                raise OSError(f"SimpleHDFWriter: spool file ended early after {start} rows")
            yield start, out

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class SimpleHDFWriter:
    """Appends batches of sequences (``insert_batch``); ``close()`` writes the HDF file."""

    def __init__(
        self,
        filename: str,
        dim: Optional[int],
        labels: Optional[Sequence[str]] = None,
        ndim: Optional[int] = None,
        extra_type: Optional[ExtraType] = None,
        swmr: bool = False,
        extend_existing_file: bool = False,
        extra_labels: Optional[Dict[str, Sequence[str]]] = None,
    ):
        """
        :param filename: the HDF file; replaced on close if it exists
        :param dim: feature dim of ``inputs``; None: no feature axis (e.g. one number per frame) or sparse
        :param labels: names of the ``dim`` classes
        :param ndim: axes of one sequence's input, without the batch axis; default 1 without dim, else 2
        :param extra_type: key -> (dim, ndim, dtype) of extra keys known up front (others: from the first batch)
        :param extra_labels: key -> labels of an extra key
        """
        if swmr or extend_existing_file:
            raise NotImplementedError("SimpleHDFWriter: swmr and extend_existing_file are not supported")
        self.filename = filename
        self.dim = dim
        self.ndim = ndim if ndim is not None else (1 if dim is None else 2)
        self.labels = list(labels) if labels else None
        if self.labels and dim is not None and len(self.labels) != dim:
            raise ValueError(f"SimpleHDFWriter: {len(self.labels)} labels for dim {dim}")
        self._pid = os.getpid()
        self._open = True
        self._tags: List[str] = []
        self._lengths: Dict[str, List[int]] = {"inputs": []}  # per key, per sequence: rows
        self._extra: Dict[str, Tuple[Optional[int], int]] = {}  # extra key -> (dim, ndim) for targets/size
        self._extra_labels: Dict[str, List[str]] = {k: list(v) for k, v in (extra_labels or {}).items()}
        self._spools: Dict[str, _Spool] = {}
        _live_writers.add(self)
        with self._dropped_on_error():
            self._spools["inputs"] = _Spool(filename, None, None)
            if extra_type:
                self._add_extra_keys(extra_type, declared=True)

    def __repr__(self) -> str:
        return f"<SimpleHDFWriter {self.filename!r} dim={self.dim} ndim={self.ndim}>"

    def _add_extra_keys(self, extra_type: ExtraType, declared: bool = False) -> None:
        """New extra keys; `declared` ones (given to the constructor) take their ``extra_labels``, as in RETURNN."""
        new = {k: v for k, v in extra_type.items() if k not in self._extra}
        if not new:
            return
        if self._tags:  # the columns of seqLengths are the sorted keys: they are fixed with the first sequence
            raise ValueError(f"SimpleHDFWriter: new extra keys {sorted(new)} after the first sequence")
        for key, (dim, ndim, dtype) in new.items():
            if key == "inputs":
                raise ValueError("SimpleHDFWriter: 'inputs' is no extra key")
            ndim = max(int(ndim), 1)  # a number per sequence gets a time axis of length 1
            labels = self._extra_labels.get(key) if declared else None
            if labels is not None and len(labels) != dim:
                raise ValueError(f"SimpleHDFWriter: {len(labels)} labels for extra key {key!r} of dim {dim}")
            self._extra_labels[key] = labels or ["dummy-label"]
            row_shape: Optional[Tuple[Optional[int], ...]] = None
            if ndim >= 2:  # inner axes before the last one are taken from the first value
                row_shape = tuple([None] * (ndim - 2) + [dim])
                if dim is None:
                    row_shape = tuple([None] * (ndim - 1))
            elif ndim == 1:
                row_shape = ()
            numeric = None if dtype in ("string", "str", object) else np.dtype(dtype)
            spool = _Spool(self.filename, numeric, row_shape)  # type: ignore[arg-type]
            if numeric is None:
                spool.strings = []
            self._spools[key] = spool
            self._extra[key] = (dim, ndim)
            self._lengths[key] = []

    def insert_batch(
        self,
        inputs: np.ndarray,
        seq_len: SeqLen,
        seq_tag: Sequence[Union[str, bytes]],
        extra: Optional[Dict[str, np.ndarray]] = None,
    ) -> None:
        """Adds ``len(seq_tag)`` sequences.

        :param inputs: [batch, time, dim] padded (or [batch, time]; [batch, time1, time2, ...] with a dict seq_len)
        :param seq_len: lengths of axis 0 of each sequence, or {axis: lengths} for several dynamic axes
        :param seq_tag: one tag per sequence
        :param extra: key -> [batch, ...]; each sequence's value is stored whole (it is not cut to seq_len)
        """
        self._check_usable()
        with self._dropped_on_error():
            self._insert_batch(_to_numpy(inputs), seq_len, seq_tag, extra)

    def _insert_batch(
        self, inputs: np.ndarray, seq_len: SeqLen, seq_tag: Sequence[Union[str, bytes]], extra: Optional[Dict]
    ) -> None:
        num = len(seq_tag)
        if inputs.shape[0] != num or inputs.ndim != self.ndim + 1:
            raise ValueError(
                f"SimpleHDFWriter: inputs of shape {inputs.shape} do not fit {num} tags and ndim {self.ndim} "
                "(inputs have the batch axis and ndim more)"
            )
        if inputs.dtype == object or inputs.dtype.kind in "SU":
            raise ValueError("SimpleHDFWriter: inputs must be numbers (strings can go to an extra key)")
        lengths = self._axis_lengths(seq_len, num, inputs.shape)
        dynamic_axes = len(lengths)
        sparse = dynamic_axes == self.ndim
        if self.dim and not sparse and inputs.shape[-1] != self.dim:
            raise ValueError(f"SimpleHDFWriter: feature dim {inputs.shape[-1]} != {self.dim}")
        extra = {k: _to_numpy(v) for k, v in (extra or {}).items()}
        for key, value in extra.items():
            if value.ndim == 0 or value.shape[0] != num:
                raise ValueError(f"SimpleHDFWriter: extra {key!r} of shape {value.shape} has no batch axis of {num}")
        if num == 0:
            return
        if dynamic_axes > 1:
            extra["sizes"] = np.array([[lengths[a][i] for a in range(dynamic_axes)] for i in range(num)], "int32")
        self._add_extra_keys(
            {k: self._infer_type(np.asarray(v[0], dtype=v.dtype)) for k, v in extra.items() if k not in self._extra}
        )
        for i in range(num):
            axis_lengths = [lengths[a][i] for a in range(dynamic_axes)]
            data = inputs[i][tuple(slice(0, n) for n in axis_lengths)]
            flat = int(np.prod(axis_lengths, dtype=np.int64))  # several dynamic axes are stored flattened
            features = list(data.shape[dynamic_axes:])
            if not sparse and not self.dim and int(np.prod(features, dtype=np.int64)) == 1:
                features = []  # dim=None: no feature axis, as RETURNN stores it
            data = data.reshape([flat] + features)
            rows = {"inputs": self._spools["inputs"].check("inputs", data)}
            for key, value in extra.items():
                one = np.asarray(value[i], dtype=value.dtype)  # a string element stays an array
                rows[key] = self._spools[key].check(key, one[None] if one.ndim == 0 else one)
            tag = seq_tag[i]
            self._tags.append(tag.decode("utf-8") if isinstance(tag, bytes) else str(tag))
            for key, lengths_of_key in self._lengths.items():  # keys missing in this batch get length 0
                row = rows.get(key)
                if row is not None:
                    self._spools[key].append(row)
                lengths_of_key.append(0 if row is None else int(row.shape[0]))

    def _axis_lengths(self, seq_len: SeqLen, num: int, shape: Tuple[int, ...]) -> List[List[int]]:
        """seq_len as a list of lengths per dynamic axis (0, 1, ...); checked against the padded shape."""
        by_axis = dict(seq_len) if isinstance(seq_len, dict) else {0: seq_len}
        if sorted(by_axis) != list(range(len(by_axis))) or len(by_axis) > self.ndim:
            raise ValueError(f"SimpleHDFWriter: seq_len axes {sorted(by_axis)} must be 0, 1, ... up to ndim-1")
        lengths = []
        for axis in range(len(by_axis)):
            values = [int(n) for n in _to_numpy(by_axis[axis]).reshape(-1)]
            if len(values) != num:
                raise ValueError(f"SimpleHDFWriter: {len(values)} lengths for axis {axis}, but {num} sequences")
            if values and max(values) > shape[axis + 1]:
                raise ValueError(f"SimpleHDFWriter: length {max(values)} on axis {axis} exceeds the inputs {shape}")
            lengths.append(values)
        return lengths

    @staticmethod
    def _infer_type(one: np.ndarray) -> Tuple[Optional[int], int, str]:
        """(dim, ndim, dtype) of an extra key from one sequence's value, as RETURNN infers it."""
        if one.dtype == object or one.dtype.kind in "SU":
            return 1, max(one.ndim, 1), "string"
        return (int(one.shape[-1]) if one.ndim > 1 else 1), max(one.ndim, 1), one.dtype.name

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"SimpleHDFWriter: {self.filename} was created in process {self._pid}; a forked child cannot write "
                "to it (create a writer in the child, or send the results to the parent)"
            )
        if not self._open:
            raise ValueError(f"SimpleHDFWriter: {self.filename} is closed (or was dropped after a failed write)")

    def _forget_inherited(self) -> None:
        """In a forked child: close the child's copies of the descriptors; the parent's files stay untouched."""
        if os.getpid() == self._pid:
            return
        for spool in self._spools.values():
            spool.close()
        self._open = False

    @contextlib.contextmanager
    def _dropped_on_error(self) -> Iterator[None]:
        """A failed write drops the writer (DiskFullError for a full disk); bad input leaves it usable."""
        try:
            yield
        except OSError as exc:
            self._discard()
            disk_full = disk_full_error(exc, self.filename)
            if disk_full is not None:
                raise disk_full from exc
            raise

    def _discard(self) -> None:
        """Releases the spool files (already unlinked: nothing of this writer stays on disk)."""
        self._open = False
        for spool in self._spools.values():
            spool.close()
        self._spools = {}

    def close(self) -> None:
        """Writes the HDF file under a temp name and moves it to its final name."""
        if not self._open and os.getpid() == self._pid:
            return
        self._check_usable()
        tmp = None
        try:
            tmp = temp_path_for(self.filename)
            _write_hdf(self, tmp)
            if os.path.exists(self.filename):
                print(f"SimpleHDFWriter: replacing existing {self.filename}", file=log.v3)
            commit_temp(tmp, self.filename)
            tmp = None
        finally:
            self._discard()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)

    def __enter__(self) -> SimpleHDFWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self._discard()  # a failed block leaves no file

    def __getstate__(self) -> Dict[str, Any]:
        raise TypeError(
            "SimpleHDFWriter cannot be pickled (sent to a spawned worker): create it where the data is written"
        )

    def __del__(self) -> None:
        # a writer that was never closed leaves nothing behind: its spool files are unlinked already
        try:
            if getattr(self, "_pid", None) == os.getpid():
                self._discard()
        except Exception:  # at interpreter exit, module globals may be gone already; the OS closes the files
            pass


def _write_hdf(writer: SimpleHDFWriter, path: str) -> None:
    """Writes the whole file once, through a guarded file object (see :class:`_GuardedFile`)."""
    guard = _GuardedFile(path)
    try:
        try:
            _write_layout(writer, guard)
        except Exception as exc:
            if guard.error is None:
                raise
            guard.raise_error(writer.filename, cause=exc)
        guard.raise_error(writer.filename)
    finally:
        guard.close()


def _string_dataset(parent: Any, name: str, values: Sequence[str]) -> None:
    """Short fixed-size byte strings as RETURNN's ``hdf5_strings`` writes them; variable-length UTF-8 otherwise."""
    h5py = _h5py()
    try:
        encoded = [v.encode("ascii") for v in values]
        parent.create_dataset(name, data=np.array(encoded, dtype=f"S{max(len(v) for v in encoded) or 1}"))
    except (UnicodeEncodeError, ValueError):
        parent.create_dataset(name, data=np.array(list(values), dtype=object), dtype=h5py.string_dtype())


def _write_layout(writer: SimpleHDFWriter, target: _GuardedFile) -> None:
    h5py = _h5py()
    num_seqs = len(writer._tags)
    inputs = writer._spools["inputs"]
    with h5py.File(target, "w") as f:
        f.attrs["numTimesteps"] = int(inputs.rows)
        f.attrs["inputPattSize"] = writer.dim or 1
        f.attrs["numDims"] = 1
        f.attrs["numLabels"] = writer.dim or 1
        f.attrs["numSeqs"] = num_seqs
        if writer.labels:
            _string_dataset(f, "labels", writer.labels)
        else:
            f.create_dataset("labels", (0,), dtype="S5")
        f.create_dataset("seqTags", data=np.array(writer._tags, dtype=object), dtype=h5py.string_dtype())
        keys = sorted(writer._extra)
        # one column per key; two at least, since readers count a dummy 'classes' target in files without targets
        lengths = np.zeros((num_seqs, max(2, 1 + len(keys))), dtype="int32")
        for column, key in enumerate(["inputs"] + keys):
            lengths[:, column] = writer._lengths[key]
        f.create_dataset("seqLengths", data=lengths)
        if inputs.dtype is None:  # no sequence at all: still a valid, empty file
            inputs.dtype, inputs.row_shape = np.dtype("float32"), (() if writer.ndim == 1 else (writer.dim or 1,))
        _copy_spool(f, "inputs", inputs)
        inputs.close()
        if keys:
            for group in ("targets/data", "targets/size", "targets/labels"):
                f.create_group(group)
        for key in keys:
            spool, (dim, ndim) = writer._spools[key], writer._extra[key]
            if spool.strings is not None:
                data = np.array(spool.strings, dtype=object)
                f["targets/data"].create_dataset(key, data=data, dtype=h5py.string_dtype())
            else:
                if spool.row_shape is None or None in spool.row_shape:  # declared, never filled
                    spool.row_shape = tuple(d or 1 for d in (spool.row_shape or ()))
                _copy_spool(f["targets/data"], key, spool)
            spool.close()
            if ndim >= 2 and dim is None and spool.row_shape:
                dim = spool.row_shape[-1]
            f["targets/size"].attrs[key] = np.array([dim or 1, ndim], dtype="int64")
            _string_dataset(f["targets/labels"], key, writer._extra_labels[key])


def _copy_spool(parent: Any, name: str, spool: _Spool) -> None:
    """A contiguous dataset filled block by block from the spool (memory stays bounded)."""
    dataset = parent.create_dataset(name, shape=(spool.rows,) + tuple(spool.row_shape), dtype=spool.dtype)
    for start, block in spool.blocks():
        dataset[start : start + block.shape[0]] = block


class _GuardedFile:
    """The file object h5py's ``fileobj`` driver writes the HDF file through; a failed write is kept, not raised.

    HDF5 2.0 crashes the process (segfault) when objects of a file whose write failed are freed or the file is closed
    twice (seen on a full disk). Behind this object HDF5 never sees the failure: from the first failed write on, what
    HDF5 writes is kept in memory (so that its reads stay consistent) until the writer, which checks :attr:`error`
    after the file is written, drops the file. Positioned reads and writes on the descriptor: no Python buffer whose
    flush could fail later, at a point HDF5 does not expect. The ``fileobj`` driver takes no file lock either.
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
