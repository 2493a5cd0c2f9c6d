"""Learning-rate schedules (constant, per-epoch list, Newbob variants) kept in RETURNN's ``learning_rates`` file.

The file format itself (:class:`EpochData`, reading, writing) is :mod:`i6_minireturnn.file_formats`, shared with the
Sisyphus jobs; its names stay importable from here.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from ..atomic_file import write_text_atomic
from ..errors import ConfigError
from ..file_formats import EpochData as EpochData
from ..file_formats import format_value as format_value
from ..file_formats import learning_rate_file_text, write_learning_rate_file
from ..file_formats import read_learning_rate_file as read_learning_rate_file
from ..log import log

if TYPE_CHECKING:
    from ..config import Config

Update = Union[float, Callable[[float], float], None]


class LearningRateControl:
    """Base: keeps the per-epoch learning rates and scores; subclasses decide the next learning rate."""

    def __init__(
        self,
        *,
        default_learning_rate: float,
        min_learning_rate: float = 0.0,
        default_learning_rates: Union[List[float], Dict[int, float], None] = None,
        error_measure_key: Union[str, List[str], None] = None,
        relative_error_also_relative_to_learning_rate: bool = False,
        min_num_epochs_per_new_learning_rate: int = 0,
        relative_error_div_by_old: bool = False,
        learning_rate_decay: Update = 0.5,
        learning_rate_growth: Update = 1.0,
        filename: Optional[str] = None,
    ):
        self.default_learning_rate = default_learning_rate
        self.min_learning_rate = min_learning_rate
        self.error_measure_key = error_measure_key
        self.relative_error_also_relative_to_learning_rate = relative_error_also_relative_to_learning_rate
        self.min_num_epochs_per_new_learning_rate = min_num_epochs_per_new_learning_rate
        self.relative_error_div_by_old = relative_error_div_by_old
        self.learning_rate_decay = learning_rate_decay
        self.learning_rate_growth = learning_rate_growth
        self.filename = filename
        self.epoch_data: Dict[int, EpochData] = {}
        if filename and os.path.exists(filename):
            print(f"Learning-rate control: loading file {filename}", file=log.v4)
            self.epoch_data = read_learning_rate_file(filename)
        # An explicit per-epoch list (last value repeats) fills epochs the file does not have yet.
        self.fixed_learning_rates: Dict[int, float] = {}
        if isinstance(default_learning_rates, (list, tuple)):
            self.fixed_learning_rates = {i + 1: float(v) for i, v in enumerate(default_learning_rates)}
        elif isinstance(default_learning_rates, dict):
            self.fixed_learning_rates = {int(k): float(v) for k, v in default_learning_rates.items()}

    # ---- schedule ------------------------------------------------------------------------------------------------

    def _fixed_rate_for(self, epoch: int) -> Optional[float]:
        if not self.fixed_learning_rates:
            return None
        if epoch in self.fixed_learning_rates:
            return self.fixed_learning_rates[epoch]
        last = max(self.fixed_learning_rates)
        if epoch > last:
            return self.fixed_learning_rates[last]
        return None

    def get_learning_rate_for_epoch(self, epoch: int) -> float:
        """The learning rate of `epoch`; once decided it is stored (and kept on resume)."""
        if epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {epoch}")
        data = self.epoch_data.get(epoch)
        if data is not None and data.learning_rate is not None:
            return data.learning_rate
        fixed = self._fixed_rate_for(epoch)
        learning_rate = fixed if fixed is not None else self._new_learning_rate(epoch)
        self.epoch_data.setdefault(epoch, EpochData()).learning_rate = learning_rate
        return learning_rate

    def _new_learning_rate(self, epoch: int) -> float:
        if self.min_num_epochs_per_new_learning_rate > 1:
            recent = [self.epoch_data[e].learning_rate for e in self._epochs_before(epoch)]
            recent = recent[-self.min_num_epochs_per_new_learning_rate :]
            if recent and (len(set(recent)) > 1 or len(recent) < self.min_num_epochs_per_new_learning_rate):
                return recent[-1]  # the last change is too recent
        return self.calc_learning_rate_for_epoch(epoch)

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        """The schedule's decision for an epoch not decided yet."""
        raise NotImplementedError

    def _epochs_before(self, epoch: int) -> List[int]:
        return sorted(e for e in self.epoch_data if e < epoch)

    def last_epoch_before(self, epoch: int) -> Optional[int]:
        """The latest epoch with data before `epoch`."""
        before = self._epochs_before(epoch)
        return before[-1] if before else None

    def most_recent_learning_rate(self, epoch: int, *, include_current: bool = False) -> float:
        """The last learning rate set up to `epoch`."""
        for e in sorted(self.epoch_data, reverse=True):
            if e > epoch or (e == epoch and not include_current):
                continue
            if self.epoch_data[e].learning_rate is not None:
                return self.epoch_data[e].learning_rate
        return self.default_learning_rate

    def apply_decay_or_growth(self, learning_rate: float, *, decay: bool, grow: Optional[bool] = None) -> float:
        """Multiplies by the decay (bounded below by ``min_learning_rate``) or by the growth factor."""
        if grow is None:
            grow = not decay
        if decay:
            learning_rate = max(_apply_update(learning_rate, self.learning_rate_decay), self.min_learning_rate)
        elif grow:
            learning_rate = _apply_update(learning_rate, self.learning_rate_growth)
        return learning_rate

    # ---- scores --------------------------------------------------------------------------------------------------

    def set_epoch_error(self, epoch: int, error: Dict[str, Any]) -> None:
        """Adds scores (e.g. ``{"dev_loss_ce": 1.2}``) to an epoch; nested dicts are flattened."""
        data = self.epoch_data.get(epoch)
        if data is None:
            self.get_learning_rate_for_epoch(epoch)
            data = self.epoch_data[epoch]
        for key, value in error.items():
            if isinstance(value, dict):
                if len(value) == 1:
                    data.error[key] = float(next(iter(value.values())))
                else:
                    for sub_key, sub_value in value.items():
                        data.error[f"{key}_{sub_key.split(':', 1)[-1]}"] = float(sub_value)
            else:
                data.error[key] = float(value)

    def get_epoch_error_dict(self, epoch: int) -> Dict[str, float]:
        """All scores of an epoch."""
        data = self.epoch_data.get(epoch)
        return data.error if data else {}

    def get_error_key(self, epoch: int) -> Optional[str]:
        """The score that drives the schedule: the configured measure, else the first dev score, else any."""
        errors = self.get_epoch_error_dict(epoch)
        configured = self.error_measure_key
        configured = [configured] if isinstance(configured, str) else list(configured or [])
        if not errors:
            return configured[0] if configured else None
        if list(errors) == ["old_format_score"]:
            return "old_format_score"
        for key in configured + ["dev_score"]:
            if key in errors:
                return key
        dev_keys = sorted(k for k in errors if k.startswith("dev_"))
        if dev_keys:
            return dev_keys[0]
        return min(errors)

    def get_epoch_error_key_value(self, epoch: int) -> Tuple[Optional[str], Optional[float]]:
        """(key, score) of the measure of an epoch."""
        errors = self.get_epoch_error_dict(epoch)
        if not errors:
            return None, None
        key = self.get_error_key(epoch)
        if key not in errors:
            raise ConfigError(
                f"learning_rate_control_error_measure {key!r} is not among the scores {sorted(errors)} of epoch {epoch}"
            )
        return key, errors[key]

    def get_epoch_error_value(self, epoch: int) -> Optional[float]:
        """The measure's score of an epoch."""
        return self.get_epoch_error_key_value(epoch)[1]

    def calc_relative_error(self, old_epoch: int, new_epoch: int) -> Optional[float]:
        """(new - old) / |new| (or / |old| with ``relative_error_div_by_old``); None if not comparable."""
        old_key, old = self.get_epoch_error_key_value(old_epoch)
        new_key, new = self.get_epoch_error_key_value(new_epoch)
        if old is None or new is None or old_key != new_key:
            return None
        denominator = abs(old) if self.relative_error_div_by_old else abs(new)
        if denominator == 0:
            return None
        relative = (new - old) / denominator
        if self.relative_error_also_relative_to_learning_rate:
            learning_rate = self.most_recent_learning_rate(new_epoch, include_current=True)
            if learning_rate > 0:
                relative /= learning_rate / self.default_learning_rate
        return relative

    def get_last_best_epoch(self, last_epoch: int, first_epoch: int = 1) -> Optional[int]:
        """The epoch with the best (lowest) measure in the range."""
        scored = [(self.get_epoch_error_value(e), e) for e in range(first_epoch, last_epoch + 1)]
        scored = [(v, e) for v, e in scored if v is not None]
        return min(scored)[1] if scored else None

    # ---- file ----------------------------------------------------------------------------------------------------

    def to_text(self) -> str:
        """The learning_rates file content."""
        return learning_rate_file_text(self.epoch_data)

    def save(self) -> None:
        """Writes the learning_rates file atomically (a crash leaves the previous complete file)."""
        if self.filename:
            write_learning_rate_file(self.filename, self.epoch_data)

    def save_later(self) -> Optional[Callable[[], None]]:
        """The write of the file with its content as of now, to run later (in the engine's background store); None
        without a file."""
        if not self.filename:
            return None
        filename, text = self.filename, self.to_text()
        return functools.partial(write_text_atomic, filename, text)


def _apply_update(learning_rate: float, update: Update) -> float:
    if update is None:
        return learning_rate
    if callable(update):
        return float(update(learning_rate))
    return learning_rate * float(update)


class ConstantLearningRate(LearningRateControl):
    """Keeps the last learning rate (the default one at the start)."""

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        return self.most_recent_learning_rate(epoch)


class NewbobRelative(LearningRateControl):
    """Decays when the relative change of the score between the last two epochs is above a threshold."""

    def __init__(self, *, relative_error_threshold: float = -0.01, **kwargs: Any):
        super().__init__(**kwargs)
        self.relative_error_threshold = relative_error_threshold

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        last = self.last_epoch_before(epoch)
        if last is None or self.epoch_data[last].learning_rate is None:
            return self.default_learning_rate
        learning_rate = self.epoch_data[last].learning_rate
        previous = self.last_epoch_before(last)
        if previous is None:
            return learning_rate
        relative = self.calc_relative_error(previous, last)
        if relative is None:
            return learning_rate
        return self.apply_decay_or_growth(learning_rate, decay=relative > self.relative_error_threshold)


class NewbobAbs(LearningRateControl):
    """Decays when the absolute change of the score between the last two epochs is above a threshold."""

    def __init__(self, *, error_threshold: float = -0.01, **kwargs: Any):
        super().__init__(**kwargs)
        self.error_threshold = error_threshold

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        last = self.last_epoch_before(epoch)
        if last is None or self.epoch_data[last].learning_rate is None:
            return self.default_learning_rate
        learning_rate = self.epoch_data[last].learning_rate
        previous = self.last_epoch_before(last)
        if previous is None:
            return learning_rate
        old_key, old = self.get_epoch_error_key_value(previous)
        new_key, new = self.get_epoch_error_key_value(last)
        if old is None or new is None or old_key != new_key:
            return learning_rate
        return self.apply_decay_or_growth(learning_rate, decay=(new - old) > self.error_threshold)


class NewbobMultiEpoch(LearningRateControl):
    """Like :class:`NewbobRelative` on the mean relative change over several epochs, every few epochs."""

    def __init__(
        self,
        *,
        num_epochs: int = 5,
        update_interval: int = 5,
        relative_error_threshold: float = -0.01,
        relative_error_grow_threshold: float = -0.01,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_epochs < 1 or update_interval < 1:
            raise ConfigError("newbob_multi_num_epochs and newbob_multi_update_interval must be >= 1")
        self.num_epochs = num_epochs
        self.update_interval = update_interval
        self.relative_error_threshold = relative_error_threshold
        self.relative_error_grow_threshold = relative_error_grow_threshold

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        learning_rate = self.most_recent_learning_rate(epoch)
        if self.update_interval > 1 and epoch % self.update_interval != 1:
            return learning_rate  # only every update_interval epochs (epochs count from 1)
        recent = self._epochs_before(epoch)[-(self.num_epochs + 1) :]
        if len(recent) < 2:
            return learning_rate
        changes = [self.calc_relative_error(a, b) for a, b in zip(recent, recent[1:])]
        if any(c is None for c in changes):
            return learning_rate
        mean_change = sum(changes) / len(changes)
        return self.apply_decay_or_growth(
            learning_rate,
            decay=mean_change > self.relative_error_threshold,
            grow=mean_change < self.relative_error_grow_threshold,
        )


_CONTROL_TYPES = {
    "constant": ConstantLearningRate,
    "newbob": NewbobRelative,
    "newbob_rel": NewbobRelative,
    "newbob_relative": NewbobRelative,
    "newbob_abs": NewbobAbs,
    "newbob_multi_epoch": NewbobMultiEpoch,
}
CONTROL_TYPE_NAMES = tuple(_CONTROL_TYPES)  # the values of ``learning_rate_control`` (checked up front)


def learning_rate_control_from_config(config: Config) -> LearningRateControl:
    """Builds the schedule from the ``learning_rate*`` / ``newbob_*`` config keys."""
    control_type = config.value("learning_rate_control")
    if control_type not in _CONTROL_TYPES:
        raise ConfigError(
            f"Unknown learning_rate_control {control_type!r} {config.origin('learning_rate_control')}; "
            f"valid: {', '.join(_CONTROL_TYPES)}"
        )
    learning_rates = config.typed_value("learning_rates")
    if isinstance(learning_rates, str):
        learning_rates = config.float_list("learning_rates")
    if learning_rates is not None and not isinstance(learning_rates, (list, tuple, dict)):
        raise config.type_error("learning_rates", learning_rates, "a list of numbers (one per epoch) or a dict")
    decay = config.typed_value("learning_rate_decay", config.typed_value("newbob_learning_rate_decay"))
    growth = config.typed_value("learning_rate_growth", config.typed_value("newbob_learning_rate_growth"))
    kwargs: Dict[str, Any] = dict(
        default_learning_rate=config.float("learning_rate"),
        min_learning_rate=config.float("min_learning_rate"),
        default_learning_rates=learning_rates,
        error_measure_key=config.typed_value("learning_rate_control_error_measure"),
        relative_error_also_relative_to_learning_rate=config.bool("learning_rate_control_relative_error_relative_lr"),
        min_num_epochs_per_new_learning_rate=config.int("learning_rate_control_min_num_epochs_per_new_lr"),
        relative_error_div_by_old=config.bool(
            "relative_error_div_by_old", config.bool("newbob_relative_error_div_by_old")
        ),
        learning_rate_decay=float(decay) if isinstance(decay, (int, str)) else decay,
        learning_rate_growth=float(growth) if isinstance(growth, (int, str)) else growth,
        filename=config.value("learning_rate_file"),
    )
    cls = _CONTROL_TYPES[control_type]
    threshold = config.float("newbob_relative_error_threshold")
    if cls is NewbobRelative:
        kwargs["relative_error_threshold"] = threshold
    elif cls is NewbobAbs:
        kwargs["error_threshold"] = config.float("newbob_error_threshold")
    elif cls is NewbobMultiEpoch:
        num_epochs = config.int("newbob_multi_num_epochs")
        kwargs.update(
            num_epochs=num_epochs,
            update_interval=config.int("newbob_multi_update_interval", num_epochs),
            relative_error_threshold=threshold,
            relative_error_grow_threshold=config.float("newbob_relative_error_grow_threshold", threshold),
        )
    return cls(**kwargs)
