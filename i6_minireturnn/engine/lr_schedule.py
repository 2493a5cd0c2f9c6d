"""Per-step learning rates: RETURNN's ``dynamic_learning_rate`` and the step schedules i6 setups declare in the config.

Learning-rate control (``learning_rate``, ``learning_rates``, newbob) decides the rate of each epoch; a step schedule
turns that epoch rate into the rate of each training step:

- ``dynamic_learning_rate(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs)``, a config
  function, returns the step's rate as PyTorch RETURNN calls it: `learning_rate` is the epoch's rate and the
  returned value replaces it (such functions usually return ``learning_rate * factor``).
- Declarative keys, under the names the i6 schedule functions read them (RETURNN itself has no built-in step
  schedule; i6 configs set ``dynamic_learning_rate`` to such a function plus these keys). Each gives a factor
  by which the epoch's rate is multiplied, exactly as the i6 function that reads the same keys does:

  * ``learning_rate_piecewise_steps`` / ``learning_rate_piecewise_values`` (optionally
    ``learning_rate_piecewise_by_epoch_continuous``): piecewise linear, e.g. one-cycle ("lrlin" OCLR);
  * ``learning_rate_warmup_steps``: linear warm-up, then ``learning_rate_invsqrt_norm`` (inverse square-root decay)
    or ``learning_rate_cosine_decay_steps`` / ``learning_rate_cosine_decay_min_factor`` (cosine decay; these two
    names are this runtime's own) or, with neither, the epoch's rate.

With ``dynamic_learning_rate`` set, that function alone decides; the declarative keys are then only data it may read
(the i6 functions read them through ``get_global_config()``), so they are not applied a second time.

A step's rate depends only on the global step, the epoch, the share of the epoch done and the epoch's rate; a
resumed run restores all of them (the global step is stored in the checkpoint, the epoch's rate in the
learning_rates file), so it uses the same rates as an uninterrupted run.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config

PIECEWISE_KEYS = ("learning_rate_piecewise_steps", "learning_rate_piecewise_values")
WARMUP_DECAY_KEYS = (
    "learning_rate_warmup_steps",
    "learning_rate_invsqrt_norm",
    "learning_rate_cosine_decay_steps",
    "learning_rate_cosine_decay_min_factor",
)


def epoch_continuous(epoch: int, step_idx: int, steps_in_epoch: Optional[int]) -> Optional[float]:
    """The epochs done before step `step_idx` (0-based) of `epoch`: ``epoch - 1`` at its first step, reaching
    ``epoch`` at its end; None where the number of steps of the epoch is not known up front (a streamed epoch).

    RETURNN counts the share of sequences done; counting steps of the epoch's batch plan gives the same value on a
    resumed run."""
    if not steps_in_epoch:
        return None
    return epoch - 1 + step_idx / steps_in_epoch


class StepSchedule:
    """The learning rate of each training step, given the epoch's rate."""

    description = "a step schedule"

    def rate(
        self, *, global_train_step: int, epoch: int, epoch_continuous: Optional[float], learning_rate: float
    ) -> float:
        """The rate of the step after `global_train_step` steps were done (0 at the first step of the run)."""
        raise NotImplementedError


class DynamicLearningRate(StepSchedule):
    """The config function ``dynamic_learning_rate``, called as PyTorch RETURNN calls it, with its result checked."""

    def __init__(self, func: Any, *, where: str):
        self.where = where
        if isinstance(func, dict):
            raise ConfigError(
                f"dynamic_learning_rate = {func!r} in {where}: the dict form (TensorFlow RETURNN's cyclic schedule) is "
                "not supported; write a function "
                "dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs) returning the rate"
            )
        if not callable(func):
            raise ConfigError(
                f"dynamic_learning_rate must be a function, got {func!r} ({type(func).__name__}) in {where}"
            )
        self.func = func
        self.name = getattr(func, "__qualname__", None) or repr(func)
        self.description = f"dynamic_learning_rate ({self.name})"
        try:
            params = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):  # a builtin or C function: nothing to check
            return
        if "network" in {p.name for p in params}:
            raise ConfigError(
                f"dynamic_learning_rate {self.name} in {where} takes 'network', TensorFlow RETURNN's argument; "
                "PyTorch RETURNN calls it with global_train_step, epoch, epoch_continuous and learning_rate"
            )
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            raise ConfigError(
                f"dynamic_learning_rate {self.name} in {where} must take **kwargs (RETURNN passes further keyword "
                "arguments: global_train_step, epoch, epoch_continuous, learning_rate, ...)"
            )

    def rate(
        self, *, global_train_step: int, epoch: int, epoch_continuous: Optional[float], learning_rate: float
    ) -> float:
        value = self.func(
            global_train_step=global_train_step,
            epoch=epoch,
            epoch_continuous=epoch_continuous,
            learning_rate=learning_rate,
        )
        return self._checked(value, global_train_step, epoch)

    def _checked(self, value: Any, global_train_step: int, epoch: int) -> float:
        """`value` as a float; a ConfigError naming the function and the step for anything but a number >= 0."""
        rate: Optional[float] = None
        if not isinstance(value, (bool, str, bytes)):
            try:
                rate = float(value)  # also numpy scalars and one-element tensors
            except (TypeError, ValueError, RuntimeError):
                rate = None
        if rate is None or not math.isfinite(rate) or rate < 0:
            raise ConfigError(
                f"dynamic_learning_rate {self.name} (in {self.where}) returned {value!r} ({type(value).__name__}) "
                f"at global train step {global_train_step}, epoch {epoch}; it must return the learning rate as a "
                "finite number >= 0"
            )
        return rate


class PiecewiseLinear(StepSchedule):
    """The epoch's rate times a factor that is linear between given points and constant outside them.

    As i6's ``dyn_lr_piecewise_linear``: the points are step 0 and ``learning_rate_piecewise_steps``, the factors
    ``learning_rate_piecewise_values`` (one more than steps); the step after `global_train_step` steps is evaluated at
    ``global_train_step + 1``, or at ``epoch_continuous`` with ``learning_rate_piecewise_by_epoch_continuous``
    (then the steps are epochs, e.g. ``[0.5, 20, 25]``)."""

    def __init__(self, steps: Sequence[float], values: Sequence[float], *, by_epoch_continuous: bool = False):
        self.points = [0.0] + [float(s) for s in steps]
        self.values = [float(v) for v in values]
        self.by_epoch_continuous = by_epoch_continuous
        import numpy  # only here: config validation builds schedules too and is kept free of numpy

        self._interp = numpy.interp
        unit = "epochs" if by_epoch_continuous else "steps"
        self.description = f"piecewise linear over {unit} {self.points[1:]} with factors {self.values}"

    def factor(self, x: float) -> float:
        """The factor at `x` (numpy's interpolation, as RETURNN's ``PiecewiseLinear``)."""
        return float(self._interp(x, self.points, self.values))

    def rate(
        self, *, global_train_step: int, epoch: int, epoch_continuous: Optional[float], learning_rate: float
    ) -> float:
        if not self.by_epoch_continuous:
            return self.factor(global_train_step + 1) * learning_rate
        if epoch_continuous is None:
            raise ConfigError(
                "learning_rate_piecewise_by_epoch_continuous needs the number of steps of each epoch up front, "
                f"which epoch {epoch} does not have (its dataset gives no sequence lengths); use "
                "learning_rate_piecewise_steps in steps instead"
            )
        return self.factor(epoch_continuous) * learning_rate


class WarmupDecay(StepSchedule):
    """The epoch's rate times a linear warm-up factor, then an inverse square-root or cosine decay (or 1).

    Counting ``i = global_train_step + 1`` as i6's ``dyn_lr_lin_warmup_invsqrt_decay`` does: ``i / warmup`` while
    ``i <= warmup``; then ``(1 + (i - warmup) / invsqrt_norm) ** -0.5``, or the cosine from 1 down to `min_factor`
    over ``cosine_steps`` steps after the warm-up (`min_factor` after them)."""

    def __init__(
        self,
        *,
        warmup_steps: int = 0,
        invsqrt_norm: Optional[float] = None,
        cosine_steps: Optional[int] = None,
        min_factor: float = 0.0,
    ):
        self.warmup_steps = warmup_steps
        self.invsqrt_norm = invsqrt_norm
        self.cosine_steps = cosine_steps
        self.min_factor = min_factor
        parts: List[str] = [f"linear warm-up over {warmup_steps} steps"] if warmup_steps else []
        if invsqrt_norm is not None:
            parts.append(f"inverse square-root decay (norm {invsqrt_norm:g})")
        if cosine_steps is not None:
            parts.append(f"cosine decay over {cosine_steps} steps to {min_factor:g} of the epoch's rate")
        self.description = ", then ".join(parts)

    def factor(self, global_train_step: int) -> float:
        """The factor of the step after `global_train_step` steps."""
        i = global_train_step + 1
        if i <= self.warmup_steps:
            return i / self.warmup_steps
        after = i - self.warmup_steps
        if self.invsqrt_norm is not None:
            return (1.0 + after / self.invsqrt_norm) ** -0.5
        if self.cosine_steps is not None:
            progress = min(after, self.cosine_steps) / self.cosine_steps
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def rate(
        self, *, global_train_step: int, epoch: int, epoch_continuous: Optional[float], learning_rate: float
    ) -> float:
        return self.factor(global_train_step) * learning_rate


def step_schedule_from_config(config: Config) -> Optional[StepSchedule]:
    """The step schedule the config asks for; None: every step uses the epoch's rate.

    Checks the keys together (the types of each are checked up front by config validation): a bad combination or
    value is a ConfigError naming the keys and the config file."""
    where = config.where()
    func = config.typed_value("dynamic_learning_rate")
    if func is not None:
        return DynamicLearningRate(func, where=where)
    piecewise = [key for key in PIECEWISE_KEYS if config.has(key)]
    warmup_decay = [key for key in WARMUP_DECAY_KEYS if config.has(key)]
    if piecewise and warmup_decay:
        raise ConfigError(
            f"{', '.join(piecewise)} and {', '.join(warmup_decay)} are both set in {where}: they are two schedules; "
            "set one (a warm-up is a first piece of learning_rate_piecewise_steps)"
        )
    if piecewise:
        return _piecewise_from_config(config, where)
    if warmup_decay:
        return _warmup_decay_from_config(config, where)
    if config.bool("learning_rate_piecewise_by_epoch_continuous"):
        raise ConfigError(f"learning_rate_piecewise_by_epoch_continuous is set in {where} without {PIECEWISE_KEYS[0]}")
    return None


def _piecewise_from_config(config: Config, where: str) -> PiecewiseLinear:
    steps_key, values_key = PIECEWISE_KEYS
    if not config.has(steps_key) or not config.has(values_key):
        missing = values_key if config.has(steps_key) else steps_key
        raise ConfigError(f"{steps_key} and {values_key} go together; {missing} is missing in {where}")
    steps = config.float_list(steps_key)
    values = config.float_list(values_key)
    if len(values) != len(steps) + 1:
        raise ConfigError(
            f"{values_key} must have one entry more than {steps_key} (the first value is the factor at step 0, one "
            f"per step point after it), got {len(values)} values for {len(steps)} steps in {where}: "
            f"{steps_key} = {steps}, {values_key} = {values}"
        )
    previous = 0.0
    for step in steps:
        if not math.isfinite(step) or step <= previous:
            raise ConfigError(
                f"{steps_key} must increase strictly from above 0 (step 0 is implicit), got {steps} in {where}"
            )
        previous = step
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"{values_key} must be finite numbers >= 0, got {values} in {where}")
    by_epoch = config.bool("learning_rate_piecewise_by_epoch_continuous")
    return PiecewiseLinear(steps, values, by_epoch_continuous=by_epoch)


def _warmup_decay_from_config(config: Config, where: str) -> WarmupDecay:
    warmup = config.int("learning_rate_warmup_steps")
    norm = config.float("learning_rate_invsqrt_norm")
    cosine_steps = config.int("learning_rate_cosine_decay_steps")
    min_factor = config.float("learning_rate_cosine_decay_min_factor")
    _require(warmup >= 0, "learning_rate_warmup_steps", warmup, "an integer >= 0", where)
    _require(norm is None or norm > 0, "learning_rate_invsqrt_norm", norm, "a number > 0", where)
    _require(
        cosine_steps is None or cosine_steps > 0,
        "learning_rate_cosine_decay_steps",
        cosine_steps,
        "an integer > 0",
        where,
    )
    _require(
        min_factor is None or 0 <= min_factor <= 1,
        "learning_rate_cosine_decay_min_factor",
        min_factor,
        "a number from 0 to 1",
        where,
    )
    if norm is not None and cosine_steps is not None:
        raise ConfigError(
            f"learning_rate_invsqrt_norm and learning_rate_cosine_decay_steps are both set in {where}: "
            "choose one decay after the warm-up"
        )
    if min_factor is not None and cosine_steps is None:
        raise ConfigError(
            f"learning_rate_cosine_decay_min_factor is set without learning_rate_cosine_decay_steps in {where}"
        )
    if not warmup and norm is None and cosine_steps is None:
        raise ConfigError(
            f"learning_rate_warmup_steps = 0 in {where} with no decay after it: set learning_rate_warmup_steps > 0, "
            "learning_rate_invsqrt_norm or learning_rate_cosine_decay_steps, or remove it"
        )
    return WarmupDecay(warmup_steps=warmup, invsqrt_norm=norm, cosine_steps=cosine_steps, min_factor=min_factor or 0.0)


def _require(ok: bool, key: str, value: Any, expected: str, where: str) -> None:
    if not ok:
        raise ConfigError(f"Config key {key!r} must be {expected}, got {value!r} in {where}")
