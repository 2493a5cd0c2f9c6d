"""Writes RETURNN's HDF layout; ``SimpleHDFWriter`` keeps Mini-RETURNN's signature (forward hooks use it).

Layout: ``inputs`` [total_time, dim] (or [total_time] sparse), ``seqLengths`` [num_seqs, 1 + num_targets]
(column 0: inputs; column 1 + i: the i-th target key in sorted order), ``seqTags``, ``labels``, and per target key
``targets/data/<key>``, ``targets/size`` attribute ``<key>`` = [dim, ndim] and ``targets/labels/<key>``.
Root attributes ``inputPattSize``, ``numLabels``, ``numSeqs``, ``numTimesteps``, ``numDims``.

The file is written to a temp name in the target folder and renamed on :func:`SimpleHDFWriter.close`, so an
unfinished writer leaves no file under the final name. On close, the growable (chunked) data arrays are
rewritten contiguously, which readers can load with plain positioned reads (see :mod:`.hdf`).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic_file import commit_temp, temp_path_for
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
        self._tmp = temp_path_for(filename)
        self._file = h5py.File(self._tmp, "w")
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
        self._inputs = None
        self._extra: Dict[str, object] = {}
        self._extra_steps: Dict[str, int] = {}
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

    def close(self) -> None:
        """Finishes the file and moves it to its final name."""
        if self._file is None:
            return
        if self._inputs is None:  # no sequence at all: still a valid, empty file
            self._file.create_dataset("inputs", shape=(0,) if self.ndim == 1 else (0, self.dim or 1), dtype="float32")
        self._file.close()
        self._file = None
        compact = temp_path_for(self.filename)
        try:
            write_contiguous_copy(self._tmp, compact)
        except BaseException:
            os.remove(compact)
            raise
        os.remove(self._tmp)
        self._tmp = compact
        if os.path.exists(self.filename):
            print(f"SimpleHDFWriter: replacing existing {self.filename}", file=log.v3)
        commit_temp(self._tmp, self.filename)
        self._tmp = None

    def __del__(self) -> None:
        # a writer that was never closed leaves nothing behind: neither the final file nor its temp file
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        tmp = getattr(self, "_tmp", None)
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def write_contiguous_copy(source: str, target: str, block_bytes: int = 64 * 2**20) -> None:
    """Copies an HDF file; numeric datasets become contiguous (copied in blocks: memory stays bounded)."""
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
