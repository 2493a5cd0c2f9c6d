"""tools/torch_export_to_onnx.py, run as i6_core's TorchOnnxExportJob runs it, and its module.

The exports need the ``onnx`` package (torch's exporter writes nothing without it): without it these tests skip,
unless CI=true, where they fail. The comparison with onnxruntime follows the same rule.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

import numpy as np
import pytest
import torch

from i6_minireturnn.atomic_file import is_temp_file
from i6_minireturnn.tools import export_onnx

# the tool picks torch's TorchScript exporter on purpose (see export_onnx); torch >= 2.9 warns that it is deprecated
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "torch_export_to_onnx.py"

# A Mini-RETURNN style config: the model takes features and lengths; export() is Mini-RETURNN's convention and
# calls torch.onnx.export without dynamo= (as configs written for torch < 2.9 do).
CONFIG = """
#!rnn.py
import json

import torch
from torch import nn

from returnn.torch.context import get_run_ctx


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, data, data_len):
        mask = torch.arange(data.shape[1])[None, :] < data_len[:, None]  # [B, T]
        log_probs = torch.log_softmax(self.linear(data), dim=-1)
        return log_probs.masked_fill(~mask[:, :, None], 0.0)


def get_model(epoch, step, **kwargs):
    ctx = get_run_ctx()
    call = {"epoch": epoch, "step": step, "onnx_export": kwargs.get("onnx_export"), "stage": ctx.stage}
    with open("get_model_call.json", "w") as f:
        json.dump(call, f)
    return Model()
"""

EXPORT_MINIRETURNN = """
def export(*, model, f, **kwargs):
    dummy_data = torch.randn(1, 7, 3)
    dummy_len = torch.tensor([7], dtype=torch.int32)
    torch.onnx.export(
        model,
        (dummy_data, dummy_len),
        f,
        input_names=["data", "data:size1"],
        output_names=["log_probs"],
        dynamic_axes={
            "data": {0: "batch", 1: "time"},
            "data:size1": {0: "batch"},
            "log_probs": {0: "batch", 1: "time"},
        },
        opset_version=17,
    )
"""

# i6_experiments' convention; this one takes the names i6_core passes
EXPORT_MODEL_FILENAME = """
def export(*, model, model_filename, input_names, output_names):
    torch.onnx.export(
        model.eval(),
        (torch.randn(2, 5, 3), torch.tensor([5, 3], dtype=torch.int32)),
        model_filename,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes={input_names[0]: {0: "B", 1: "T"}, input_names[1]: {0: "B"}, output_names[0]: {0: "B", 1: "T"}},
    )
"""


def require(module: str) -> ModuleType:
    """The module; a skip where it is not installed, a failure in CI (CI=true), where it must be."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise
        pytest.skip(f"{module} is not installed (pip install -e .[onnx]; with CI=true this test fails instead)")


def write_config(folder: Path, export: str = EXPORT_MINIRETURNN, extra: str = "") -> Path:
    path = folder / "returnn.config"
    path.write_text(textwrap.dedent(CONFIG).lstrip() + textwrap.dedent(export) + textwrap.dedent(extra))
    return path


def write_checkpoint(path: Path, *, epoch: int = 7, step: int = 70) -> Dict[str, torch.Tensor]:
    """A RETURNN checkpoint of the config's model with known weights; returns the state dict."""
    gen = torch.Generator().manual_seed(3)
    state = {"linear.weight": torch.randn(4, 3, generator=gen), "linear.bias": torch.randn(4, generator=gen)}
    torch.save({"model": state, "epoch": epoch, "step": step}, path)
    return state


def reference_output(state: Dict[str, torch.Tensor], data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The model's output computed here in torch from the checkpoint's weights."""
    x = torch.from_numpy(data)
    log_probs = torch.log_softmax(torch.nn.functional.linear(x, state["linear.weight"], state["linear.bias"]), -1)
    mask = torch.arange(x.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    return log_probs.masked_fill(~mask[:, :, None], 0.0).numpy()


def run_script(*args: Any, cwd: Path) -> subprocess.CompletedProcess:
    """``python <root>/tools/torch_export_to_onnx.py ARGS`` in `cwd`, as i6_core does."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if is_temp_file(p.name)]


def test_script_exports_as_i6_core_calls_it_and_onnxruntime_agrees(tmp_path):
    onnx = require("onnx")
    config = write_config(tmp_path)
    checkpoint = tmp_path / "epoch.007.pt"
    state = write_checkpoint(checkpoint)
    out = tmp_path / "output" / "model.onnx"
    result = run_script(
        config, checkpoint, out, "--device", "cpu", "--verbosity", "5",
        "--input_names", "data,data:size1", "--output_names", "log_probs",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # get_model got the checkpoint's epoch and step and Mini-RETURNN's onnx_export flag, in the load stage
    call = json.loads((tmp_path / "get_model_call.json").read_text())
    assert call == {"epoch": 7, "step": 70, "onnx_export": True, "stage": "load"}

    onnx.checker.check_model(str(out))
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["data", "data:size1"]
    assert [o.name for o in graph.output] == ["log_probs"]
    assert leftovers(out.parent) == [] and sorted(os.listdir(out.parent)) == ["model.onnx"]

    ort = require("onnxruntime")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # another batch size and length than the dummy input: the dynamic axes work
    data = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    lengths = np.array([5, 2], dtype=np.int32)
    (log_probs,) = session.run(["log_probs"], {"data": data, "data:size1": lengths})
    assert log_probs.shape == (2, 5, 4)
    np.testing.assert_allclose(log_probs, reference_output(state, data, lengths), rtol=1e-5, atol=1e-5)
    assert np.all(log_probs[1, 2:] == 0.0)


def test_model_filename_convention_gets_the_names_and_checkpoint_without_pt(tmp_path, monkeypatch):
    onnx = require("onnx")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, EXPORT_MODEL_FILENAME)
    write_checkpoint(tmp_path / "model.003.pt", epoch=3, step=30)
    out = tmp_path / "model.onnx"
    args = [str(config), str(tmp_path / "model.003"), str(out), "--input_names", "feat,feat_len"]
    assert export_onnx.main([*args, "--output_names", "scores"]) == 0
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["feat", "feat_len"] and [o.name for o in graph.output] == ["scores"]
    assert json.loads((tmp_path / "get_model_call.json").read_text())["epoch"] == 3


def test_names_other_than_requested_fail_and_leave_no_file(tmp_path, monkeypatch, capsys):
    require("onnx")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "model.onnx"
    args = [str(config), str(tmp_path / "model.pt"), str(out), "--output_names", "classes"]
    assert export_onnx.main(args) == 1
    err = capsys.readouterr().err
    assert "outputs ['log_probs'] are not the requested --output_names ['classes']" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_config_without_export_fails_with_what_to_define(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, export="", extra="extern_data = {'data': {'dim': 3}}\nmodel_outputs = {}\n")
    write_checkpoint(tmp_path / "model.pt")
    assert export_onnx.main([str(config), str(tmp_path / "model.pt"), str(tmp_path / "model.onnx")]) == 1
    err = capsys.readouterr().err
    assert "has no export function" in err and "export(*, model, f, **kwargs)" in err and "mainline" in err
    assert not (tmp_path / "model.onnx").exists()


def test_missing_checkpoint_fails_naming_it(tmp_path):
    config = write_config(tmp_path)
    result = run_script(config, tmp_path / "model.009.pt", tmp_path / "model.onnx", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 1
    assert "Checkpoint not found" in result.stderr and "model.009.pt" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "model.onnx").exists()


def test_missing_exporter_package_names_what_to_install(tmp_path, monkeypatch, capsys):
    # what torch says when the package its exporter needs is missing (onnxscript for dynamo=True)
    export = """
    def export(*, model, f, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
    """
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, export)
    write_checkpoint(tmp_path / "model.pt")
    assert export_onnx.main([str(config), str(tmp_path / "model.pt"), str(tmp_path / "model.onnx")]) == 1
    assert "needs the Python package 'onnxscript'" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_torch_onnx_export_defaults_to_the_torchscript_exporter_while_active(monkeypatch):
    calls = []

    def fake_export(model, args=(), f=None, *, dynamo: bool = True, **kwargs):  # torch >= 2.9's default
        calls.append(dynamo)

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    with export_onnx.legacy_onnx_exporter_by_default():
        torch.onnx.export(None, (), "x.onnx")
        torch.onnx.export(None, (), "x.onnx", dynamo=True)  # a caller that asks keeps its choice
    assert torch.onnx.export is fake_export
    assert calls == [False, True]
