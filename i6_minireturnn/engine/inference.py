"""What the tasks without training (eval, forward, compute_priors) load: the checkpoint and the forward dataset."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ..config import Config
from ..errors import ConfigError
from . import checkpoints


def use_forward_epoch_as_load_epoch(config: Config) -> None:
    """Task forward: RETURNN's ``epoch`` (as i6_core's forward jobs set it) names the epoch to load."""
    if config.has("epoch"):
        config.set("load_epoch", config.int("epoch"))


def inference_checkpoint(config: Config, model_prefix: Optional[str]) -> Optional[str]:
    """The checkpoint file to load: ``load``, or epoch ``load_epoch`` of ``model``, or the newest stored epoch of
    ``model``; None where none is given and ``allow_random_model_init`` permits a fresh model (i6_core's forward
    job without a checkpoint)."""
    if config.value("load", ""):
        return checkpoints.checkpoint_file(config.value("load"))
    if model_prefix and config.has("load_epoch"):
        return checkpoints.checkpoint_file(checkpoints.model_path(model_prefix, config.int("load_epoch")))
    if model_prefix and checkpoints.existing_epochs(model_prefix):
        return list(checkpoints.existing_epochs(model_prefix).values())[-1]
    if config.bool("allow_random_model_init", False):
        return None
    raise ConfigError(
        f"No model to load: set 'load' (a checkpoint file) or 'model' in {config.where()} "
        "(or allow_random_model_init = True to run a freshly initialised model)"
    )


def forward_dataset_options(config: Config) -> Tuple[str, Any]:
    """(config key, dataset options) of task forward: ``forward`` (Mini-RETURNN), else ``forward_data``, which as in
    RETURNN may also name another dataset key (``forward_data = "dev"``)."""
    if config.has("forward"):
        return "forward", config.typed_value("forward")
    if not config.has("forward_data"):
        raise ConfigError(f"Task forward needs the dataset 'forward' (or 'forward_data') in {config.where()}")
    opts = config.typed_value("forward_data")
    if not isinstance(opts, str):
        return "forward_data", opts
    named = config.typed_value(opts, None) if opts != "forward_data" else None
    if not isinstance(named, dict):
        raise ConfigError(
            f"forward_data = {opts!r} in {config.where()} names no dataset: set it to a dataset dict "
            "or to the name of a config key holding one (e.g. 'dev')"
        )
    return opts, named
