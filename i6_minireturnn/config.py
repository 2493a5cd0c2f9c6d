"""Config: reads RETURNN-style config files (Python, JSON, line-based) and command-line overrides; typed getters."""

from __future__ import annotations

import ast
import difflib
import json
import operator
import os
import re
import shlex
import traceback
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config_rules import parse_bool
from .config_schema import KNOWN_CONFIG_KEYS, SUGGESTED_KEYS, default_of
from .errors import ConfigError

_NOT_SET = object()
# A getter called without a default gets the key's declared default (config_schema.py), None for undeclared keys.
_DECLARED = object()


def _default(key: str, default: Any) -> Any:
    return default_of(key) if default is _DECLARED else default


_LINE_CONFIG_RE = re.compile(r"^\s*(#.*)?$|^\s*[A-Za-z_][\w.\-]*\s+\S")
# Names every Python config has and which are no config keys.
_PYTHON_CONFIG_BUILTINS = {"config", "__file__", "__name__", "__builtins__"}
# Module-level constants of a config (FEATURE_DIM = 80): the config's own helpers, never settings of the runtime.
_CONSTANT_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class Config:
    """Holds the config keys of one run; every getter records which keys were read."""

    def __init__(self, items: Optional[Dict[str, Any]] = None):
        self.typed_dict: Dict[str, Any] = {}
        self.dict: Dict[str, List[str]] = {}  # line-based entries, as strings, like RETURNN
        self.files: List[str] = []
        self._read_keys: set = set()
        # keys whose value the command line set -> the value as given there (named in error messages)
        self._cmd_line_keys: Dict[str, str] = {}
        if items:
            self.typed_dict.update(items)

    # ---- loading -------------------------------------------------------------------------------------------------

    def load_file(self, filename: str) -> None:
        """Adds the keys of a config file; the format is detected from the content."""
        if not os.path.isfile(filename):
            raise ConfigError(f"Config file not found: {filename!r}")
        with open(filename, encoding="utf-8") as f:
            content = f.read()
        self.files.append(filename)
        stripped = content.strip()
        if stripped.startswith("{"):
            self._load_json(content, filename)
        elif stripped.startswith("#!") or filename.endswith(".py") or not _looks_line_based(stripped):
            self._exec_python(content, filename)
        else:
            self._load_lines(content, filename)

    def _load_json(self, content: str, filename: str) -> None:
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"JSON error in config file {filename}, line {exc.lineno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"JSON config file {filename} must hold an object at the top level")
        self.typed_dict.update(data)

    def _exec_python(self, content: str, filename: str) -> None:
        try:
            code = compile(content, filename, "exec")
        except SyntaxError as exc:
            line = (exc.text or "").rstrip()
            raise ConfigError(
                f"Python syntax error in config file {filename}, line {exc.lineno}: {exc.msg}\n    {line}"
            ) from None
        namespace = self.typed_dict  # functions defined in the config see the other keys as their globals
        namespace.update({"config": self, "__file__": filename, "__name__": "__returnn_config__"})
        try:
            exec(code, namespace)
        except Exception as exc:  # report the config's own line, not ours
            frames = [fr for fr in traceback.extract_tb(exc.__traceback__) if fr.filename == filename]
            where = f", line {frames[-1].lineno}" if frames else ""
            raise ConfigError(
                f"Error while running config file {filename}{where}: {type(exc).__name__}: {exc}"
            ) from exc

    def _load_lines(self, content: str, filename: str) -> None:
        for line_no, line in enumerate(content.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ConfigError(f"Config file {filename}, line {line_no}: expected 'key value', got {line!r}")
            self.add_line(parts[0], parts[1])

    def add_line(self, key: str, value: str) -> None:
        """Adds a line-based entry (string value, comma-separated lists), like RETURNN's ``key value`` lines."""
        if key in self.typed_dict:
            try:
                self.typed_dict[key] = _parse_override(value, self.typed_dict[key])
            except ValueError as exc:
                raise ConfigError(f"Cannot evaluate {key} {value!r} in {self.where()}: {exc}") from None
        else:
            self.dict[key] = value.split(",") if "," in value else [value]

    def parse_cmd_args(self, args: Sequence[str]) -> None:
        """Applies ``++key value`` / ``--key value`` pairs; each value is read by :func:`parse_cmd_value`."""
        args = list(args)
        if len(args) % 2:
            raise ConfigError(f"Command-line overrides must come as '++key value' pairs, got: {args}")
        for key, value in zip(args[0::2], args[1::2]):
            if not (key.startswith("++") or key.startswith("--")) or len(key) < 3:
                raise ConfigError(f"Expected '++key' or '--key' on the command line, got {key!r}")
            key = key[2:]
            self._cmd_line_keys[key] = value
            if value.startswith("+-"):  # RETURNN's way to pass a negative number: ++threshold +-0.1
                value = value[1:]
            self.dict.pop(key, None)
            try:
                self.typed_dict[key] = _parse_override(value, self.typed_dict.get(key, _NOT_SET))
            except ValueError as exc:
                raise ConfigError(f"Cannot evaluate {value!r} {self.origin(key)}: {exc}") from None

    def update(self, items: Dict[str, Any]) -> None:
        """Sets several typed keys."""
        self.typed_dict.update(items)

    def set(self, key: str, value: Any) -> None:
        """Sets one typed key."""
        self.dict.pop(key, None)
        self.typed_dict[key] = value

    # ---- getters -------------------------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """Whether the key is set (to anything but None)."""
        self._read_keys.add(key)
        if key in self.typed_dict:
            return self.typed_dict[key] is not None
        return key in self.dict

    def typed_value(self, key: str, default: Any = _DECLARED, index: Optional[int] = None) -> Any:
        """The value as the config has it (Python object); line-based entries come as strings. Every getter returns
        `default` for an unset key, or where none is given the key's declared default."""
        self._read_keys.add(key)
        return self.peek(key, _default(key, default), index)

    def peek(self, key: str, default: Any = None, index: Optional[int] = None) -> Any:
        """Like :func:`typed_value`, but the key does not count as read (for checks that look at every key)."""
        if key in self.typed_dict:
            value = self.typed_dict[key]
            if value is None:
                return default
        elif key in self.dict:
            parts = self.dict[key]
            value = parts[0] if len(parts) == 1 else parts
        else:
            return default
        if index is not None and isinstance(value, (list, tuple)):
            value = value[index]
        return value

    def opt_typed_value(self, key: str, default: Any = _DECLARED) -> Any:
        """Like :func:`typed_value`, but line-based (string) entries count as unset."""
        if key in self.typed_dict:
            return self.typed_value(key, default)
        return _default(key, default)

    def value(self, key: str, default: Any = _DECLARED, index: Optional[int] = None, list_join_str: str = ",") -> Any:
        """The value as a string (lists joined), or `default`."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            return _default(key, default)
        if isinstance(value, (list, tuple)):
            if index is not None:
                return str(value[index])
            return list_join_str.join(str(v) for v in value)
        return value if isinstance(value, str) else str(value)

    def int(self, key: str, default: Any = _DECLARED, index: int = 0) -> Any:
        """The value as an int; a clear error when it is something else."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            return _default(key, default)
        if isinstance(value, (list, tuple)):
            value = value[index]
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise self.type_error(key, value, "an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise self.type_error(key, value, "an integer")
            return int(value)
        try:
            return int(value)
        except ValueError:
            raise self.type_error(key, value, "an integer") from None

    def float(self, key: str, default: Any = _DECLARED, index: int = 0) -> Any:
        """The value as a float; a clear error when it is something else."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            return _default(key, default)
        if isinstance(value, (list, tuple)):
            value = value[index]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.type_error(key, value, "a number")
        try:
            return float(value)
        except ValueError:
            raise self.type_error(key, value, "a number") from None

    def bool(self, key: str, default: Any = _DECLARED, index: int = 0) -> Any:
        """The value as a bool (also from strings like 'true'/'0'); a clear error otherwise."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            return _default(key, default)
        if isinstance(value, (list, tuple)):
            value = value[index]
        parsed = parse_bool(value)
        if parsed is None:
            raise self.type_error(key, value, "a bool")
        return parsed

    def bool_or_other(self, key: str, default: Any = _DECLARED, index: int = 0) -> Any:
        """The value as a bool where it is one, else the value itself (e.g. a dict of options)."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            return _default(key, default)
        parsed = parse_bool(value)
        return value if parsed is None else parsed

    def is_true(self, key: str, default: Any = _DECLARED) -> bool:
        """Whether the key holds a true value."""
        return bool(self.bool_or_other(key, default))

    def list(self, key: str, default: Any = _DECLARED) -> list:
        """The value as a list (a single value becomes a one-element list)."""
        value = self.typed_value(key, _NOT_SET)
        if value is _NOT_SET:
            default = _default(key, default)
            return [] if default is None else default
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]

    def int_list(self, key: str, default: Any = _DECLARED) -> List[int]:
        """The value as a list of ints."""
        return [self._coerce(key, v, int, "a list of integers") for v in self.list(key, default)]

    def float_list(self, key: str, default: Any = _DECLARED) -> List[float]:
        """The value as a list of floats."""
        return [self._coerce(key, v, float, "a list of numbers") for v in self.list(key, default)]

    def get_of_type(self, key: str, types_: Any, default: Any = _DECLARED) -> Any:
        """The typed value if it is of `types_`, else `default`."""
        value = self.typed_value(key, _NOT_SET)
        return value if value is not _NOT_SET and isinstance(value, types_) else _default(key, default)

    def _coerce(self, key: str, value: Any, type_: type, what: str) -> Any:
        if isinstance(value, bool):
            raise self.type_error(key, value, what)
        try:
            return type_(value)
        except (TypeError, ValueError):
            raise self.type_error(key, value, what) from None

    # ---- diagnostics ---------------------------------------------------------------------------------------------

    def where(self) -> str:
        """Names the config file(s) for error messages."""
        if not self.files:
            return "the config"
        return "config file " + ", ".join(self.files)

    def source_of(self, key: str) -> str:
        """Where the key's value came from, as a noun (``(from ...)``): the command line or the config file(s).
        New messages use :meth:`origin`."""
        if key in self._cmd_line_keys:
            return f"the command line, ++{key}"
        return self.where()

    def origin(self, key: str) -> str:
        """Where the key's value was set, as error messages put it after the value: ``in config file x.config`` or
        ``given on the command line (++key value)``."""
        if key in self._cmd_line_keys:
            return f"given on the command line (++{key} {shlex.quote(self._cmd_line_keys[key])})"
        return f"in {self.where()}"

    def type_error(self, key: str, value: Any, expected: str) -> ConfigError:
        """The error for a key of the wrong type."""
        return ConfigError(
            f"Config key {key!r} must be {expected}, got {value!r} ({type(value).__name__}) {self.origin(key)}"
        )

    def user_keys(self) -> List[str]:
        """Keys the user set that look like settings: no functions, classes or modules, no private names (``_x``)
        and no constants (``FEATURE_DIM = 80``), which configs define for their own code."""
        keys = []
        for key, value in self.typed_dict.items():
            if key in _PYTHON_CONFIG_BUILTINS or not is_setting_name(key):
                continue
            if isinstance(value, (types.ModuleType, types.FunctionType, type)) or callable(value):
                continue
            keys.append(key)
        return keys + [key for key in self.dict if is_setting_name(key)]

    def misspelt_keys(self) -> Dict[str, str]:
        """Unknown keys that closely resemble a known key (which itself is unset): {given: meant}."""
        result = {}
        for key in self.user_keys():
            if key in KNOWN_CONFIG_KEYS or key in self._read_keys:
                continue
            candidates = [k for k in sorted(SUGGESTED_KEYS) if k not in self.typed_dict and k not in self.dict]
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.85)
            if close:
                result[key] = close[0]
        return result

    def check_misspelt_keys(self) -> None:
        """Raises for keys that look like typos of known keys (a misspelt key must not pass silently)."""
        if not self.bool("check_unused_config_keys"):
            return
        misspelt = self.misspelt_keys()
        if misspelt:
            lines = [
                f"{given!r} {self.origin(given)} (did you mean {meant!r}?)" for given, meant in sorted(misspelt.items())
            ]
            raise ConfigError(
                "Unknown config key(s): " + "; ".join(lines) + ". Set check_unused_config_keys = False to allow them."
            )

    def unread_keys(self) -> List[str]:
        """User keys that nothing read so far (reported at the end of a run)."""
        return sorted(k for k in self.user_keys() if k not in self._read_keys and k not in KNOWN_CONFIG_KEYS)


def split_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(config files, overrides) of a command line: leading arguments are config files; from the first ``++`` or
    ``--`` argument on, key/value overrides."""
    files: List[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith(("+", "-")):
            return files, list(argv[i:])
        files.append(arg)
    return files, []


def load_config(files: Sequence[str], overrides: Sequence[str] = ()) -> Config:
    """Reads the config files in order; the overrides are applied before (so config code can see them) and after
    (so they win over the files)."""
    if not files:
        raise ConfigError("No config file given")
    config = Config()
    config.parse_cmd_args(overrides)
    for filename in files:
        config.load_file(filename)
    config.parse_cmd_args(overrides)
    return config


def _looks_line_based(content: str) -> bool:
    """Line-based configs consist of ``key value`` lines only, which is never valid Python."""
    lines = content.splitlines()
    if not all(_LINE_CONFIG_RE.match(line) for line in lines):
        return False
    try:
        ast.parse(content)
    except SyntaxError:
        return True
    return False


def is_setting_name(key: str) -> bool:
    """Whether a config name can be a setting: private names (``_helper``) and constants (``NUM_CLASSES``) are the
    config's own, never reported as unread or misspelt keys."""
    return not key.startswith("_") and not _CONSTANT_NAME_RE.match(key)


def _parse_override(text: str, previous: Any) -> Any:
    """A value given on the command line (or a line-based entry for a key a Python config set).

    The text is read by :func:`parse_cmd_value`. As in RETURNN, a key whose config value is a string stays a
    string (``++name 123`` gives ``"123"``, ``++model out/2024-01`` stays a path); a quoted string literal loses
    its quotes there too. Raises ValueError for an expression that cannot be evaluated.
    """
    if isinstance(previous, str):
        try:
            value = parse_cmd_value(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return parse_cmd_value(text)


def parse_cmd_value(text: str) -> Any:
    """The value of a ``++key value`` argument, one rule for every key:

    1. a Python literal (``10``, ``1e-3``, ``-0.1``, ``True``, ``None``, ``"text"``, ``[1, 2]``, ``{"a": 1}``);
    2. else an expression of literals with arithmetic and list operators (``[1e-3] * 5``, ``2**10``,
       ``[0.1] * 3 + [0.01] * 2``): literals, list / tuple / dict / set displays, unary ``+ - ~`` and binary
       ``+ - * / // % **``; no names, calls, attributes, subscripts or comprehensions;
    3. else the text itself, as a string (``out/model``, ``cuda:0``, ``newbob_multi_epoch``).

    Raises ValueError where the text is such an expression but cannot be evaluated (``1/0``, ``[1] + 2``) or would
    be too large.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return text
    if not _is_plain_expression(tree.body):
        return text
    try:
        return _evaluate(tree.body)
    except ValueError:
        raise
    except (ArithmeticError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


_UNARY_OPS: Dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Invert: operator.invert,
}
_BINARY_OPS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
# Bounds that keep a command-line expression from taking the machine's memory or time (`[0] * 10**12`, `9**9**9`).
_MAX_ELEMENTS = 1_000_000
_MAX_INT_BITS = 4096


def _is_plain_expression(node: ast.AST) -> bool:
    """Whether the expression consists of literals, displays and arithmetic only."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_plain_expression(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_plain_expression(k) for k in node.keys) and all(
            _is_plain_expression(v) for v in node.values
        )
    if isinstance(node, ast.UnaryOp):
        return type(node.op) in _UNARY_OPS and _is_plain_expression(node.operand)
    if isinstance(node, ast.BinOp):
        return type(node.op) in _BINARY_OPS and _is_plain_expression(node.left) and _is_plain_expression(node.right)
    return False


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_evaluate(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(e) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_evaluate(e) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {_evaluate(k): _evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        return _bounded(_UNARY_OPS[type(node.op)](_evaluate(node.operand)))
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left), _evaluate(node.right)
    _check_operands(node.op, left, right)
    return _bounded(_BINARY_OPS[type(node.op)](left, right))


def _check_operands(op: ast.operator, left: Any, right: Any) -> None:
    """Refuses operations whose result would be too large, before computing it."""
    if isinstance(op, ast.Mult):
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                if len(seq) * max(count, 0) > _MAX_ELEMENTS:
                    raise ValueError(f"the result would have more than {_MAX_ELEMENTS} elements")
    if isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        if right * max(abs(left).bit_length() - 1, 1) > _MAX_INT_BITS:
            raise ValueError(f"the result would have more than {_MAX_INT_BITS} bits")


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ValueError(f"the result would have more than {_MAX_INT_BITS} bits")
    return value


_global_config: Optional[Config] = None


def set_global_config(config: Optional[Config]) -> None:
    """Sets the config of the running process (as Mini-RETURNN's ``get_global_config`` returns it)."""
    global _global_config
    _global_config = config


def get_global_config(raise_exception: bool = True, auto_create: bool = False) -> Optional[Config]:
    """The config of the running process."""
    global _global_config
    if _global_config is None and auto_create:
        _global_config = Config()
    if _global_config is None and raise_exception:
        raise RuntimeError("No global config set")
    return _global_config


__all__ = ["Config", "set_global_config", "get_global_config"]
