"""The cache manager contract: ``cf PATH`` prints the local copy; failures fall back to the original path. Input
checkpoints (``load``, ``import_model_train_epoch1``, ``preload_from_files``) go through it, the run's own epoch
files never; without ``cf`` the log says so once."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from i6_minireturnn import cache_manager

from .conftest import write_config


def _install_cf(tmp_path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cf"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cache_manager, "_resolved", {})
    monkeypatch.setattr(cache_manager, "_missing_reported", False)


def _install_logging_cf(tmp_path, monkeypatch) -> Tuple[Path, Path]:
    """A fake ``cf`` that copies the file into a "node-local" folder, prints the copy and logs each call; returns
    (call log, node-local folder)."""
    calls, cache = tmp_path / "cf_calls.log", tmp_path / "node_local"
    cache.mkdir()
    _install_cf(tmp_path, monkeypatch, f'echo "$1" >> {calls}\ncp "$1" {cache}/ && echo {cache}/$(basename "$1")\n')
    return calls, cache


def _cf_calls(calls: Path) -> List[str]:
    """The files `cf` was called with, as names; reading the log empties it, and the runtime forgets its copies, so
    that the next run's calls are its own."""
    names = [os.path.basename(line) for line in calls.read_text().split()] if calls.exists() else []
    calls.unlink(missing_ok=True)
    cache_manager._resolved.clear()
    return names


def _input_checkpoints(folder: Path) -> str:
    """Writes init.pt (a whole model) and pretrained.pt (its linear layer) into `folder`; the config lines that start
    a fresh training from them."""
    torch.save({"model": {"linear.weight": torch.ones(3, 2), "linear.bias": torch.zeros(3)}}, folder / "init.pt")
    torch.save({"model": {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}}, folder / "pretrained.pt")
    return (
        f"import_model_train_epoch1 = {str(folder / 'init')!r}\n"  # RETURNN's name without .pt is found too
        f"preload_from_files = {{'enc': {{'filename': {str(folder / 'pretrained.pt')!r}, 'prefix': 'linear.', "
        "'init_for_train': True}}\n"
    )


def test_cf_copy_is_used(tmp_path, monkeypatch):
    cache = tmp_path / "node_cache"
    cache.mkdir()
    _install_cf(tmp_path, monkeypatch, f'cp "$1" {cache}/ && echo {cache}/$(basename "$1")\n')
    source = tmp_path / "data.hdf"
    source.write_bytes(b"x")
    assert cache_manager.cached_path(str(source)) == str(cache / "data.hdf")
    assert (cache / "data.hdf").read_bytes() == b"x"
    assert cache_manager.cached_path(str(source), enabled=False) == str(source)


def test_cf_failure_falls_back_with_warning(tmp_path, monkeypatch, capsys):
    _install_cf(tmp_path, monkeypatch, "echo 'no space left' >&2; exit 3\n")
    assert cache_manager.cached_path("/some/file.hdf") == "/some/file.hdf"
    assert "cache manager failed for /some/file.hdf (no space left)" in capsys.readouterr().out


def test_without_cf_the_path_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cache_manager, "_resolved", {})
    assert cache_manager.cached_path("/x/y.zip") == "/x/y.zip"


def test_input_checkpoints_go_through_cf_but_the_runs_own_epochs_never(tmp_path, monkeypatch, run_cli):
    calls, cache = _install_logging_cf(tmp_path, monkeypatch)
    inputs = _input_checkpoints(tmp_path)
    code, out, err = run_cli(write_config(tmp_path, f"num_epochs = 1\n{inputs}"))
    assert code == 0, err
    assert sorted(_cf_calls(calls)) == ["init.pt", "pretrained.pt"]
    assert f"Initialising the model from {cache / 'init.pt'} (import_model_train_epoch1)" in out
    assert f"Cache manager: {tmp_path / 'pretrained.pt'} -> {cache / 'pretrained.pt'}" in out

    code, out, err = run_cli(write_config(tmp_path, f"num_epochs = 2\n{inputs}"))  # resumes from out/model.001.pt
    assert code == 0, err
    assert "Resuming training after stored epoch 1" in out
    assert _cf_calls(calls) == []  # neither the run's own epoch file nor the inputs it no longer needs

    own = f"task = 'eval'\nload_epoch = 2\n{inputs}"  # epoch 2 of this run's `model`
    code, out, err = run_cli(write_config(tmp_path, own))
    assert code == 0, err
    assert _cf_calls(calls) == []

    given = f"task = 'eval'\nmodel = 'other/model'\nload = {str(tmp_path / 'out/model.002.pt')!r}\n"
    code, out, err = run_cli(write_config(tmp_path, given))  # a checkpoint given as `load` is an input file
    assert code == 0, err
    assert _cf_calls(calls) == ["model.002.pt"]
    assert f"Loading checkpoint {cache / 'model.002.pt'}" in out


@pytest.mark.parametrize(
    "switches, expected",
    [
        ("use_cache_manager = False\n", []),
        ("preload_from_files['enc']['use_cache_manager'] = False\n", ["init.pt"]),
        ("use_cache_manager = False\npreload_from_files['enc']['use_cache_manager'] = True\n", ["pretrained.pt"]),
    ],
    ids=["top-level off", "entry off", "entry on, top-level off"],
)
def test_use_cache_manager_switches(tmp_path, monkeypatch, run_cli, switches, expected):
    calls, _ = _install_logging_cf(tmp_path, monkeypatch)
    code, _, err = run_cli(write_config(tmp_path, f"num_epochs = 1\n{_input_checkpoints(tmp_path)}{switches}"))
    assert code == 0, err
    assert sorted(_cf_calls(calls)) == expected


def test_use_cache_manager_must_be_a_flag(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path, "use_cache_manager = 'sometimes'\n"))
    assert code == 1
    assert "'use_cache_manager' must be True or False, got 'sometimes'" in err


def test_without_cf_the_log_says_so_once(tmp_path, monkeypatch, run_cli):
    empty = tmp_path / "no_cf_here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(cache_manager, "_resolved", {})
    monkeypatch.setattr(cache_manager, "_missing_reported", False)
    code, out, err = run_cli(write_config(tmp_path, f"num_epochs = 1\n{_input_checkpoints(tmp_path)}"))
    assert code == 0, err
    notes = [line for line in out.splitlines() if "not found on PATH" in line]
    assert notes == [f"Cache manager: 'cf' not found on PATH ({empty}); files are read where they are"]
    assert f"Initialising the model from {tmp_path / 'init.pt'} (import_model_train_epoch1)" in out
