"""Runs the runtime's command line and stops it at one file event: fault injection at the OS boundary.

File events are the OS calls through which the runtime makes its files durable: a file created (``os.open`` with
O_CREAT), synced (``os.fsync``), renamed (``os.replace``) or removed (``os.remove``); each counts once before and
once after the call. The runtime's code is not touched: the wrappers sit on the ``os`` functions it calls.

Started as a process, this is a fork server: it imports torch and the runtime once, then reads one JSON request per
line on stdin and runs each in a forked child (a fresh process state for every run, without paying the imports
again), answering with the child's exit status:

    {"cwd": FOLDER, "args": [CONFIG, ...], "signal": "SIGKILL" | "SIGTERM" | "SIGINT" | null, "index": N,
     "record": EVENTS_FILE | null, "kill_after": SECONDS | null, "file_size_limit": BYTES | null}
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import sys
import time

_EVENTS = []
_MODE = {"signal": None, "index": -1, "record": None}


def _describe(name, args):
    target = args[0] if args else ""
    if name == "fsync":
        try:
            target = os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            target = f"fd {target}"
    return os.path.basename(str(target))


def _event(name, args, when):
    if name == "open" and not (len(args) > 1 and args[1] & os.O_CREAT):
        return
    index = len(_EVENTS)
    _EVENTS.append(f"{when} {name} {_describe(name, args)}")
    if index == _MODE["index"]:
        os.kill(os.getpid(), _MODE["signal"])


def _wrap(name):
    original = getattr(os, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        _event(name, args, "before")
        result = original(*args, **kwargs)
        _event(name, args, "after")
        return result

    setattr(os, name, wrapper)


def _child(request) -> int:
    os.chdir(request["cwd"])
    for stream, name in ((1, "stdout.txt"), (2, "stderr.txt")):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, stream)
        os.close(fd)
    if request.get("file_size_limit"):  # a full disk as a process sees it: writes beyond the limit fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size_limit"], resource.RLIM_INFINITY))
    _MODE["signal"] = getattr(signal, request["signal"]) if request.get("signal") else None
    _MODE["index"] = request.get("index", -1)
    for name in ("open", "fsync", "replace", "remove"):
        _wrap(name)
    from i6_minireturnn.__main__ import main as runtime_main

    try:
        return runtime_main(request["args"])
    finally:
        if request.get("record"):
            with open(request["record"], "w") as f:
                json.dump(_EVENTS, f)
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    import torch

    torch.set_num_threads(1)  # the same in every run: bit-identical results need the same reduction order
    import i6_minireturnn.__main__  # noqa: F401  (imported once, before forking)
    import i6_minireturnn.engine.engine  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # torch imports its compiler stack on the first optimizer

    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        if request.get("kill_after") is not None:
            time.sleep(request["kill_after"])
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - start}))
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
