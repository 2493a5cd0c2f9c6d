"""HdfDumpJob: dumps a dataset (dict, definition string, or a config's ``train``) to an HDF file with the runtime's
hdf_dump tool; takes i6_core's ReturnnDumpHDFJob arguments, so a setup switches by changing the class name."""

from __future__ import annotations

import ast
import copy
import os
import shutil
from typing import Any, Dict, Iterator, List, Optional, TypeVar, Union

from i6_core.returnn.config import CodeWrapper, ReturnnConfig
from sisyphus import Job, Task, tk

from i6_minireturnn.atomic_file import is_temp_file

from .launch import (
    PACKAGE_ROOT,
    check_written_config,
    python_executable,
    run_runtime,
    runtime_env,
    write_runtime_config,
)

T = TypeVar("T")


def _one_of(name: str, value: Optional[T], other_name: str, other: Optional[T], default: T) -> T:
    """The value of an argument that has today's name and i6_core's: give one of them (or both, equal)."""
    if value is not None and other is not None and value != other:
        raise ValueError(f"HdfDumpJob: {name}={value!r} and {other_name}={other!r} differ: give one of them")
    if value is not None:
        return value
    return other if other is not None else default


class HdfDumpJob(Job):
    """Writes the sequences of a dataset (all of them, or the range ``start_seq``..``end_seq`` of epoch ``epoch``),
    all data keys and tags, to ``out_hdf`` in RETURNN's HDF layout.

    The arguments are i6_core's ReturnnDumpHDFJob ones, with the same meaning and hashed as there (but for
    ``returnn_root``, ignored here), plus this job's earlier names ``cpu_rqmt``, ``mem_rqmt``, ``time_rqmt``,
    ``python_exe`` and ``returnn_config_extra``; a setup switches by changing the class name. The run task resumes
    after a lost worker by dumping again from the start: the tool writes ``out_hdf`` under its final name only when
    it is complete, so a killed run leaves no file that looks finished."""

    # Jobs made before the range and the epoch were arguments keep their hash: unset, they are not hashed.
    __sis_hash_exclude__ = {"start_seq": None, "end_seq": None, "epoch": None}

    def __init__(
        self,
        data: Union[Dict[str, Any], ReturnnConfig, tk.Path, str],
        start_seq: Optional[int] = None,
        end_seq: Optional[int] = None,
        epoch: Optional[int] = None,
        cpu: Optional[int] = None,
        mem: Optional[float] = None,
        file_size: Optional[float] = None,
        time: Optional[float] = None,
        returnn_python_exe: Optional[tk.Path] = None,
        returnn_root: Optional[tk.Path] = None,
        *,
        returnn_config_extra: Optional[Dict[str, Any]] = None,
        time_rqmt: Optional[float] = None,
        mem_rqmt: Optional[float] = None,
        cpu_rqmt: Optional[int] = None,
        python_exe: Optional[tk.Path] = None,
    ):
        """
        :param data: the dataset: a dataset dict; a ReturnnConfig, whose ``train`` dataset is dumped; a config file
            (tk.Path), whose ``train`` dataset is dumped; or, as in i6_core, a str holding the dataset's definition as
            Python code (written as ``train = <data>``), e.g. ``"{'class': 'HDFDataset', 'files': [...]}"``
        :param start_seq: first sequence index of the epoch to dump (default: the first)
        :param end_seq: last sequence index of the epoch to dump, inclusive as in RETURNN (default: the last)
        :param epoch: the epoch whose sequence order is dumped (default: 1)
        :param cpu: CPU cores (i6_core's name; default 1: the tool uses one); same as cpu_rqmt, give one of them
        :param mem: GB of memory (i6_core's name; default 4); same as mem_rqmt
        :param file_size: GB of local disk space to request on the node (i6_core's ``file_size`` requirement, for
            engines that know it, e.g. Son of Grid Engine); default: none requested
        :param time: hours (i6_core's name; default 4); same as time_rqmt
        :param returnn_python_exe: Python to run the tool with (i6_core's name; default: the manager's Python); same
            as python_exe
        :param returnn_root: accepted so that i6_core calls work unchanged, and ignored: this job always runs the
            runtime beside ``jobs/`` (to run another RETURNN, use i6_core's ReturnnDumpHDFJob). Not hashed
        :param returnn_config_extra: more config entries (e.g. code the dataset needs); not with a config file
        :param time_rqmt: hours
        :param mem_rqmt: GB of memory
        :param cpu_rqmt: CPU cores
        :param python_exe: Python to run the tool with

        Hashed: data, returnn_config_extra, and start_seq, end_seq and epoch where set; never the requirements, the
        Python executable or returnn_root.
        """
        self.config_file: Optional[tk.Path] = None
        self.returnn_config: Optional[ReturnnConfig] = None
        if isinstance(data, tk.Path):
            if returnn_config_extra:
                raise ValueError("HdfDumpJob: returnn_config_extra cannot be added to a config file: put it there")
            self.config_file = data
        elif isinstance(data, ReturnnConfig):
            self.returnn_config = copy.deepcopy(data)
        elif isinstance(data, dict):
            self.returnn_config = ReturnnConfig(config={"train": data})
        elif isinstance(data, str):
            self.returnn_config = ReturnnConfig(config={"train": CodeWrapper(_checked_definition(data))})
        else:
            raise TypeError(f"HdfDumpJob: data must be a dict, ReturnnConfig, tk.Path or str, got {type(data)}")
        if self.returnn_config is not None:
            self.returnn_config.config.update(copy.deepcopy(returnn_config_extra or {}))
        _check_range(start_seq, end_seq, epoch)
        self.start_seq = start_seq
        self.end_seq = end_seq
        self.epoch = epoch
        self.python_exe = _one_of("python_exe", python_exe, "returnn_python_exe", returnn_python_exe, None)
        self.returnn_root = returnn_root
        self.rqmt: Dict[str, Any] = {
            "cpu": _one_of("cpu_rqmt", cpu_rqmt, "cpu", cpu, 1),
            "mem": _one_of("mem_rqmt", mem_rqmt, "mem", mem, 4),
            "time": _one_of("time_rqmt", time_rqmt, "time", time, 4),
        }
        if file_size is not None:
            self.rqmt["file_size"] = file_size
        self.out_returnn_config_file = self.output_path("dataset.config")
        self.out_hdf = self.output_path("data.hdf")

    def tasks(self) -> Iterator[Task]:
        """Writing the config (a mini task), then the dump, which a lost worker's resubmission runs again."""
        yield Task("create_files", mini_task=True)
        yield Task("run", resume="run", rqmt=self.rqmt)

    def create_files(self) -> None:
        """Writes the config the run task dumps from: the dataset's config, or a verbatim copy of the given file."""
        if self.config_file is not None:
            shutil.copyfile(self.config_file.get_path(), self.out_returnn_config_file.get_path())
            check_written_config(
                self.out_returnn_config_file.get_path(), check_dataset="train", python_exe=self.python_exe
            )
        else:
            write_runtime_config(
                self.returnn_config,
                self.out_returnn_config_file.get_path(),
                check_dataset="train",
                python_exe=self.python_exe,
            )

    def run(self) -> None:
        """Dumps the config's ``train`` dataset with ``python -m i6_minireturnn.tools.hdf_dump``; also the resume of a
        killed run, which starts over after removing the killed run's temp files."""
        if self.returnn_root is not None:
            print(f"returnn_root={self.returnn_root} is ignored: HdfDumpJob runs the runtime at {PACKAGE_ROOT}")
        self.remove_leftovers()
        python = python_executable(self.python_exe)
        command = [python, "-m", "i6_minireturnn.tools.hdf_dump", self.out_returnn_config_file.get_path()]
        command += [self.out_hdf.get_path(), "--dataset", "train", *self.range_arguments()]
        run_runtime(command, runtime_env(self.rqmt["cpu"]))

    def range_arguments(self) -> List[str]:
        """The tool's ``--start_seq``/``--end_seq``/``--epoch`` for the arguments that are set."""
        chosen = {"--start_seq": self.start_seq, "--end_seq": self.end_seq, "--epoch": self.epoch}
        return [part for flag, value in chosen.items() if value is not None for part in (flag, str(value))]

    def remove_leftovers(self) -> None:
        """Removes the temp files a killed run left beside ``out_hdf`` (the HDF file the tool had not yet renamed)."""
        folder, name = os.path.split(self.out_hdf.get_path())
        for leftover in os.listdir(folder):
            if leftover.startswith(name) and is_temp_file(leftover):
                print(f"Removing {leftover}, left by an earlier run that did not finish")
                os.remove(os.path.join(folder, leftover))

    @classmethod
    def hash(cls, kwargs: Dict[str, Any]) -> str:
        """The job's hash from what changes the dump (unset range and epoch dropped by ``__sis_hash_exclude__``)."""
        # Not the requirements or the Python executable (as in i6_core), nor returnn_root (ignored here).
        hashed = ("data", "returnn_config_extra", "start_seq", "end_seq", "epoch")
        return super().hash({key: kwargs[key] for key in hashed})


def _check_range(start_seq: Optional[int], end_seq: Optional[int], epoch: Optional[int]) -> None:
    """A ValueError, in the manager, for a range or epoch the tool would refuse on the node."""
    if (start_seq is not None and start_seq < 0) or (end_seq is not None and end_seq < (start_seq or 0)):
        raise ValueError(f"HdfDumpJob: start_seq={start_seq}, end_seq={end_seq} is an empty or negative range")
    if epoch is not None and epoch < 1:
        raise ValueError(f"HdfDumpJob: epoch must be 1 or more, got {epoch}")


def _checked_definition(data: str) -> str:
    """`data` when it is Python code for a dataset (i6_core's meaning of a str); a file name or other text fails here,
    in the manager, rather than on the node."""
    if os.path.isfile(data):
        raise ValueError(f"HdfDumpJob: data={data!r} is a file; pass tk.Path({data!r}) to dump a config file's train")
    try:
        ast.parse(data, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"HdfDumpJob: data as a str must be a dataset definition (Python code): {exc}") from None
    return data
