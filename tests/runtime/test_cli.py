"""The command line: one rule for ``++key value`` values, errors that name the command line, --help, --version, the
tools' usage lines, and config constants that are no settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from i6_minireturnn import __version__
from i6_minireturnn.config import Config, load_config, parse_cmd_value, split_args
from i6_minireturnn.errors import ConfigError

from .conftest import write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text, expected",
    [
        # 1. Python literals
        ("10", 10),
        ("1e-3", 1e-3),
        ("-0.1", -0.1),
        ("True", True),
        ("None", None),
        ("[1, 2]", [1, 2]),
        ("{'a': [1, 2]}", {"a": [1, 2]}),
        ("(1, 2)", (1, 2)),
        ('"newbob_multi_epoch"', "newbob_multi_epoch"),  # a quoted string loses its quotes
        ("'many'", "many"),
        ('"123"', "123"),  # quoting keeps a number a string
        # 2. expressions of literals with arithmetic and list operators
        ("[1e-3] * 5", [1e-3] * 5),
        ("2**10", 1024),
        ("[0.1]*3 + [0.01]*2", [0.1, 0.1, 0.1, 0.01, 0.01]),
        ("-(2 + 3) * 4", -20),
        ("1 / 4", 0.25),
        ("{'a': 2 * 8, 'b': [1] * 2}", {"a": 16, "b": [1, 1]}),
        # 3. anything else is the text itself
        ("out/model", "out/model"),
        ("cuda:0", "cuda:0"),
        ("eval", "eval"),
        ("newbob_multi_epoch", "newbob_multi_epoch"),
        ("a,b", "a,b"),
        ("inf", "inf"),
        ("", ""),
        ("__import__('os')", "__import__('os')"),  # no calls
        ("x.y", "x.y"),  # no attributes
        ("[1, 2][0]", "[1, 2][0]"),  # no subscripts
        ("[i for i in [1]]", "[i for i in [1]]"),  # no comprehensions
        ("lr * 2", "lr * 2"),  # no names
    ],
)
def test_one_rule_for_every_value(text, expected):
    assert parse_cmd_value(text) == expected
    assert type(parse_cmd_value(text)) is type(expected)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1/0", "ZeroDivisionError"),
        ("[1] + 2", "TypeError"),
        ("[0] * 10**9", "more than"),
        ("9**9**9", "more than"),
        ("{[1]: 2}", "unhashable"),
    ],
)
def test_expressions_that_cannot_be_evaluated_are_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_cmd_value(text)


def _config(tmp_path: Path, content: str, *overrides: str) -> Config:
    path = tmp_path / "a.config"
    path.write_text("#!rnn.py\n" + content)
    files, rest = split_args([str(path), *overrides])
    return load_config(files, rest)


def test_overrides_of_every_kind(tmp_path):
    config = _config(
        tmp_path,
        'learning_rate_control = "constant"\nbatch_size = 1000\nthreshold = 0.5\n',
        "++learning_rates",
        "[1e-3] * 5",
        "++learning_rate_control",
        '"newbob_multi_epoch"',
        "++batch_size",
        '"many"',
        "--threshold",
        "+-0.1",
        "++other",
        "-0.1",
        "++task",
        "eval",
        "++device",
        "cuda:0",
    )
    assert config.typed_value("learning_rates") == [1e-3] * 5
    assert config.typed_value("learning_rate_control") == "newbob_multi_epoch"  # quotes gone, as for batch_size
    assert config.typed_value("batch_size") == "many"
    assert config.typed_value("threshold") == -0.1 and config.typed_value("other") == -0.1
    assert config.typed_value("task") == "eval" and config.typed_value("device") == "cuda:0"


def test_a_string_in_the_config_stays_a_string(tmp_path):
    # as in RETURNN: the config's type decides where the config has a string (names, paths, dates)
    config = _config(
        tmp_path,
        'name = "abc"\nmodel = "out/model"\ndate = "x"\n',
        "++name",
        "123",
        "++model",
        "out/2024-01",
        "++date",
        "2024-11-25",
    )
    assert config.typed_value("name") == "123"
    assert config.typed_value("model") == "out/2024-01"
    assert config.typed_value("date") == "2024-11-25"
    # elsewhere the value is read by the rule: quote text that looks like arithmetic
    assert _config(tmp_path, "", "++date", "2024-11-25").typed_value("date") == 1988
    assert _config(tmp_path, "", "++date", "'2024-11-25'").typed_value("date") == "2024-11-25"


def test_a_bad_expression_names_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"given on the command line \(\+\+learning_rates 1/0\): ZeroDivision"):
        _config(tmp_path, "", "++learning_rates", "1/0")


def test_type_errors_name_the_command_line_or_the_file(tmp_path):
    config = _config(tmp_path, "num_epochs = 'x'\n", "++batch_size", "many")
    with pytest.raises(ConfigError, match=r"given on the command line \(\+\+batch_size many\)"):
        config.int("batch_size")
    with pytest.raises(
        ConfigError, match=r"'num_epochs' must be an integer, got 'x' \(str\) in config file .*a\.config"
    ):
        config.int("num_epochs")
    assert config.origin("batch_size") == "given on the command line (++batch_size many)"
    assert config.origin("num_epochs") == f"in config file {tmp_path / 'a.config'}"


def test_command_line_error_through_the_command_line(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path), "++log_verbosity", "five")
    assert code == 1
    assert (
        "'log_verbosity' must be an integer, got 'five' (str) given on the command line (++log_verbosity five)" in err
    )
    assert "in config file" not in err


def test_help_lists_tasks_keys_tools_and_docs(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for task in ("train", "eval", "forward", "compute_priors", "initialize_model"):
        assert f"\n  {task} " in out
    for key in ("batch_size", "learning_rates", "num_epochs", "device", "model", "train_step(*, model, data, run_ctx"):
        assert key in out
    # every tool with a command line is listed, and every listed tool exists
    tools = [p.stem for p in (REPO / "i6_minireturnn" / "tools").glob("*.py") if "\ndef main(" in p.read_text()]
    assert "hdf_dump" in tools and "average_checkpoints" in tools
    for tool in tools:
        assert f"python -m i6_minireturnn.tools.{tool} " in out, tool
    for tool in re.findall(r"python -m i6_minireturnn\.tools\.(\w+)", out):
        assert (REPO / "i6_minireturnn" / "tools" / f"{tool}.py").is_file(), tool
    for script in (REPO / "tools").glob("*.py"):
        assert f"tools/{script.name}" in out, script.name
    for script in re.findall(r"tools/([\w-]+\.py)", out):
        assert (REPO / "tools" / script).is_file(), script
    assert "README.md" in out and "docs/config.md" in out
    for doc in re.findall(r"docs/(\w+\.md)", out):
        assert (REPO / "docs" / doc).is_file(), doc
    readme = (REPO / "README.md").read_text()
    for doc in ("config", "running", "datasets", "tools", "distributed", "compat", "jobs", "architecture"):
        assert f"docs/{doc}.md" in out and f"`docs/{doc}.md`" in readme, doc  # the help and the README's map
    for doc in re.findall(r"`((?:docs|benchmarks)/\w+\.md)`", readme):
        assert (REPO / doc).is_file(), doc
    assert '"[1e-3] * 5"' in out  # the rule for values


def test_help_after_a_config_file_and_short_option(tmp_path, run_cli):
    config = write_config(tmp_path)
    assert run_cli(config, "--help")[0] == 0
    code, out, _ = run_cli(config, "++num_epochs", "1", "-h")
    assert code == 0 and "Tasks" in out
    assert not (tmp_path / "out").exists()  # nothing ran


def test_version_needs_no_config(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0
    assert out.startswith(f"i6-minireturnn {__version__} ") and "torch " in out


def test_no_arguments_shows_the_usage(run_cli):
    code, out, err = run_cli()
    assert code == 2 and "usage: python -m i6_minireturnn CONFIG" in err and "--help" in err


@pytest.mark.parametrize(
    "module, function, script",
    [
        ("hdf_dump", "main", "hdf_dump.py"),
        ("dump_dataset", "main_returnn", "dump-dataset.py"),
        ("average_checkpoints", "main", "torch_avg_checkpoints.py"),
        ("export_onnx", "main", "torch_export_to_onnx.py"),
        ("bliss_to_ogg_zip", "main", "bliss-to-ogg-zip.py"),
    ],
)
def test_tool_usage_names_the_root_script(monkeypatch, capsys, module, function, script):
    import importlib

    tool = importlib.import_module(f"i6_minireturnn.tools.{module}")
    monkeypatch.setattr(sys, "argv", [f"tools/{script}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        getattr(tool, function)(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python tools/{script} ")
    options = [line for line in out.splitlines() if line.startswith("  --")]
    assert options and all(len(line.split(None, 1)) == 2 for line in options if "  " in line.strip())


def test_tool_usage_as_started(tmp_path):
    by_module = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn.tools.hdf_dump", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert by_module.returncode == 0 and by_module.stdout.startswith("usage: python -m i6_minireturnn.tools.hdf_dump ")
    by_script = subprocess.run(
        [sys.executable, "tools/dump-dataset.py", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert by_script.returncode == 0 and by_script.stdout.startswith("usage: python tools/dump-dataset.py ")
    assert "--dump_prefix" in by_script.stdout and "file name prefix" in by_script.stdout


# ---- constants and private names of a config ----------------------------------------------------------------------


def test_constants_and_private_names_are_no_settings():
    config = Config({"FEATURE_DIM": 80, "NUM_CLASSES": 10, "_helper": 1, "num_epoch": 3, "my_value": 2, "LR2": 1})
    assert config.unread_keys() == ["my_value", "num_epoch"]
    assert config.misspelt_keys() == {"num_epoch": "num_epochs"}
    config = Config({"NUM_EPOCH": 3, "LEARNING_RAT": 0.1})
    assert config.misspelt_keys() == {} and config.unread_keys() == []


def test_constants_not_reported_at_the_end_of_a_run(tmp_path, run_cli):
    config = write_config(tmp_path, "FEATURE_DIM = 80\nNUM_CLASSES = 3\n_PRIVATE = 1\nmy_setting = 2\n")
    code, out, err = run_cli(config, "++task", "nop")
    assert code == 0, err
    note = [line for line in out.splitlines() if line.startswith("Note: config keys nothing read")]
    assert note and "my_setting" in note[0]
    assert "FEATURE_DIM" not in note[0] and "NUM_CLASSES" not in note[0] and "_PRIVATE" not in note[0]


def test_misspelt_key_names_where_it_was_given(tmp_path, run_cli):
    config = write_config(tmp_path, "batch_drop_lst = True\n")
    code, _, err = run_cli(config, "++max_seq_lenght", "10")
    assert code == 1
    assert "'max_seq_lenght' given on the command line (++max_seq_lenght 10) (did you mean 'max_seq_length'?)" in err
    assert f"'batch_drop_lst' in config file {config} (did you mean 'batch_drop_last'?)" in err, err
