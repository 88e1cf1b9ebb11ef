"""Which controllers of a study are alive, so that several `latts tune` processes can share one study
and a resume re-runs only what a dead one left. Runs in the `latts tune` process.

A controller renews its lease every `HEARTBEAT_S` (a thread beside the loop); one whose lease is
older than `LEASE_S` is dead, and so, at once, is one on this host whose process is gone.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from latts.storage import ControllerInfo, Repository

HEARTBEAT_S = 10.0
LEASE_S = 60.0  # six heartbeats: a busy database or a paused process does not end a live lease


def controller_name() -> str:
    """host:pid:random, unique across hosts and pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def dead(
    controllers: Sequence[ControllerInfo], now: datetime, host: str, alive: Callable[[int], bool] = pid_alive
) -> list[ControllerInfo]:
    """Controllers whose lease ran out, or that ran on `host` in a process that is gone."""
    return [c for c in controllers if (now - c.heartbeat_at).total_seconds() > LEASE_S or (c.host == host and not alive(c.pid))]


@contextmanager
def held(repo: Repository, study: str) -> Iterator[tuple[int, str]]:
    """Register a controller of `study` and renew its lease until the block ends; its (id, name)."""
    name = controller_name()
    controller_id = repo.register_controller(study, name, socket.gethostname(), os.getpid())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                repo.heartbeat(controller_id)
            except Exception:  # a database blip: the next beat tries again, the lease outlasts a few
                pass

    thread = threading.Thread(target=beat, name="latts-heartbeat", daemon=True)
    thread.start()
    try:
        yield controller_id, name
    finally:
        stop.set()
        thread.join()
        repo.stop_controllers([controller_id])
