"""HDFDataset: reads RETURNN's HDF layout (see :mod:`.hdf_writer`) lazily, file by file, sequence by sequence.

Only the per-sequence offsets (a cumulative sum of ``seqLengths``) are kept in memory; data is read on demand,
so memory does not grow with the file size. Datasets stored contiguously and unfiltered (as our writer stores
them) are read with plain positioned reads at their byte offset: no HDF5 call per sequence, and loader threads
read in parallel (HDF5 itself serialises all calls). Chunked or compressed datasets (e.g. from Mini-RETURNN's
writer) are read through h5py. Files are opened per process (worker processes reopen them after a fork).

The pipeline reads planned batches with :meth:`HDFDataset.read_batch`: each sequence goes straight from the file into
its row of the padded batch tensor (pinned, where the batch goes to a GPU), with one read per sequence and key and
no array per sequence in between.

Label ids of sparse integer keys are checked against the number of classes the file declares (``targets/size``,
``inputPattSize``; see :attr:`.dataset.DataKey.num_classes`) as each sequence is loaded, on the loader's side: a
label beyond the model's output would otherwise train silently, or fail later on the device without naming the
sequence.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cache_manager import cached_path
from ..errors import ConfigError, DataError
from .collate import Batch, collated_dtype, padded_buffer, small_tensor
from .dataset import CorpusOffsets, DataKey, Dataset


def _decode(value: Any) -> str:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text.split("\0")[0]


class _HDFFile:
    """One file: its keys, offsets and (per process) open handle."""

    def __init__(self, path: str):
        import h5py

        self.path = path
        if not os.path.isfile(path):
            raise DataError(f"HDF file not found: {path!r}")
        try:
            with h5py.File(path, "r") as f:
                self._read_header(f)
        except DataError:
            raise
        except Exception as exc:  # not HDF, truncated, ...
            raise DataError(f"Cannot read HDF file {path!r} (not an HDF file, or truncated): {exc}") from None
        self._handle = None
        self._fd: Optional[int] = None
        self._datasets: Dict[str, Any] = {}
        self._pid: Optional[int] = None

    def _read_header(self, f: Any) -> None:
        if "seqLengths" not in f:
            raise DataError(f"HDF file {self.path!r} has no 'seqLengths': not in RETURNN's HDF layout")
        lengths = np.asarray(f["seqLengths"][...], dtype=np.int64)
        has_targets = "targets/data" in f
        size_attrs = f["targets/size"].attrs if "targets/size" in f else {}
        self.target_keys: List[str] = sorted(set(f["targets/data"].keys()) | set(size_attrs)) if has_targets else []
        self.has_inputs = "inputs" in f
        if lengths.ndim == 1:
            lengths = lengths[:, None]
        # files without targets still carry a (dummy) second column for 'classes'
        columns = (1 if self.has_inputs else 0) + (len(self.target_keys) if has_targets else 1)
        if lengths.shape[1] < columns - (0 if has_targets else 1):
            raise DataError(f"HDF file {self.path!r}: seqLengths has {lengths.shape[1]} columns, expected {columns}")
        self.num_seqs = lengths.shape[0]
        self.lengths = lengths
        self.starts = np.zeros_like(lengths)
        np.cumsum(lengths[:-1], axis=0, out=self.starts[1:])
        self.tags = [_decode(t) for t in f["seqTags"][...]] if "seqTags" in f else None
        self.keys: Dict[str, DataKey] = {}
        self.columns: Dict[str, int] = {}
        # key -> (byte offset, dtype, row shape, bytes per time frame)
        self.raw: Dict[str, Tuple[int, np.dtype, Tuple[int, ...], int]] = {}
        if self.has_inputs:
            inputs = f["inputs"]
            sparse = inputs.ndim == 1
            dim = int(f.attrs.get("inputPattSize", 1)) if sparse else int(inputs.shape[-1])
            self.keys["data"] = DataKey("data", dim, str(inputs.dtype), sparse, tuple(inputs.shape[1:]))
            self.columns["data"] = 0
            self._note_raw_layout("data", inputs)
        for i, key in enumerate(self.target_keys):
            if key not in f["targets/data"]:
                raise DataError(f"HDF file {self.path!r}: targets/size names {key!r} but targets/data lacks it")
            data = f["targets/data"][key]
            size = size_attrs.get(key)
            dim = int(np.asarray(size).flat[0]) if size is not None else (int(data.shape[-1]) if data.ndim > 1 else 1)
            self.keys[key] = DataKey(key, dim, str(data.dtype), data.ndim == 1, tuple(data.shape[1:]))
            self.columns[key] = (1 if self.has_inputs else 0) + i
            self._note_raw_layout(key, data)

    def _note_raw_layout(self, key: str, dataset: Any) -> None:
        """Remembers where a contiguous, unfiltered, fixed-size dataset lies in the file."""
        if dataset.chunks is not None or dataset.compression is not None or dataset.dtype.kind in "OSUV":
            return
        offset = dataset.id.get_offset()
        if offset is not None:
            row_shape = tuple(int(n) for n in dataset.shape[1:])
            row_bytes = dataset.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
            self.raw[key] = (int(offset), dataset.dtype, row_shape, row_bytes)

    def _reopen_after_fork(self) -> None:
        if self._pid != os.getpid():
            self._handle, self._fd, self._datasets, self._pid = None, None, {}, os.getpid()

    def dataset(self, key: str) -> Any:
        """The h5py dataset of a key (h5py objects are cached: looking them up costs more than small reads)."""
        self._reopen_after_fork()
        if key not in self._datasets:
            if self._handle is None:
                import h5py

                self._handle = h5py.File(self.path, "r", rdcc_nbytes=64 * 2**20, rdcc_nslots=100_003)
            self._datasets[key] = self._handle["inputs"] if key == "data" else self._handle["targets/data"][key]
        return self._datasets[key]

    def read(self, key: str, seq: int) -> np.ndarray:
        """The array of `key` of sequence `seq` (of this file)."""
        column = self.columns[key]
        start, length = int(self.starts[seq, column]), int(self.lengths[seq, column])
        try:
            if key in self.raw:
                offset, dtype, row_shape, row_bytes = self.raw[key]
                out = np.empty((length,) + row_shape, dtype=dtype)
                self._read_raw(out, offset + start * row_bytes)
                return out
            return self.dataset(key)[start : start + length]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"Cannot read sequence {seq} key {key!r} from {self.path!r}: {exc}") from None

    def read_into(self, key: str, seq: int, out: np.ndarray) -> None:
        """Reads `key` of sequence `seq` into `out` (C-contiguous, of the sequence's shape, any numeric dtype)."""
        raw = self.raw.get(key)
        try:
            if raw is not None and raw[1] == out.dtype:
                self._read_raw(out, raw[0] + int(self.starts[seq, self.columns[key]]) * raw[3])
            elif raw is not None:  # a dtype torch lacks (uint16, ...): read, then widen
                out[...] = self.read(key, seq)
            elif out.size:
                start = int(self.starts[seq, self.columns[key]])
                self.dataset(key).read_direct(out, np.s_[start : start + out.shape[0]])
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"Cannot read sequence {seq} key {key!r} from {self.path!r}: {exc}") from None

    def _read_raw(self, out: np.ndarray, byte_offset: int) -> None:
        if self._pid != os.getpid() or self._fd is None:
            self._reopen_after_fork()
            self._fd = os.open(self.path, os.O_RDONLY)
        if out.nbytes and os.preadv(self._fd, [memoryview(out).cast("B")], byte_offset) != out.nbytes:
            raise DataError(f"HDF file {self.path!r} ends early (truncated?)")

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_handle=None, _fd=None, _datasets={}, _pid=None)  # open files do not travel between processes
        return state


class HDFDataset(Dataset):
    """RETURNN's ``HDFDataset``: ``files`` (list), all sequences of all files, in file order."""

    has_cheap_lengths = True  # seqLengths is read with the header

    def __init__(
        self,
        *,
        files: Sequence[str],
        use_cache_manager: bool = True,
        data_keys: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(files, str) or not files:
            raise ConfigError(f"HDFDataset {self.name!r}: 'files' must be a non-empty list of paths, got {files!r}")
        self.files = [_HDFFile(cached_path(str(path), enabled=use_cache_manager)) for path in files]
        first = self.files[0]
        for other in self.files[1:]:
            if set(other.keys) != set(first.keys):
                raise DataError(
                    f"HDF files {first.path!r} and {other.path!r} have different data keys: "
                    f"{sorted(first.keys)} vs {sorted(other.keys)}"
                )
        self.data_keys = dict(first.keys)
        if data_keys is not None:
            missing = [k for k in data_keys if k not in self.data_keys]
            if missing:
                raise DataError(
                    f"HDF file {first.path!r} has no data key(s) {missing}; it has {sorted(self.data_keys)}"
                )
            self.data_keys = {k: self.data_keys[k] for k in data_keys}
        self._offsets = CorpusOffsets([f.num_seqs for f in self.files])
        self._label_keys = {key: info for key, info in self.data_keys.items() if info.num_classes is not None}

    def _locate(self, corpus_idx: int) -> Tuple[_HDFFile, int]:
        file_idx, seq = self._offsets.locate(corpus_idx)
        return self.files[file_idx], seq

    def corpus_size(self) -> int:
        return self._offsets.total

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        hdf, seq = self._locate(corpus_idx)
        return hdf.tags[seq] if hdf.tags is not None else f"seq-{corpus_idx}"

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        hdf, seq = self._locate(corpus_idx)
        return {key: int(hdf.lengths[seq, hdf.columns[key]]) for key in self.data_keys}

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        hdf, seq = self._locate(corpus_idx)
        loaded = {key: hdf.read(key, seq) for key in self.data_keys}
        for key, info in self._label_keys.items():
            value = info.bad_label(loaded[key])
            if value is not None:
                raise self._label_error(hdf, key, corpus_idx, value)
        return loaded

    def _label_error(self, hdf: _HDFFile, key: str, corpus_idx: int, value: int) -> DataError:
        """One line naming the file, key, sequence, the label and the size the file declares."""
        size = self.data_keys[key].num_classes
        declared = "inputPattSize" if key == "data" else f"targets/size attribute {key!r}"
        return DataError(
            f"HDF file {hdf.path!r}, data key {key!r}, sequence {self.corpus_seq_tag(corpus_idx)!r}: label {value} "
            f"is outside the {size} classes the file declares (0..{size - 1}, {declared}); fix the labels or the "
            "declared size"
        )

    def _check_batch_labels(self, key: str, rows: np.ndarray, lengths: List[int], corpus_indices: Sequence[int]):
        """Checks the labels of a batch read by :meth:`read_batch` with one look at the padded rows (the padding is
        0, a valid label); only where one is bad, the sequences one by one, to name it."""
        info = self.data_keys[key]
        if info.bad_label(rows) is None:
            return
        for b, corpus_idx in enumerate(corpus_indices):
            value = info.bad_label(rows[b, : lengths[b]])
            if value is not None:
                raise self._label_error(self._locate(corpus_idx)[0], key, corpus_idx, value)

    def read_batch(self, corpus_indices: Sequence[int], seq_indices: Sequence[int], *, pin_memory: bool) -> Batch:
        """The collated batch of these sequences (what :func:`.collate.collate_batch` gives for their
        ``get_corpus_seq``), read from the files straight into the padded tensors."""
        where = [self._locate(i) for i in corpus_indices]
        batch = Batch(dataset_name=self.name)
        for key, info in self.data_keys.items():
            lengths = [int(hdf.lengths[seq, hdf.columns[key]]) for hdf, seq in where]
            dtype = collated_dtype(np.dtype(info.dtype))
            buffer = padded_buffer([(n,) + info.shape for n in lengths], dtype, pin_memory=pin_memory)
            rows = buffer.numpy()
            for b, (hdf, seq) in enumerate(where):
                hdf.read_into(key, seq, rows[b, : lengths[b]])
            if key in self._label_keys:
                self._check_batch_labels(key, rows, lengths, corpus_indices)
            batch[key] = buffer
            batch[f"{key}:size1"] = small_tensor(lengths, pin_memory=pin_memory)
            for axis, dim in enumerate(info.shape):
                batch[f"{key}:size{axis + 2}"] = small_tensor([dim] * len(where), pin_memory=pin_memory)
            batch[f"{key}:size0"] = small_tensor(len(where), pin_memory=pin_memory)
        batch["seq_tag"] = [self.corpus_seq_tag(i) for i in corpus_indices]
        batch["seq_idx"] = list(seq_indices)
        return batch

    @property
    def reads_batches(self) -> bool:
        """Whether :meth:`read_batch` gives what collating ``get_corpus_seq`` gives: the data keys are numeric and of
        fixed frame shape, and no subclass changes what a sequence holds."""
        cls = type(self)
        unchanged = (
            cls.load_corpus_seq is HDFDataset.load_corpus_seq
            and cls.corpus_seq_tag is HDFDataset.corpus_seq_tag
            and cls.get_corpus_seq is Dataset.get_corpus_seq
        )
        return unchanged and all(
            np.dtype(info.dtype).kind in "biuf" and None not in info.shape for info in self.data_keys.values()
        )
