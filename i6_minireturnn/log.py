"""Logging with RETURNN's verbosity streams ``log.v1`` ... ``log.v5`` (stdout plus optional log files)."""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import List, Optional, Sequence, TextIO


class _Stream(io.TextIOBase):
    """A write-only stream that forwards to the log's outputs when its level is enabled.

    Whole lines go out at once: ``print`` writes a message and its newline in two calls, and a line of another
    thread (the background checkpoint writer's "Saved model ...") must not land between them. Each thread's text
    is held until its newline (or a flush), then written to every output under one lock."""

    def __init__(self, log: Log, level: int):
        super().__init__()
        self._log = log
        self._level = level
        self._pending = threading.local()  # this thread's text after its last newline

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._log.verbosity < self._level:
            return len(text)
        held = getattr(self._pending, "text", "") + text
        end = held.rfind("\n") + 1
        self._pending.text = held[end:]
        if end:
            self._log.emit(held[:end])
        return len(text)

    def flush(self) -> None:
        text = getattr(self._pending, "text", "")
        if text:
            self._pending.text = ""
            self._log.emit(text)


class Log:
    """``print(..., file=log.v3)`` prints when ``log_verbosity >= 3``; level 5 is per-step detail."""

    def __init__(self) -> None:
        self.verbosity = 4
        self.outputs: List[Optional[TextIO]] = [None]
        self._files: List[TextIO] = []
        self._lock = threading.RLock()  # reentrant: a signal handler that prints may run inside emit
        self.v = [_Stream(self, level) for level in range(6)]
        self.v0, self.v1, self.v2, self.v3, self.v4, self.v5 = self.v
        self.error = _Stream(self, 0)

    def emit(self, text: str) -> None:
        """Writes `text` to every output, as one piece with respect to other threads' text."""
        with self._lock:
            for out in self.outputs:
                out = out or sys.stdout  # None: whatever stdout is now (tests swap it)
                out.write(text)
                out.flush()

    @property
    def verbose(self) -> List[bool]:
        """``log.verbose[5]`` is True when level-5 output is on (as in RETURNN)."""
        return [self.verbosity >= level for level in range(6)]

    def initialize(self, verbosity: int = 4, log_files: Sequence[str] = (), stdout: Optional[TextIO] = None) -> None:
        """(Re)configure verbosity and outputs; log files are appended to, so a resumed run keeps its history."""
        self.close_files()
        self.verbosity = verbosity
        self.outputs = [stdout]
        for filename in log_files:
            folder = os.path.dirname(os.path.abspath(filename))
            os.makedirs(folder, exist_ok=True)
            f = open(filename, "a", encoding="utf-8")
            self._files.append(f)
            self.outputs.append(f)

    def close_files(self) -> None:
        """Closes the log files (stdout stays)."""
        self.outputs = [out for out in self.outputs if out not in self._files]
        for f in self._files:
            f.close()
        self._files = []


log = Log()
