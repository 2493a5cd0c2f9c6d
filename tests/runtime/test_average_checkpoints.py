"""tools/torch_avg_checkpoints.py, run as i6_core's AverageTorchCheckpointsJob runs it, and its module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

import pytest
import torch

from i6_minireturnn.atomic_file import is_temp_file
from i6_minireturnn.tools import average_checkpoints

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "torch_avg_checkpoints.py"


def run_script(*args: Any, cwd: Path) -> subprocess.CompletedProcess:
    """``python <root>/tools/torch_avg_checkpoints.py ARGS``, from another folder, as i6_core does."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def save_checkpoint(path: Path, model: Dict[str, Any], epoch: int, step: int, **extra: Any) -> Path:
    """A checkpoint in RETURNN's layout."""
    torch.save({"model": model, "epoch": epoch, "step": step, **extra}, path)
    return path


def model_state(scale: float, *, count: int = 0, weight_shape: Sequence[int] = (2, 3)) -> Dict[str, Any]:
    """Distinct, exactly representable values per checkpoint; a BatchNorm-like int buffer."""
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale
    return {
        "layer.weight": weight if tuple(weight_shape) == (2, 3) else torch.zeros(weight_shape),
        "layer.bias": torch.tensor([1.0, -1.0]) * scale,
        "norm.running_mean": torch.full((3,), scale, dtype=torch.float64),
        "half": torch.tensor([scale, 2 * scale], dtype=torch.float16),
        "norm.num_batches_tracked": torch.tensor(count, dtype=torch.long),
    }


def leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if is_temp_file(p.name)]


def test_script_averages_float_parameters_as_i6_core_calls_it(tmp_path):
    ckpts = [
        save_checkpoint(tmp_path / f"model.{e:03d}.pt", model_state(scale, count=c), epoch=e, step=10 * e)
        for e, scale, c in ((8, 1.0, 80), (9, 2.0, 90), (10, 6.0, 100))
    ]
    out = tmp_path / "avg" / "model" / "average.pt"  # the job's output path: folders may not exist yet
    result = run_script("--checkpoints", *ckpts, "--output_path", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = torch.load(out, weights_only=False)
    model = state["model"]
    assert list(model) == list(model_state(1.0))  # same parameters, same order
    mean = (1.0 + 2.0 + 6.0) / 3  # 3.0
    torch.testing.assert_close(model["layer.weight"], torch.arange(6.0).reshape(2, 3) * mean)
    torch.testing.assert_close(model["layer.bias"], torch.tensor([3.0, -3.0]))
    assert model["norm.running_mean"].dtype == torch.float64
    torch.testing.assert_close(model["norm.running_mean"], torch.full((3,), 3.0, dtype=torch.float64))
    assert model["half"].dtype == torch.float16  # averaged in float32, stored in the parameter's dtype
    torch.testing.assert_close(model["half"], torch.tensor([3.0, 6.0], dtype=torch.float16))
    # integer buffers are not averaged: the last checkpoint's value, dtype kept
    assert model["norm.num_batches_tracked"].dtype == torch.long and int(model["norm.num_batches_tracked"]) == 100
    assert (state["epoch"], state["step"]) == (10, 100)
    assert state["merged_epochs"] == [8, 9, 10] and state["merged_steps"] == [80, 90, 100]
    assert leftovers(out.parent) == []
    assert "average of 3 checkpoints" in result.stdout


def test_comma_separated_names_prefix_postfix_and_names_without_pt(tmp_path):
    for e, scale in ((1, 1.0), (2, 3.0)):
        save_checkpoint(tmp_path / f"model.{e:03d}.pt", model_state(scale), epoch=e, step=e)
    out = tmp_path / "avg.pt"
    # RETURNN's options: names joined by commas, --prefix/--postfix around each name
    args = ["--checkpoints", "model.001,model.002", "--prefix", f"{tmp_path}/", "--postfix", ".pt"]
    assert average_checkpoints.main([*args, "--output_path", str(out)]) == 0
    torch.testing.assert_close(torch.load(out)["model"]["layer.bias"], torch.tensor([2.0, -2.0]))
    # a name without .pt finds the .pt file, as the runtime's load option does
    out.unlink()
    names = [str(tmp_path / "model.001"), str(tmp_path / "model.002.pt")]
    assert average_checkpoints.main(["--checkpoints", *names, "--output_path", str(out)]) == 0
    assert torch.load(out)["epoch"] == 2


def test_epoch_and_step_are_the_newest_whatever_the_order(tmp_path):
    # averaging the best epochs lists them by score, not by epoch: RETURNN keeps the largest epoch and step
    paths = [
        str(save_checkpoint(tmp_path / f"m{e}.pt", model_state(float(e)), epoch=e, step=100 * e)) for e in (7, 9, 8)
    ]
    state = average_checkpoints.average_checkpoints(paths)
    assert (state["epoch"], state["step"], state["merged_epochs"]) == (9, 900, [7, 9, 8])
    torch.testing.assert_close(state["model"]["layer.bias"], torch.tensor([8.0, -8.0]))


def test_tied_parameters_are_averaged_once(tmp_path):
    # tied weights are two state-dict entries sharing one storage; summing into one must not change the other
    paths = []
    for e, scale in ((1, 1.0), (2, 3.0)):
        shared = torch.full((2,), scale)
        paths.append(str(save_checkpoint(tmp_path / f"m{e}.pt", {"emb": shared, "out": shared}, epoch=e, step=e)))
    model = average_checkpoints.average_checkpoints(paths)["model"]
    torch.testing.assert_close(model["emb"], torch.full((2,), 2.0))
    torch.testing.assert_close(model["out"], torch.full((2,), 2.0))


def test_other_top_level_entries_come_from_the_first_checkpoint(tmp_path):
    a = save_checkpoint(tmp_path / "a.pt", model_state(1.0), epoch=1, step=1, note="first")
    b = save_checkpoint(tmp_path / "b.pt", model_state(1.0), epoch=2, step=2, note="second")
    state = average_checkpoints.average_checkpoints([str(a), str(b)])
    assert state["note"] == "first"


def test_missing_checkpoint_fails_naming_it_and_writes_nothing(tmp_path):
    good = save_checkpoint(tmp_path / "model.001.pt", model_state(1.0), epoch=1, step=1)
    out = tmp_path / "avg.pt"
    result = run_script("--checkpoints", good, tmp_path / "model.002.pt", "--output_path", out, cwd=tmp_path)
    assert result.returncode == 1
    assert "Input checkpoint not found" in result.stderr and "model.002.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_shape_mismatch_fails_naming_file_and_parameter_and_keeps_old_output(tmp_path):
    a = save_checkpoint(tmp_path / "a.pt", model_state(1.0), epoch=1, step=1)
    b = save_checkpoint(tmp_path / "b.pt", model_state(2.0, weight_shape=(3, 3)), epoch=2, step=2)
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous result")  # a failed run leaves what was there, never a half-written file
    result = run_script("--checkpoints", a, b, "--output_path", out, cwd=tmp_path)
    assert result.returncode == 1
    assert "'layer.weight'" in result.stderr and "[3, 3]" in result.stderr and "[2, 3]" in result.stderr
    assert str(b) in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == b"previous result" and leftovers(tmp_path) == []


def test_different_parameters_fail_naming_them(tmp_path, capsys):
    a = save_checkpoint(tmp_path / "a.pt", model_state(1.0), epoch=1, step=1)
    state = model_state(2.0)
    state["extra.weight"] = state.pop("layer.bias")
    b = save_checkpoint(tmp_path / "b.pt", state, epoch=2, step=2)
    out = tmp_path / "avg.pt"
    assert average_checkpoints.main(["--checkpoints", str(a), str(b), "--output_path", str(out)]) == 1
    err = capsys.readouterr().err
    assert "b.pt" in err and "lacks parameter(s) 'layer.bias'" in err and "'extra.weight' in addition" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [(b"not a checkpoint", "Cannot read checkpoint"), (None, "not a model checkpoint")],
)
def test_unreadable_or_foreign_files_fail_naming_them(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, bad)  # a torch file, but no RETURNN checkpoint
    else:
        bad.write_bytes(content)
    good = save_checkpoint(tmp_path / "good.pt", model_state(1.0), epoch=1, step=1)
    out = tmp_path / "avg.pt"
    assert average_checkpoints.main(["--checkpoints", str(good), str(bad), "--output_path", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "bad.pt" in err
    assert not out.exists() and not any(is_temp_file(name) for name in os.listdir(tmp_path))
