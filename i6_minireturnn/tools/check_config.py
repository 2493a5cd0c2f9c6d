"""Checks a config before it is queued: loads it as the runtime does and checks what its task needs, without building
a model, touching a GPU or reading a data file.

    python -m i6_minireturnn.tools.check_config CONFIG [CONFIG ...] [--task train|eval|forward|...] [++key value ...]

The checks the runtime makes when it starts run here with the same messages: the config code runs (python_epilog
included) with the ``returnn.*`` names installed; step functions written for RETURNN mainline or with a signature the
runtime cannot call, misspelt and unsupported keys, the type and range of each key are refused. Then what the runtime
finds only once it builds the run: the functions the task calls exist (``get_model``, ``train_step`` /
``forward_step``; a ``CustomEngine`` decides that itself), and every dataset the task reads names a known class that
takes its options (nested datasets too). Datasets are not created, and the cache manager is not asked: paths stay as
written, nothing is copied.

``--task`` sets the config key ``task``, as on the runtime's command line. Exit status 0: fine; 1: one line on
stderr, ``ERROR: config file F, line N, key 'K': <the runtime's message>``; 3: the check itself failed (a bug here).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import re
import sys
import traceback
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .. import compat
from ..config import Config, _looks_line_based, load_config, split_args
from ..config_validation import check_unsupported_keys, validate_config
from ..errors import ConfigError, UserError
from . import program_name
from .dataset_source import run_tool

INTERNAL_ERROR = 3

# (function key, its purpose as the engine names it when it is missing) that each task calls
TASK_FUNCTIONS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "train": (("train_step", "the training step"), ("get_model", "creates the model")),
    "initialize_model": (("train_step", "the training step"), ("get_model", "creates the model")),
    "eval": (("train_step", "computes the losses to evaluate"), ("get_model", "creates the model")),
    "forward": (("forward_step", "the forward step"), ("get_model", "creates the model")),
    "compute_priors": (("forward_step", "sums the posteriors for the prior"), ("get_model", "creates the model")),
    "nop": (),
}


class Problem(UserError):
    """A runtime error with what it is about: the config key (where known) and names the message quotes that do not
    locate it (`unlocated`, e.g. a dataset's name: its option's line is wanted, not the name's)."""

    def __init__(self, error: UserError, key: Optional[str] = None, unlocated: Sequence[str] = ()):
        super().__init__(str(error))
        self.error = error
        self.key = key
        self.unlocated = set(unlocated)


def check_config(files: Sequence[str], overrides: Sequence[str] = (), *, dataset: Optional[str] = None) -> str:
    """Loads and checks the config; returns a summary of what was checked, raises :class:`Problem` for the first
    problem the runtime would stop at. With `dataset`, the config is checked for what the dataset tools (hdf_dump)
    read, that one dataset, instead of for its task."""
    with _paths_as_written():
        try:
            config = load_config(files, overrides)
        except UserError as exc:
            raise Problem(exc) from exc
    try:
        compat.check_step_functions(config)
        _check_device(config)
        config.check_misspelt_keys()
        check_unsupported_keys(config)
        validate_config(config)
    except Problem:
        raise
    except UserError as exc:
        raise Problem(exc) from exc
    if dataset is not None:
        return f"Config {', '.join(config.files)} is fine: dataset {_check_one_dataset(config, dataset)}"
    task = config.value("task")
    custom_engine = _custom_engine(config)
    datasets = _check_task_datasets(config, task, required=custom_engine is None)
    functions = [] if custom_engine is not None else _check_task_functions(config, task)
    checked = [f"task {task!r}"] + ([f"CustomEngine {custom_engine.__name__}"] if custom_engine else [])
    checked += [f"functions {', '.join(functions)}"] if functions else []
    checked += [f"datasets {', '.join(datasets)}"] if datasets else []
    return f"Config {', '.join(config.files)} is fine: " + "; ".join(checked)


def _check_device(config: Config) -> None:
    """An unknown ``device`` name, with the runtime's message; a CUDA device is not looked for (no GPU here)."""
    device = config.peek("device", None)
    if device is None or str(device) == "gpu" or str(device).startswith("cuda"):
        return
    from ..engine.device import resolve_device

    try:
        resolve_device(config)
    except UserError as exc:
        raise Problem(exc, "device") from exc


def _custom_engine(config: Config) -> Optional[type]:
    """The config's ``CustomEngine`` class (None without one); refused as the runtime refuses it."""
    from ..__main__ import create_engine
    from ..engine.engine import Engine

    engine_class = config.peek("CustomEngine", None)
    if not engine_class or engine_class is Engine:
        return None  # the runtime's `CustomEngine or Engine`
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        try:
            create_engine(config)  # raises the runtime's error for this value, before an engine is made
        except UserError as exc:
            raise Problem(exc, "CustomEngine") from exc
    return engine_class


def _check_task_functions(config: Config, task: str) -> List[str]:
    """The functions the task calls are set (their signatures were checked with the runtime's start checks)."""
    from ..engine.engine import Engine

    for key, purpose in TASK_FUNCTIONS.get(task, ()):
        try:
            # the engine's own lookup, which needs nothing of the engine but its config
            Engine._config_function(SimpleNamespace(config=config), key, purpose)
        except UserError as exc:
            raise Problem(exc, key) from exc
    return [key for key, _ in TASK_FUNCTIONS.get(task, ())]


def _check_task_datasets(config: Config, task: str, *, required: bool) -> List[str]:
    """Checks the datasets the task reads, in the engine's order; `required`: a missing one is an error (without a
    CustomEngine, which may bring its own). Returns their names."""
    if task not in TASK_FUNCTIONS:
        from ..__main__ import execute_task

        try:
            execute_task(config, _NoEngine())  # the runtime's error for a task that does not exist
        except UserError as exc:
            raise Problem(exc, "task") from exc
        return []
    datasets: List[Tuple[str, str, Any]] = []  # (config key, dataset name, options)
    if task in ("train", "initialize_model", "compute_priors"):
        if config.has("train"):
            datasets.append(("train", "train", config.peek("train")))
        elif required:  # the engine's messages (init_train, init_compute_priors)
            message = f"Config key 'train' (the training dataset) is missing in {config.where()}"
            if task == "compute_priors":
                message = (
                    f"Task compute_priors needs the dataset 'train' (ReturnnComputePriorJobV2's prior_data) in "
                    f"{config.where()}"
                )
            raise Problem(ConfigError(message), "train")
    if task in ("train", "initialize_model", "eval"):
        for name in ("dev", "eval") if task == "eval" else ("dev",):
            if config.has(name):
                datasets.append((name, name, config.peek(name)))
        for name, opts in (config.peek("eval_datasets", {}) or {}).items():
            datasets.append(("eval_datasets", name, opts))
        if task == "eval" and not datasets and required:
            message = f"Task eval needs 'dev', 'eval' or 'eval_datasets' in {config.where()}"
            raise Problem(ConfigError(message), "dev")
    if task == "forward":
        from ..engine.inference import forward_dataset_options

        try:
            key, opts = forward_dataset_options(config)
        except UserError as exc:
            raise Problem(exc, "forward_data" if config.has("forward_data") else "forward") from exc
        datasets.append((key, key, opts))
    for key, name, opts in datasets:
        try:
            check_dataset(opts, name)
        except UserError as exc:
            raise Problem(exc, key, unlocated=name.split("/")) from exc
    return [name for _, name, _ in datasets]


def _check_one_dataset(config: Config, key: str) -> str:
    """Checks the dataset under config key `key` (a tool's ``--dataset``); returns its name."""
    if not config.has(key):
        raise Problem(ConfigError(f"Config key {key!r} (the dataset to read) is missing in {config.where()}"), key)
    try:
        check_dataset(config.peek(key), key)
    except UserError as exc:
        raise Problem(exc, key, unlocated=[key]) from exc
    return key


def check_dataset(opts: Any, name: str) -> None:
    """What creating the dataset would refuse in its options, without creating it: the class exists in the registry
    and its constructor takes every option; datasets inside it (``dataset``, ``datasets``) likewise."""
    from ..data.dataset import Dataset, check_dataset_kwargs
    from ..data.registry import get_dataset_class, unwrap_multi_proc_dataset

    if isinstance(opts, Dataset):
        return  # created by the config code itself
    if not isinstance(opts, dict):
        raise ConfigError(f"Dataset {name!r} must be a dict with a 'class' entry, got {type(opts).__name__}")
    if "class" not in opts:
        raise ConfigError(f"Dataset {name!r} has no 'class' entry: {opts!r}")
    if opts["class"] == "MultiProcDataset":
        check_dataset(unwrap_multi_proc_dataset(opts, name=name), name)
        return
    kwargs = dict(opts)
    class_name = kwargs.pop("class")
    cls = class_name if isinstance(class_name, type) else get_dataset_class(class_name)
    kwargs.setdefault("name", name)
    check_dataset_kwargs(cls, kwargs, name)
    inner = kwargs.get("dataset")
    if isinstance(inner, (dict, Dataset)):
        check_dataset(inner, f"{name}/dataset")
    parts = kwargs.get("datasets")
    items = parts.items() if isinstance(parts, dict) else enumerate(parts) if isinstance(parts, (list, tuple)) else ()
    for part, part_opts in items:
        if isinstance(part_opts, (dict, Dataset)):
            check_dataset(part_opts, f"{name}/{part}")


class _NoEngine:
    """Stands for the engine where only the runtime's task dispatch is asked: every engine method does nothing."""

    def __getattr__(self, name: str) -> Any:
        """Any engine method: one that does nothing."""
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _paths_as_written() -> Iterator[None]:
    """While the config code runs, the cache manager hands back the path it is given: the check copies nothing to
    this machine (on the node the runtime asks it)."""
    from .. import cache_manager

    original = cache_manager.cached_path
    cache_manager.cached_path = lambda path, *args, **kwargs: path
    try:
        yield
    finally:
        cache_manager.cached_path = original


# ---- where a problem is: config file, line, key ------------------------------------------------------------------


def describe(problem: Problem, files: Sequence[str], overrides: Sequence[str]) -> str:
    """One line: ``config file F, line N, key 'K': <message>`` (each part where it is known)."""
    message = " ".join(part.strip() for part in str(problem.error).splitlines() if part.strip())
    override_keys = {arg[2:] for arg in overrides[0::2]}
    file, line, key = _code_location(problem.error, files)
    key = problem.key or key or _key_in_message(message, set(_bindings_of_files(files)) | override_keys)
    if key is not None and key in override_keys and file is None:
        return f"command line ++{key}: {message}"
    if file is None and key is not None:
        file, line = _binding(files, key, message, problem.unlocated | {key})
    if file is None:
        file = next((f for f in files if f in message), files[-1])
    where = [f"config file {file}"] + ([f"line {line}"] if line else []) + ([f"key {key!r}"] if key else [])
    return f"{', '.join(where)}: {message}"


def _code_location(error: BaseException, files: Sequence[str]) -> Tuple[Optional[str], Optional[int], Optional[str]]:
    """(file, line, key) of an error raised while the config code ran: the traceback's last line in a config file
    (a syntax error: its line), and the key that statement sets."""
    cause = error.__cause__ or error.__context__
    file = line = None
    if isinstance(cause, SyntaxError) and cause.filename in files:
        file, line = cause.filename, cause.lineno
    elif cause is not None and cause.__traceback__ is not None:
        frames = [fr for fr in traceback.extract_tb(cause.__traceback__) if fr.filename in files]
        if frames:
            file, line = frames[-1].filename, frames[-1].lineno
    if file is None:
        return None, None, None
    return file, line, _key_set_at(file, line)


def _key_in_message(message: str, names: Set[str]) -> Optional[str]:
    """The config key a runtime message is about: the first quoted name, or the name it starts with, that is one of
    the keys set (`names`): ``Config key 'x' ...``, ``train_step(...) in ...``, ``backend = 'tf' ...``."""
    quoted = re.findall(r"'([A-Za-z_]\w*)'", message)
    leading = re.match(r"([A-Za-z_]\w*)\s*[(=]", message)
    for name in quoted + ([leading.group(1)] if leading else []):
        if name in names:
            return name
    return None


def _binding(files: Sequence[str], key: str, message: str, unlocated: Set[str]) -> Tuple[Optional[str], Optional[int]]:
    """(file, line) where `key` gets its value (the last file that sets it); within that statement, the line of
    the first name the message quotes (e.g. a dataset option, not one of `unlocated`) where it is written there."""
    found: Tuple[Optional[str], Optional[int]] = (None, None)
    for file in files:
        entry = _bindings(file).get(key)
        if entry is not None:
            line, node = entry
            found = (file, _line_of_quoted(node, message, unlocated) or line)
    return found


def _line_of_quoted(node: Optional[ast.AST], message: str, unlocated: Set[str]) -> Optional[int]:
    """The line in `node` of the first name quoted in `message` (not one of `unlocated`) that is written there as a
    string or a keyword argument."""
    if node is None:
        return None
    lines: Dict[str, int] = {}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            lines.setdefault(sub.value, sub.lineno)
        elif isinstance(sub, ast.keyword) and sub.arg:
            lines.setdefault(sub.arg, sub.lineno)
    for name in re.findall(r"'([^']+)'", message):
        if name not in unlocated and name in lines:
            return lines[name]
    return None


def _key_set_at(file: str, line: Optional[int]) -> Optional[str]:
    """The config key that the top-level statement at `line` of `file` sets, if any (the innermost such statement:
    ``train = ...`` inside an ``if`` block)."""
    found = None
    for statement, names in _statements(file):
        if names and line is not None and statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            found = names[0]
    return found


def _bindings_of_files(files: Sequence[str]) -> Dict[str, Tuple[int, Optional[ast.AST]]]:
    """:func:`_bindings` of several config files; a later file's setting of a key wins, as when they are loaded."""
    names: Dict[str, Tuple[int, Optional[ast.AST]]] = {}
    for file in files:
        names.update(_bindings(file))
    return names


def _bindings(file: str) -> Dict[str, Tuple[int, Optional[ast.AST]]]:
    """{key: (line, statement)} of the names a config file sets at its top level (the last setting of each): Python
    assignments, definitions and imports; ``key value`` lines; the entries of a JSON config (no statement there)."""
    content = _read(file)
    if content.lstrip().startswith("{") or _looks_line_based(content.strip()):
        return _plain_bindings(content)
    names: Dict[str, Tuple[int, Optional[ast.AST]]] = {}
    for statement, statement_names in _statements(file):
        for name in statement_names:
            names[name] = (statement.lineno, statement)
        if isinstance(statement, ast.Delete):  # `del name`: the key is gone again
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    names.pop(target.id, None)
    return names


def _statements(file: str) -> List[Tuple[ast.stmt, List[str]]]:
    """The top-level statements of a Python config file with the names each sets; none where it does not parse."""
    try:
        tree = ast.parse(_read(file))
    except SyntaxError:
        return []
    return [(statement, _names_set_by(statement)) for statement in _top_level_statements(tree.body)]


def _read(file: str) -> str:
    """The text of a config file ("" where it cannot be read: the location is then left out, not the error)."""
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _plain_bindings(content: str) -> Dict[str, Tuple[int, Optional[ast.AST]]]:
    """{key: (line, None)} of a JSON or line-based config."""
    names: Dict[str, Tuple[int, Optional[ast.AST]]] = {}
    is_json = content.lstrip().startswith("{")
    if is_json:
        try:
            keys = list(json.loads(content))
        except ValueError:
            keys = []
    for number, text in enumerate(content.splitlines(), 1):
        if is_json:
            for key in keys:
                if f'"{key}"' in text and key not in names:
                    names[key] = (number, None)
        elif text.strip() and not text.lstrip().startswith("#"):
            names[text.split()[0]] = (number, None)
    return names


def _top_level_statements(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run at the config's top level, also inside if / for / while / with / try blocks."""
    for statement in body:
        yield statement
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _top_level_statements(getattr(statement, field, []) or [])
        for handler in getattr(statement, "handlers", []) or []:
            yield from _top_level_statements(handler.body)


def _names_set_by(statement: ast.stmt) -> List[str]:
    """The names one statement sets in the config's namespace."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in statement.names]
    targets: List[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    names = []
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.append(node.id)
    return names


# ---- command line ------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code (0 fine, 1 a problem of the config, 3 a failure of the check)."""
    parser = argparse.ArgumentParser(prog=program_name(__file__), description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="+", help="config file(s), then ++key value overrides as for the runtime")
    parser.add_argument("--task", help="the task to check the config for (sets the config key task)")
    parser.add_argument("--dataset", help="check only the config and this dataset (config key), as hdf_dump reads it")
    args, more_overrides = parser.parse_known_args(argv)
    files, overrides = split_args(args.config)
    overrides = [*overrides, *more_overrides]
    if args.task is not None:
        overrides = [*overrides, "++task", args.task]

    def action() -> None:
        try:
            print(check_config(files, overrides, dataset=args.dataset))
        except Problem as problem:
            raise UserError(describe(problem, files, overrides)) from None

    try:
        return run_tool(action)
    except Exception:  # noqa: BLE001 - a failure of the check, not of the config: said as such, with its traceback
        traceback.print_exc()
        print(f"check_config: the check itself failed (exit status {INTERNAL_ERROR})", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
