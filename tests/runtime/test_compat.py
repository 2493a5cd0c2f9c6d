"""Existing model and hook files that import ``returnn.*`` run unchanged through the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from i6_minireturnn import compat

from .conftest import BASE_CONFIG, write_config

SETUP_ROOT = Path(__file__).resolve().parent  # holds the package user_setup, like a recipe folder


def setup_config(tmp_path, imports: str, extra: str = ""):
    header = f"import sys\nsys.path.insert(0, {str(SETUP_ROOT)!r})\n{imports}\n"
    return write_config(tmp_path, header + extra)


def _seen(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run_ctx_seen.jsonl").read_text().splitlines()]


def test_get_run_ctx_in_get_model_forward_train_and_eval(tmp_path, run_cli):
    config = setup_config(tmp_path, "from user_setup.epoch_aware_model import get_model, train_step")
    code, _, err = run_cli(config, "++num_epochs", "3")
    assert code == 0, err
    seen = _seen(tmp_path)
    assert seen[0] == {
        "where": "get_model",
        "stage": "load",
        "epoch": 1,
        "step": 0,
        "device": "cpu",
        "engine": "Engine",
    }
    forward = [s for s in seen if s["where"] == "forward"]
    # train: 2 steps per epoch (global steps 0..5); eval of dev after each epoch sees the epoch's final step
    train_steps = [
        (s["epoch"], s["step"]) for s in forward if s["step"] not in (2, 4, 6) or s["epoch"] * 2 != s["step"]
    ]
    assert [(e, s) for e, s in train_steps][:2] == [(1, 0), (1, 1)]
    assert {(s["epoch"], s["step"]) for s in forward if s["step"] == s["epoch"] * 2} == {(1, 2), (2, 4), (3, 6)}
    assert all(s["stage"] == "train_step" for s in forward)
    # the model "augments" (zeroes its input) from epoch 2 on: train loss jumps to the constant-input level
    from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert data[1].error["ce"] != data[2].error["ce"]


def test_get_run_ctx_in_forward_and_after_resume(tmp_path, run_cli):
    config = setup_config(
        tmp_path,
        "from user_setup.epoch_aware_model import get_model, train_step\n"
        "from user_setup.hdf_hooks import forward_init_hook, forward_step, forward_finish_hook",
        "forward = dev\n",
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    (tmp_path / "run_ctx_seen.jsonl").unlink()
    assert run_cli(config, "++num_epochs", "3")[0] == 0  # resumes after epoch 2
    first = _seen(tmp_path)[0]
    assert (first["stage"], first["epoch"], first["step"]) == ("load", 3, 4)
    (tmp_path / "run_ctx_seen.jsonl").unlink()
    code, _, err = run_cli(config, "++task", "forward", "++load_epoch", "2")
    assert code == 0, err
    assert {(s["stage"], s["epoch"]) for s in _seen(tmp_path)} == {("load", 2), ("forward_step", 2)}


def test_custom_engine_subclass_rescales_loss(tmp_path, run_cli):
    config = setup_config(tmp_path, "from user_setup.scaled_engine import CustomEngine", "num_epochs = 1\n")
    code, out, err = run_cli(config)
    assert code == 0, err
    assert "CustomEngine step 0, max sizes" in out
    # loss scaled by 0: Adam saw zero gradients, so the parameters did not move from their initial values
    trained = torch.load(tmp_path / "out/model.001.pt", weights_only=False)["model"]
    assert run_cli(config, "++task", "initialize_model", "++model", "init/model")[0] == 0
    initial = torch.load(tmp_path / "init/model.001.pt", weights_only=False)["model"]
    assert all(torch.equal(trained[k], initial[k]) for k in trained)


def test_forward_hook_writes_hdf_read_back_by_hdf_dataset(tmp_path, run_cli):
    pytest.importorskip("h5py")
    config = setup_config(
        tmp_path,
        "from user_setup.hdf_hooks import forward_init_hook, forward_step, forward_finish_hook",
        "forward = dev\n",
    )
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    from i6_minireturnn.data.hdf import HDFDataset

    dataset = HDFDataset(files=[str(tmp_path / "output.hdf")])
    dataset.init_seq_order(1)
    assert dataset.num_seqs == 4
    weights = torch.load(tmp_path / "out/model.002.pt", weights_only=False)["model"]
    from i6_minireturnn.data.generating import DummyDataset

    source = DummyDataset(input_dim=2, output_dim=3, num_seqs=4, seq_len=5)
    source.init_seq_order(1)
    tags = {dataset.get_seq_tag(i): i for i in range(4)}
    for i in range(4):
        seq = source.get_seq(i)
        expected = torch.from_numpy(seq["data"]) @ weights["linear.weight"].T + weights["linear.bias"]
        stored = dataset.get_seq(tags[seq["seq_tag"]])["data"]
        np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_forward_hook_decodes_with_vocabulary(tmp_path, run_cli):
    (tmp_path / "vocab.txt").write_text("{'zero': 0, 'one': 1, 'two': 2}\n")
    config = setup_config(
        tmp_path,
        "from user_setup.vocab_hooks import forward_init_hook, forward_step, forward_finish_hook",
        "forward = dev\n",
    )
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    lines = (tmp_path / "words.txt").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        tag, *words = line.split()
        assert tag.startswith("seq-") and len(words) == 5 and set(words) <= {"zero", "one", "two"}


MAINLINE_CASES = [
    ("import returnn.frontend as rf\n", "import returnn.frontend"),
    ("from returnn.tensor import TensorDict\n", "import returnn.tensor"),
    ("def train_step(*, model, extern_data, **kwargs):\n    pass\n", "train_step(..., extern_data"),
]


@pytest.mark.parametrize("extra, named", MAINLINE_CASES)
def test_mainline_api_fails_with_one_clear_message(tmp_path, run_cli, extra, named):
    code, _, err = run_cli(write_config(tmp_path, extra))
    assert code == 1
    assert named in err and "this runtime takes the Mini-RETURNN API" in err
    assert "Traceback" not in err


def test_mainline_import_inside_model_code_names_the_file(tmp_path, run_cli):
    (tmp_path / "rf_model.py").write_text("def make():\n    import returnn.frontend\n")
    config = write_config(
        tmp_path,
        "import sys\nsys.path.insert(0, '.')\n"
        "def get_model(epoch, step, **kwargs):\n    import rf_model\n    return rf_model.make()\n",
    )
    code, _, err = run_cli(config)
    assert code == 1 and "rf_model.py, line 2" in err and "Mini-RETURNN API" in err


def test_compat_names_win_over_an_installed_returnn_and_do_not_leak(tmp_path, run_cli, monkeypatch):
    other = tmp_path / "site" / "returnn"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'other returnn'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import returnn  # the other installation, imported before the runtime starts

    assert returnn.WHO == "other returnn"
    config = write_config(
        tmp_path,
        "import returnn, returnn.torch.context\n"
        "open('which.txt', 'w').write(returnn.__file__ + ' ' + returnn.torch.context.get_run_ctx.__module__)\n",
    )
    code, _, err = run_cli(config, "++num_epochs", "1")
    assert code == 0, err
    which = (tmp_path / "which.txt").read_text()
    assert "i6_minireturnn" in which and "engine.run_ctx" in which
    assert sys.modules["returnn"] is returnn and not compat.installed()  # restored after the run
    assert "returnn.torch.context" not in sys.modules
    del sys.modules["returnn"]


def test_numbers_dict_and_log_streams():
    compat.install()
    try:
        from returnn.log import log
        from returnn.util import NumbersDict

        a = NumbersDict({"data": 10, "classes": 3})
        assert (a + 1)["data"] == 11 and (a * 2)["classes"] == 6
        assert NumbersDict.max([a, NumbersDict({"data": 4, "classes": 7})]).dict == {"data": 10, "classes": 7}
        assert NumbersDict(5)["anything"] == 5 and a.max_value == 10
        assert all(hasattr(log, f"v{i}") for i in range(1, 6)) and isinstance(log.verbose[5], bool)
    finally:
        compat.uninstall()


def test_base_config_imports_nothing_from_returnn():
    assert "returnn" not in BASE_CONFIG  # the plain configs of the other tests stay independent of compat
