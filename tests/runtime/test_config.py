"""Config files in the three RETURNN forms, command-line overrides, typed getters, typo detection."""

from __future__ import annotations

import json

import pytest

from i6_minireturnn.config import Config, load_config, split_args
from i6_minireturnn.errors import ConfigError


def test_python_config_functions_see_module_globals(tmp_path):
    path = tmp_path / "a.config"
    path.write_text("#!rnn.py\nfactor = 3\ndef scaled(x):\n    return x * factor\nclass Box:\n    pass\n")
    config = Config()
    config.load_file(str(path))
    assert config.typed_value("scaled")(2) == 6
    assert isinstance(config.typed_value("Box"), type)
    config.set("factor", 5)  # functions read the live value, as in RETURNN
    assert config.typed_value("scaled")(2) == 10


def test_python_config_detected_without_shebang(tmp_path):
    path = tmp_path / "b.config"
    path.write_text("import os\nbatch_size = 1000\nlearning_rates = [0.1] * 2\n")
    config = Config()
    config.load_file(str(path))
    assert config.int("batch_size") == 1000 and config.float_list("learning_rates") == [0.1, 0.1]


def test_json_config(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"num_epochs": 4, "optimizer": {"class": "adam"}}))
    config = Config()
    config.load_file(str(path))
    assert config.int("num_epochs") == 4 and config.typed_value("optimizer") == {"class": "adam"}


def test_line_based_config(tmp_path):
    path = tmp_path / "d.config"
    path.write_text("# comment\ntask train\nnum_epochs 7\nlearning_rates 0.1,0.05\nuse_it true\n")
    config = Config()
    config.load_file(str(path))
    assert config.value("task") == "train"
    assert config.int("num_epochs") == 7
    assert config.float_list("learning_rates") == [0.1, 0.05]
    assert config.bool("use_it") is True


def test_overrides_are_literals_and_win(tmp_path):
    path = tmp_path / "e.config"
    path.write_text('#!rnn.py\nnum_epochs = 2\nmodel = "a/model"\nthreshold = 0.5\n')
    files, overrides = split_args(
        [str(path), "++num_epochs", "5", "--model", "b/model", "++threshold", "+-0.1", "++extra", "{'a': [1, 2]}"]
    )
    config = load_config(files, overrides)
    assert config.typed_value("num_epochs") == 5
    assert config.typed_value("model") == "b/model"
    assert config.typed_value("threshold") == -0.1
    assert config.typed_value("extra") == {"a": [1, 2]}


def test_overrides_visible_while_config_runs(tmp_path):
    path = tmp_path / "f.config"
    path.write_text("#!rnn.py\nsize = config.int('base', 1) * 2\n")
    config = load_config([str(path)], ["++base", "21"])
    assert config.typed_value("size") == 42


def test_typed_getters_and_errors(tmp_path):
    config = Config({"i": 3, "f": 2.5, "b": "yes", "l": [1, 2], "s": "x", "d": {}, "none": None})
    assert config.int("i") == 3 and config.float("i") == 3.0 and config.float("f") == 2.5
    assert config.bool("b") is True and config.list("l") == [1, 2] and config.list("s") == ["x"]
    assert config.has("i") and not config.has("none") and not config.has("missing")
    assert config.int("missing", 7) == 7 and config.value("i") == "3"
    with pytest.raises(ConfigError, match="'f' must be an integer"):
        config.int("f")
    with pytest.raises(ConfigError, match="'s' must be a number"):
        config.float("s")
    with pytest.raises(ConfigError, match="'d' must be a bool"):
        config.bool("d")


def test_misspelt_keys_found_but_user_variables_allowed(tmp_path):
    config = Config({"learning_rat": 0.1, "num_epoch": 3, "hidden_size": 512, "my_helper_value": 1, "def_fn": print})
    assert config.misspelt_keys() == {"learning_rat": "learning_rate", "num_epoch": "num_epochs"}
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        config.check_misspelt_keys()
    config.set("check_unused_config_keys", False)
    config.check_misspelt_keys()


def test_unread_keys_reported():
    config = Config({"num_epochs": 1, "my_constant": 2})
    config.int("num_epochs")
    assert config.unread_keys() == ["my_constant"]


def test_line_based_entry_for_a_python_key_follows_the_command_line_rule(tmp_path):
    py = tmp_path / "g.config"
    py.write_text('#!rnn.py\nlearning_rates = [0.1]\nname = "abc"\n')
    lines = tmp_path / "h.config"
    lines.write_text("learning_rates [1e-3] * 2\nname 123\n")
    config = load_config([str(py), str(lines)])
    assert config.typed_value("learning_rates") == [1e-3, 1e-3]
    assert config.typed_value("name") == "123"  # a string in the config stays a string
    lines.write_text("learning_rates 1/0\n")
    with pytest.raises(ConfigError, match=r"Cannot evaluate learning_rates '1/0' in config file .*ZeroDivision"):
        load_config([str(py), str(lines)])
