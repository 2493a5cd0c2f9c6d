"""Accumulates step losses on the device; values reach the host only at log points (no per-step sync).

It also keeps the sequence tags of the batches since the last log point (host references, no device work), so that
a non-finite loss found at a log point names the batch that produced it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from .run_ctx import Loss


class RankGroup(Protocol):
    """The processes whose totals are added up (:class:`.distributed.Distributed`)."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor: ...

    def union_of(self, names: List[str]) -> List[str]: ...


_NONE_STEP = 2**62  # "no non-finite step", as a number that loses every min


@dataclass
class Totals:
    """What a log point reads from the device: mean per loss and the non-finite steps; `sums` holds each loss's
    (sum, normalization sum), from which the mean of the steps between two log points follows."""

    means: Dict[str, float]
    num_nonfinite: int
    first_nonfinite: Optional[int]
    sums: Dict[str, Tuple[float, float]] = field(default_factory=dict)


class LossTracker:
    """Sums of each loss and of its ``inv_norm_factor`` (1 per step where none) over an epoch or dataset.

    Per step it launches as few kernels as it can, since they count in steps of a few milliseconds: the step's total
    loss is copied into a buffer (non-finite steps are found there at log points), each loss is added into a
    float64 sum in place, and norm factors given as numbers are summed on the host. With `skip_nonfinite` (the
    updater leaves such steps out) a non-finite step's losses are masked out of the sums.
    """

    def __init__(self, device: str, *, keep_step_values: bool = False, skip_nonfinite: bool = False):
        self.device = torch.device(device)
        self.loss_sums: Dict[str, torch.Tensor] = {}
        self.norm_sums: Dict[str, torch.Tensor] = {}  # of norm factors given as tensors
        self.host_norm_sums: Dict[str, float] = {}  # of norm factors given as numbers (or none: 1 per step)
        self.num_steps = 0
        self.keep_step_values = keep_step_values
        self.skip_nonfinite = skip_nonfinite
        self._step_totals = torch.empty(256, dtype=torch.float32, device=self.device)
        self._zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._no_step = torch.tensor(_NONE_STEP, device=self.device)  # made once: a host-to-device copy
        self.pending_steps: List[Tuple[int, float, Dict[str, torch.Tensor]]] = []
        # the batches' tags of the pass steps from `_tags_from` on (None: a batch without tags)
        self._tags_from = 0
        self._tags: List[Optional[Sequence[str]]] = []

    def add(
        self,
        losses: Dict[str, Loss],
        total_loss: torch.Tensor,
        *,
        global_step: int,
        step_time: float,
        seq_tags: Optional[Sequence[str]] = None,
    ) -> None:
        """Adds one step's losses (device ops only) and keeps a reference to its batch's `seq_tags` until the next
        :meth:`release_tags`."""
        total = total_loss.detach()
        if self.num_steps == len(self._step_totals):
            self._step_totals = torch.cat([self._step_totals, torch.empty_like(self._step_totals)])
        self._step_totals[self.num_steps].copy_(total)
        finite = torch.isfinite(total) if self.skip_nonfinite else None
        step_values = {}
        for name, loss in losses.items():
            value = loss.loss.detach()
            norm = loss.inv_norm_factor
            if finite is not None:
                value = torch.where(finite, value, torch.zeros_like(value))
            self._add(self.loss_sums, name, value)
            if isinstance(norm, torch.Tensor):
                norm = norm.detach()
                if finite is not None:
                    norm = torch.where(finite, norm, torch.zeros_like(norm))
                self._add(self.norm_sums, name, norm)
            else:
                norm = float(1 if norm is None else norm)
                if finite is not None:  # a sync, but this mode syncs every step anyway (updater)
                    norm = norm if bool(finite) else 0.0
                self.host_norm_sums[name] = self.host_norm_sums.get(name, 0.0) + norm
            if self.keep_step_values:
                step_values[name] = value.to(torch.float64) / norm
        if self.keep_step_values:
            self.pending_steps.append((global_step, step_time, step_values))
        self._tags.append(seq_tags)
        self.num_steps += 1

    def _add(self, sums: Dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
        if name not in sums:
            sums[name] = torch.zeros((), dtype=torch.float64, device=self.device)
        sums[name].add_(value.to(self.device, non_blocking=True))  # float64 += float32/bf16: one kernel

    def totals(self, ranks: Optional[RankGroup] = None) -> Totals:
        """Means and non-finite steps in one host sync; with `ranks` (several processes) over all ranks' steps: the
        sums are added up (a loss that some rank never saw counts zero there), the first non-finite step is the
        earliest on any rank."""
        own = sorted(set(self.loss_sums) | set(self.host_norm_sums))
        names = own if ranks is None else ranks.union_of(own)
        zero = self._zero
        bad = ~torch.isfinite(self._step_totals[: self.num_steps])
        first = torch.where(bad.any(), bad.to(torch.int8).argmax().to(torch.int64), self._no_step)
        parts = [bad.sum().to(torch.float64)]
        parts += [self.loss_sums.get(n, zero) for n in names] + [self.norm_sums.get(n, zero) for n in names]
        vector = torch.stack(parts)  # one vector: reading it (and adding it up over ranks) is one operation
        host_norms = [self.host_norm_sums.get(n, 0.0) for n in names]
        if ranks is not None:  # the host's sums take part in the reduction too
            vector = torch.cat([vector, torch.tensor(host_norms, dtype=torch.float64).to(self.device)])
            vector, first = ranks.all_reduce(vector, "sum"), ranks.all_reduce(first, "min")
        num_nonfinite, *values = vector.tolist()
        if ranks is not None:
            values, host_norms = values[: 2 * len(names)], values[2 * len(names) :]
        first_step = int(first)
        count = len(names)
        sums = {name: (values[i], values[count + i] + host_norms[i]) for i, name in enumerate(names)}
        means = {name: loss / norm for name, (loss, norm) in sums.items()}
        return Totals(means, int(num_nonfinite), first_step if first_step != _NONE_STEP else None, sums)

    def release_tags(self) -> None:
        """Lets the kept tags go (at a log point: the steps before it were checked, or need no naming)."""
        self._tags_from, self._tags = self.num_steps, []

    def nonfinite_batch_tags(self, step: int) -> Optional[Sequence[str]]:
        """The tags of pass step `step`'s batch where they are kept and this process' total loss of that step is
        non-finite (with several ranks, another rank's may have been); one host read, for an error message."""
        tags = self._tags[step - self._tags_from] if 0 <= step - self._tags_from < len(self._tags) else None
        if tags is None or bool(torch.isfinite(self._step_totals[step])):
            return None
        return tags

    def pop_nonfinite_batches(self) -> List[Tuple[int, Optional[Sequence[str]]]]:
        """(pass step, its batch's tags) of the steps since the last release whose total loss is non-finite, in one
        host read; then releases the tags. For the warnings about skipped steps (that mode syncs every step anyway)."""
        first, tags = self._tags_from, self._tags
        self.release_tags()
        if not tags:
            return []
        finite = torch.isfinite(self._step_totals[first : first + len(tags)]).tolist()
        return [(first + i, tags[i]) for i, ok in enumerate(finite) if not ok]

    def pop_step_lines(self) -> List[Tuple[int, float, Dict[str, float]]]:
        """The buffered per-step values, read in one sync: [(global_step, step_time, {name: value})]."""
        steps, self.pending_steps = self.pending_steps, []
        if not steps:
            return []
        names = [sorted(v) for _, _, v in steps]
        flat = [v[n] for (_, _, v), ns in zip(steps, names) for n in ns]
        values = torch.stack(flat).tolist() if flat else []
        lines, pos = [], 0
        for (step, step_time, _), ns in zip(steps, names):
            lines.append((step, step_time, dict(zip(ns, values[pos : pos + len(ns)]))))
            pos += len(ns)
        return lines


class Stopwatch:
    """Wall time since start, and whether an interval has passed since the last `due` that returned True."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self._last = self.start

    def elapsed(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.start

    def due(self, interval: float) -> bool:
        """True once per `interval` seconds."""
        now = time.monotonic()
        if now - self._last >= interval:
            self._last = now
            return True
        return False
