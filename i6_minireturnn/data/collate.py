"""Collates sequences into padded tensors with RETURNN's ``<key>:size<i>`` length entries."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

# torch has no unsigned types beyond uint8: widen them so values keep their meaning
_WIDEN = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64, np.dtype("uint64"): np.int64}


def _as_tensor(value: np.ndarray) -> torch.Tensor:
    value = np.asarray(value)
    if value.dtype in _WIDEN:
        value = value.astype(_WIDEN[value.dtype])
    return torch.from_numpy(np.ascontiguousarray(value))


def collate_batch(seqs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pads each data key over the batch (zeros) and adds ``key:size0`` (batch size) and ``key:size<i>`` lengths.

    Non-array entries (``seq_tag``, ``seq_idx``) become plain lists.
    """
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    batch: Dict[str, Any] = {}
    for key in seqs[0]:
        values = [seq[key] for seq in seqs]
        if not isinstance(values[0], np.ndarray) or values[0].dtype.kind in "UOS":
            batch[key] = list(values)
            continue
        tensors = [_as_tensor(v) for v in values]
        ndim = tensors[0].dim()
        if ndim == 0:
            batch[key] = torch.stack(tensors)
        else:
            shape = [max(t.shape[i] for t in tensors) for i in range(ndim)]
            padded = torch.zeros([len(tensors)] + shape, dtype=tensors[0].dtype)
            for b, t in enumerate(tensors):
                padded[(b,) + tuple(slice(0, n) for n in t.shape)] = t
            batch[key] = padded
            for axis in range(ndim):
                batch[f"{key}:size{axis + 1}"] = torch.tensor([t.shape[axis] for t in tensors], dtype=torch.int64)
        batch[f"{key}:size0"] = torch.tensor(len(tensors), dtype=torch.int64)
    return batch
