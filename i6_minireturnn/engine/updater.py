"""Parameter updates: optimizer from the ``optimizer`` dict, learning rate of each step, gradient accumulation,
clipping, noise, AMP scaling.

:class:`Updater` is also ``returnn.torch.updater.Updater`` for configs: custom engines (GAN vocoders) create one per
optimizer with Mini-RETURNN's constructor, some with a plain dict as ``config`` and some as a subclass whose own
``__init__`` sets only Mini-RETURNN's attributes, so settings are read from either kind of config and every attribute
the update reads has a class-level default.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..errors import ConfigError
from ..log import log
from ..loop_tuning import LOOP_TUNING
from .checkpoints import cpu_snapshot, load_file, save_torch_atomic
from .lr_schedule import StepSchedule, step_schedule_from_config
from .optimizer_implementation import default_implementation, load_optimizer_state

if TYPE_CHECKING:
    from ..config import Config

UpdaterConfig = Union["Config", Dict[str, Any]]


def optimizer_classes() -> Dict[str, type]:
    """All torch optimizers by lower-case name."""
    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


def get_optimizer_class(name: Any) -> type:
    """Resolves the ``class`` entry (case-insensitive name or an Optimizer subclass)."""
    if isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        return name
    classes = optimizer_classes()
    if not isinstance(name, str) or name.lower() not in classes:
        raise ConfigError(f"Unknown optimizer class {name!r} in 'optimizer'; valid: {', '.join(sorted(classes))}")
    return classes[name.lower()]


def create_optimizer(
    options: Any,
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: Optional[float] = None,
    where: str = "the config",
    param_groups: Optional[Callable[[type, Dict[str, Any]], List[Dict[str, Any]]]] = None,
) -> torch.optim.Optimizer:
    """Builds the optimizer; ``epsilon`` is accepted for ``eps``; unknown or unusable arguments are an error naming
    them (`where` names the config file for the message). `param_groups(optimizer class, options)` gives the
    parameter groups (Mini-RETURNN's ``Updater._get_optimizer_param_groups``, which custom updaters override);
    default: one group with all parameters of `model`."""
    if not isinstance(options, dict):
        raise ConfigError(f"'optimizer' must be a dict like {{'class': 'adam'}}, got {options!r}")
    options = dict(options)  # the config's dict stays untouched (it may be read again)
    if "class" not in options:
        raise ConfigError("'optimizer' has no 'class' entry (e.g. 'adam', 'adamw', 'sgd')")
    if "learning_rate" in options or "lr" in options:
        # lr is set per epoch from learning_rate / learning_rates; a second lr would be a TypeError inside torch
        raise ConfigError("Set learning_rate / learning_rates outside of the 'optimizer' dict")
    cls = get_optimizer_class(options.pop("class"))
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
    if "epsilon" in options and "eps" in accepted:
        options["eps"] = options.pop("epsilon")
    multiplier = options.pop("learning_rate_multiplier", 1.0)
    try:
        multiplier = float(multiplier)
    except (TypeError, ValueError):
        raise ConfigError(
            f"'optimizer' entry 'learning_rate_multiplier' must be a number, got {multiplier!r} in {where}"
        ) from None
    if weight_decay is not None and "weight_decay" in accepted:
        options.setdefault("weight_decay", weight_decay)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Optimizer {cls.__name__} does not take {', '.join(unknown)}; it takes: {', '.join(accepted)}"
        )
    groups = param_groups(cls, options) if param_groups is not None else [{"params": list(model.parameters())}]
    groups, params = _listed_params(groups)
    try:
        optimizer = cls(
            groups, lr=learning_rate * multiplier, **options, **default_implementation(cls, options, params)
        )
    except (TypeError, ValueError) as exc:
        raise _optimizer_argument_error(cls, options, exc, where, lr=learning_rate * multiplier) from None
    optimizer.lr_multiplier = multiplier  # type: ignore[attr-defined]
    print(f"Optimizer: {optimizer}", file=log.v4)
    return optimizer


def _listed_params(groups: Any) -> Tuple[List[Any], List[torch.Tensor]]:
    """`groups` as torch takes them (parameters, or dicts with ``params``; lists or iterators), with every iterator
    made a list, and all their parameters."""
    groups = list(groups)
    params: List[torch.Tensor] = []
    for group in groups:
        if isinstance(group, dict) and "params" in group:  # (torch names a group without them)
            listed = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
            group["params"] = listed
            params.extend(listed)
        elif isinstance(group, torch.Tensor):
            params.append(group)
    return groups, params


def _optimizer_argument_error(
    cls: type, options: Dict[str, Any], exc: Exception, where: str, *, lr: float
) -> ConfigError:
    """A ConfigError for an optimizer constructor that refused its arguments, naming the argument at fault.

    torch's own message often does not name it (``'<=' not supported between 'float' and 'str'`` for a bad
    ``betas``), so each argument is tried alone on a throwaway parameter to find the one that is refused.
    """
    probe = [torch.nn.Parameter(torch.zeros(2, 2))]  # 2-D: some optimizers (Muon) take matrices only
    try:
        cls(probe)
        suspects = list(options.items())
    except Exception:  # the class cannot be probed this way: report all arguments
        suspects = []
    for name, value in suspects:
        try:
            cls(probe, **{name: value})
        except (TypeError, ValueError) as single:
            return ConfigError(
                f"Optimizer {cls.__name__} refuses its argument {name} = {value!r} ('optimizer' in {where}): "
                f"{type(single).__name__}: {single}"
            )
        except Exception:  # any other failure of the probe says nothing about this argument
            continue
    given = ", ".join(f"{k}={v!r}" for k, v in {"lr": lr, **options}.items())
    return ConfigError(
        f"Optimizer {cls.__name__} cannot be created with {given} ('optimizer' in {where}): "
        f"{type(exc).__name__}: {exc}"
    )


def _make_grad_scaler(device_type: str) -> Optional[Any]:
    """A float16 gradient scaler for the device, where this torch has one."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        try:
            return torch.amp.GradScaler(device_type)
        except Exception:  # older torch: only CUDA scalers exist
            pass
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler()
    print(f"WARNING: no float16 gradient scaler for {device_type} in this torch version; training without", file=log.v1)
    return None


def _option(config: UpdaterConfig, key: str, default: Any, convert: Callable[[Any], Any]) -> Any:
    """`key` of the runtime Config or of a plain dict (custom engines give each optimizer its own dict)."""
    if isinstance(config, dict):
        value = config.get(key)
        return default if value is None else convert(value)
    if convert is bool:
        return config.bool(key, default)
    return config.int(key, default) if convert is int else config.float(key, default)


def _where(config: UpdaterConfig) -> str:
    return config.where() if hasattr(config, "where") else "the updater dict"


class Updater:
    """Backward, gradient accumulation over ``accum_grad_multiple_step`` steps, clipping, noise, optimizer step.

    `config` is the runtime Config or, for an engine with several optimizers, a dict with the same keys
    (``optimizer``, ``gradient_clip``, ``gradient_clip_norm``, ``accum_grad_multiple_step``, ``weight_decay``, ...).
    It owns the learning rate: :meth:`set_learning_rate` takes the epoch's rate (:attr:`learning_rate`, as in
    RETURNN), :meth:`set_current_train_step` turns it into the step's rate where the config has a step schedule
    (``dynamic_learning_rate`` or the declarative keys of lr_schedule.py); :meth:`get_effective_learning_rate` is
    the rate the optimizer uses now (without an optimizer's ``learning_rate_multiplier``).
    It owns what a step with a non-finite loss does: with ``stop_on_nonfinite_train_score = False`` such a step is
    left out of the update (:attr:`skip_nonfinite`); otherwise it is applied and the engine stops at its next log
    point.
    """

    # Defaults for subclasses whose own __init__ (written for Mini-RETURNN) sets only Mini-RETURNN's attributes.
    optimizer: Optional[torch.optim.Optimizer] = None
    _grad_scaler: Optional[Any] = None
    _grad_clip: Optional[float] = None
    _grad_clip_norm: Optional[float] = None
    _grad_clip_norm_invalid_gradient_threshold = 3
    _grad_noise: Optional[float] = None
    _accum_grad_multiple_step = 1
    _num_invalid_gradients = 0
    _pending_grads = False
    num_skipped_updates = 0
    skip_nonfinite = False
    learning_rate = 1.0
    _effective_learning_rate: Optional[float] = None
    _step_schedule: Optional[StepSchedule] = None
    _step_state: Optional[Dict[str, Any]] = None  # the arguments of the last set_current_train_step (with a schedule)

    def __init__(
        self, *, config: UpdaterConfig, network: torch.nn.Module, device: str, initial_learning_rate: float = 1.0
    ):
        self.config = config
        self.network = network
        self._device = device
        self.learning_rate = initial_learning_rate
        self._grad_clip = _option(config, "gradient_clip", None, float)
        self._grad_clip_norm = _option(config, "gradient_clip_norm", None, float)
        self._grad_clip_norm_invalid_gradient_threshold = _option(
            config, "gradient_clip_norm_invalid_gradient_threshold", 3, int
        )
        self._grad_noise = _option(config, "gradient_noise", None, float)
        self._accum_grad_multiple_step = _option(config, "accum_grad_multiple_step", 1, int)
        if self._accum_grad_multiple_step < 1:
            raise ConfigError(f"accum_grad_multiple_step must be >= 1, got {self._accum_grad_multiple_step}")
        self.skip_nonfinite = not _option(config, "stop_on_nonfinite_train_score", True, bool)
        self._num_invalid_gradients = 0
        self._pending_grads = False
        self.num_skipped_updates = 0
        self.optimizer = None
        self._grad_scaler = None
        # custom engines give some updaters a plain dict of optimizer settings: no step schedule there
        self._step_schedule = step_schedule_from_config(config) if not isinstance(config, dict) else None
        if self._step_schedule is not None:
            print(f"Learning rate of each step: {self._step_schedule.description}", file=log.v3)
        self._step_state = None
        self._effective_learning_rate = initial_learning_rate

    def create_optimizer(self) -> None:
        """Builds the optimizer from the ``optimizer`` and ``weight_decay`` keys."""
        config = self.config
        options = config.get("optimizer") if isinstance(config, dict) else config.typed_value("optimizer")
        if options is None:
            raise ConfigError(
                f"Config key 'optimizer' is required for training (e.g. {{'class': 'adam'}}) in {_where(config)}"
            )
        self.optimizer = self._create_optimizer(options)

    def _create_optimizer(self, optimizer_opts: Any) -> torch.optim.Optimizer:
        """The optimizer for `optimizer_opts` (Mini-RETURNN's name, which custom updaters call): a dict with
        ``class``, or an optimizer instance, taken as it is."""
        if isinstance(optimizer_opts, torch.optim.Optimizer):
            return optimizer_opts
        return create_optimizer(
            optimizer_opts,
            self.network,
            learning_rate=self.learning_rate,
            weight_decay=_option(self.config, "weight_decay", None, float),
            where=_where(self.config),
            param_groups=self._get_optimizer_param_groups,
        )

    def _get_optimizer_param_groups(self, optim_class: type, optimizer_opts: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The optimizer's parameter groups: one with all parameters (custom updaters override this)."""
        return [{"params": list(self.network.parameters())}]

    def create_grad_scaler(self) -> None:
        """Enables loss scaling (float16 AMP)."""
        self._grad_scaler = _make_grad_scaler(torch.device(self._device).type)

    def grad_scaler_state(self) -> Optional[Dict[str, Any]]:
        """The float16 loss scale and its counters (stored with the epoch, so a resumed run scales as the
        uninterrupted one); None without loss scaling."""
        return self._grad_scaler.state_dict() if self._grad_scaler is not None else None

    def load_grad_scaler_state(self, state: Optional[Dict[str, Any]]) -> None:
        """Restores :meth:`grad_scaler_state` where both the checkpoint and this run scale the loss."""
        if state and self._grad_scaler is not None:
            self._grad_scaler.load_state_dict(state)

    def set_learning_rate(self, value: float) -> None:
        """Sets the epoch's learning rate (called per epoch). Without a step schedule every parameter group uses it
        (times the optimizer's ``learning_rate_multiplier``); with one, the next :meth:`set_current_train_step` gives
        the step's rate from it (the optimizer keeps the last step's rate until then, or takes `value` where no step
        was seen yet, e.g. under a custom engine that does not set steps)."""
        self.learning_rate = value
        if self._step_schedule is None or self._step_state is None:
            self._apply_learning_rate(value)

    def set_current_train_step(
        self, *, global_train_step: int, epoch: int, epoch_continuous: Optional[float] = None
    ) -> None:
        """Sets the learning rate of the next training step from the step schedule (RETURNN's name and arguments).

        `global_train_step`: steps done in the whole training before this one (0 at the very first);
        `epoch_continuous`: epochs done, e.g. 1.25 a quarter into epoch 2 (None where unknown). Without a step
        schedule the epoch's rate stays and nothing happens.
        """
        if self._step_schedule is None:
            return
        self._step_state = {
            "global_train_step": global_train_step,
            "epoch": epoch,
            "epoch_continuous": epoch_continuous,
        }
        self._apply_learning_rate(self._step_schedule.rate(**self._step_state, learning_rate=self.learning_rate))

    def get_effective_learning_rate(self) -> float:
        """The learning rate the current step uses (RETURNN's name): the epoch's rate, changed per step by the step
        schedule; the optimizer's ``learning_rate_multiplier`` is not included."""
        if self._effective_learning_rate is None:
            return self.learning_rate
        return self._effective_learning_rate

    def _apply_learning_rate(self, value: float) -> None:
        self._effective_learning_rate = value
        if self.optimizer is None:
            return  # the optimizer is created with self.learning_rate
        rate = value * getattr(self.optimizer, "lr_multiplier", 1.0)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a capturable optimizer's device lr: updated in place
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def get_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer."""
        return self.optimizer

    def step(self, loss: torch.Tensor, step_idx: int) -> None:
        """Back-propagates `loss`; updates the parameters every ``accum_grad_multiple_step`` steps."""
        # syncs; only in this opt-in mode. Several ranks skip together (DDP needs every rank's backward).
        if self.skip_nonfinite and not bool(self.agree_on_finite(torch.isfinite(loss.detach()))):
            self.skip_step(step_idx)
            return
        with LOOP_TUNING.window():  # backward runs without Python's lock: loader threads may work meanwhile
            if self._grad_scaler is not None:
                self._grad_scaler.scale(loss).backward()
            else:
                loss.backward()
        self._pending_grads = True
        if self.ends_accumulation(step_idx):
            self.apply_update()

    def ends_accumulation(self, step_idx: int) -> bool:
        """Whether step `step_idx` of the epoch is the last of its ``accum_grad_multiple_step`` window."""
        return (step_idx + 1) % self._accum_grad_multiple_step == 0

    @staticmethod
    def agree_on_finite(flag: torch.Tensor) -> torch.Tensor:
        """Whether the loss is finite everywhere: `flag` in one process; the engine sets the all-ranks check."""
        return flag

    def apply_update(self) -> None:
        """Applies the accumulated gradients (also called at epoch end for a partial accumulation)."""
        if not self._pending_grads:
            return
        if self._grad_scaler is not None:
            self._grad_scaler.unscale_(self.optimizer)
        valid = self._noise_and_clip_gradients() if self._changes_gradients() else True
        if self._grad_scaler is not None:
            if valid:
                self._grad_scaler.step(self.optimizer)
            self._grad_scaler.update()
        elif valid:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._pending_grads = False

    def _changes_gradients(self) -> bool:
        return bool(self._grad_noise) or self._grad_clip is not None or self._grad_clip_norm is not None

    def _noise_and_clip_gradients(self) -> bool:
        """``gradient_noise``, ``gradient_clip``, ``gradient_clip_norm``; False where the gradient norm is not finite
        (the update is skipped)."""
        params = [p for p in self.network.parameters() if p.grad is not None]
        if self._grad_noise:
            for p in params:
                p.grad.add_(torch.randn_like(p.grad) * self._grad_noise)
        if self._grad_clip is not None:
            torch.nn.utils.clip_grad_value_(params, self._grad_clip)
        if self._grad_clip_norm is None:
            return True
        norm = torch.nn.utils.clip_grad_norm_(params, self._grad_clip_norm)
        valid = bool(torch.isfinite(norm))  # syncs once per update; only with gradient_clip_norm
        if valid:
            self._num_invalid_gradients = 0
        else:
            self._num_invalid_gradients += 1
            self.num_skipped_updates += 1
            if self._num_invalid_gradients >= self._grad_clip_norm_invalid_gradient_threshold:
                raise RuntimeError(f"Got {self._num_invalid_gradients} non-finite gradient norms in a row")
        return valid

    def skip_step(self, step_idx: int) -> None:
        """A step left out of the update (non-finite loss, ``stop_on_nonfinite_train_score = False``).

        It adds no gradient, but the accumulation window still ends where it would have: the gradients the other
        steps of the window accumulated are applied there (nothing happens where every step was skipped).
        """
        if self.ends_accumulation(step_idx):
            self.apply_update()

    def discard_gradients(self) -> None:
        """Drops all accumulated gradients, also those of earlier steps of the accumulation window."""
        self.optimizer.zero_grad(set_to_none=True)
        self._pending_grads = False

    def load_optimizer(self, filename: str, *, state: Optional[Dict[str, Any]] = None) -> None:
        """Restores the optimizer state from an ``.opt.pt`` file (`state`: its content, read already)."""
        print(f"Load optimizer {filename}", file=log.v4)
        # read into host memory: load_optimizer_state puts each tensor where this run's implementation reads it
        load_optimizer_state(self.optimizer, load_file(filename) if state is None else state)

    def save_optimizer(self, filename: str) -> None:
        """Writes the optimizer state atomically (now, on the caller's thread; custom engines call this)."""
        save_torch_atomic(self.optimizer.state_dict(), filename)

    def optimizer_state_snapshot(self) -> Dict[str, Any]:
        """The optimizer state as :meth:`save_optimizer` writes it, deep-copied to CPU: the engine writes it in the
        background while the next steps change the live state."""
        return cpu_snapshot(self.optimizer.state_dict())

    def param_groups(self) -> List[Dict[str, Any]]:
        """The optimizer's parameter groups."""
        return self.optimizer.param_groups
