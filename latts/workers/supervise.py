"""Keeps an engine server's processes tied to the worker that started them.

Runs on workers, between a worker and its vLLM server: `python -m latts.workers.supervise CMD...`
leads a process group holding the server and the engine core processes the server spawns. When
the worker dies, even by SIGKILL, this process notices (its parent changes) within half a second
and takes the whole group down, so no engine is left holding cores or its KV cache. SIGTERM to
this process (the worker closing the engine) does the same.

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

POLL_S = 0.5
STOP_GRACE_S = 10
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPERVISED = "LATTS_SUPERVISED"  # set in the server's environment; vLLM's processes inherit it


def main(command: list[str]) -> int:
    parent = os.getppid()
    child = subprocess.Popen(command, preexec_fn=_arm_parent_death_signal, env={**os.environ, SUPERVISED: "1"})
    signal.signal(signal.SIGTERM, lambda *_: _stop(child))
    while True:
        try:
            return child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # the worker is gone: we were re-parented
                _stop(child)


def die_with_parent() -> None:
    """A vLLM plugin: in vLLM's processes under this supervisor, die with the parent process."""
    if os.environ.get(SUPERVISED) == "1":
        _arm_parent_death_signal()


def _arm_parent_death_signal() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM to the group (vLLM shuts down cleanly), SIGKILL to whatever is left after a grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal below reaches this process too
    os.killpg(os.getpgrp(), signal.SIGTERM)
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the engine core processes, and this one


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
