"""MiniReturnnTrainingJob with several processes: torchrun command lines (one node, several nodes from Slurm's
variables), requirements, hashes unchanged by launcher arguments, and ``torch_distributed`` in the written config.

Nothing here starts a multi-process training: the commands are built and compared, and rnn.sh runs a fake Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from i6_core.returnn.config import ReturnnConfig

from jobs import MiniReturnnTrainingJob
from jobs.distributed import first_host

from .test_training_job import job_id, make_config

REPO = Path(__file__).resolve().parents[2]
SLURM = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_ID": "123456"}


def make_job(batch_size: int, **kwargs) -> MiniReturnnTrainingJob:
    """A job with a hashed part of its own: Sisyphus returns the object it has for a known hash, whatever the
    unhashed arguments (launcher settings) of the new call are."""
    kwargs.setdefault("num_epochs", 2)
    return MiniReturnnTrainingJob(make_config(batch_size=batch_size), **kwargs)


def config_path(job: MiniReturnnTrainingJob) -> str:
    return job.out_returnn_config_file.get_path()


def test_one_process_runs_the_runtime_directly():
    job = make_job(101)
    assert job._command(job._rendezvous(SLURM)) == [sys.executable, "-m", "i6_minireturnn", config_path(job)]
    # on a GPU, CPUs for 8 loader threads (a dataset that decodes audio) and the training loop: 10
    assert job.rqmt == {"gpu": 1, "cpu": 10, "mem": 4, "time": 4}
    assert "torch_distributed" not in job.returnn_config.post_config


@pytest.mark.parametrize("argument, batch_size", [("num_processes", 102), ("horovod_num_processes", 112)])
def test_processes_on_one_node_run_standalone_torchrun(argument, batch_size):
    job = make_job(batch_size, **{argument: 4}, cpu_rqmt=3, mem_rqmt=8)
    assert job._command(job._rendezvous({})) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "i6_minireturnn", config_path(job),
    ]  # fmt: skip
    assert job.rqmt == {"gpu": 4, "cpu": 12, "mem": 32, "time": 4}
    assert job.returnn_config.post_config["torch_distributed"] == {}


def test_several_nodes_rendezvous_from_slurm():
    job = make_job(103, horovod_num_processes=8, multi_node_slots=2, distributed_launch_cmd="torchrun")
    job_hash = job.job_id().rsplit(".", 1)[-1]
    assert job._command(job._rendezvous(SLURM)) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--rdzv-backend=static",
        "--rdzv-endpoint=gpu07:23456", f"--rdzv-id={job_hash}-123456", "--nproc-per-node=4",
        "-m", "i6_minireturnn", config_path(job),
    ]  # fmt: skip
    # i6_core's rule: requirements per node, for the processes of one node
    assert job.rqmt == {"gpu": 4, "cpu": 40, "mem": 16, "time": 4, "multi_node_slots": 2}
    assert job.returnn_config.post_config["torch_distributed"] == {}


def test_several_nodes_with_a_given_port_on_cpu():
    job = make_job(104, num_processes=4, multi_node_slots=4, rendezvous_port=29400, device="cpu")
    command = job._command(job._rendezvous({**SLURM, "SLURM_JOB_NUM_NODES": "4", "SLURM_NODEID": "0"}))
    assert "--rdzv-endpoint=gpu07:29400" in command and "--node-rank=0" in command
    assert "--nproc-per-node=1" in command
    assert job.rqmt == {"gpu": 0, "cpu": 2, "mem": 4, "time": 4, "multi_node_slots": 4}


def test_several_nodes_outside_slurm_fail_naming_the_variables():
    job = make_job(105, num_processes=4, multi_node_slots=2)
    with pytest.raises(RuntimeError, match="SLURM_JOB_NODELIST, SLURM_NODEID, SLURM_JOB_NUM_NODES, SLURM_JOB_ID"):
        job._rendezvous({})
    with pytest.raises(RuntimeError, match="Slurm allocated 3 nodes"):
        job._rendezvous({**SLURM, "SLURM_JOB_NUM_NODES": "3"})


@pytest.mark.parametrize(
    "nodelist, host",
    [("cn1", "cn1"), ("cn[03-05,09],gpu1", "cn03"), ("gpu-a,gpu-b", "gpu-a"), ("r[1-2]-n[07-08]", "r1-n07")],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_processes": 2, "distributed_launch_cmd": "mpirun"}, "'mpirun' is not supported"),
        ({"num_processes": 2, "horovod_num_processes": 4}, "differ"),
        ({"multi_node_slots": 2}, "multi_node_slots needs horovod_num_processes"),
        ({"num_processes": 3, "multi_node_slots": 2}, "cannot be spread evenly"),
        ({"num_processes": 0}, "at least 1"),
    ],
)
def test_process_arguments_that_do_not_fit_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_job(106, **kwargs)


def test_hash_ignores_launcher_arguments():
    reference = job_id()
    assert job_id(distributed_launch_cmd="torchrun", rendezvous_port=1234) == reference
    four = job_id(num_processes=4)
    assert four != reference
    assert job_id(horovod_num_processes=4) == four  # i6_core's name, hashed as num_processes
    assert job_id(num_processes=4, multi_node_slots=2) == four
    assert job_id(horovod_num_processes=4, multi_node_slots=4, rendezvous_port=29400) == four
    assert job_id(num_processes=4, horovod_num_processes=4) == four


def test_torch_distributed_in_the_written_config(tmp_path, monkeypatch):
    from sisyphus import global_settings

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    for processes, expected in ((2, True), (1, False)):
        job = make_job(107, num_processes=processes)
        job._sis_setup_directory()
        monkeypatch.chdir(job._sis_path("work"))
        job.create_files()
        lines = Path(config_path(job)).read_text().splitlines()
        assert ("torch_distributed = {}" in lines) == expected, lines


def test_torch_distributed_given_by_the_user_is_kept():
    def create(config: ReturnnConfig) -> ReturnnConfig:
        return MiniReturnnTrainingJob.create_returnn_config(
            config, log_verbosity=3, device="gpu", num_epochs=1, save_interval=1, keep_epochs=None, num_processes=2
        )

    hashed = create(ReturnnConfig({"torch_distributed": {"reduce_type": "param"}}))
    assert hashed.config["torch_distributed"] == {"reduce_type": "param"}
    assert "torch_distributed" not in hashed.post_config
    unhashed = create(ReturnnConfig({}, post_config={"torch_distributed": {"reduce_type": "grad"}}))
    assert unhashed.post_config["torch_distributed"] == {"reduce_type": "grad"}


def test_rnn_sh_builds_the_same_command_from_slurm_variables(tmp_path, monkeypatch):
    from sisyphus import global_settings, tk

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    fake_python = tmp_path / "bin" / "python"
    fake_python.parent.mkdir()
    fake_python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    scontrol = tmp_path / "bin" / "scontrol"  # `scontrol show hostnames LIST` prints one host per line
    scontrol.write_text('#!/bin/sh\nprintf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    job = make_job(108, horovod_num_processes=8, multi_node_slots=2, python_exe=tk.Path(str(fake_python)))
    job._sis_setup_directory()
    monkeypatch.chdir(job._sis_path("work"))
    job.create_files()
    env = {"PATH": f"{fake_python.parent}:/usr/bin:/bin", **SLURM}
    script = Path(job._sis_path("work")) / "rnn.sh"
    out = subprocess.run([str(script), "++num_epochs", "3"], env=env, capture_output=True, text=True, check=True)
    expected = job._command(job._rendezvous(SLURM))[1:] + ["++num_epochs", "3"]
    assert out.stdout.splitlines() == expected


def test_jobs_and_file_formats_import_without_torch():
    i6_core_parent = str(Path(__import__("i6_core").__path__[0]).parent)
    code = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}, {i6_core_parent!r}]\n"
        "import i6_minireturnn, i6_minireturnn.file_formats, jobs, jobs.training, jobs.serialization\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
