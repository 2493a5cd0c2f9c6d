"""HdfDumpJob: dumps a dataset (dict or a config's ``train``) to an HDF file with the runtime's hdf_dump tool."""

from __future__ import annotations

import copy
import subprocess
from typing import Any, Dict, Iterator, Optional, Union

from i6_core.returnn.config import ReturnnConfig
from sisyphus import Job, Task, tk

from .launch import python_executable, runtime_env, write_runtime_config


class HdfDumpJob(Job):
    """Writes every sequence of a dataset, all data keys and tags, to ``out_hdf``."""

    def __init__(
        self,
        data: Union[Dict[str, Any], ReturnnConfig],
        *,
        returnn_config_extra: Optional[Dict[str, Any]] = None,
        time_rqmt: float = 4,
        mem_rqmt: float = 4,
        cpu_rqmt: int = 1,
        python_exe: Optional[tk.Path] = None,
    ):
        """
        :param data: a dataset dict, or a ReturnnConfig whose ``train`` dataset is dumped
        :param returnn_config_extra: more config entries (e.g. code the dataset needs)
        :param time_rqmt: hours
        :param mem_rqmt: GB of memory
        :param cpu_rqmt: CPU cores
        :param python_exe: Python to run the tool with (not hashed)
        """
        if isinstance(data, ReturnnConfig):
            self.returnn_config = copy.deepcopy(data)
        else:
            self.returnn_config = ReturnnConfig(config={"train": data})
        self.returnn_config.config.update(copy.deepcopy(returnn_config_extra or {}))
        self.python_exe = python_exe
        self.out_returnn_config_file = self.output_path("dataset.config")
        self.out_hdf = self.output_path("data.hdf")
        self.rqmt = {"cpu": cpu_rqmt, "mem": mem_rqmt, "time": time_rqmt}

    def tasks(self) -> Iterator[Task]:
        yield Task("run", rqmt=self.rqmt)

    def run(self) -> None:
        """Writes the dataset config, then dumps the dataset with ``python -m i6_minireturnn.tools.hdf_dump``."""
        write_runtime_config(self.returnn_config, self.out_returnn_config_file.get_path())
        python = python_executable(self.python_exe)
        command = [python, "-m", "i6_minireturnn.tools.hdf_dump", self.out_returnn_config_file.get_path()]
        subprocess.check_call(command + [self.out_hdf.get_path()], env=runtime_env(self.rqmt["cpu"]))

    @classmethod
    def hash(cls, kwargs: Dict[str, Any]) -> str:
        # requirements and the Python executable do not change the dump
        return super().hash({"data": kwargs["data"], "returnn_config_extra": kwargs["returnn_config_extra"]})
