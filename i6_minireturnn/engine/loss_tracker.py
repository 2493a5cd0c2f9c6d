"""Accumulates step losses on the device; values reach the host only at log points (no per-step sync)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Tuple

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
    """Sums of each loss and of its ``inv_norm_factor`` (1 per step where none) over an epoch or dataset."""

    def __init__(self, device: str, *, keep_step_values: bool = False, skip_nonfinite: bool = False):
        self.device = torch.device(device)
        self.loss_sums: Dict[str, torch.Tensor] = {}
        self.norm_sums: Dict[str, torch.Tensor] = {}
        self.num_steps = 0
        self.keep_step_values = keep_step_values
        self.skip_nonfinite = skip_nonfinite
        self.num_nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first_nonfinite_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._step_counter = torch.zeros((), dtype=torch.int64, device=self.device)
        self._constants: Dict[float, torch.Tensor] = {}  # norm factors given as numbers, made on the device once
        self.pending_steps: List[Tuple[int, float, Dict[str, torch.Tensor]]] = []

    def add(self, losses: Dict[str, Loss], total_loss: torch.Tensor, *, global_step: int, step_time: float) -> None:
        """Adds one step's losses (device ops only)."""
        total = total_loss.detach()
        finite = torch.isfinite(total)
        bad = ~finite
        self.first_nonfinite_step = torch.where(
            bad & (self.first_nonfinite_step < 0), self._step_counter, self.first_nonfinite_step
        )
        self.num_nonfinite = self.num_nonfinite + bad.to(torch.int64)
        self._step_counter = self._step_counter + 1
        step_values = {}
        for name, loss in losses.items():
            value = loss.loss.detach().to(torch.float64)
            norm = loss.inv_norm_factor
            if isinstance(norm, torch.Tensor):
                norm = norm.detach().to(self.device, torch.float64)
            else:  # a number (1 where none): a cached device constant, no copy or fill kernel per step
                norm = self._constant(float(1 if norm is None else norm))
            value = value.to(self.device)
            if self.skip_nonfinite:
                value = torch.where(finite, value, torch.zeros_like(value))
                norm = torch.where(finite, norm, torch.zeros_like(norm))
            self.loss_sums[name] = self.loss_sums[name] + value if name in self.loss_sums else value
            self.norm_sums[name] = self.norm_sums[name] + norm if name in self.norm_sums else norm
            if self.keep_step_values:
                step_values[name] = value / norm
        if self.keep_step_values:
            self.pending_steps.append((global_step, step_time, step_values))
        self.num_steps += 1

    def _constant(self, value: float) -> torch.Tensor:
        if value not in self._constants:
            self._constants[value] = torch.full((), value, dtype=torch.float64, device=self.device)
        return self._constants[value]

    def totals(self, ranks: Optional[RankGroup] = None) -> Totals:
        """Means and non-finite steps in one host sync; with `ranks` (several processes) over all ranks' steps: the
        sums are added up (a loss that some rank never saw counts zero there), the first non-finite step is the
        earliest on any rank."""
        names = sorted(self.loss_sums) if ranks is None else ranks.union_of(sorted(self.loss_sums))
        zero = self._constant(0.0)
        sums = [self.loss_sums.get(n, zero) for n in names] + [self.norm_sums.get(n, zero) for n in names]
        vector = torch.stack(sums + [self.num_nonfinite.to(torch.float64)])
        first = torch.where(
            self.first_nonfinite_step < 0,
            torch.full_like(self.first_nonfinite_step, _NONE_STEP),
            self.first_nonfinite_step,
        )
        if ranks is not None:
            vector, first = ranks.all_reduce(vector, "sum"), ranks.all_reduce(first, "min")
        values = vector.tolist()
        first_step = int(first)
        sums = {name: (values[i], values[len(names) + i]) for i, name in enumerate(names)}
        means = {name: loss / norm for name, (loss, norm) in sums.items()}
        return Totals(means, int(values[-1]), first_step if first_step != _NONE_STEP else None, sums)

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
