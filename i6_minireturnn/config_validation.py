"""Checks every typed config key up front: type and range, with the key, the value and its source named.

The code that reads a key (pipeline, engine, updater, learning-rate control) used to accept a value it could not
use: an empty ``learning_rates`` trained at learning rate 1.0, ``max_seqs = 0`` or a negative ``gradient_clip``
ran, an optimizer argument of the wrong type failed inside torch. :data:`RULES` is the one table of what each key
of the config surface takes; :func:`validate_config` applies it once, before anything is built, so that a bad
value stops the run within a second with a message naming the key, the value, what is expected and where the
value came from (config file or command line).

Each rule accepts exactly what the reading code accepts (e.g. numeric strings of line-based configs, integral
floats where ``config.int`` takes them, ``0``/``1`` for bools), so every config that worked before still works.
Unset keys and keys set to ``None`` mean "default" and are not checked.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict

from .config import parse_bool
from .config_rules import (
    Mismatch,
    Rule,
    any_of,
    as_number,
    boolean,
    dict_of,
    function,
    integer,
    list_of,
    number,
    one_of,
    options,
    path,
    per_data_key,
    text,
)
from .engine.learning_rate_control import CONTROL_TYPE_NAMES
from .engine.lr_schedule import step_schedule_from_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

# ---- rules of the composite keys ---------------------------------------------------------------------------------


def _learning_rates(value: Any) -> None:
    """A non-empty list (epochs 1, 2, ...) or dict {epoch: rate} of rates >= 0; line-based: "0.1,0.05"."""
    expected = "a non-empty list of numbers >= 0 (one per epoch) or a dict {epoch: number >= 0}"
    if isinstance(value, str):  # a single line-based value, which config.float_list reads as one rate
        if as_number(value) is None or as_number(value) < 0:
            raise Mismatch(expected, value)
        return
    if not isinstance(value, (list, tuple, dict)) or not value:
        raise Mismatch(expected, value)  # an empty schedule would silently train at learning rate 1.0
    if isinstance(value, dict):
        dict_of(number(0), key_rule=integer(1), what="{epoch: number >= 0}")(value)
    else:
        list_of(number(0), what="numbers >= 0")(value)


def _dynamic_learning_rate(value: Any) -> None:
    """RETURNN's per-step function ``dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs)``."""
    if isinstance(value, dict):
        raise Mismatch(
            "a function",
            value,
            note=f"= {value!r}: the dict form (TensorFlow RETURNN's cyclic schedule) is not supported; write a "
            "function dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs) returning the rate",
        )
    function()(value)


def _numbers(rule: Rule, what: str) -> Rule:
    """A non-empty list of numbers, or one number (as ``config.float_list`` reads a single value)."""
    return any_of(rule, list_of(rule, what=what, non_empty=True), expected=f"a non-empty list of {what}")


def _torch_amp_options(value: Any) -> None:
    """``"bfloat16"`` or ``{"dtype": "bfloat16" | "float16", ...}`` (the engine reads only ``dtype``)."""
    dtypes = one_of("float16", "bfloat16")
    expected = "{'dtype': 'float16'} or {'dtype': 'bfloat16'} (or the dtype name alone)"
    if isinstance(value, str):
        try:
            dtypes(value)
        except Mismatch:
            raise Mismatch(expected, value) from None
        return
    options({"dtype": dtypes}, required=["dtype"], closed=False, what=expected)(value)


def _chunking_options(value: Any) -> None:
    """``{"chunk_streams": {key: {"size": n, "step": n, "min_chunk_size": n}}, "random_chunk_start": bool}``."""
    if not value:
        return  # {} or "" turns chunking off, as in the pipeline
    stream = options(
        {"size": integer(1), "step": integer(1), "min_chunk_size": integer(0)},
        required=["size", "step"],
        what="a dict {'size': int >= 1, 'step': int >= 1, 'min_chunk_size': int >= 0}",
    )
    options(
        {
            "chunk_streams": dict_of(stream, non_empty=True, what="{data key: {'size': ..., 'step': ...}}"),
            "random_chunk_start": boolean(),
        },
        required=["chunk_streams"],
        what="a dict {'chunk_streams': {data key: {'size': ..., 'step': ...}}, 'random_chunk_start': bool}",
    )(value)


def _cleanup_old_models(value: Any) -> None:
    """``True`` / ``False`` or ``{"keep": [epochs], "keep_last_n": n, "keep_best_n": n}``."""
    if not isinstance(value, dict):
        if parse_bool(value) is None:
            raise Mismatch("True, False or a dict {'keep': [...], 'keep_last_n': n, 'keep_best_n': n}", value)
        return
    epochs = integer(1, floats=False, strings=False)

    def keep(item: Any) -> None:
        # i6_core's ReturnnTrainingJob writes keep_epochs as given: a list, a set or a range
        if not isinstance(item, (list, tuple, set, frozenset, range)):
            raise Mismatch("a list of epochs (integers >= 1)", item)
        for epoch in item:
            try:
                epochs(epoch)
            except Mismatch:
                raise Mismatch("a list of epochs (integers >= 1)", item) from None

    options(
        {
            "keep": keep,
            "keep_last_n": integer(0, floats=False, strings=False),
            "keep_best_n": integer(0, floats=False, strings=False),
        },
        what="True, False or a dict {'keep': [...], 'keep_last_n': n, 'keep_best_n': n}",
    )(value)


def _dataset(value: Any) -> None:
    """A dataset dict with ``class`` (its own options are checked by the dataset) or a Dataset object."""
    expected = "a dataset dict with a 'class' entry"
    if isinstance(value, dict):
        if "class" not in value:
            raise Mismatch(expected, value, note=f"has no 'class' entry: {value!r}")
        return
    from .data.dataset import Dataset  # only here: importing the data package loads numpy

    if not isinstance(value, Dataset):
        raise Mismatch(expected, value)


def _names(value: Any) -> None:
    """Parameter names: a list, tuple or set of strings."""
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise Mismatch("a list of parameter names (strings)", value)


def _preload_from_files(value: Any) -> None:
    """``{name: {"filename": ..., "prefix": ..., "init_for_train": bool, ...}}`` as RETURNN reads it."""
    entry = options(
        {
            "filename": path(),
            "prefix": text(),
            "init_for_train": boolean(),
            "ignore_missing": boolean(),
            "ignore_params": _names,
            "ignore_params_prefixes": _names,
            "var_name_mapping": dict_of(text(), key_rule=text(), what="{new name: name in the checkpoint}"),
            "checkpoint_key": text(),
            "use_cache_manager": boolean(),  # default: the top-level use_cache_manager
        },
        required=["filename"],
        closed=False,  # RETURNN has further (TF) options; the loader ignores them
        what="a dict with a 'filename' entry",
    )
    dict_of(entry, what="{name: {'filename': ..., ...}}")(value)


def _betas(value: Any) -> None:
    """Adam's (beta1, beta2): two numbers from 0 to 1 (torch checks the open bound)."""
    expected = "a pair of numbers from 0 to 1"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise Mismatch(expected, value)
    for item in value:
        parsed = as_number(item, strings=False)
        if parsed is None or not 0 <= parsed <= 1:
            raise Mismatch(expected, value)


def _epsilon(value: Any) -> None:
    """A number >= 0; Adafactor's eps is a pair of them (None for its default)."""
    expected = "a number >= 0 (Adafactor: a pair of them or None)"
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if item is None and items is not value:
            continue
        parsed = as_number(item, strings=False)
        if parsed is None or parsed < 0:
            raise Mismatch(expected, value)


# The optimizer arguments whose type and range are known for every torch.optim class that takes them; other
# arguments go to the class as they are (its constructor errors are reported naming the class and argument).
# Values in the optimizer dict go to torch unconverted: a string "0.9" or a truthy "false" must not pass.
_ARG_NUMBER = number(0, strings=False)
_ARG_FLAG = boolean(strict=True)
_OPTIMIZER_ARGUMENTS: Dict[str, Rule] = {
    "eps": _epsilon,
    "epsilon": _epsilon,
    "weight_decay": _ARG_NUMBER,
    "momentum": _ARG_NUMBER,
    "dampening": _ARG_NUMBER,
    "alpha": _ARG_NUMBER,
    "rho": number(0, 1, strings=False),
    "lr_decay": _ARG_NUMBER,
    "initial_accumulator_value": _ARG_NUMBER,
    "momentum_decay": _ARG_NUMBER,
    "learning_rate_multiplier": number(0),  # the updater converts it with float()
    "betas": _betas,
    "amsgrad": _ARG_FLAG,
    "nesterov": _ARG_FLAG,
    "maximize": _ARG_FLAG,
    "centered": _ARG_FLAG,
    "decoupled_weight_decay": _ARG_FLAG,
}


def _optimizer(value: Any) -> None:
    """A dict with ``class`` (a torch.optim class name) and arguments of the right type."""
    expected = "a dict like {'class': 'adam', ...}"
    if not isinstance(value, dict):
        raise Mismatch(expected, value)
    if "class" not in value:
        raise Mismatch(expected, value, note=f"has no 'class' entry (e.g. 'adam', 'adamw', 'sgd'): {value!r}")
    from .engine.updater import get_optimizer_class  # only here: it imports torch

    try:
        get_optimizer_class(value["class"])
    except ConfigError as exc:
        raise Mismatch(expected, value["class"], "['class']", note=str(exc)) from None
    for name in ("learning_rate", "lr"):
        if name in value:
            # the optimizer's lr is set from learning_rate / learning_rates (and learning-rate control) per epoch
            raise Mismatch(
                expected,
                value[name],
                f"[{name!r}]",
                note=f"= {value[name]!r}: set the learning rate with learning_rate / learning_rates, "
                "outside of the 'optimizer' dict",
            )
    options(_OPTIMIZER_ARGUMENTS, closed=False, what=expected)(value)  # the arguments it knows; others go to torch


def _log_verbosity(value: Any) -> None:
    # RETURNN takes a list (one verbosity per log output); the runtime uses the first value, as config.int does
    check = integer(0, 5)
    for item in value if isinstance(value, (list, tuple)) and value else [value]:
        try:
            check(item)
        except Mismatch:
            raise Mismatch("an integer from 0 to 5", value) from None


def _log_files(value: Any) -> None:
    """A log file name or a list of them."""
    if isinstance(value, (str, os.PathLike)):
        return
    if not isinstance(value, (list, tuple)):
        raise Mismatch("a file name or a list of file names", value)
    list_of(path(), what="file names")(value)


def _error_measure(value: Any) -> None:
    """The score that drives learning-rate control (``dev_loss_ce``), or several to try in order."""
    if isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)):
        raise Mismatch("a score name (e.g. 'dev_loss_ce') or a list of them", value)
    list_of(text(), what="score names")(value)


# ---- the table ---------------------------------------------------------------------------------------------------

_FLAG = boolean()

RULES: Dict[str, Rule] = {
    # task and model files
    "task": text(),
    "device": text(),
    "num_epochs": integer(1),
    "start_epoch": any_of(one_of("auto"), integer(1), expected="'auto' or an integer >= 1"),
    "load_epoch": integer(0),  # 0: no stored epoch to continue from (a fresh start)
    "epoch": integer(1),  # task forward: the epoch to load
    "save_interval": integer(1),
    "model": path(),
    "load": path(),
    "import_model_train_epoch1": path(),
    "preload_from_files": _preload_from_files,
    # default True: load, import_model_train_epoch1 and preload_from_files files go through the cache manager (`cf`);
    # datasets have their own use_cache_manager option, which this key does not change
    "use_cache_manager": _FLAG,
    "load_ignore_missing_vars": _FLAG,
    "allow_missing_optimizer_checkpoint": _FLAG,
    "allow_random_model_init": _FLAG,
    "cleanup_old_models": _cleanup_old_models,
    "data_loader_pacing": _FLAG,  # default True: loader threads ahead of training work in its windows
    "pin_training_loop": _FLAG,  # default True: on a GPU, the loop and its backward thread share one CPU
    "store_checkpoints_in_background": _FLAG,  # default True: a writer thread stores epochs while training goes on
    "output_file": path(),
    # config functions
    "get_model": function(),
    "train_step": function(),
    "forward_step": function(),
    "forward_init_hook": function(),
    "forward_finish_hook": function(),
    "CustomEngine": function(),
    # datasets and batches
    "train": _dataset,
    "dev": _dataset,
    "eval": _dataset,
    "forward": _dataset,
    "forward_data": any_of(text(), _dataset, expected="a dataset dict or the name of a dataset key (e.g. 'dev')"),
    "eval_datasets": dict_of(_dataset, key_rule=text(), what="{name: dataset dict}"),
    # a string batch_size is read with config.int; dict values and the length limits are used as they are
    "batch_size": per_data_key(integer(1, floats=False), integer(1, floats=False, strings=False)),
    "max_seqs": integer(1, also=(-1,), also_text=" (or -1: no limit, the default)"),
    "batch_drop_last": _FLAG,
    "min_seq_length": per_data_key(integer(0, floats=False, strings=False)),
    "max_seq_length": per_data_key(integer(1, floats=False, strings=False)),
    "chunking_options": _chunking_options,
    "num_workers_per_gpu": integer(0),
    "data_worker_type": one_of("thread", "process"),
    # updates
    "optimizer": _optimizer,
    "weight_decay": number(0),
    "gradient_clip": number(above=0),
    "gradient_clip_norm": number(above=0),
    "gradient_clip_norm_invalid_gradient_threshold": integer(1),
    "gradient_noise": number(0),
    "accum_grad_multiple_step": integer(1),
    "torch_amp_options": _torch_amp_options,
    "stop_on_nonfinite_train_score": _FLAG,
    # learning rate
    "learning_rate": number(0),
    "learning_rates": _learning_rates,
    "learning_rate_control": one_of(*CONTROL_TYPE_NAMES),
    "min_learning_rate": number(0),
    "learning_rate_file": path(),
    "learning_rate_control_error_measure": _error_measure,
    "learning_rate_control_min_num_epochs_per_new_lr": integer(0),
    "learning_rate_control_relative_error_relative_lr": _FLAG,
    "relative_error_div_by_old": _FLAG,
    "newbob_relative_error_div_by_old": _FLAG,
    "learning_rate_decay": any_of(number(above=0), function(), expected="a number > 0 or a function"),
    "newbob_learning_rate_decay": any_of(number(above=0), function(), expected="a number > 0 or a function"),
    "learning_rate_growth": any_of(number(above=0), function(), expected="a number > 0 or a function"),
    "newbob_learning_rate_growth": any_of(number(above=0), function(), expected="a number > 0 or a function"),
    "newbob_relative_error_threshold": number(),
    "newbob_relative_error_grow_threshold": number(),
    "newbob_error_threshold": number(),
    "newbob_multi_num_epochs": integer(1),
    "newbob_multi_update_interval": integer(1),
    # learning rate of each step (engine/lr_schedule.py checks them together)
    "dynamic_learning_rate": _dynamic_learning_rate,
    "learning_rate_piecewise_steps": _numbers(number(above=0), "numbers > 0"),
    "learning_rate_piecewise_values": _numbers(number(0), "numbers >= 0"),
    "learning_rate_piecewise_by_epoch_continuous": _FLAG,
    "learning_rate_warmup_steps": integer(0),
    "learning_rate_invsqrt_norm": number(above=0),
    "learning_rate_cosine_decay_steps": integer(1),
    "learning_rate_cosine_decay_min_factor": number(0, 1),
    # logging, seeds, checks
    "random_seed": integer(),
    "log": _log_files,
    "log_verbosity": _log_verbosity,
    "log_step_interval": integer(1),
    "log_progress_interval": number(0),
    "log_progress_file": path(),
    "use_tensorboard": _FLAG,
    "tensorboard_opts": options(
        {"log_dir": path(), "log_every_n_train_steps": integer(1), "required": _FLAG}, what="tensorboard_opts"
    ),
    "check_unused_config_keys": _FLAG,
    "backend": text(),
    "use_tensorflow": _FLAG,
    "use_horovod": _FLAG,
}

# Keys of the config surface that are deliberately not in RULES, with the reason (a test keeps this complete).
NOT_CHECKED: Dict[str, str] = {
    "search_data": "RETURNN's search dataset; nothing in this runtime reads it",
    "torch_distributed": "a dict of options, checked with the launch environment (engine/distributed.py)",
    "target": "TensorFlow only; accepted and ignored",
    "extern_data": "RETURNN mainline / TensorFlow; accepted and ignored (mainline step functions are refused)",
    "num_inputs": "TensorFlow only; accepted and ignored",
    "num_outputs": "TensorFlow only; accepted and ignored",
    "tf_log_dir": "TensorFlow only; accepted and ignored",
    "forward_override_hdf_output": "TensorFlow only; accepted and ignored",
}


def validate_config(config: Config) -> None:
    """Raises a :class:`ConfigError` for the first key whose value the runtime cannot use, naming the key."""
    for key, rule in RULES.items():
        value = config.peek(key)
        if value is None:
            continue  # unset: the reader's default applies
        try:
            rule(value)
        except Mismatch as mismatch:
            raise _error(config, key, mismatch) from None
    if config.value("task", "train") == "train":
        step_schedule_from_config(config)  # the step-schedule keys together (lengths, combinations)


def _error(config: Config, key: str, mismatch: Mismatch) -> ConfigError:
    entry = f" entry {mismatch.entry}" if mismatch.entry else ""
    origin = config.origin(key)
    if mismatch.note is not None:
        return ConfigError(f"Config key {key!r}{entry} {mismatch.note} ({origin})")
    value = mismatch.value
    return ConfigError(
        f"Config key {key!r}{entry} must be {mismatch.expected}, got {value!r} ({type(value).__name__}) {origin}"
    )
