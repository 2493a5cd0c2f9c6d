"""SIGUSR1 (and SIGUSR2 where nothing else uses it): the stacks of all threads to stderr, and the run goes on.

Clusters send these signals before a time limit (Slurm ``--signal=USR1@120``, SGE ``qsub -notify``: SIGUSR1 before a
suspend, SIGUSR2 before a kill); a user sends them to see where a run hangs. Their default action ends the process.

The dump is the standard library's :mod:`faulthandler`, registered with ``chain=False`` on file descriptor 2:

- its handler is C code that reads the threads' frames without Python's lock, so the dump comes at once also while
  the main thread is inside a C call that holds the lock (a torch kernel, a blocking read, a stuck collective); a
  Python-level handler would wait for that call to return, and a hang is exactly when the dump is wanted;
- with ``chain=False`` it is installed with ``SA_RESTART``, so a system call the signal lands in is restarted by the
  kernel; a Python-level handler (installed without it) makes such calls fail with EINTR, which C extensions (HDF5,
  sockets of a process group, ...) may not retry;
- it runs no Python code in the main thread, so the training does exactly what it would have done undisturbed.

It writes to stderr and not into the ``log`` files: where a job's stdout and stderr are collected (Sisyphus's
``log.run.N``, Slurm's ``slurm-%j.out``) the dump stands beside the log's lines. Descriptor 2, not ``sys.stderr``:
a host program may swap or close that object, and the number of a closed file may then name another file.

Processes forked while a run is on (``data_worker_type = "process"`` loaders) ignore the signals: sent to the process
group, they would otherwise end a loader (and with it the epoch), or, inheriting the dump, print it once per loader.
A program such a process executes (also through ``subprocess`` with a ``preexec_fn``) keeps ignoring them.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
from typing import Dict, Iterator, Tuple

DUMP_FD = 2  # the process's stderr

# signal number -> pid of the process whose run registered the dump for it (empty while no run is on)
_registered: Dict[int, int] = {}


def dump_signals() -> Tuple[int, ...]:
    """The signals that would dump now: SIGUSR1 always (the clusters' warning), SIGUSR2 where no handler is set."""
    if not hasattr(signal, "SIGUSR1"):  # Windows has neither
        return ()
    signums = [signal.SIGUSR1]
    if signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, signal.SIG_IGN):
        signums.append(signal.SIGUSR2)
    return tuple(signums)


@contextlib.contextmanager
def stack_dumps() -> Iterator[Tuple[int, ...]]:
    """While entered, the signals of :func:`dump_signals` write every thread's stack to stderr; yields them. The
    handlers before are back afterwards (the command line's run may be one of several in a process). Entered again
    inside, it leaves the outer registration as it is."""
    if _registered:
        yield tuple(_registered)
        return
    signums = dump_signals()
    python_handlers = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        faulthandler.register(signum, file=DUMP_FD, all_threads=True, chain=False)
        _registered[signum] = os.getpid()
    try:
        yield signums
    finally:
        for signum in signums:
            registered_by = _registered.pop(signum, None)
            # Left alone where Python code set a handler of its own meanwhile (a config may use SIGUSR2): that handler
            # replaced ours, and unregistering would put back the one from before the run over it.
            if registered_by == os.getpid() and signal.getsignal(signum) == python_handlers[signum]:
                faulthandler.unregister(signum)


def _ignore_in_forked_child() -> None:
    """In a process forked from a run: the dump signals are ignored (see the module docstring)."""
    signums = tuple(_registered)
    if not signums:
        return
    _registered.clear()
    # faulthandler's registration, copied into the child, is dropped (a run of the child's own may register anew);
    # unregistering puts back the default action for a moment, so the signals wait blocked until they are ignored,
    # and a signal pending then is discarded.
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        for signum in signums:
            faulthandler.unregister(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ignore_in_forked_child)
