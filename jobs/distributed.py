"""How a training job spreads over processes and nodes: process counts, requirements and torchrun's arguments.

Arguments as i6_core's ``ReturnnTrainingJob``: ``horovod_num_processes`` (or this package's ``num_processes``) is the
total number of processes, ``multi_node_slots`` the number of nodes they are spread over (evenly), and every process
gets ``cpu_rqmt`` cores, ``mem_rqmt`` GB and, on GPU, one GPU; the requirements are per node, so they are multiplied by
the processes per node, and ``multi_node_slots`` goes into the requirements for Sisyphus' engines. (i6_core's own
torchrun command starts ``horovod_num_processes`` processes on every node; here it is the total, as i6_core's
requirements and ``mpirun -np`` count it.)

One node: ``python -m torch.distributed.run --standalone --nproc-per-node=N``.

Several nodes: Sisyphus starts the run task once on every node (its Slurm engine submits ``--nodes=K --ntasks=K`` and
starts the task with ``srun``); each node starts torchrun with a static rendezvous read from Slurm's variables:

* the endpoint host is the first host of ``SLURM_JOB_NODELIST`` (node rank 0, which hosts the rendezvous store),
* the port is the job's ``rendezvous_port``, else 20000 + ``SLURM_JOB_ID`` mod 10000 (a port per Slurm job, so two
  trainings sharing a node do not collide),
* ``--nnodes`` is ``multi_node_slots`` and must equal ``SLURM_JOB_NUM_NODES`` (or ``SLURM_NNODES``),
* ``--node-rank`` is ``SLURM_NODEID``,
* the rendezvous id is the job's hash and the Slurm job id (for the logs; a static rendezvous needs no id).

Other cluster engines (SGE's ``PE_HOSTFILE``, ...) are not read: the run fails naming the missing Slurm variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Union

LAUNCH_COMMANDS = ("torchrun",)
PORT_BASE = 20000
PORT_RANGE = 10000
SLURM_NODES_VARIABLES = ("SLURM_JOB_NUM_NODES", "SLURM_NNODES")
SLURM_NODELIST_VARIABLES = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")


class ShellExpr(str):
    """A command argument that ``rnn.sh`` gets as written (quoted already, with shell expansions), not escaped."""


@dataclass(frozen=True)
class ProcessLayout:
    """``num_processes`` runtime processes in all, spread evenly over ``num_nodes`` nodes."""

    num_processes: int = 1
    num_nodes: int = 1

    @property
    def per_node(self) -> int:
        """Processes started on each node."""
        return self.num_processes // self.num_nodes

    @property
    def distributed(self) -> bool:
        """Whether the runtime trains with torch.distributed (more than one process)."""
        return self.num_processes > 1


def process_layout(
    *,
    num_processes: Optional[int],
    horovod_num_processes: Optional[int],
    multi_node_slots: Optional[int],
    distributed_launch_cmd: str,
) -> ProcessLayout:
    """The layout the job arguments ask for; a ValueError names the argument that does not fit."""
    if distributed_launch_cmd not in LAUNCH_COMMANDS:
        raise ValueError(
            f"distributed_launch_cmd {distributed_launch_cmd!r} is not supported: the PyTorch runtime is launched with "
            "'torchrun' (torch.distributed.run); mpirun/Horovod is TensorFlow RETURNN's way"
        )
    if num_processes is not None and horovod_num_processes is not None and num_processes != horovod_num_processes:
        raise ValueError(
            f"num_processes={num_processes} and horovod_num_processes={horovod_num_processes} differ: give one of them "
            "(both are the total number of processes)"
        )
    total = num_processes if num_processes is not None else horovod_num_processes
    if total is not None and total < 1:
        raise ValueError(f"the number of processes must be at least 1, got {total}")
    if multi_node_slots:
        if not total:
            raise ValueError("multi_node_slots needs horovod_num_processes (or num_processes): the processes in all")
        if total < multi_node_slots or total % multi_node_slots:
            raise ValueError(
                f"{total} processes cannot be spread evenly over multi_node_slots={multi_node_slots} nodes "
                "(the number of processes must be a multiple of the number of nodes)"
            )
    return ProcessLayout(num_processes=total or 1, num_nodes=multi_node_slots or 1)


def requirements(
    layout: ProcessLayout,
    *,
    device: str,
    cpu_rqmt: int,
    mem_rqmt: float,
    time_rqmt: float,
    multi_node_slots: Optional[int],
) -> Dict[str, Any]:
    """The run task's requirements per node (i6_core's rule): cpu, mem and gpu times the processes on a node."""
    rqmt: Dict[str, Any] = {
        "gpu": layout.per_node if device == "gpu" else 0,
        "cpu": cpu_rqmt * layout.per_node,
        "mem": mem_rqmt * layout.per_node,
        "time": time_rqmt,
    }
    if multi_node_slots:
        rqmt["multi_node_slots"] = multi_node_slots
    return rqmt


@dataclass(frozen=True)
class Rendezvous:
    """Where the torchrun agents of a multi-node training meet: static rendezvous at ``host:port``."""

    host: str
    port: Union[int, str]
    num_nodes: int
    node_rank: Union[int, str]
    rendezvous_id: str


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``cn[03-05,09],gpu1`` -> ``cn03``, ``r[1-2]-n[07-08]`` -> ``r1-n07``."""
    depth = 0
    end = len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    host = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"Cannot read the first host of the Slurm node list {nodelist!r}")
    return host


def slurm_rendezvous(env: Mapping[str, str], *, num_nodes: int, port: Optional[int], job_hash: str) -> Rendezvous:
    """The rendezvous of this node from Slurm's variables (see the module docstring); a RuntimeError names what is
    missing or does not fit."""
    nodelist = next((env[v] for v in SLURM_NODELIST_VARIABLES if env.get(v)), None)
    allocated = next((env[v] for v in SLURM_NODES_VARIABLES if env.get(v)), None)
    found = {
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODEID": env.get("SLURM_NODEID"),
        "SLURM_JOB_NUM_NODES": allocated,
        "SLURM_JOB_ID": env.get("SLURM_JOB_ID"),
    }
    missing = [name for name, value in found.items() if not value]
    if missing:
        raise RuntimeError(
            f"multi_node_slots={num_nodes}: the rendezvous of the nodes is read from Slurm's variables, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set (run the job with Sisyphus' Slurm "
            "engine, which starts the task on every node with srun)"
        )
    if int(allocated) != num_nodes:
        raise RuntimeError(
            f"multi_node_slots={num_nodes}, but Slurm allocated {allocated} nodes (SLURM_JOB_NUM_NODES): the task must "
            "run once on every node of an allocation of multi_node_slots nodes"
        )
    job_id = env["SLURM_JOB_ID"]
    return Rendezvous(
        host=first_host(nodelist),
        port=port if port is not None else PORT_BASE + int(job_id) % PORT_RANGE,
        num_nodes=num_nodes,
        node_rank=int(env["SLURM_NODEID"]),
        rendezvous_id=f"{job_hash}-{job_id}",
    )


def slurm_rendezvous_in_script(*, num_nodes: int, port: Optional[int], job_hash: str) -> Rendezvous:
    """:func:`slurm_rendezvous` as shell expansions, for ``rnn.sh`` (run by hand on every node of an allocation)."""
    return Rendezvous(
        host=ShellExpr('$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'),
        port=port if port is not None else ShellExpr(f"$(({PORT_BASE} + SLURM_JOB_ID % {PORT_RANGE}))"),
        num_nodes=num_nodes,
        node_rank=ShellExpr("$SLURM_NODEID"),
        rendezvous_id=ShellExpr(f"{job_hash}-$SLURM_JOB_ID"),
    )


def torchrun_arguments(layout: ProcessLayout, rendezvous: Optional[Rendezvous]) -> List[str]:
    """torch.distributed.run's options: standalone on one node, static rendezvous on several."""
    if layout.num_nodes == 1:
        return ["--standalone", f"--nproc-per-node={layout.per_node}"]
    if rendezvous is None:
        raise ValueError(f"{layout.num_nodes} nodes need a rendezvous")
    return [
        f"--nnodes={layout.num_nodes}",
        _argument("--node-rank=", rendezvous.node_rank),
        "--rdzv-backend=static",
        _argument("--rdzv-endpoint=", rendezvous.host, ":", rendezvous.port),
        _argument("--rdzv-id=", rendezvous.rendezvous_id),
        f"--nproc-per-node={layout.per_node}",
    ]


def _argument(*parts: Union[str, int]) -> str:
    """The parts joined; with a shell expansion among them, one double-quoted :class:`ShellExpr`."""
    text = "".join(str(p) for p in parts)
    return ShellExpr(f'"{text}"') if any(isinstance(p, ShellExpr) for p in parts) else text
