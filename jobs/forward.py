"""MiniReturnnForwardJob: runs task forward on a checkpoint; the forward hooks' files become outputs."""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any, Dict, Iterator, List, Optional

from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.training import PtCheckpoint
from sisyphus import Job, Task, tk

from .launch import (
    default_cpu_rqmt,
    python_executable,
    refuse_job_controlled_keys,
    run_runtime,
    runtime_command,
    runtime_env,
    write_runtime_config,
)

# Keys the job sets itself: a config that sets them gets an error saying what to use instead.
JOB_CONTROLLED_KEYS = {
    "device": "use its argument device",
    "log_verbosity": "use its argument log_verbosity",
    "load": "use its argument model_checkpoint",
}


class MiniReturnnForwardJob(Job):
    """Forwards a dataset through a trained model with the config's ``forward_step`` and hooks, in one process (one
    GPU or the CPU): the forward hooks write their files from that one process. The run task resumes: a killed
    worker is resubmitted and forwards again from the start."""

    def __init__(
        self,
        model_checkpoint: PtCheckpoint,
        returnn_config: ReturnnConfig,
        *,
        output_files: List[str],
        log_verbosity: int = 3,
        device: str = "gpu",
        time_rqmt: float = 4,
        mem_rqmt: float = 4,
        cpu_rqmt: Optional[int] = None,
        python_exe: Optional[tk.Path] = None,
    ):
        """
        :param model_checkpoint: the checkpoint to load (e.g. ``out_checkpoints[epoch]`` of a training)
        :param returnn_config: config with the ``forward`` dataset, ``forward_step`` and hooks
        :param output_files: file names the hooks write into the working folder (e.g. ["output.hdf"])
        :param log_verbosity: runtime log verbosity (not hashed)
        :param device: "gpu" or "cpu" (not hashed)
        :param time_rqmt: hours
        :param mem_rqmt: GB of memory
        :param cpu_rqmt: CPU cores; default: 10 on a GPU (loader threads for a dataset that decodes audio), 2 on the CPU
        :param python_exe: Python to run the runtime with (not hashed)
        """
        refuse_job_controlled_keys(returnn_config, JOB_CONTROLLED_KEYS, "MiniReturnnForwardJob")
        self.model_checkpoint = model_checkpoint
        self.output_files = list(output_files)
        self.python_exe = python_exe
        self.returnn_config = copy.deepcopy(returnn_config)
        self.returnn_config.config = {"task": "forward", **self.returnn_config.config}
        self.returnn_config.post_config = {
            "device": device,
            "log": ["./returnn.log"],
            "log_verbosity": log_verbosity,
            **(self.returnn_config.post_config or {}),
        }
        self.out_returnn_config_file = self.output_path("returnn.config")
        self.out_files = {name: self.output_path(name) for name in self.output_files}
        cpus = cpu_rqmt if cpu_rqmt is not None else default_cpu_rqmt(device)
        self.rqmt = {"gpu": 1 if device == "gpu" else 0, "cpu": cpus, "mem": mem_rqmt, "time": time_rqmt}

    def tasks(self) -> Iterator[Task]:
        yield Task("create_files", mini_task=True)
        yield Task("run", resume="run", rqmt=self.rqmt)

    def create_files(self) -> None:
        """Writes the config, with ``load`` pointing at the checkpoint."""
        config = copy.deepcopy(self.returnn_config)
        config.post_config["load"] = str(self.model_checkpoint)
        write_runtime_config(
            config,
            self.out_returnn_config_file.get_path(),
            check_task=config.config["task"],
            python_exe=self.python_exe,
        )

    def run(self) -> None:
        """Forwards, then moves every declared output into place; a missing one fails the job, naming it. A run
        restarted after its worker was killed starts over: what the killed run's hooks left is removed first, so
        that no half-written file becomes an output."""
        for name in self.output_files:
            if os.path.lexists(name):
                os.remove(name)
        command = runtime_command(python_executable(self.python_exe), self.out_returnn_config_file.get_path())
        run_runtime(command, runtime_env(self.rqmt["cpu"]))
        missing = [name for name in self.output_files if not os.path.exists(name)]
        if missing:
            raise FileNotFoundError(f"The forward hooks did not write the declared output(s): {missing}")
        for name in self.output_files:
            shutil.move(name, self.out_files[name].get_path())

    @classmethod
    def hash(cls, kwargs: Dict[str, Any]) -> str:
        # device, verbosity, requirements and the Python executable do not change the outputs
        return super().hash(
            {
                "model_checkpoint": kwargs["model_checkpoint"],
                "returnn_config": kwargs["returnn_config"],
                "output_files": kwargs["output_files"],
            }
        )
