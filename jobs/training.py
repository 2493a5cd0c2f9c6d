"""MiniReturnnTrainingJob: trains a Mini-RETURNN config with the runtime that lives next to this package, in one
process or, through torchrun, in several on one or more nodes (see :mod:`jobs.distributed`)."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import stat
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.training import PtCheckpoint
from sisyphus import Job, Task, tk
from sisyphus import global_settings as gs

from i6_minireturnn.atomic_file import atomic_path, is_temp_file
from i6_minireturnn.errors import FileFormatError
from i6_minireturnn.file_formats import model_path, read_learning_rate_file
from i6_minireturnn.tools.plot_training import write_plots

from .distributed import Rendezvous, process_layout, requirements, slurm_rendezvous, slurm_rendezvous_in_script
from .launch import (
    LEARNING_RATE_FILE,
    default_cpu_rqmt,
    python_executable,
    refuse_job_controlled_keys,
    run_runtime,
    runtime_command,
    runtime_env,
    shell_command,
    write_runtime_config,
)

# Keys the job sets itself: a config that sets them gets an error saying what to use instead.
JOB_CONTROLLED_KEYS = {
    "num_epochs": "use its argument num_epochs",
    "device": "use its argument device",
    "log_verbosity": "use its argument log_verbosity",
    "model": "it stores the checkpoints in its out_model_dir",
    "save_interval": "use its argument save_interval",
}
# The checkpoints are out_model_dir/epoch.NNN.pt, as i6_core's training job names them.
MODEL_PREFIX = "epoch"
# In the work folder: the runtime's newest progress line (shown by info()) and the TensorBoard event folder.
PROGRESS_FILE = "progress"
TENSORBOARD_DIR = "tensorboard"


class MiniReturnnTrainingJob(Job):
    """Trains with ``python -m i6_minireturnn returnn.config``; a rerun (or a restart after preemption) continues
    from the newest checkpoint. Outputs are those of i6_core's torch training job, so downstream jobs take them; all
    are real files in ``output/`` (none points into ``work/``), so they stay valid after Sisyphus' cleanup.

    ``num_epochs`` is hashed, as in i6_core: a finished job is final in Sisyphus (its downstream jobs have read its
    outputs), so more epochs are a new job. ``continue_from=<the finished job>`` makes that job train only the new
    epochs, from the earlier job's stored checkpoints and scores.

    Several processes (``num_processes`` or i6_core's ``horovod_num_processes``, on one node or, with
    ``multi_node_slots``, on several) are started with torchrun and train with torch.distributed; the arguments,
    requirements and the multi-node rendezvous are described in :mod:`jobs.distributed`."""

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
        cpu_rqmt: Optional[int] = None,
        num_processes: Optional[int] = None,
        distributed_launch_cmd: str = "torchrun",
        horovod_num_processes: Optional[int] = None,
        multi_node_slots: Optional[int] = None,
        rendezvous_port: Optional[int] = None,
        python_exe: Optional[tk.Path] = None,
        returnn_python_exe: Optional[tk.Path] = None,
        tensorboard: bool = True,
        continue_from: Optional[MiniReturnnTrainingJob] = None,
    ):
        """
        :param returnn_config: i6_core ReturnnConfig with the model code (e.g. a serialization Collection)
        :param log_verbosity: runtime log verbosity 1-5 (not hashed)
        :param device: "gpu" or "cpu" (not hashed)
        :param num_epochs: epochs to train (hashed, as in i6_core; to train further without repeating epochs, see
            `continue_from`)
        :param save_interval: store a checkpoint every n epochs (and the last one)
        :param keep_epochs: None keeps every stored epoch. A list turns the cleanup on: after each epoch, stored
            epochs are deleted except the listed ones, the 2 newest, the 4 best by each score in the learning_rates
            file (e.g. ``dev_loss_ctc``) and the final epoch; ``out_checkpoints`` holds the listed and the final
            epoch. The other cleanup options (``keep_last_n``, ``keep_best_n``) can be set in the post_config's
            ``cleanup_old_models`` dict.
        :param time_rqmt: hours per run
        :param mem_rqmt: GB of memory per process
        :param cpu_rqmt: CPU cores per process (also OMP_NUM_THREADS / MKL_NUM_THREADS); default: 10 on a GPU (8 loader
            threads for a dataset that decodes audio, and the training loop's 2), 2 on the CPU
        :param num_processes: the number of processes in all (one GPU each), launched with torch.distributed.run when
            more than one; the post_config then gets ``torch_distributed = {}`` unless the config sets it. Hashed (it
            changes the effective batch)
        :param distributed_launch_cmd: i6_core's argument; only "torchrun" (the default here) is supported. Not hashed
        :param horovod_num_processes: i6_core's name for num_processes (give one of them); hashed as num_processes
        :param multi_node_slots: spread the processes evenly over this many nodes (i6_core's argument): the
            requirements are per node, and the rendezvous of the nodes comes from Slurm, see :mod:`jobs.distributed`.
            Not hashed (the same training, laid out differently)
        :param rendezvous_port: the rendezvous port of a multi-node training (default: one derived from the Slurm job
            id); not hashed
        :param python_exe: Python to run the runtime with (default: the manager's); not hashed
        :param returnn_python_exe: i6_core's name for python_exe, so that existing setups switch by changing the
            class name (and dropping returnn_root); not hashed
        :param tensorboard: TensorBoard scalars into the work folder's ``tensorboard`` folder, where the tensorboard
            package is installed on the node (else one warning line in the log and the training goes on); not hashed.
            A config that sets ``use_tensorboard`` itself decides (and then needs the package)
        :param continue_from: a finished training of fewer epochs to continue: its stored checkpoints (hard links, or
            copies across filesystems) and scores start this job's model folder and learning_rates file, so only
            epochs after its ``num_epochs`` are trained. Hashed (the job it continues); the config may differ (e.g. a
            new learning-rate schedule for the added epochs)
        """
        refuse_job_controlled_keys(returnn_config, JOB_CONTROLLED_KEYS, "MiniReturnnTrainingJob")
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
        self.layout = process_layout(
            num_processes=num_processes,
            horovod_num_processes=horovod_num_processes,
            multi_node_slots=multi_node_slots,
            distributed_launch_cmd=distributed_launch_cmd,
        )
        if continue_from is not None and num_epochs <= continue_from.num_epochs:
            raise ValueError(
                f"continue_from trained {continue_from.num_epochs} epochs: num_epochs must be larger, got {num_epochs}"
            )
        self.num_epochs = num_epochs
        self.save_interval = save_interval
        # The earlier training's outputs (inputs of this job, so Sisyphus waits for them), not the job object.
        self.continue_from_model_dir = continue_from.out_model_dir if continue_from is not None else None
        self.continue_from_learning_rates = continue_from.out_learning_rates if continue_from is not None else None
        earlier = sorted(continue_from.out_checkpoints) if continue_from is not None else []
        first_new = continue_from.num_epochs + 1 if continue_from is not None else 1
        self.keep_epochs = sorted(set(keep_epochs)) if keep_epochs is not None else None
        self.device = device
        self.num_processes = num_processes if num_processes is not None else horovod_num_processes
        self.multi_node_slots = multi_node_slots
        self.rendezvous_port = rendezvous_port
        self.python_exe = python_exe or returnn_python_exe
        self.returnn_config = self.create_returnn_config(
            returnn_config,
            log_verbosity=log_verbosity,
            device=device,
            num_epochs=num_epochs,
            save_interval=save_interval,
            keep_epochs=self.keep_epochs,
            num_processes=self.layout.num_processes,
            tensorboard=tensorboard,
        )

        self.out_returnn_config_file = self.output_path("returnn.config")
        self.out_learning_rates = self.output_path("learning_rates")
        self.out_model_dir = self.output_path("models", directory=True)
        stored = earlier + [e for e in range(first_new, num_epochs + 1) if e % save_interval == 0 or e == num_epochs]
        kept = stored if self.keep_epochs is None else [e for e in stored if e in self.keep_epochs or e == num_epochs]
        self.out_checkpoints = {
            e: PtCheckpoint(self.output_path(model_path(f"models/{MODEL_PREFIX}", e))) for e in kept
        }
        self.out_plot_se = self.output_path("score_and_error.png")
        self.out_plot_lr = self.output_path("learning_rate.png")
        self.returnn_config.post_config["model"] = os.path.join(self.out_model_dir.get_path(), MODEL_PREFIX)
        self.rqmt = requirements(
            self.layout,
            device=device,
            cpu_rqmt=cpu_rqmt if cpu_rqmt is not None else default_cpu_rqmt(device),
            mem_rqmt=mem_rqmt,
            time_rqmt=time_rqmt,
            multi_node_slots=multi_node_slots,
        )

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
        num_processes: int = 1,
        tensorboard: bool = False,
    ) -> ReturnnConfig:
        """The config the runtime gets: job settings in the (unhashed) post_config, among them the progress file
        (:meth:`info`) and, with `tensorboard`, TensorBoard into the work folder where the package is installed
        unless the config sets ``use_tensorboard``; with several processes also ``torch_distributed = {}`` (the
        runtime's request for distributed training) unless the config sets it."""
        config = copy.deepcopy(returnn_config)
        config.config = {"task": "train", "learning_rate_file": LEARNING_RATE_FILE, **config.config}
        post_config = {
            "device": device,
            "log": ["./returnn.log"],
            "log_verbosity": log_verbosity,
            "num_epochs": num_epochs,
            "save_interval": save_interval,
            "log_progress_file": PROGRESS_FILE,
            **copy.deepcopy(config.post_config or {}),
        }
        if tensorboard and "use_tensorboard" not in config.config and "use_tensorboard" not in post_config:
            post_config["use_tensorboard"] = True
            # Turned on by the job, not asked for by the config: a node without the package warns and trains on.
            opts = post_config.get("tensorboard_opts") or config.config.get("tensorboard_opts") or {}
            post_config["tensorboard_opts"] = {"log_dir": TENSORBOARD_DIR, "required": False, **opts}
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
        if num_processes > 1 and "torch_distributed" not in config.config and "torch_distributed" not in post_config:
            post_config["torch_distributed"] = {}
        config.post_config = post_config
        return config

    # ---- tasks ---------------------------------------------------------------------------------------------------

    def tasks(self) -> Iterator[Task]:
        yield Task("create_files", mini_task=True)
        # The cap: at most a week, and at most 4x the memory the job asked for (a leak must not grow without end).
        resubmit = functools.partial(update_rqmt, max_mem=4 * float(self.rqmt["mem"]))
        yield Task("run", resume="run", rqmt=self.rqmt, update_rqmt=resubmit)
        yield Task("plot", resume="plot", mini_task=True)

    def _rendezvous(self, env: Mapping[str, str]) -> Optional[Rendezvous]:
        """This node's rendezvous of a multi-node training, from the node's environment (None on one node)."""
        if self.layout.num_nodes == 1:
            return None
        return slurm_rendezvous(
            env, num_nodes=self.layout.num_nodes, port=self.rendezvous_port, job_hash=self._job_hash()
        )

    def _script_rendezvous(self) -> Optional[Rendezvous]:
        """:meth:`_rendezvous` for ``rnn.sh``: shell expansions of Slurm's variables, read when the script runs."""
        if self.layout.num_nodes == 1:
            return None
        return slurm_rendezvous_in_script(
            num_nodes=self.layout.num_nodes, port=self.rendezvous_port, job_hash=self._job_hash()
        )

    def _job_hash(self) -> str:
        """The hash part of the job id (names the rendezvous of a multi-node training)."""
        return self.job_id().rsplit(".", 1)[-1]

    def _command(self, rendezvous: Optional[Rendezvous]) -> List[str]:
        """The command that runs the training on this node."""
        config_file = self.out_returnn_config_file.get_path()
        return runtime_command(python_executable(self.python_exe), config_file, self.layout, rendezvous)

    def create_files(self) -> None:
        """Writes the config and ``rnn.sh``, which reruns the training by hand from the work folder (on several nodes:
        on every node of a Slurm allocation, e.g. with srun); with `continue_from`, starts the model folder and the
        learning_rates file from the earlier training's."""
        write_runtime_config(
            self.returnn_config,
            self.out_returnn_config_file.get_path(),
            check_task=self.returnn_config.config["task"],
            python_exe=self.python_exe,
        )
        if self.continue_from_model_dir is not None:
            self._take_earlier_epochs()
        script = os.path.abspath("rnn.sh")
        env = runtime_env(self.rqmt["cpu"] // self.layout.per_node)
        exports = "".join(
            f"export {k}={shell_command([env[k]])}\n" for k in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        )
        where = "" if self.layout.num_nodes == 1 else f" Start it on each of the {self.layout.num_nodes} nodes."
        with open(script, "w") as f:
            f.write(
                f"#!/bin/sh\n# Reruns (continues) this training by hand.{where}\n"
                f"cd {shell_command([os.path.abspath('.')])}\n{exports}"
                f'exec {shell_command(self._command(self._script_rendezvous()))} "$@"\n'
            )
        os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def _take_earlier_epochs(self) -> None:
        """The earlier training's epoch files into this job's model folder (hard links: no copy, and the earlier job
        keeps its own; copies where the filesystems differ) and its learning_rates file as this run's, so that the
        runtime resumes after its last epoch. Files already here (a repeated mini task) stay."""
        source = self.continue_from_model_dir.get_path()
        target = self.out_model_dir.get_path()
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(source)):
            taken = os.path.exists(os.path.join(target, name))
            if not name.startswith(MODEL_PREFIX + ".") or is_temp_file(name) or taken:
                continue
            try:
                os.link(os.path.join(source, name), os.path.join(target, name))
            except OSError:  # another filesystem, or links not allowed there
                _copy_atomic(os.path.join(source, name), os.path.join(target, name))
        if not os.path.exists(LEARNING_RATE_FILE):
            _copy_atomic(self.continue_from_learning_rates.get_path(), os.path.abspath(LEARNING_RATE_FILE))

    def run(self) -> None:
        """Trains (continuing from the newest checkpoint if any), copies the learning_rates file into ``output/`` and
        checks every declared output exists (on several nodes, node rank 0 does)."""
        rendezvous = self._rendezvous(os.environ)
        run_runtime(self._command(rendezvous), runtime_env(self.rqmt["cpu"] // self.layout.per_node))
        if rendezvous is not None and rendezvous.node_rank != 0:
            return
        learning_rates = os.path.abspath(LEARNING_RATE_FILE)
        if not os.path.exists(learning_rates):
            raise FileNotFoundError(f"The training wrote no {learning_rates}")
        # A copy, not a link into work/: Sisyphus' cleanup deletes work/, and downstream jobs read this file later.
        _copy_atomic(learning_rates, self.out_learning_rates.get_path())
        missing = [str(c) for c in self.out_checkpoints.values() if not os.path.exists(str(c))]
        if missing:
            raise FileNotFoundError(f"The training ended without the declared checkpoints: {missing}")

    def plot(self) -> None:
        """Scores (log axis, best epoch by the dev score marked) and learning rate per epoch as PNG, titled with the
        job's name (see :mod:`i6_minireturnn.tools.plot_training`)."""
        write_plots(
            self.out_learning_rates.get_path(),
            self.out_plot_se.get_path(),
            self.out_plot_lr.get_path(),
            title=self._title(),
        )

    def _title(self) -> str:
        """The job's name in the plots: its name in the Sisyphus visualization, else an alias, else its id."""
        return self.get_vis_name() or min(self.get_aliases() or (), default=None) or self.job_id()

    # ---- status --------------------------------------------------------------------------------------------------

    def _epochs_done(self) -> Optional[int]:
        path = os.path.join(self._sis_path(gs.JOB_WORK_DIR), LEARNING_RATE_FILE)
        try:
            data = read_learning_rate_file(path)
        except (OSError, FileFormatError):
            return None
        return max((e for e, d in data.items() if d.error), default=0)

    def info(self) -> Optional[str]:
        """``ep 3/10`` (epochs done), during an epoch with the runtime's progress: ``ep 2/10; train epoch 3/10 45%,
        ETA 0:12:00 (training 2:40:00)``. Reads two small files: Sisyphus asks every running job on each status
        update."""
        done, progress = self._epochs_done(), self._progress()
        if done is None and progress is None:
            return None
        return f"ep {done or 0}/{self.num_epochs}" + (f"; {progress}" if progress else "")

    def _progress(self) -> Optional[str]:
        """The runtime's newest progress line, unless an epoch was stored since (then it tells of a finished pass)."""
        work = self._sis_path(gs.JOB_WORK_DIR)
        path = os.path.join(work, PROGRESS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline().strip()
            written = os.path.getmtime(path)
        except OSError:
            return None
        try:
            stored = os.path.getmtime(os.path.join(work, LEARNING_RATE_FILE))
        except OSError:  # the first epoch is not stored yet
            stored = float("-inf")
        return line if line and written > stored else None

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
        # device, log_verbosity, requirements, python_exe, tensorboard and how the processes are launched (launch
        # command, nodes, rendezvous port) do not change the trained model; the hashed config part, num_epochs (a
        # finished job is final: more epochs are another job), the storing settings, the job continued from and the
        # number of processes do, the latter whichever of its two names gives it.
        d: Dict[str, Any] = {
            "returnn_config": kwargs["returnn_config"],
            "num_epochs": kwargs["num_epochs"],
            "save_interval": kwargs["save_interval"],
            "keep_epochs": sorted(set(kwargs["keep_epochs"])) if kwargs["keep_epochs"] is not None else None,
        }
        if kwargs.get("continue_from") is not None:
            d["continue_from"] = kwargs["continue_from"]
        num_processes = kwargs["num_processes"]
        if num_processes is None:
            num_processes = kwargs.get("horovod_num_processes")
        if num_processes is not None:
            d["num_processes"] = num_processes
        return super().hash(d)


# A run that used this share of its time or memory counts as having run out of it: Sisyphus' usage file is written
# periodically, so the last figures it holds fall a little short of the limit that stopped the run.
NEAR_LIMIT = 0.9
MAX_TIME_HOURS = 168.0


def update_rqmt(
    last_rqmt: Dict[str, Any], last_usage: Dict[str, Any], *, max_mem: Optional[float] = None
) -> Dict[str, Any]:
    """The requirements of a resubmitted run, from what the last run used (Sisyphus' usage file of the task, plus
    the engine's ``out_of_time`` / ``out_of_memory``): 1.5x time only where it hit its time limit (at most a week),
    1.5x memory only where it ran out of memory (at most `max_mem` GB); a preempted or killed run that was far from
    both gets the same requirements again. The training continues from its newest checkpoint either way."""
    rqmt = dict(last_rqmt)
    time_limit, used_time = float(last_rqmt.get("time") or 0), float(last_usage.get("used_time") or 0)
    if time_limit and (last_usage.get("out_of_time") or used_time >= NEAR_LIMIT * time_limit):
        rqmt["time"] = min(time_limit * 1.5, max(MAX_TIME_HOURS, time_limit))
    mem_limit = float(last_rqmt.get("mem") or 0)
    used_mem = float((last_usage.get("max") or {}).get("rss") or 0)
    if mem_limit and (last_usage.get("out_of_memory") or used_mem >= NEAR_LIMIT * mem_limit):
        rqmt["mem"] = min(mem_limit * 1.5, max(max_mem or float("inf"), mem_limit))
    return rqmt


def _copy_atomic(source: str, target: str) -> None:
    """Copies `source` to `target` so that `target` is never seen half-written (temp file + rename)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
