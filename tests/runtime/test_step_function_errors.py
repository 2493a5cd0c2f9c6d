"""Step functions and hooks whose signature cannot take the runtime's call stop the run before anything is built,
naming the function, the config file and what to change; a missing data key names the keys the batch has."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.data.collate import Batch, MissingDataKeyError, collate_batch, map_tensors
from i6_minireturnn.errors import ConfigError
from i6_minireturnn.step_functions import check_config_functions

from .conftest import write_config

FORWARD = """
task = "forward"
forward = dev
allow_random_model_init = True

def forward_step(*, model, data, run_ctx, **kwargs):
    model(data["data"])

def forward_init_hook(run_ctx, **kwargs):
    pass

def forward_finish_hook(run_ctx, **kwargs):
    pass
"""


@pytest.mark.parametrize(
    "extra, function, expected",
    [
        (
            "def train_step(*, model, data, run_ctx):\n    pass\n",
            "train_step(*, model, data, run_ctx)",
            "must also take **kwargs (the runtime passes extra keyword arguments, as Mini-RETURNN)",
        ),
        (
            "def train_step(*, model, data):\n    pass\n",
            "train_step(*, model, data)",
            "has no parameter run_ctx",
        ),
        (
            "def train_step(model, data, run_ctx, /, **kwargs):\n    pass\n",
            "train_step(model, data, run_ctx, /, **kwargs)",
            "positional-only (before '/')",
        ),
        (
            "def train_step(*, model, data, run_ctx, scale, **kwargs):\n    pass\n",
            "train_step(*, model, data, run_ctx, scale, **kwargs)",
            "requires scale, which the runtime does not pass",
        ),
        (
            "def get_model(epoch, step):\n    return LinearModel()\n",
            "get_model(epoch, step)",
            "must also take **kwargs",
        ),
        (
            "class Model(LinearModel):\n    def __init__(self):\n        super().__init__()\nget_model = Model\n",
            "get_model = Model (a class; its __init__ takes ())",
            "has no parameter epoch, step",
        ),
        (
            "task = 'forward'\ndef forward_step(*, model, data, run_ctx):\n    pass\n",
            "forward_step(*, model, data, run_ctx)",
            "must also take **kwargs",
        ),
        (
            FORWARD + "def forward_init_hook(*, run_ctx, **kwargs):\n    pass\n",
            "forward_init_hook(*, run_ctx, **kwargs)",
            "must take run_ctx as its first positional argument",
        ),
        (
            FORWARD + "def forward_finish_hook(run_ctx):\n    pass\n",
            "forward_finish_hook(run_ctx)",
            "must also take **kwargs",
        ),
    ],
)
def test_signature_error_before_anything_runs(tmp_path, run_cli, extra, function, expected):
    config = write_config(tmp_path, extra)
    code, out, err = run_cli(config)
    assert code == 1, err
    assert f"ERROR: {function} in config file {config} (line " in err, err
    assert expected in err, err
    assert "The runtime calls " in err and "Traceback" not in err and "__fwd_compatible" not in err
    assert not (tmp_path / "out").exists()  # no model, no learning_rates file, no log


def test_model_file_function_names_its_file(tmp_path, run_cli):
    (tmp_path / "steps.py").write_text("def my_train_step(*, model, data, run_ctx):\n    pass\n")
    config = write_config(
        tmp_path,
        "import sys\nsys.path.insert(0, __file__.rsplit('/', 1)[0])\nfrom steps import my_train_step\n"
        "train_step = my_train_step\n",
    )
    code, _, err = run_cli(config)
    assert code == 1
    assert f"train_step = my_train_step(*, model, data, run_ctx) in config file {config} (defined in " in err, err
    assert "steps.py, line 1)" in err


@pytest.mark.parametrize(
    "extra",
    [
        "",  # the base config: get_model(epoch, step, **kwargs), train_step(*, model, data, run_ctx, **kwargs)
        "def train_step(*, model, data, **kwargs):\n    pass\n",  # run_ctx goes into **kwargs, as Mini-RETURNN
        "def train_step(*args, **kwargs):\n    pass\n",
        "import functools\ndef _step(*, model, data, run_ctx, scale, **kwargs):\n    pass\n"
        "train_step = functools.partial(_step, scale=2)\n",
        "class Model(LinearModel):\n    def __init__(self, *, epoch, step, **kwargs):\n        super().__init__()\n"
        "get_model = Model\n",
        "get_model = LinearModel\n",  # nn.Module's __init__ takes *args, **kwargs
        "def forward_step(*, model, data):\n    pass\n",  # task train does not call forward_step
        "def forward_init_hook(*, run_ctx):\n    pass\n",  # nor the hooks
    ],
)
def test_signatures_the_runtime_can_call_pass(extra):
    config = Config()
    exec(
        compile("from torch import nn\nclass LinearModel(nn.Module):\n    pass\n" + extra, "x.config", "exec"),
        config.typed_dict,
    )
    config.files.append("x.config")
    check_config_functions(config)


def test_custom_engine_that_calls_train_step_itself_is_not_checked():
    from i6_minireturnn.engine.engine import Engine

    class CustomEngine(Engine):
        def run_train_step(self, data, run_ctx, step_idx=0):
            raise NotImplementedError

    def train_step(*, model, data, run_ctx, step_idx):
        pass

    config = Config({"train_step": train_step, "CustomEngine": CustomEngine})
    check_config_functions(config)
    config.set("CustomEngine", None)
    with pytest.raises(ConfigError, match="requires step_idx"):
        check_config_functions(config)


# ---- a missing data key ----------------------------------------------------------------------------------------------


def _batch(dataset_name=None) -> Batch:
    seqs = [
        {"data": np.zeros((3, 2), np.float32), "classes": np.zeros(3, np.int32), "seq_tag": "a", "seq_idx": 0},
        {"data": np.zeros((2, 2), np.float32), "classes": np.zeros(2, np.int32), "seq_tag": "b", "seq_idx": 1},
    ]
    return collate_batch(seqs, dataset_name=dataset_name)


def test_missing_data_key_lists_the_keys_of_the_batch():
    batch = _batch("train")
    assert isinstance(batch, dict) and batch["data"].shape == (2, 3, 2)
    with pytest.raises(KeyError) as info:
        batch["audio_features"]  # noqa: B018 - the access is the test
    message = str(info.value)
    assert isinstance(info.value, MissingDataKeyError)
    assert message.startswith("data['audio_features'] (in ")
    assert "test_step_function_errors.py, line" in message
    assert "the batch has no key 'audio_features'" in message
    assert "the data keys of the dataset 'train': 'data', 'classes'" in message
    assert "'seq_tag', 'seq_idx'" in message and "'data:size1'" in message
    assert "the dataset:" in str(pytest.raises(KeyError, lambda: _batch()["x"]).value)  # name not known
    assert batch.get("audio_features") is None and "audio_features" not in batch  # other dict uses stay as they are


def test_batch_keeps_its_kind_through_copies_and_processes():
    batch = _batch("dev")
    for copy in (pickle.loads(pickle.dumps(batch)), map_tensors(batch, lambda t: t.clone())):
        assert type(copy) is Batch and copy.dataset_name == "dev" and set(copy) == set(batch)
    assert torch.equal(map_tensors(batch, lambda t: t + 1)["data"], batch["data"] + 1)
    plain = map_tensors(dict(batch), lambda t: t)
    assert type(plain) is dict


def test_missing_data_key_through_the_command_line(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        FORWARD + "def forward_step(*, model, data, run_ctx, **kwargs):\n    model(data['audio_features'])\n",
    )
    code, _, err = run_cli(config)
    assert code == 1
    assert "the batch has no key 'audio_features'" in err, err
    assert f"data['audio_features'] (in {config}, line " in err
    assert "'data', 'classes'" in err
