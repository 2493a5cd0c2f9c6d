"""Every config key the runtime knows, declared once: its name, the rule its value must pass, its default, one line
of documentation and its group.

Everything else reads this table: the up-front checks (config_validation.py), the unknown-key and did-you-mean check
(config.py), the defaults the readers get when a key is unset (``config.int("num_epochs")`` is 5 because the table
says so), ``--help`` and the generated reference ``docs/config.md`` (a test keeps it current). User functions
(``get_model``, ``train_step``, ...) stay free-form Python; their rule only checks that they are callable.

Groups: ``surface`` (Mini-RETURNN / RETURNN keys, with their meaning), ``own`` (keys this runtime adds),
``tuning`` (speed mechanisms with their measured reason in benchmarks/RESULTS.md), ``ignored`` (TensorFlow or
mainline RETURNN keys that i6 configs carry: accepted, meaning nothing here; or refused where they ask for what this
runtime does not do).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

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
    parse_bool,
    path,
    per_data_key,
    text,
)
from .errors import ConfigError

GROUPS = {
    "surface": "Mini-RETURNN / RETURNN keys",
    "own": "Keys this runtime adds",
    "tuning": "Speed mechanisms (see benchmarks/RESULTS.md for their figures)",
    "ignored": "Keys of other RETURNN backends: accepted and ignored, or refused where they ask for something else",
}


@dataclass(frozen=True)
class Key:
    """One config key. `rule` None: not checked up front (`doc` says where it is checked or why not);
    `default_doc`: the default in words where it depends on other keys or the machine (`default` is then None and
    the reader works it out); `suggest`: offered as the meant key of a misspelt one (not for very short names)."""

    name: str
    group: str
    doc: str
    rule: Optional[Rule] = None
    default: Any = None
    default_doc: Optional[str] = None
    suggest: bool = True

    def default_value(self) -> Any:
        """A fresh copy of the default (readers may change a dict or list they got)."""
        return copy.deepcopy(self.default)

    def default_text(self) -> str:
        """The default as the docs and --help show it."""
        if self.default_doc is not None:
            return self.default_doc
        return "unset" if self.default is None else repr(self.default)


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


def _control_type(value: Any) -> None:
    """A learning-rate control type name."""
    from .engine.learning_rate_control import CONTROL_TYPE_NAMES  # only here: the controls import the config

    one_of(*CONTROL_TYPE_NAMES)(value)


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
_DECAY = any_of(number(above=0), function(), expected="a number > 0 or a function")


def _surface(name: str, doc: str, rule: Optional[Rule] = None, default: Any = None, **kwargs: Any) -> Key:
    return Key(name, "surface", doc, rule, default, **kwargs)


def _own(name: str, doc: str, rule: Optional[Rule] = None, default: Any = None, **kwargs: Any) -> Key:
    return Key(name, "own", doc, rule, default, **kwargs)


def _tuning(name: str, doc: str, rule: Optional[Rule] = None, default: Any = None, **kwargs: Any) -> Key:
    return Key(name, "tuning", doc, rule, default, **kwargs)


def _ignored(name: str, doc: str, rule: Optional[Rule] = None, default: Any = None, **kwargs: Any) -> Key:
    return Key(name, "ignored", doc, rule, default, **kwargs)


_KEYS: List[Key] = [
    # task and device
    _surface("task", "train | eval | forward | compute_priors | initialize_model | nop", text(), "train"),
    _surface("device", "cpu, cuda, cuda:N or gpu (= cuda)", text(), default_doc="CUDA where available, else CPU"),
    # config functions
    _surface("get_model", "get_model(*, epoch, step, **kwargs): the model (a function or a class)", function()),
    _surface("train_step", "train_step(*, model, data, run_ctx, **kwargs): marks the losses", function()),
    _surface(
        "forward_step", "forward_step(*, model, data, run_ctx, **kwargs): task forward and compute_priors", function()
    ),
    _surface("forward_init_hook", "forward_init_hook(run_ctx, **kwargs): before the forward pass", function()),
    _surface("forward_finish_hook", "forward_finish_hook(run_ctx, **kwargs): after the forward pass", function()),
    _surface("CustomEngine", "a subclass of the engine (returnn.torch.engine.Engine) to run instead", function()),
    _surface("export", "export(*, model, f, **kwargs): the ONNX export of tools/export_onnx", function()),
    # datasets and batches
    _surface("train", "the training dataset: a dataset dict {'class': ..., ...}", _dataset),
    _surface("dev", "evaluated after each epoch; its scores are dev_loss_<loss>", _dataset),
    _surface(
        "eval_datasets",
        "{name: dataset dict} evaluated after each epoch: <name>_loss_<loss>",
        dict_of(_dataset, key_rule=text(), what="{name: dataset dict}"),
        {},
    ),
    _surface("eval", "a further dataset of task eval", _dataset),
    _surface("forward", "the dataset of task forward", _dataset),
    _surface(
        "forward_data",
        "the forward dataset where `forward` is not set: a dataset dict or the name of a dataset key ('dev')",
        any_of(text(), _dataset, expected="a dataset dict or the name of a dataset key (e.g. 'dev')"),
    ),
    _ignored("search_data", "RETURNN's search dataset; nothing here reads it"),
    # a string batch_size is read with config.int; dict values and the length limits are used as they are
    _surface(
        "batch_size",
        "at most this many frames (longest sequence x sequences) per batch: an int, or a dict per data key",
        per_data_key(integer(1, floats=False), integer(1, floats=False, strings=False)),
        1,
    ),
    _surface(
        "max_seqs",
        "at most this many sequences per batch (-1: no limit)",
        integer(1, also=(-1,), also_text=" (or -1: no limit, the default)"),
        -1,
    ),
    _surface("batch_drop_last", "drop an epoch's last, smaller batch", _FLAG, False),
    _surface(
        "min_seq_length",
        "drop shorter sequences: an int for every data key or a dict per key",
        per_data_key(integer(0, floats=False, strings=False)),
    ),
    _surface(
        "max_seq_length",
        "drop longer sequences: an int for every data key or a dict per key",
        per_data_key(integer(1, floats=False, strings=False)),
    ),
    _surface(
        "chunking_options",
        "{'chunk_streams': {key: {'size': n, 'step': n, 'min_chunk_size': n}}, 'random_chunk_start': bool}: "
        "sequences become chunks (random starts reproducible from the seed)",
        _chunking_options,
    ),
    _surface(
        "num_workers_per_gpu",
        "data loaders that prepare the next batches while one trains (0: load in the training loop)",
        integer(0),
        1,
        default_doc="1; unset on a GPU, a dataset that decodes audio gets one per usable CPU but 2, at most 8 (logged)",
    ),
    _surface(
        "data_worker_type",
        "'thread' or 'process' (DataLoader worker processes); batches are the same",
        one_of("thread", "process"),
        "thread",
    ),
    # epochs and checkpoint files
    _surface("num_epochs", "the last epoch to train", integer(1), 5),
    _surface(
        "start_epoch",
        "'auto' (continue after the newest stored epoch) or the epoch to start with",
        any_of(one_of("auto"), integer(1), expected="'auto' or an integer >= 1"),
        "auto",
    ),
    _surface("model", "checkpoint prefix: <model>.NNN.pt and <model>.NNN.opt.pt", path()),
    _surface("save_interval", "store every n-th epoch (the last epoch always)", integer(1), 1),
    _surface(
        "load_epoch", "the stored epoch to continue from (training) or to load (eval, forward); 0: none", integer(0)
    ),
    _surface("epoch", "task forward: the epoch to load", integer(1), suggest=False),
    _surface("load", "a checkpoint to load (training: initialises epoch 1 where nothing is stored)", path()),
    _surface("import_model_train_epoch1", "a checkpoint that initialises the parameters of epoch 1", path()),
    _surface(
        "preload_from_files",
        "{name: {'filename': ..., 'prefix': ..., 'init_for_train': bool, 'ignore_missing': bool, ...}}: parameters "
        "from other checkpoints",
        _preload_from_files,
    ),
    _surface(
        "load_ignore_missing_vars", "parameters missing in a loaded checkpoint keep their initialisation", _FLAG, False
    ),
    _surface(
        "allow_missing_optimizer_checkpoint",
        "continue with a fresh optimizer where the stored state is missing",
        _FLAG,
        False,
    ),
    _surface(
        "allow_random_model_init",
        "eval / forward / compute_priors without a checkpoint run the fresh model",
        _FLAG,
        False,
    ),
    _surface(
        "cleanup_old_models",
        "True or {'keep': [epochs], 'keep_last_n': n, 'keep_best_n': n}: delete other epochs (never the newest)",
        _cleanup_old_models,
        default_doc="off (the two newest optimizer states are kept in any case)",
    ),
    _own(
        "use_cache_manager",
        "load, import_model_train_epoch1 and preload_from_files checkpoints are read through the cache manager (cf); "
        "datasets have their own option",
        _FLAG,
        True,
    ),
    _surface(
        "output_file", "task compute_priors: where the priors go", path(), default_doc="required by compute_priors"
    ),
    # updates
    _surface(
        "optimizer",
        "{'class': 'adam', ...}: a torch.optim class by case-insensitive name and its arguments",
        _optimizer,
    ),
    _surface("weight_decay", "weight decay of all parameters (also inside the optimizer dict)", number(0)),
    _surface("gradient_clip", "clip each gradient value to [-x, x]", number(above=0)),
    _surface(
        "gradient_clip_norm", "clip the global gradient norm (a non-finite norm skips the update)", number(above=0)
    ),
    _surface(
        "gradient_clip_norm_invalid_gradient_threshold",
        "stop after this many consecutive updates with a non-finite gradient norm",
        integer(1),
        default_doc="never stop",
    ),
    _surface("gradient_noise", "standard deviation of Gaussian noise added to the gradients", number(0)),
    _surface("accum_grad_multiple_step", "accumulate the gradients of n steps per update", integer(1), 1),
    _surface(
        "torch_amp_options", "{'dtype': 'bfloat16'} or {'dtype': 'float16'} (with loss scaling)", _torch_amp_options
    ),
    _surface(
        "stop_on_nonfinite_train_score",
        "stop at a non-finite loss naming epoch and step; False: skip such steps and count them",
        _FLAG,
        True,
    ),
    # learning rate of each epoch
    _surface("learning_rate", "the learning rate where no schedule sets one", number(0), 1.0),
    _surface("learning_rates", "a list (epochs 1, 2, ...; the last repeats) or a dict {epoch: rate}", _learning_rates),
    _surface(
        "learning_rate_control",
        "constant | newbob_rel | newbob_abs | newbob_multi_epoch (and RETURNN's aliases)",
        _control_type,
        "constant",
    ),
    _surface("min_learning_rate", "the control never goes below it", number(0), 0.0),
    _surface(
        "learning_rate_file",
        "RETURNN's {epoch: EpochData(learningRate=..., error={...})} file, rewritten after each epoch",
        path(),
    ),
    _surface(
        "learning_rate_control_error_measure",
        "the score that drives the control (or a list to try in order)",
        _error_measure,
        default_doc="the first dev score",
    ),
    _surface(
        "learning_rate_control_min_num_epochs_per_new_lr", "keep a new rate at least this many epochs", integer(0), 0
    ),
    _surface(
        "learning_rate_control_relative_error_relative_lr",
        "newbob: the relative error is also relative to the rate",
        _FLAG,
        False,
    ),
    _surface(
        "relative_error_div_by_old",
        "newbob: divide the error change by the old error",
        _FLAG,
        default_doc="newbob_relative_error_div_by_old",
    ),
    _surface("newbob_relative_error_div_by_old", "RETURNN's older name of relative_error_div_by_old", _FLAG, False),
    _surface(
        "learning_rate_decay",
        "newbob: factor (or function) for a rate decrease",
        _DECAY,
        default_doc="newbob_learning_rate_decay",
    ),
    _surface("newbob_learning_rate_decay", "RETURNN's older name of learning_rate_decay", _DECAY, 0.5),
    _surface(
        "learning_rate_growth",
        "newbob: factor (or function) for a rate increase",
        _DECAY,
        default_doc="newbob_learning_rate_growth",
    ),
    _surface("newbob_learning_rate_growth", "RETURNN's older name of learning_rate_growth", _DECAY, 1.0),
    _surface(
        "newbob_relative_error_threshold",
        "newbob_rel, newbob_multi_epoch: decay where the relative change is above it",
        number(),
        -0.01,
    ),
    _surface(
        "newbob_relative_error_grow_threshold",
        "newbob_multi_epoch: grow where the relative change is below it",
        number(),
        default_doc="newbob_relative_error_threshold",
    ),
    _surface("newbob_error_threshold", "newbob_abs: decay where the change is above it", number(), -0.01),
    _surface("newbob_multi_num_epochs", "newbob_multi_epoch: epochs per measurement", integer(1), 5),
    _surface(
        "newbob_multi_update_interval",
        "newbob_multi_epoch: epochs between changes",
        integer(1),
        default_doc="newbob_multi_num_epochs",
    ),
    # learning rate of each step (engine/lr_schedule.py checks them together)
    _surface(
        "dynamic_learning_rate",
        "dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs): the rate of each step",
        _dynamic_learning_rate,
    ),
    _surface(
        "learning_rate_piecewise_steps",
        "step boundaries of a piecewise-linear schedule",
        _numbers(number(above=0), "numbers > 0"),
    ),
    _surface(
        "learning_rate_piecewise_values",
        "the rates at 0 and at each boundary (one more than the steps)",
        _numbers(number(0), "numbers >= 0"),
    ),
    _surface(
        "learning_rate_piecewise_by_epoch_continuous",
        "the piecewise boundaries count epochs (fractional), not steps",
        _FLAG,
        False,
    ),
    _surface(
        "learning_rate_warmup_steps",
        "linear warm-up over this many steps (then inverse square root decay)",
        integer(0),
        0,
    ),
    _surface("learning_rate_invsqrt_norm", "inverse square root decay: rate * sqrt(norm / step)", number(above=0)),
    _surface("learning_rate_cosine_decay_steps", "cosine decay over this many steps", integer(1)),
    _surface("learning_rate_cosine_decay_min_factor", "cosine decay ends at this factor of the rate", number(0, 1)),
    # logging, seeds, checks
    _surface(
        "random_seed",
        "seeds model creation and every epoch (a resumed epoch equals an uninterrupted one)",
        integer(),
        42,
    ),
    _surface("log", "log file(s) besides stdout", _log_files, []),
    _surface("log_verbosity", "1-5 (5: a line per step)", _log_verbosity, 4),
    _surface("log_step_interval", "read losses from the device every n steps", integer(1), 50),
    _own(
        "log_progress_interval",
        "seconds between progress lines with the ETA of the epoch and the training",
        number(0),
        30.0,
    ),
    _own("log_progress_file", "a file that always holds the newest progress line", path()),
    _surface("use_tensorboard", "TensorBoard scalars (pip install -e '.[tensorboard]')", _FLAG, False),
    _surface(
        "tensorboard_opts",
        "{'log_dir': 'tb', 'log_every_n_train_steps': 100, 'required': True}; required False: a warning without the "
        "package",
        options({"log_dir": path(), "log_every_n_train_steps": integer(1), "required": _FLAG}, what="tensorboard_opts"),
    ),
    _surface("check_unused_config_keys", "refuse keys that look like misspelt known keys", _FLAG, True),
    _surface(
        "torch_distributed",
        "{} or {'reduce_type': 'grad' | 'param', 'param_sync_step': n}: several GPUs (torchrun); checked at launch",
        None,
    ),
    # time-saving mechanisms
    _tuning(
        "store_checkpoints_in_background",
        "a writer thread stores an epoch's files from copies while the next epoch trains",
        _FLAG,
        True,
    ),
    _tuning(
        "data_loader_pacing",
        "on a GPU, a single loader thread ahead of the loop works only while the loop waits or runs backward",
        _FLAG,
        True,
    ),
    _tuning(
        "pin_training_loop",
        "on a GPU, the loop and torch's backward thread share one CPU; loaders use the others",
        _FLAG,
        True,
    ),
    # other backends
    _ignored("backend", "refused unless 'torch'", text()),
    _ignored("use_tensorflow", "refused where True", _FLAG, False),
    _ignored("use_horovod", "refused where True outside torchrun (torch_distributed is the way here)", _FLAG, False),
    _ignored("target", "TensorFlow's default loss target; ignored"),
    _ignored("extern_data", "mainline RETURNN / TensorFlow; ignored (mainline step functions are refused)"),
    _ignored("num_inputs", "TensorFlow; ignored"),
    _ignored("num_outputs", "TensorFlow; ignored"),
    _ignored(
        "model_outputs", "mainline RETURNN's output descriptions; ignored (the config's export does the ONNX export)"
    ),
    _ignored("tf_log_dir", "TensorFlow's TensorBoard folder; ignored"),
    _ignored("forward_override_hdf_output", "TensorFlow's forward_to_hdf; ignored"),
]

SCHEMA: Dict[str, Key] = {}
for _key in _KEYS:
    assert _key.name not in SCHEMA and _key.group in GROUPS, _key.name
    SCHEMA[_key.name] = _key

KNOWN_CONFIG_KEYS = frozenset(SCHEMA)
SUGGESTED_KEYS = frozenset(k.name for k in _KEYS if k.suggest)  # what a misspelt key may have meant


def default_of(name: str) -> Any:
    """The value a reader gets for an unset key: the declared default, None for a key that is not declared."""
    key = SCHEMA.get(name)
    return key.default_value() if key is not None else None


def keys_of_group(group: str) -> Iterable[Key]:
    """The keys of `group`, in the table's order."""
    return (key for key in _KEYS if key.group == group)


# ---- the reference and --help ------------------------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/config.md: every key by group with default and meaning."""
    lines = [
        "# Config keys",
        "",
        "Generated from `i6_minireturnn/config_schema.py` (`python -m i6_minireturnn.config_schema > docs/config.md`;",
        "a test keeps it current). Every key is checked when the run starts: a value of the wrong type or range, or",
        "a key that looks like a misspelt one of these, stops the run with the key named. Defaults apply where a key",
        "is unset or set to `None`. How the keys work together: [running.md](running.md).",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for key in keys_of_group(group):
            meaning = key.doc.replace("|", "\\|")
            default = key.default_text().replace("|", "\\|")
            lines.append(f"| `{key.name}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def help_text(width: int = 116) -> str:
    """The key names by group, for ``--help``."""
    import textwrap

    parts = []
    for group, title in GROUPS.items():
        names = " ".join(key.name for key in keys_of_group(group))
        parts.append(f"{title}:\n" + textwrap.fill(names, width, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference_markdown(), end="")
