"""MiniReturnnTrainingJob: trains a Mini-RETURNN config with the runtime that lives next to this package."""

from __future__ import annotations

import copy
import os
import shlex
import stat
import subprocess
import sys
from typing import Any, Dict, Iterable, List, Optional

from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.training import PtCheckpoint
from sisyphus import Job, Task, tk
from sisyphus import global_settings as gs

from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file
from i6_minireturnn.errors import ConfigError

from .launch import LEARNING_RATE_FILE, annotate_config, runtime_command, runtime_env

# Keys the job sets itself: a config that sets them gets an error naming the job argument to use.
JOB_CONTROLLED_KEYS = {
    "num_epochs": "num_epochs",
    "device": "device",
    "log_verbosity": "log_verbosity",
    "model": "(the job's out_model_dir)",
    "save_interval": "save_interval",
}


class MiniReturnnTrainingJob(Job):
    """Trains with ``python -m i6_minireturnn returnn.config``; a rerun (or a restart after preemption) continues
    from the newest checkpoint. Outputs are those of i6_core's torch training job, so downstream jobs take them."""

    def __init__(
        self,
        returnn_config: ReturnnConfig,
        *,
        log_verbosity: int = 3,
        device: str = "gpu",
        num_epochs: int,
        save_interval: int = 1,
        keep_epochs: Optional[Iterable[int]] = None,
        time_rqmt: float = 4,
        mem_rqmt: float = 4,
        cpu_rqmt: int = 2,
        num_processes: Optional[int] = None,
        python_exe: Optional[tk.Path] = None,
        returnn_python_exe: Optional[tk.Path] = None,
    ):
        """
        :param returnn_config: i6_core ReturnnConfig with the model code (e.g. a serialization Collection)
        :param log_verbosity: runtime log verbosity 1-5 (not hashed)
        :param device: "gpu" or "cpu" (not hashed)
        :param num_epochs: epochs to train (not hashed: raising it continues the training)
        :param save_interval: store a checkpoint every n epochs (and the last one)
        :param keep_epochs: None keeps every stored epoch. A list turns the cleanup on: after each epoch, stored
            epochs are deleted except the listed ones, the 2 newest, the 4 best by each score in the learning_rates
            file (e.g. ``dev_loss_ctc``) and the final epoch; ``out_checkpoints`` holds the listed and the final
            epoch. The other cleanup options (``keep_last_n``, ``keep_best_n``) can be set in the post_config's
            ``cleanup_old_models`` dict.
        :param time_rqmt: hours per run
        :param mem_rqmt: GB of memory per process
        :param cpu_rqmt: CPU cores per process (also OMP_NUM_THREADS / MKL_NUM_THREADS)
        :param num_processes: several GPU processes launched with torch.distributed.run
        :param python_exe: Python to run the runtime with (default: the manager's); not hashed
        :param returnn_python_exe: i6_core's name for python_exe, so that existing setups switch by changing the
            class name (and dropping returnn_root); not hashed
        """
        for key, argument in JOB_CONTROLLED_KEYS.items():
            if returnn_config.config.get(key) is not None or (returnn_config.post_config or {}).get(key) is not None:
                raise ValueError(
                    f"returnn_config sets {key!r}, which MiniReturnnTrainingJob controls: use its argument {argument}"
                )
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
        self.num_epochs = num_epochs
        self.save_interval = save_interval
        self.keep_epochs = sorted(set(keep_epochs)) if keep_epochs is not None else None
        self.device = device
        self.num_processes = num_processes
        self.python_exe = python_exe or returnn_python_exe
        self.returnn_config = self.create_returnn_config(
            returnn_config,
            log_verbosity=log_verbosity,
            device=device,
            num_epochs=num_epochs,
            save_interval=save_interval,
            keep_epochs=self.keep_epochs,
        )

        self.out_returnn_config_file = self.output_path("returnn.config")
        self.out_learning_rates = self.output_path("learning_rates")
        self.out_model_dir = self.output_path("models", directory=True)
        stored = [e for e in range(1, num_epochs + 1) if e % save_interval == 0 or e == num_epochs]
        kept = stored if self.keep_epochs is None else [e for e in stored if e in self.keep_epochs or e == num_epochs]
        self.out_checkpoints = {e: PtCheckpoint(self.output_path(f"models/epoch.{e:03d}.pt")) for e in kept}
        self.out_plot_se = self.output_path("score_and_error.png")
        self.out_plot_lr = self.output_path("learning_rate.png")
        self.returnn_config.post_config["model"] = os.path.join(self.out_model_dir.get_path(), "epoch")

        processes = num_processes or 1
        self.rqmt = {
            "gpu": processes if device == "gpu" else 0,
            "cpu": cpu_rqmt * processes,
            "mem": mem_rqmt * processes,
            "time": time_rqmt,
        }

    @classmethod
    def create_returnn_config(
        cls,
        returnn_config: ReturnnConfig,
        *,
        log_verbosity: int,
        device: str,
        num_epochs: int,
        save_interval: int,
        keep_epochs: Optional[List[int]],
    ) -> ReturnnConfig:
        """The config the runtime gets: job settings in the (unhashed) post_config."""
        config = copy.deepcopy(returnn_config)
        config.config = {"task": "train", "learning_rate_file": LEARNING_RATE_FILE, **config.config}
        post_config = {
            "device": device,
            "log": ["./returnn.log"],
            "log_verbosity": log_verbosity,
            "num_epochs": num_epochs,
            "save_interval": save_interval,
            **copy.deepcopy(config.post_config or {}),
        }
        if keep_epochs is not None:
            # As i6_core: the listed epochs in addition to the runtime's default cleanup (the 2 newest and the 4 best
            # per dev score), so that best-epoch selection downstream always finds its file. A post_config
            # `cleanup_old_models` dict sets the other cleanup options.
            cleanup = post_config.get("cleanup_old_models", True)
            if cleanup is False:
                raise ValueError("keep_epochs needs the cleanup: post_config sets cleanup_old_models = False")
            cleanup = dict(cleanup) if isinstance(cleanup, dict) else {}
            if "keep" in cleanup:
                raise ValueError("give either keep_epochs or post_config cleanup_old_models['keep'], not both")
            post_config["cleanup_old_models"] = {**cleanup, "keep": keep_epochs}
        config.post_config = post_config
        return config

    # ---- tasks ---------------------------------------------------------------------------------------------------

    def tasks(self):
        yield Task("create_files", mini_task=True)
        yield Task("run", resume="run", rqmt=self.rqmt, update_rqmt=update_rqmt)
        yield Task("plot", resume="plot", mini_task=True)

    def _python(self) -> str:
        return self.python_exe.get_path() if self.python_exe is not None else sys.executable

    def _command(self) -> List[str]:
        return runtime_command(self._python(), self.out_returnn_config_file.get_path(), self.num_processes)

    def create_files(self):
        """Writes the config and ``rnn.sh``, which reruns the training by hand from the work folder."""
        self.returnn_config.write(self.out_returnn_config_file.get_path())
        annotate_config(self.out_returnn_config_file.get_path())
        script = os.path.abspath("rnn.sh")
        env = runtime_env(self.rqmt["cpu"] // (self.num_processes or 1))
        exports = "".join(
            f"export {k}={shlex.quote(env[k])}\n" for k in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        )
        with open(script, "w") as f:
            f.write(
                "#!/bin/sh\n# Reruns (continues) this training by hand.\n"
                f"cd {shlex.quote(os.path.abspath('.'))}\n{exports}"
                f'exec {" ".join(shlex.quote(c) for c in self._command())} "$@"\n'
            )
        os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def run(self):
        """Trains (continuing from the newest checkpoint if any) and checks every declared output exists."""
        subprocess.check_call(self._command(), env=runtime_env(self.rqmt["cpu"] // (self.num_processes or 1)))
        learning_rates = os.path.abspath(LEARNING_RATE_FILE)
        if not os.path.exists(learning_rates):
            raise FileNotFoundError(f"The training wrote no {learning_rates}")
        target = self.out_learning_rates.get_path()
        if os.path.lexists(target):
            os.remove(target)
        os.symlink(learning_rates, target)
        missing = [str(c) for c in self.out_checkpoints.values() if not os.path.exists(str(c))]
        if missing:
            raise FileNotFoundError(f"The training ended without the declared checkpoints: {missing}")

    def plot(self):
        """Scores and learning rate per epoch as PNG (train keys like ``ctc``, eval keys like ``dev_loss_ctc``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = read_learning_rate_file(self.out_learning_rates.get_path())
        epochs = sorted(data)
        keys = sorted({k for e in epochs for k in data[e].error})
        fig, ax = plt.subplots(figsize=(8, 5))
        for key in keys:
            points = [(e, data[e].error[key]) for e in epochs if key in data[e].error]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("score")
        ax.legend(fontsize="small")
        fig.savefig(self.out_plot_se.get_path())
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.plot(epochs, [data[e].learning_rate for e in epochs], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        fig.savefig(self.out_plot_lr.get_path())
        plt.close(fig)

    # ---- status --------------------------------------------------------------------------------------------------

    def _epochs_done(self) -> Optional[int]:
        path = os.path.join(self._sis_path(gs.JOB_WORK_DIR), LEARNING_RATE_FILE)
        try:
            data = read_learning_rate_file(path)
        except (OSError, ConfigError):
            return None
        return max((e for e, d in data.items() if d.error), default=0)

    def info(self):
        done = self._epochs_done()
        return None if done is None else f"ep {done}/{self.num_epochs}"

    def completed_fraction(self) -> Optional[float]:
        done = self._epochs_done()
        return None if done is None else done / self.num_epochs

    def path_available(self, path: tk.Path) -> bool:
        """A checkpoint is available once written (atomically), so downstream jobs can start during training."""
        if super().path_available(path):
            return True
        if path == self.out_learning_rates:
            return False
        return os.path.exists(path.get_path())

    @classmethod
    def hash(cls, kwargs: Dict[str, Any]) -> str:
        # num_epochs, device, log_verbosity, requirements and python_exe do not change the trained model's identity
        # (raising num_epochs continues the same training); the hashed config part, the storing settings and the
        # number of processes do.
        d: Dict[str, Any] = {
            "returnn_config": kwargs["returnn_config"],
            "save_interval": kwargs["save_interval"],
            "keep_epochs": sorted(set(kwargs["keep_epochs"])) if kwargs["keep_epochs"] is not None else None,
        }
        if kwargs["num_processes"] is not None:
            d["num_processes"] = kwargs["num_processes"]
        return super().hash(d)


def update_rqmt(last_rqmt: Dict[str, Any], last_usage: Dict[str, Any]) -> Dict[str, Any]:
    """Sisyphus calls this for an interrupted run: 1.5x time (at most a week) and 1.25x memory, so a resubmitted
    training that ran out of either gets further (it continues from its newest checkpoint)."""
    rqmt = dict(last_rqmt)
    rqmt["time"] = min(float(last_rqmt.get("time", 1)) * 1.5, 168.0)
    rqmt["mem"] = float(last_rqmt.get("mem", 1)) * 1.25
    return rqmt
