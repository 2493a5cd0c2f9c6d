"""Each config key is declared once (config_schema.py): its default reaches every reader, the runtime reads no
undeclared key, and the generated reference docs/config.md is current."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest

from i6_minireturnn.config import Config
from i6_minireturnn.config_schema import GROUPS, KNOWN_CONFIG_KEYS, SCHEMA, reference_markdown
from i6_minireturnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "i6_minireturnn"
GETTERS = {
    "typed_value",
    "opt_typed_value",
    "value",
    "int",
    "float",
    "bool",
    "bool_or_other",
    "is_true",
    "list",
    "int_list",
    "float_list",
    "get_of_type",
    "has",
}


def _reads() -> Iterator[Tuple[str, int, str, ast.Call]]:
    """(file, line, key, call) of every config getter call with a literal key in the runtime."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            if node.func.attr not in GETTERS or not receiver.endswith("config"):
                continue
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield str(path.relative_to(REPO)), node.lineno, node.args[0].value, node


def test_the_runtime_reads_only_declared_keys():
    reads = list(_reads())
    assert len(reads) > 80  # the scan sees the readers
    undeclared = sorted({f"{f}:{line} {key}" for f, line, key, _ in reads if key not in SCHEMA})
    assert undeclared == []


def _given_default(call: ast.Call) -> Optional[ast.AST]:
    given = call.args[1:2] or [k.value for k in call.keywords if k.arg == "default"]
    return given[0] if given else None


def test_no_reader_repeats_a_declared_default():
    """A reader gives no default of its own for a declared key: the schema's default is the one that applies. Only a
    key whose default is another key's value (``default_doc`` names it) is read with that value as its default."""
    repeated = []
    for f, line, key, call in _reads():
        given = _given_default(call)
        if key not in SCHEMA or given is None:
            continue
        derived = SCHEMA[key].default is None and SCHEMA[key].default_doc is not None
        if not derived or isinstance(given, ast.Constant):
            repeated.append(f"{f}:{line} {ast.unparse(call)}")
    assert repeated == []


def test_unset_keys_read_their_declared_default():
    config = Config()
    assert config.int("num_epochs") == 5
    assert config.value("task") == "train"
    assert config.bool("store_checkpoints_in_background") is True
    assert config.float("learning_rate") == 1.0
    assert config.int("max_seqs") == -1
    assert config.list("log") == []
    assert config.value("model") is None
    assert config.int("num_epochs", 7) == 7  # a default given by the caller (a custom engine) still wins
    assert config.typed_value("undeclared_key_of_a_user") is None


def test_a_declared_default_is_a_fresh_copy():
    config = Config()
    config.typed_value("eval_datasets")["x"] = {"class": "HDFDataset"}
    assert config.typed_value("eval_datasets") == {}


def test_a_set_key_wins_over_the_default():
    config = Config({"num_epochs": 3, "task": "forward"})
    assert config.int("num_epochs") == 3 and config.value("task") == "forward"


def test_every_key_has_a_group_and_a_doc():
    assert all(key.group in GROUPS and key.doc and "\n" not in key.doc for key in SCHEMA.values())
    assert KNOWN_CONFIG_KEYS == set(SCHEMA)


def test_a_misspelt_key_names_the_declared_key():
    config = Config({"num_epoch": 3})
    with pytest.raises(ConfigError, match="did you mean 'num_epochs'"):
        config.check_misspelt_keys()


def test_the_reference_is_current():
    """docs/config.md is generated: python -m i6_minireturnn.config_schema > docs/config.md"""
    assert (REPO / "docs" / "config.md").read_text() == reference_markdown()
    for key in SCHEMA.values():
        assert f"`{key.name}`" in reference_markdown()
