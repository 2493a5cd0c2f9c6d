"""HdfDumpJob: its hash (today's ids pinned), i6_core's ReturnnDumpHDFJob arguments, the dumped range and epoch,
config files as data, and a dump killed under the real Sisyphus manager that resumes and finishes."""

from __future__ import annotations

import os
import signal
import time
from ast import literal_eval
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest
from i6_core.returnn.config import ReturnnConfig
from sisyphus import tk

from jobs import HdfDumpJob

from .sis_setup import failed_jobs, job_folders, kill_worker, start_sis_manager, submissions, user_setup

CORPUS = {"class": "SyntheticSpeechDataset", "num_classes": 10, "feature_dim": 16}
TOY = {"class": "SyntheticSpeechDataset", "num_seqs": 5, "feature_dim": 4, "num_classes": 3}
PYTHON = tk.Path("/usr/bin/python3")

# Ids of jobs as recipes build them today (recipe/demo.py, the README's own setup): they must never move.
PINNED = [
    (({**CORPUS, "num_seqs": 1000, "seed": 1},), {"cpu_rqmt": 1, "time_rqmt": 1}, "m9zf6gZYK7hs"),
    (({**CORPUS, "num_seqs": 100, "seed": 2},), {"cpu_rqmt": 1, "time_rqmt": 1}, "rZWK4migDTf1"),
    (({**CORPUS, "num_seqs": 100, "seed": 2},), {}, "rZWK4migDTf1"),
    (({**CORPUS, "num_seqs": 100, "seed": 2},), {"python_exe": PYTHON, "mem_rqmt": 9}, "rZWK4migDTf1"),
    ((ReturnnConfig({"train": {**CORPUS, "num_seqs": 100, "seed": 2}}),), {}, "70EQAmdCcGhq"),
    (({**CORPUS, "num_seqs": 100, "seed": 2},), {"returnn_config_extra": {"x": 1}}, "p3TAiqrJ1efs"),
    ((TOY,), {"cpu_rqmt": 1, "mem_rqmt": 1, "time_rqmt": 1}, "S9A955If768c"),
]
DEV = {**CORPUS, "num_seqs": 100, "seed": 2}
DEV_ID = "jobs/hdf_dump/HdfDumpJob.rZWK4migDTf1"


@pytest.mark.parametrize("args, kwargs, expected", PINNED)
def test_todays_job_ids_stay(args, kwargs, expected):
    assert HdfDumpJob(*args, **kwargs).job_id() == f"jobs/hdf_dump/HdfDumpJob.{expected}"


def _new_job(*args, **kwargs) -> HdfDumpJob:
    """A new job object from these arguments (for an id it has seen, Sisyphus returns the object it made then)."""
    import sisyphus.job

    seen = dict(sisyphus.job.created_jobs)
    sisyphus.job.created_jobs.clear()
    try:
        return HdfDumpJob(*args, **kwargs)
    finally:
        sisyphus.job.created_jobs.clear()
        sisyphus.job.created_jobs.update(seen)


def test_i6_core_names_hash_and_require_like_todays_names():
    todays = _new_job(DEV, cpu_rqmt=3, mem_rqmt=5, time_rqmt=2, python_exe=PYTHON)
    i6_core = _new_job(DEV, cpu=3, mem=5, time=2, returnn_python_exe=PYTHON, returnn_root=tk.Path("/opt/returnn"))
    assert todays.job_id() == i6_core.job_id() == DEV_ID
    assert i6_core.rqmt == {"cpu": 3, "mem": 5, "time": 2} and i6_core.python_exe == PYTHON
    # i6_core's positional order, file_size as a requirement (not hashed)
    positional = _new_job(DEV, None, None, None, 3, 5, 50, 2, PYTHON, tk.Path("/opt/returnn"))
    assert positional.job_id() == DEV_ID and positional.rqmt == {"cpu": 3, "mem": 5, "time": 2, "file_size": 50}
    assert _new_job(DEV, cpu=2, cpu_rqmt=2).job_id() == DEV_ID  # both names, one value
    with pytest.raises(ValueError, match="cpu_rqmt=1 and cpu=2 differ"):
        _new_job(DEV, cpu=2, cpu_rqmt=1)
    with pytest.raises(ValueError, match="python_exe=.* and returnn_python_exe=.* differ"):
        _new_job(DEV, python_exe=PYTHON, returnn_python_exe=tk.Path("/other/python"))


def test_range_and_epoch_change_the_hash_only_when_set():
    assert HdfDumpJob(DEV, start_seq=None, end_seq=None, epoch=None).job_id() == DEV_ID
    ids = {HdfDumpJob(DEV, **kwargs).job_id() for kwargs in ({"start_seq": 0}, {"end_seq": 9}, {"epoch": 1})}
    ids |= {HdfDumpJob(DEV, start_seq=0, end_seq=9, epoch=2).job_id(), HdfDumpJob(DEV, epoch=2).job_id()}
    assert len(ids) == 5 and DEV_ID not in ids
    assert HdfDumpJob(DEV, epoch=2, cpu=4).job_id() == HdfDumpJob(DEV, epoch=2, cpu_rqmt=1).job_id()


def test_data_that_cannot_work_fails_in_the_manager(tmp_path):
    config = tmp_path / "data.config"
    config.write_text(f"train = {DEV!r}\n")
    with pytest.raises(ValueError, match=r"is a file; pass tk.Path"):
        _new_job(str(config))  # i6_core takes a str as the dataset's definition, not as a file name
    with pytest.raises(ValueError, match="must be a dataset definition"):
        _new_job("{'class': 'HDFDataset',")
    with pytest.raises(ValueError, match="returnn_config_extra cannot be added to a config file"):
        _new_job(tk.Path(str(config)), returnn_config_extra={"x": 1})
    with pytest.raises(TypeError, match="data must be"):
        _new_job(["train"])
    with pytest.raises(ValueError, match="empty or negative range"):
        _new_job(DEV, start_seq=5, end_seq=4)
    with pytest.raises(ValueError, match="epoch must be 1 or more"):
        _new_job(DEV, epoch=0)


# ---- what the job dumps ----------------------------------------------------------------------------------------


def _run_tasks(job: HdfDumpJob, tmp_path: Path, monkeypatch, leftovers: Sequence[str] = ()) -> Path:
    """Runs the job's tasks as a Sisyphus worker does, in its folder under tmp_path, with files named `leftovers`
    in its output folder beforehand (as a killed run leaves them); returns the job folder."""
    from sisyphus import global_settings

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    base = Path(job._sis_path())
    (base / "work").mkdir(parents=True, exist_ok=True)
    (base / "output").mkdir(parents=True, exist_ok=True)
    for name in leftovers:
        (base / "output" / name).write_bytes(b"half an HDF file")
    monkeypatch.chdir(base / "work")
    assert [(task.name(), task.resumeable()) for task in job.tasks()] == [("create_files", False), ("run", True)]
    job.create_files()
    job.run()
    return base


def _tool(source: str, output: Path, *args: str) -> Path:
    """The runtime tool's own dump (in this process), to compare the job's with."""
    from i6_minireturnn.tools import hdf_dump

    assert hdf_dump.main([source, str(output), *args]) == 0
    return output


def _hdf_contents(path: Path) -> Dict[str, Any]:
    """Every dataset and attribute of an HDF file, by name."""
    import h5py

    contents: Dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def add(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                contents[name] = obj[()]
            contents.update({f"{name}@{key}": value for key, value in obj.attrs.items()})

        add("", f)
        f.visititems(add)
    return contents


def _assert_same_hdf(path: Path, expected: Path) -> None:
    got, want = _hdf_contents(path), _hdf_contents(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} of {path} and {expected} differ")


def _seq_tags(path: Path) -> List[str]:
    return [t.decode() if isinstance(t, bytes) else str(t) for t in _hdf_contents(path)["seqTags"]]


def test_range_and_epoch_dump_what_the_tool_dumps(tmp_path, monkeypatch):
    from i6_minireturnn.data.registry import init_dataset

    data = {**CORPUS, "num_seqs": 40, "seed": 5, "seq_ordering": "random"}
    job = HdfDumpJob(data, start_seq=2, end_seq=6, epoch=3, cpu=1)
    base = _run_tasks(job, tmp_path, monkeypatch)
    expected = _tool(repr(data), tmp_path / "tool.hdf", "--epoch", "3", "--start_seq", "2", "--end_seq", "6")
    _assert_same_hdf(Path(job.out_hdf.get_path()), expected)
    dataset = init_dataset(dict(data), name="train")
    dataset.init_seq_order(3)
    tags = [dataset.get_seq_tag(i) for i in range(2, 7)]  # both ends inclusive, as in RETURNN
    dataset.init_seq_order(1)
    assert _seq_tags(Path(job.out_hdf.get_path())) == tags != [dataset.get_seq_tag(i) for i in range(2, 7)]
    assert "train = " in (base / "output" / "dataset.config").read_text()


def test_a_config_file_is_dumped_with_its_train_dataset(tmp_path, monkeypatch):
    config = tmp_path / "setup.config"
    train = {**CORPUS, "num_seqs": 12, "seed": 6}
    config.write_text(f"#!rnn.py\nbatch_size = 100\ndev = {DEV!r}\ntrain = {train!r}\n")
    job = HdfDumpJob(tk.Path(str(config)), start_seq=1, end_seq=3)
    base = _run_tasks(job, tmp_path, monkeypatch)
    _assert_same_hdf(
        Path(job.out_hdf.get_path()), _tool(str(config), tmp_path / "tool.hdf", "--start_seq", "1", "--end_seq", "3")
    )
    assert (base / "output" / "dataset.config").read_text() == config.read_text()  # what was dumped, verbatim


def test_a_definition_string_is_dumped_as_i6_core_does(tmp_path, monkeypatch):
    definition = repr({**CORPUS, "num_seqs": 7, "seed": 8})
    job = HdfDumpJob(definition, returnn_config_extra={"batch_size": 100})
    base = _run_tasks(job, tmp_path, monkeypatch)
    _assert_same_hdf(Path(job.out_hdf.get_path()), _tool(definition, tmp_path / "tool.hdf"))
    assert "batch_size = 100" in (base / "output" / "dataset.config").read_text()


def test_a_dataset_the_tool_would_refuse_fails_in_create_files(tmp_path, monkeypatch):
    from i6_minireturnn.errors import ConfigError

    job = HdfDumpJob({**CORPUS, "num_seqs": 5, "seed": 9, "seq_ordring": "random"})
    with pytest.raises(ConfigError, match="seq_ordring"):
        _run_tasks(job, tmp_path, monkeypatch)
    assert not Path(job.out_hdf.get_path()).exists()


def test_a_rerun_removes_what_a_killed_run_left_and_dumps_whole(tmp_path, monkeypatch):
    data = {**CORPUS, "num_seqs": 9, "seed": 9}
    job = HdfDumpJob(data)
    # A run killed while the tool wrote its file leaves the temp file (the final name is never half-written).
    base = _run_tasks(job, tmp_path, monkeypatch, leftovers=["data.hdf.tmp-0badc0de"])
    assert sorted(os.listdir(base / "output")) == ["data.hdf", "dataset.config"]
    _assert_same_hdf(Path(job.out_hdf.get_path()), _tool(repr(data), tmp_path / "tool.hdf"))


# ---- a worker killed under the real manager ----------------------------------------------------------------------

BIG = {**CORPUS, "num_seqs": 10000, "seed": 3}  # a few seconds of dumping: time to kill it in the middle
KILL_RECIPE = f'''"""A dataset dump long enough to be killed while it runs (tests/jobs/test_hdf_dump_job.py)."""

from sisyphus import tk

from jobs import HdfDumpJob


def py():
    tk.register_output("big.hdf", HdfDumpJob({BIG!r}, cpu=1, mem=2, time=1).out_hdf)
'''


def _dump_tool_process(job_folder: Path) -> Optional[Any]:
    """The hdf_dump process of the job's run task (a child of the worker named in usage.run.1), or None yet."""
    import psutil

    try:
        worker = psutil.Process(literal_eval((job_folder / "usage.run.1").read_text())["pid"])
        for child in worker.children(recursive=True):
            if "i6_minireturnn.tools.hdf_dump" in child.cmdline():
                return child
    except (OSError, SyntaxError, ValueError, KeyError, psutil.Error):  # not written yet, or half-written
        pass
    return None


def _is_writing(pid: int) -> bool:
    """Whether the tool holds its (already unlinked) spool files, i.e. it is past its imports and dumping."""
    try:
        return any(".hdf.tmp-" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _wait_for(what: str, check, manager, log: Path, timeout: float) -> Any:
    """`check()`'s first true value, polled until `timeout`; fails naming `what` with the manager's log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        assert manager is None or manager.poll() is None, f"the manager ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}")


def test_a_killed_dump_resumes_under_the_manager_and_finishes_whole(tmp_path):
    folder = user_setup(tmp_path)
    (folder / "recipe" / "hdf_dump_kill.py").write_text(KILL_RECIPE)
    log = tmp_path / "manager.log"
    manager = start_sis_manager(folder, "recipe/hdf_dump_kill.py", log)
    job: Optional[Path] = None
    try:
        job = _wait_for("HdfDumpJob folder", lambda: job_folders(folder, "HdfDumpJob"), manager, log, 60)[0]
        tool = _wait_for("hdf_dump process", lambda: _dump_tool_process(job), manager, log, 60)
        if os.path.isdir("/proc"):
            _wait_for("dump under way", lambda: _is_writing(tool.pid), manager, log, 60)
        time.sleep(0.5)
        assert tool.is_running(), f"the dump ended before it could be killed; make BIG larger\n{log.read_text()}"
        # A lost node: the worker and the tool die at once, no Python cleanup runs (the manager lives on).
        assert kill_worker(job) >= 2 and manager.poll() is None
        assert not (job / "output" / "data.hdf").exists(), "a killed dump left a file under the final name"
        with ThreadPoolExecutor(1) as pool:  # the uninterrupted dump, while the manager notices and resumes
            uninterrupted = pool.submit(_tool, repr(BIG), tmp_path / "uninterrupted.hdf")
            _wait_for("end of the manager", lambda: _manager_ended(manager, log), None, log, 120)
            expected = uninterrupted.result()
    finally:  # nothing of a failed test runs on: the manager, and a worker it started in a session of its own
        if manager.poll() is None:
            os.killpg(manager.pid, signal.SIGKILL)
        if job is not None:
            kill_worker(job)
    output = log.read_text()
    assert not failed_jobs(folder) and "All output calculated" in output, output[-3000:]
    submitted = submissions(job)
    assert len(submitted) == 2, f"expected the run task submitted twice (killed, resumed): {submitted}"
    _assert_same_hdf(job / "output" / "data.hdf", expected)
    assert sorted(os.listdir(job / "output")) == ["data.hdf", "dataset.config"]


def _manager_ended(manager, log: Path) -> bool:
    """Whether the manager is done; fails at once where it gave up on the killed task."""
    text = log.read_text()
    assert "interrupted_not_resumable" not in text, f"the manager gave up on the killed task:\n{text[-3000:]}"
    return manager.poll() is not None
