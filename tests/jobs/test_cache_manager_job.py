"""The cache manager on Sisyphus workers: with a `cf` on the manager's PATH, the unmodified settings.py hands it to
the jobs, whose PATH Sisyphus resets, and every input file of the runtime goes through it (datasets, a preloaded
checkpoint, the forward job's checkpoint), while the trainings' own epoch files do not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .sis_setup import add_recipes, failed_jobs, job_folders, sis_manager, user_setup

# Users' style: HDF dumps -> a training -> a second training preloading the first -> forward of the second's epoch 1.
RECIPE = '''"""Two tiny trainings and a forward, to see which files go through the cache manager."""

from i6_core.returnn.config import ReturnnConfig
from sisyphus import tk

from jobs import MiniReturnnForwardJob, MiniReturnnTrainingJob
from jobs.serialization import Collection
from toy_setup import corpus, ctc_network


def py():
    train_hdf, dev_hdf = corpus(16, 4, feature_dim=4, num_classes=4)
    network = ctc_network(feature_dim=4, num_labels=4, hidden=4)
    config = {
        "train": {"class": "HDFDataset", "files": [train_hdf]},
        "dev": {"class": "HDFDataset", "files": [dev_hdf]},
        "batch_size": 4000,
        "optimizer": {"class": "adam"},
        "learning_rates": [1e-3],
    }

    def train(extra):
        returnn_config = ReturnnConfig(config={**config, **extra}, python_epilog=[Collection([network])])
        return MiniReturnnTrainingJob(returnn_config, num_epochs=1, device="cpu", cpu_rqmt=1, mem_rqmt=2, time_rqmt=1)

    first = train({})
    preload = {"first": {"filename": first.out_checkpoints[1].path, "init_for_train": True}}
    second = train({"preload_from_files": preload})
    forward_config = ReturnnConfig(
        config={"forward": {"class": "HDFDataset", "files": [dev_hdf]}, "batch_size": 4000},
        python_epilog=[Collection([network])],
    )
    forward = MiniReturnnForwardJob(
        second.out_checkpoints[1], forward_config, output_files=["log_probs.hdf"], device="cpu", cpu_rqmt=1, time_rqmt=1
    )
    tk.register_output("cache/log_probs.hdf", forward.out_files["log_probs.hdf"])
'''


def _fake_cf(tmp_path: Path) -> Path:
    """A `cf` in its own folder: copies the file under a "node-local" folder (mirroring its path, since several
    inputs share a name), prints the copy, and logs the file and the PATH it was called with."""
    bin_dir, cache = tmp_path / "cache_manager_bin", tmp_path / "node_local"
    bin_dir.mkdir()
    script = bin_dir / "cf"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> {tmp_path}/cf_calls.log\n'
        f'echo "$PATH" >> {tmp_path}/cf_path.log\n'
        f'mkdir -p "{cache}$(dirname "$1")" && cp "$1" "{cache}$1" && echo "{cache}$1"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_cf_on_the_managers_path_reaches_the_jobs_through_settings(tmp_path):
    folder = user_setup(tmp_path)
    add_recipes(folder)
    (folder / "recipe" / "cache_check.py").write_text(RECIPE)
    bin_dir = _fake_cf(tmp_path)
    output = sis_manager(folder, "recipe/cache_check.py", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert not failed_jobs(folder), output[-3000:]
    assert "All output calculated" in output and "Traceback" not in output, output[-3000:]

    calls = set((tmp_path / "cf_calls.log").read_text().split())
    hdfs = {os.path.realpath(p) for job in job_folders(folder, "HdfDumpJob") for p in job.rglob("*.hdf")}
    first, second = job_folders(folder, "MiniReturnnTrainingJob")
    checkpoints = {os.path.realpath(job / "output/models/epoch.001.pt") for job in (first, second)}
    assert len(hdfs) == 2 and all(os.path.exists(p) for p in checkpoints)
    # the datasets of both trainings and the forward, the preloaded checkpoint and the forward job's; nothing else
    assert {os.path.realpath(p) for p in calls} == hdfs | checkpoints
    # the jobs ran with Sisyphus' reset PATH, which settings.py extended by the folder of the manager's `cf`
    assert {line.split(os.pathsep)[-1] for line in (tmp_path / "cf_path.log").read_text().split()} == {str(bin_dir)}
