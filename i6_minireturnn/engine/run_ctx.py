"""The run context handed to step functions and hooks (``run_ctx``), also reachable via :func:`get_run_ctx`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Union

import torch

from ..errors import TrainingError

if TYPE_CHECKING:
    from .engine import Engine

_current: Optional[RunCtx] = None


@dataclass
class Loss:
    """One loss marked in a step: the raw value, its scale for the total loss and its normalisation."""

    loss: torch.Tensor
    name: str
    scale: float = 1.0
    inv_norm_factor: Optional[Union[torch.Tensor, int, float]] = None


class RunCtx:
    """Where we are: ``stage`` is ``"load"`` (get_model), ``"train_step"`` (train and eval) or ``"forward_step"``.

    Hooks may attach their own attributes (writers, buffers): they live as long as the context.
    ``engine`` and ``epoch`` may be left out (None), as export and test scripts written for early Mini-RETURNN do
    with ``RunCtx(stage="forward_step", device="cpu")``.
    """

    def __init__(
        self,
        *,
        stage: str,
        device: str,
        engine: Optional[Engine] = None,
        epoch: Optional[int] = None,
        global_step: int = 0,
    ):
        self._stage = stage
        self._device = device
        self._engine = engine
        self._epoch = epoch
        self._global_step = global_step
        self.losses: Dict[str, Loss] = {}

    @property
    def stage(self) -> str:
        """``load``, ``train_step`` or ``forward_step``."""
        return self._stage

    @property
    def device(self) -> str:
        """The torch device name of the run."""
        return self._device

    @property
    def engine(self) -> Optional[Engine]:
        """The engine running the step."""
        return self._engine

    @property
    def epoch(self) -> Optional[int]:
        """The epoch being trained, evaluated or forwarded (None for a context built outside the engine without one)."""
        return self._epoch

    @property
    def global_step(self) -> int:
        """Number of training steps done before this one."""
        return self._global_step

    @property
    def step(self) -> int:
        """Alias of :attr:`global_step` (a name some model files use)."""
        return self._global_step

    def init_step(self, global_step: int) -> None:
        """Starts a new step: forgets the previous step's losses."""
        self.losses = {}
        self._global_step = global_step

    def mark_as_loss(
        self,
        loss: torch.Tensor,
        name: str,
        *,
        scale: float = 1.0,
        inv_norm_factor: Optional[Union[torch.Tensor, int, float]] = None,
    ) -> None:
        """Registers a scalar loss; the total loss is sum(scale * loss / inv_norm_factor)."""
        if self._stage != "train_step":
            raise TrainingError(f"mark_as_loss({name!r}) called outside a train or eval step (stage {self._stage!r})")
        if not isinstance(loss, torch.Tensor):
            raise TrainingError(f"Loss {name!r} must be a torch.Tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise TrainingError(
                f"Loss {name!r} must be a scalar, got shape {tuple(loss.shape)} (reduce it, e.g. with .sum())"
            )
        if name in self.losses:
            raise TrainingError(f"Loss {name!r} was marked twice in one step")
        if isinstance(inv_norm_factor, torch.Tensor) and inv_norm_factor.dim() != 0:
            raise TrainingError(
                f"inv_norm_factor of loss {name!r} must be a scalar, got shape {tuple(inv_norm_factor.shape)}"
            )
        self.losses[name] = Loss(loss=loss, name=name, scale=scale, inv_norm_factor=inv_norm_factor)

    def total_loss(self) -> torch.Tensor:
        """The loss to back-propagate: sum over losses of scale * loss / inv_norm_factor."""
        if self._stage != "train_step":
            raise TrainingError(f"total_loss() called outside a train or eval step (stage {self._stage!r})")
        if not self.losses:
            raise TrainingError("The step function marked no loss: call run_ctx.mark_as_loss(loss, name) in train_step")
        total = None
        for loss in self.losses.values():
            if loss.scale == 0.0:
                continue
            value = loss.loss if loss.scale == 1.0 else loss.loss * loss.scale  # no kernel for the usual scale
            if loss.inv_norm_factor is not None:
                value = value / loss.inv_norm_factor
            total = value if total is None else total + value
        if total is None:  # every loss has scale 0: a zero that still belongs to the graph
            total = sum(loss.loss * 0.0 for loss in self.losses.values())
        return total


def with_unknown_kwarg() -> Dict[str, None]:
    """An extra keyword argument for calls of the config's step functions and hooks: they must take ``**kwargs`` so
    that new arguments can be added later (Mini-RETURNN's rule)."""
    return {f"__fwd_compatible_random_arg_{random.randint(0, 99)}": None}


def set_run_ctx(ctx: Optional[RunCtx]) -> Optional[RunCtx]:
    """Makes `ctx` the current context (None: no context)."""
    global _current
    _current = ctx
    return ctx


def init_load_run_ctx(device: str, engine: Optional[Engine], epoch: int, global_step: int = 0) -> RunCtx:
    """The context while ``get_model`` runs."""
    return set_run_ctx(RunCtx(stage="load", device=device, engine=engine, epoch=epoch, global_step=global_step))


def init_train_step_run_ctx(device: str, engine: Optional[Engine], epoch: int, global_step: int = 0) -> RunCtx:
    """The context for train and eval steps of one epoch."""
    return set_run_ctx(RunCtx(stage="train_step", device=device, engine=engine, epoch=epoch, global_step=global_step))


def init_forward_step_run_ctx(device: str, engine: Optional[Engine], epoch: int, global_step: int = 0) -> RunCtx:
    """The context for forward steps and hooks."""
    return set_run_ctx(RunCtx(stage="forward_step", device=device, engine=engine, epoch=epoch, global_step=global_step))


def reset_run_ctx() -> None:
    """Leaves the current context."""
    set_run_ctx(None)


def get_run_ctx() -> RunCtx:
    """The current run context (inside get_model, step functions, model.forward and hooks)."""
    if _current is None:
        raise RuntimeError("No run context: get_run_ctx() works only while the engine runs a model or step")
    return _current
