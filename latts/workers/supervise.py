"""Keeps an engine server's processes tied to the worker that started them, and passes their output on.

Runs on workers, between a worker and its vLLM server: `python -m latts.workers.supervise LOG LABEL
CMD...` leads a process group holding the server and the engine core processes the server spawns.
The server writes its output to the file LOG (the worker reads its tail when the engine fails), and
this process copies each new line, prefixed with LABEL, to its own output: the worker's, which Ray
forwards to the `latts tune` process and its log file. It copies between polls rather than through
a pipe, so the server never waits on it while it is timed.

When the worker dies, even by SIGKILL, this process notices (its parent changes) within half a
second and takes the whole group down, so no engine is left holding cores or its KV cache. SIGTERM
to this process (the worker closing the engine) does the same.

Ray itself SIGKILLs a dead worker's children, this process among them, so each process below it
also dies with its parent (the kernel's parent-death signal): the server with this process, set
before it starts, and vLLM's engine core and workers with theirs, set by `die_with_parent`, a vLLM
plugin that vLLM runs in each of its processes (active only under this supervisor). A server
starting up ignores SIGTERM, hence SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import BinaryIO

POLL_S = 0.5
STOP_GRACE_S = 10
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPERVISED = "LATTS_SUPERVISED"  # set in the server's environment; vLLM's processes inherit it


def main(log: str, label: str, command: list[str]) -> int:
    parent = os.getppid()
    with open(log, "wb") as output, open(log, "rb") as written:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_arm_parent_death_signal, env={**os.environ, SUPERVISED: "1"}
        )
        copy = _Copier(written, label)
        signal.signal(signal.SIGTERM, lambda *_: _stop(child, copy))
        while True:
            try:
                code = child.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                copy()
                if os.getppid() != parent:  # the worker is gone: we were re-parented
                    _stop(child, copy)
                continue
            copy(final=True)
            return code


class _Copier:
    """Copies whole new lines of a file being written to stdout, each after a label."""

    def __init__(self, source: BinaryIO, label: str) -> None:
        self.source = source
        self.prefix = f"{label}: ".encode()
        self.partial = b""

    def __call__(self, final: bool = False) -> None:
        lines = (self.partial + self.source.read()).split(b"\n")
        self.partial = b"" if final else lines.pop()  # a line still being written waits for its end
        text = b"".join(self.prefix + line + b"\n" for line in lines if line.strip())
        if text:
            try:
                sys.stdout.buffer.write(text)
                sys.stdout.buffer.flush()
            except OSError:  # nobody reads our output any more; stopping the group must still happen
                pass


def die_with_parent() -> None:
    """A vLLM plugin: in vLLM's processes under this supervisor, die with the parent process."""
    if os.environ.get(SUPERVISED) == "1":
        _arm_parent_death_signal()


def _arm_parent_death_signal() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(child: subprocess.Popen, copy: _Copier) -> None:
    """SIGTERM to the group (vLLM shuts down cleanly), SIGKILL to whatever is left after a grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal below reaches this process too
    os.killpg(os.getpgrp(), signal.SIGTERM)
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    copy(final=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the engine core processes, and this one


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
