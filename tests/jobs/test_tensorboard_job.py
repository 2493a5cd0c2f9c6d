"""TensorBoard that the training job turns on by its default never fails a training (sis manager, a node Python
without the tensorboard package); a config that asks for TensorBoard itself still gets the clear error."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from .sis_setup import failed_jobs, job_file, job_folders, sis_manager, user_setup

RECIPE = """
from i6_core.returnn.config import ReturnnConfig
from sisyphus import tk

from jobs import MiniReturnnTrainingJob

CODE = '''
import torch
def get_model(epoch, step, **kwargs):
    return torch.nn.Linear(2, 3)
def train_step(*, model, data, run_ctx, **kwargs):
    run_ctx.mark_as_loss(model(data["data"]).pow(2).mean(), "l2")
'''


def py():
    python = tk.Path({python!r}, hash_overwrite="node-python")
    for name, extra in (("default", {{}}), ("asked", {{"use_tensorboard": True}})):
        config = ReturnnConfig(
            {{"train": {{"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 8}},
              "batch_size": 40, "optimizer": {{"class": "adam"}}, **extra}},
            python_epilog=[CODE],
        )
        job = MiniReturnnTrainingJob(config, num_epochs=1, device="cpu", cpu_rqmt=1, mem_rqmt=2, time_rqmt=1,
                                     python_exe=python)
        tk.register_output(f"tb/{{name}}/learning_rates", job.out_learning_rates)
"""


def _python_without_tensorboard(folder: Path) -> Path:
    """A Python as a node has it without the tensorboard package: this environment's Python, with an import of
    `tensorboard` failing as where the package is not installed (the job's python_exe, as container wrappers are)."""
    shadow = folder / "no_tensorboard"
    (shadow / "tensorboard").mkdir(parents=True)
    (shadow / "tensorboard" / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    wrapper = folder / "node-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{shadow}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def test_tensorboard_by_the_jobs_default_warns_and_trains_where_the_package_is_missing(tmp_path):
    folder = user_setup(tmp_path)
    python = _python_without_tensorboard(tmp_path)
    (folder / "recipe" / "tensorboard_missing.py").write_text(RECIPE.format(python=str(python)))
    output = sis_manager(folder, "recipe/tensorboard_missing.py", timeout=600)
    assert (folder / "output" / "tb" / "default" / "learning_rates").is_file(), output[-3000:]
    failed = failed_jobs(folder)
    assert len(failed) == 1, failed  # the config that sets use_tensorboard = True itself
    jobs = {Path(f).name for f in failed}
    trainings = job_folders(folder, "MiniReturnnTrainingJob")
    default = next(j for j in trainings if j.name not in jobs)
    asked = next(j for j in trainings if j.name in jobs)
    log = job_file(default, "log.run.1")
    assert log.count("TensorBoard is off: the tensorboard package is not installed") == 1, log[-3000:]
    assert "use_tensorboard = True" in job_file(asked, "log.run.1") and "pip install" in job_file(asked, "log.run.1")
