"""TensorBoard scalars of a training run, turned on with mainline RETURNN's ``use_tensorboard = True``.

``tensorboard_opts`` (a dict, optional) takes ``log_dir`` (the event folder; default as mainline RETURNN: torch's
``runs/<date>_<host>``, a new folder per start) and mainline's ``log_every_n_train_steps`` (default: every log point,
``log_step_interval``). The runtime reads device values only at its log points, so the step scalars are written at
the first log point after that many steps. Written scalars (only rank 0 of several processes writes):

* step axis (global training step, the steps done): ``train/<loss>`` (mean since the last write),
  ``train/learning_rate``, ``train/steps_per_second``, ``train/computing_share`` (share of the wall time not spent
  waiting for data), ``train/gpu_memory_peak_gib`` on CUDA, and ``<dataset>/<loss>`` after each evaluation
  (mainline's names);
* epoch axis: ``epoch/<score>`` with the learning_rates file's score names (``ce``, ``dev_loss_ce``, ...),
  ``epoch/learning_rate``, ``epoch/computing_share``, ``epoch/train_seconds``.

A run that continues a stored training hides the earlier run's events after its starting step (those of the epoch
that is trained again), so the curves show each step once.

The ``tensorboard`` package is an optional extra (``pip install 'i6-minireturnn[tensorboard]'``); a config that asks
for TensorBoard without it stops at the start with that message, unless ``tensorboard_opts`` says ``"required": False``
(the training job's own default): then one warning line and the run goes on without TensorBoard, because a missing
optional package on one node must not cost a training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..errors import ConfigError
from ..log import log

if TYPE_CHECKING:
    from ..config import Config

_OPTIONS = ("log_dir", "log_every_n_train_steps", "required")


class TensorBoardWriter:
    """Writes scalars to a TensorBoard event folder; the event file is opened at the first write, so that a resumed
    run can hide the steps it repeats (those after its first global step, see :meth:`start`)."""

    def __init__(self, log_dir: Optional[str] = None, *, every_n_train_steps: Optional[int] = None):
        self.log_dir = log_dir
        self.every_n_train_steps = every_n_train_steps
        self._writer: Any = None
        self._purge_step: Optional[int] = None

    @classmethod
    def from_config(cls, config: Config) -> Optional[TensorBoardWriter]:
        """The writer the config asks for (``use_tensorboard``, ``tensorboard_opts``), or None."""
        if not config.bool("use_tensorboard"):
            return None
        opts = config.typed_value("tensorboard_opts") or {}
        if not isinstance(opts, Mapping):
            raise ConfigError(f"Config key 'tensorboard_opts' must be a dict, got {opts!r} in {config.where()}")
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"Unknown tensorboard_opts entries {unknown} in {config.where()}; known: {', '.join(_OPTIONS)}"
            )
        every = opts.get("log_every_n_train_steps")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ConfigError(
                f"tensorboard_opts['log_every_n_train_steps'] must be a positive integer, got {every!r} "
                f"in {config.where()}"
            )
        required = opts.get("required", True)
        if not isinstance(required, bool):
            raise ConfigError(
                f"tensorboard_opts['required'] must be True or False, got {required!r} in {config.where()}"
            )
        if not required and not tensorboard_installed():
            print(
                "WARNING: TensorBoard is off: the tensorboard package is not installed where this run runs "
                "(pip install tensorboard to get its events; the training goes on without them)",
                file=log.v2,
            )
            return None
        require_tensorboard("use_tensorboard = True in " + config.where())
        return cls(opts.get("log_dir"), every_n_train_steps=every)

    def start(self, global_step: int) -> None:
        """Called with the global step a run starts from (the steps done): events of an earlier run after it (steps
        that this run repeats after a restart) are hidden in TensorBoard. Only before the first write."""
        if self._writer is None and self._purge_step is None and global_step > 0:
            self._purge_step = global_step + 1

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """Writes ``<prefix>/<name>`` for each value at `step`."""
        writer = self._open()
        for name, value in sorted(values.items()):
            writer.add_scalar(f"{prefix}/{name}", float(value), global_step=step)

    def flush(self) -> None:
        """Writes buffered events to disk (at the end of each pass, so TensorBoard shows them soon)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.log_dir, purge_step=self._purge_step, flush_secs=30)
            self.log_dir = self._writer.log_dir
        return self._writer


def tensorboard_installed() -> bool:
    """Whether the ``tensorboard`` package (which torch.utils.tensorboard needs) can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def require_tensorboard(who: str) -> None:
    """Raises a ConfigError naming `who` and the extra to install when the ``tensorboard`` package is missing."""
    if not tensorboard_installed():
        raise ConfigError(
            f"{who} needs the tensorboard package: pip install 'i6-minireturnn[tensorboard]' (or pip install "
            "tensorboard)"
        ) from None
