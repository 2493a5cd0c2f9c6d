"""MiniReturnnTrainingJob: hash stability, job-controlled keys, and its tasks run end to end."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from i6_core.returnn.config import ReturnnConfig

from jobs import MiniReturnnTrainingJob
from jobs.serialization import Collection, Network

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.runtime.user_setup.epoch_aware_model"
# i6_core's folder comes from where this test found it (recipe/i6_core where users put it)
I6_CORE_PARENT = str(Path(importlib.util.find_spec("i6_core").submodule_search_locations[0]).parent)
BUILD = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(1, {I6_CORE_PARENT!r})
from i6_core.returnn.config import ReturnnConfig
from jobs import MiniReturnnTrainingJob
from jobs.serialization import Collection, Network
config = ReturnnConfig(
    config={{"optimizer": {{"class": "adam"}}, "batch_size": 20, "train": {{
        "class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5}}}},
    python_epilog=[
        Collection([Network("{MODEL}.Model", {{"augment_from_epoch": 5}}, train_step="{MODEL}.train_step")])
    ],
)
print(MiniReturnnTrainingJob(config, num_epochs=2, device="cpu").job_id())
"""


def make_config(order=1, post_config=None, epilog_kwargs=None, **config_updates):
    train = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5}
    config = {"optimizer": {"class": "adam"}, "batch_size": 20, "train": train}
    if order < 0:
        config = dict(reversed(list(config.items())))
    config.update(config_updates)
    network = Network(f"{MODEL}.Model", epilog_kwargs or {"augment_from_epoch": 5}, train_step=f"{MODEL}.train_step")
    return ReturnnConfig(config=config, post_config=post_config or {}, python_epilog=[Collection([network])])


def job_id(config=None, **kwargs):
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("device", "cpu")
    return MiniReturnnTrainingJob(config or make_config(), **kwargs).job_id()


def test_literal_hash():
    # num_epochs is hashed since 0.2.0 (0.1: ZsHyJoXE3NKM for any num_epochs), see README "Longer trainings"
    assert job_id() == "jobs/training/MiniReturnnTrainingJob.jJPc0NjI774f"


def test_hash_same_in_other_processes_and_folders(tmp_path):
    ids = set()
    for cwd in (tmp_path, REPO):
        out = subprocess.run([sys.executable, "-c", BUILD], cwd=cwd, capture_output=True, text=True, check=True)
        ids.add(out.stdout.strip().splitlines()[-1])
    assert ids == {job_id()}


def test_hash_ignores_order_post_config_and_run_settings():
    reference = job_id()
    assert job_id(make_config(order=-1)) == reference
    assert job_id(make_config(post_config={"stop_on_nonfinite_train_score": False})) == reference
    assert job_id(device="gpu", log_verbosity=5, time_rqmt=80, mem_rqmt=32, cpu_rqmt=8, tensorboard=False) == reference
    assert job_id(python_exe=None) == reference


def test_hash_follows_what_changes_results():
    reference = job_id()
    assert job_id(make_config(batch_size=40)) != reference
    assert job_id(make_config(epilog_kwargs={"augment_from_epoch": 3})) != reference
    assert job_id(keep_epochs=[1]) != reference
    assert job_id(save_interval=2) != reference
    assert job_id(num_processes=2) != reference
    # as in i6_core: a finished job is final, so more epochs are another job (two lengths in one graph are two jobs)
    assert job_id(num_epochs=3) != reference


@pytest.mark.parametrize("key", ["num_epochs", "device", "log_verbosity", "model"])
def test_job_controlled_keys_are_refused(key):
    with pytest.raises(ValueError, match=f"sets '{key}'"):
        MiniReturnnTrainingJob(make_config(**{key: 1}), num_epochs=2)


def test_tasks_train_plot_and_resume(tmp_path, monkeypatch):
    from sisyphus import global_settings

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    # a config of its own: no job object cached by other tests (with paths under another work folder)
    job = MiniReturnnTrainingJob(make_config(batch_size=21), num_epochs=2, device="cpu", keep_epochs=[1])
    base = Path(job._sis_path())
    (base / "work").mkdir(parents=True)
    (base / "output" / "models").mkdir(parents=True)
    monkeypatch.chdir(base / "work")
    job.create_files()
    job.run()
    job.plot()
    outputs = base / "output"
    assert {"returnn.config", "learning_rates", "score_and_error.png", "learning_rate.png"} <= set(os.listdir(outputs))
    assert all(Path(str(c)).exists() for c in job.out_checkpoints.values()) and sorted(job.out_checkpoints) == [1, 2]
    assert "written for i6-minireturnn" in (outputs / "returnn.config").read_text()
    assert list((base / "work" / "tensorboard").glob("events.out.tfevents.*"))  # on by default, in the work folder
    monkeypatch.chdir(tmp_path)
    assert job.info() == "ep 2/2"
    # rnn.sh reruns by hand: with more epochs it continues from the stored epoch 2
    rerun = subprocess.run(
        [str(base / "work" / "rnn.sh"), "++num_epochs", "3"], capture_output=True, text=True, cwd=base / "work"
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming training after stored epoch 2" in rerun.stdout
    assert (outputs / "models" / "epoch.003.pt").exists()


def test_forward_job_fails_naming_a_missing_output(tmp_path, monkeypatch):
    from i6_core.returnn.training import PtCheckpoint
    from sisyphus import global_settings, tk

    from jobs import MiniReturnnForwardJob

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    import torch

    torch.save({"model": torch.nn.Linear(2, 3).state_dict(), "epoch": 1, "step": 0}, tmp_path / "model.pt")
    code = (
        "import torch\n"
        "def get_model(epoch, step, **kwargs):\n    return torch.nn.Linear(2, 3)\n"
        "def forward_step(*, model, data, run_ctx, **kwargs):\n    model(data['data'])\n"
    )
    config = ReturnnConfig(
        config={"forward": {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 2}},
        python_epilog=[code],
    )
    job = MiniReturnnForwardJob(
        PtCheckpoint(tk.Path(str(tmp_path / "model.pt"))), config, output_files=["scores.txt"], device="cpu"
    )
    base = Path(job._sis_path())
    (base / "work").mkdir(parents=True)
    (base / "output").mkdir(parents=True)
    monkeypatch.chdir(base / "work")
    job.create_files()
    with pytest.raises(FileNotFoundError, match="did not write the declared output.*scores.txt"):
        job.run()


def test_existing_setups_switch_by_class_name():
    # ReturnnTrainingJob(returnn_config, returnn_python_exe=..., num_epochs=...) without returnn_root
    from sisyphus import tk

    job = MiniReturnnTrainingJob(make_config(), num_epochs=2, returnn_python_exe=tk.Path(sys.executable), device="cpu")
    assert job.job_id() == job_id()


def _usage(used_time=0.01, rss=0.3, **flags):
    """The usage Sisyphus hands to update_rqmt: its worker's usage file (hours, GB) plus the engine's flags."""
    return {"max": {"rss": rss, "vms": 2 * rss, "cpu": 90.0}, "used_time": used_time, **flags}


def test_update_rqmt_keeps_the_requirements_of_a_run_that_did_not_run_out():
    from jobs.training import update_rqmt

    rqmt = {"time": 4.0, "mem": 8.0, "cpu": 2, "gpu": 1}
    for _ in range(4):  # four preemptions of a run that used 0.01 h and 0.3 GB
        rqmt = update_rqmt(rqmt, _usage(), max_mem=32)
    assert rqmt == {"time": 4.0, "mem": 8.0, "cpu": 2, "gpu": 1}


def test_update_rqmt_raises_only_what_ran_out_within_the_caps():
    from jobs.training import update_rqmt

    rqmt = {"time": 4.0, "mem": 8.0, "cpu": 2}
    assert update_rqmt(rqmt, _usage(used_time=1.0, out_of_time=True), max_mem=32) == {**rqmt, "time": 6.0}
    assert update_rqmt(rqmt, _usage(used_time=3.9), max_mem=32) == {**rqmt, "time": 6.0}  # at its limit
    assert update_rqmt(rqmt, _usage(rss=2.0, out_of_memory=True), max_mem=32) == {**rqmt, "mem": 12.0}
    assert update_rqmt(rqmt, _usage(rss=7.8), max_mem=32) == {**rqmt, "mem": 12.0}
    assert update_rqmt({"time": 150.0, "mem": 30.0}, _usage(150, 29.9), max_mem=32) == {"time": 168.0, "mem": 32}
    assert update_rqmt({"time": 200.0, "mem": 40.0}, _usage(200, 40, out_of_memory=True), max_mem=32) == {
        "time": 200.0,  # never less than asked for
        "mem": 40.0,
    }


def test_resubmission_requirements_come_from_the_usage_sisyphus_recorded(tmp_path, monkeypatch):
    # Sisyphus' own Task.update_rqmt reads the task's usage file and calls the job's update_rqmt with it.
    from sisyphus import global_settings

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    job = MiniReturnnTrainingJob(make_config(batch_size=26), num_epochs=2, device="cpu", time_rqmt=2, mem_rqmt=3)
    job._sis_setup_directory()
    run = next(t for t in job._sis_tasks() if t.name() == "run")
    usage_file = Path(run.get_process_logging_path(1))
    last = {"time": 2, "mem": 3, "cpu": 2, "gpu": 0}
    usage_file.write_text(repr(_usage(used_time=0.2, rss=0.5)))
    assert run.update_rqmt(last, 1) == {"time": 2, "mem": 3, "cpu": 2, "gpu": 0}
    usage_file.write_text(repr(_usage(used_time=0.2, rss=0.5, out_of_memory=True)))
    assert run.update_rqmt(last, 1)["mem"] == 4.5
    assert run.update_rqmt(last, 1, additional_usage={"out_of_time": True})["time"] == 3.0


def _run_job_tasks(job, *task_names):
    """Runs a job's tasks as Sisyphus does: folders set up by Sisyphus itself, each task run in the job's work folder
    (the caller points WORK_DIR into its tmp_path)."""
    job._sis_setup_directory()
    cwd = os.getcwd()
    os.chdir(job._sis_path("work"))
    try:
        for name in task_names:
            getattr(job, name)()
    finally:
        os.chdir(cwd)


def test_keep_epochs_keeps_the_best_epoch_for_get_best_checkpoint(tmp_path, monkeypatch):
    from i6_core.returnn.training import GetBestPtCheckpointJob
    from sisyphus import global_settings

    from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    # Adam at a sane rate for two epochs, then at a far too high one: the dev score is best early and then worse.
    code = (
        "import torch\n"
        "def get_model(epoch, step, **kwargs):\n    return torch.nn.Linear(2, 3)\n"
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    logits = model(data['data'])\n"
        "    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data['classes'].flatten().long())\n"
        "    run_ctx.mark_as_loss(ce, 'ce')\n"
    )
    dummy = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "seq_len": 5}
    config = ReturnnConfig(
        config={
            "train": {**dummy, "num_seqs": 40},
            "dev": {**dummy, "num_seqs": 8},
            "batch_size": 50,
            "optimizer": {"class": "adam"},
            "learning_rates": [0.05, 0.05, 5.0],
        },
        python_epilog=[code],
    )
    train = MiniReturnnTrainingJob(config, num_epochs=8, keep_epochs=[4, 8], device="cpu")
    _run_job_tasks(train, "create_files", "run")
    scores = {
        e: d.error["dev_loss_ce"] for e, d in read_learning_rate_file(train.out_learning_rates.get_path()).items()
    }
    best = min(scores, key=scores.get)
    assert best not in (4, 7, 8), scores  # the best epoch is neither listed nor among the newest
    stored = sorted(
        int(p.name[6:9]) for p in Path(train.out_model_dir.get_path()).glob("epoch.*.pt") if ".opt" not in p.name
    )
    assert best in stored and 4 in stored and 8 in stored and len(stored) < 8, stored
    assert sorted(train.out_checkpoints) == [4, 8]

    get_best = GetBestPtCheckpointJob(train.out_model_dir, train.out_learning_rates, key="dev_loss_ce", index=0)
    _run_job_tasks(get_best, "run")
    assert get_best.out_epoch.get() == best
    import torch

    assert torch.load(get_best.out_checkpoint.path.get_path(), weights_only=False)["epoch"] == best


def test_keep_epochs_with_a_cleanup_turned_off_is_refused():
    # a hashed part of its own: Sisyphus returns the job object it already has for a known hash without a new check
    config = make_config(batch_size=23, post_config={"cleanup_old_models": False})
    with pytest.raises(ValueError, match="cleanup_old_models = False"):
        MiniReturnnTrainingJob(config, num_epochs=2, keep_epochs=[1])


def test_progress_file_and_tensorboard_are_unhashed_post_config_settings():
    job = MiniReturnnTrainingJob(make_config(), num_epochs=2, device="cpu")
    post_config = job.returnn_config.post_config
    assert post_config["log_progress_file"] == "progress"
    assert post_config["use_tensorboard"] is True and post_config["tensorboard_opts"] == {
        "log_dir": "tensorboard",
        "required": False,  # turned on by the job: a node without the package trains on
    }
    assert job_id(tensorboard=False) == job_id() == "jobs/training/MiniReturnnTrainingJob.jJPc0NjI774f"
    off = MiniReturnnTrainingJob(make_config(batch_size=22), num_epochs=2, device="cpu", tensorboard=False)
    assert "use_tensorboard" not in off.returnn_config.post_config
    # a config that decides itself keeps its choice (and its hash: the key is in its hashed part)
    own = MiniReturnnTrainingJob(make_config(batch_size=22, use_tensorboard=False), num_epochs=2, device="cpu")
    assert "use_tensorboard" not in own.returnn_config.post_config


def test_info_shows_the_runtime_progress_until_an_epoch_is_stored(tmp_path, monkeypatch):
    from sisyphus import global_settings

    from i6_minireturnn.file_formats import EpochData, write_learning_rate_file

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    job = MiniReturnnTrainingJob(make_config(batch_size=24), num_epochs=4, device="cpu")
    work = Path(job._sis_path("work"))
    work.mkdir(parents=True)
    assert job.info() is None
    progress = work / "progress"
    progress.write_text("train epoch 1/4 50%, ETA 0:01:00 (training 0:07:00)\n")
    assert job.info() == "ep 0/4; train epoch 1/4 50%, ETA 0:01:00 (training 0:07:00)"
    write_learning_rate_file(str(work / "learning_rates"), {1: EpochData(0.1, {"ce": 1.0})})
    os.utime(progress, (1, 1))  # written before epoch 1 was stored: it tells of a finished pass
    assert job.info() == "ep 1/4"
    progress.write_text("train epoch 2/4 10%, ETA 0:01:30 (training 0:05:30)\n")
    assert job.info() == "ep 1/4; train epoch 2/4 10%, ETA 0:01:30 (training 0:05:30)"


def test_plot_title_is_the_jobs_name():
    job = MiniReturnnTrainingJob(make_config(batch_size=25), num_epochs=2, device="cpu")
    assert job._title() == job.job_id()
    job.add_alias("setups/ctc-baseline")
    assert job._title() == "setups/ctc-baseline"


def test_continue_from_declares_the_earlier_and_the_new_epochs_and_needs_more_epochs():
    earlier = MiniReturnnTrainingJob(make_config(batch_size=27), num_epochs=4, device="cpu", keep_epochs=[2])
    longer = MiniReturnnTrainingJob(make_config(batch_size=27), num_epochs=8, device="cpu", continue_from=earlier)
    assert sorted(longer.out_checkpoints) == [2, 4, 5, 6, 7, 8]
    assert longer.continue_from_model_dir == earlier.out_model_dir  # an input: the manager waits for it
    assert longer.job_id() != MiniReturnnTrainingJob(make_config(batch_size=27), num_epochs=8, device="cpu").job_id()
    with pytest.raises(ValueError, match="trained 4 epochs: num_epochs must be larger, got 4"):
        MiniReturnnTrainingJob(make_config(batch_size=28), num_epochs=4, device="cpu", continue_from=earlier)


def test_a_runtime_killed_by_sigkill_reads_to_sisyphus_as_killed_for_its_memory(tmp_path):
    # The kernel's out-of-memory killer SIGKILLs the largest process, the runtime, and the worker lives on: exit
    # status 137 is what Sisyphus' worker reads as out of memory (the task is resubmitted with more memory, see
    # update_rqmt) instead of a failed task that the manager gives up on.
    from jobs.launch import run_runtime

    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(subprocess.CalledProcessError) as killed:
        run_runtime(suicide, dict(os.environ))
    assert killed.value.returncode == 137
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_runtime([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    assert failed.value.returncode == 3
    run_runtime([sys.executable, "-c", "pass"], dict(os.environ))
