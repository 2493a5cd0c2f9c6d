"""Mini-RETURNN's engine names that ``CustomEngine`` subclasses in existing configs call, mapped onto this engine.

Kept apart from :mod:`.engine` so that the engine reads as its own logic; each name here is a thin translation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

from ..config import Config
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches
from ..errors import ConfigError
from . import checkpoints
from .epoch_store import EpochStore
from .learning_rate_control import learning_rate_control_from_config
from .output_checks import check_outputs
from .run_lock import ModelPrefixLock

if TYPE_CHECKING:
    from .engine import Engine


class EngineBase:
    """Mini-RETURNN's backend-independent engine part. Custom engines call ``super(Engine, self).init_train(...)`` to
    get the datasets and learning-rate control without the model, optimizer and resume that :meth:`Engine.init_train`
    adds; :class:`Engine` is its only implementation (the helpers used here are Engine's)."""

    def init_train(self, train_data: Optional[Dataset] = None, dev_data: Optional[Dataset] = None) -> None:
        """Datasets, final epoch and learning-rate control; checks the output files and takes the model prefix lock
        (so a custom engine's training is as exclusive as ours)."""
        if train_data is None and not self.config.has("train"):
            raise ConfigError(f"Config key 'train' (the training dataset) is missing in {self.config.where()}")
        self.train_dataset = train_data or self._dataset("train")
        self._init_eval_datasets(dev_data)
        self._final_epoch = self.config_get_final_epoch(self.config)
        self.learning_rate_control = learning_rate_control_from_config(self.config)
        self.learning_rate = self.learning_rate_control.default_learning_rate
        if self._ranks.is_main:  # it tries the folders with temp files; rank 0 alone writes there
            check_outputs(self._train_outputs())
        if self.model_filename and self._run_lock is None and self._ranks.is_main:
            self._run_lock = ModelPrefixLock(self.model_filename)
            self._run_lock.acquire()


class EpochDataLoader:
    """What ``Engine._create_data_loader`` returns: iterating it yields the batches of the engine's current epoch
    (our batch plan, :class:`EpochBatches`), as iterating Mini-RETURNN's DataLoader does after the epoch was set."""

    def __init__(self, engine: Engine, dataset: Dataset):
        self._engine = engine
        self.dataset = dataset

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(EpochBatches(self.dataset, self._engine.epoch, self._engine._pipeline))


class MiniReturnnEngineNames:
    """File-name and epoch helpers of Mini-RETURNN's ``Engine`` (classmethods where Mini-RETURNN has them)."""

    FILE_POSTFIX = checkpoints.MODEL_SUFFIX
    model_filename: Optional[str]
    epoch: int

    def get_epoch_model_filename(self, epoch: Optional[int] = None) -> str:
        """``<model>.NNN`` of an epoch (default: the current one)."""
        return checkpoints.epoch_prefix(self.model_filename, epoch or self.epoch)

    @classmethod
    def epoch_model_filename(cls, model_filename: str, epoch: int) -> str:
        """``<model_filename>.NNN``."""
        return checkpoints.epoch_prefix(model_filename, epoch)

    @classmethod
    def get_file_postfix(cls) -> str:
        """``.pt``: what a model file adds to its ``<model>.NNN`` name."""
        return cls.FILE_POSTFIX

    def get_epoch_str(self) -> str:
        """``epoch N``, for log lines of custom engines."""
        return f"epoch {self.epoch}"

    @classmethod
    def get_existing_models(cls, config: Config) -> Dict[int, str]:
        """Stored epochs of ``model``, oldest first: epoch -> ``<model>.NNN`` (complete or not; see get_epoch_model)."""
        model = config.value("model")
        if not model:
            return {}
        return {epoch: checkpoints.epoch_prefix(model, epoch) for epoch in sorted(checkpoints.existing_epochs(model))}

    @classmethod
    def get_epoch_model(cls, config: Config) -> Tuple[Optional[int], Optional[str]]:
        """(epoch, ``<model>.NNN`` or checkpoint file) to start from, by the rule of every task
        (:meth:`.epoch_store.EpochStore.epoch_model`)."""
        return EpochStore(config, model_prefix=config.value("model"), is_main=False).epoch_model()

    def _save_model(self) -> None:
        """Alias of ``save_model`` for custom engines that call the private name."""
        self.save_model()

    def _check_epoch_missing_eval(self) -> None:
        """Mini-RETURNN's name of ``_eval_missing_for_stored_epoch``."""
        self._eval_missing_for_stored_epoch()
