"""The Ray cluster a controller joins or starts, and what killed controllers left of theirs.

Runs in the controller's process (`latts tune`, `latts confirm`) and in `latts status`. Without
`--ray-address` a controller starts a local Ray cluster in its own folder under $LATTS_RAY_TMP
(default /tmp), marked with the controller's process; a controller killed with SIGKILL cannot stop
it, and Ray's dashboard and runtime-env agents outlive it (measured: the raylet, GCS and actors
follow their driver, those two do not). The next `latts tune` or `latts status` on the machine
kills whatever still holds files in a dead controller's folder, and removes the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from latts.core.spec import StudySpec

PREFIX = "latts-ray-"
MARKER = "latts-controller.json"  # {"pid": ..., "start": ...}: the controller that owns the folder
UNMARKED_GRACE_S = 60.0  # a folder being created has no marker for a moment


def ray_root() -> Path:
    return Path(os.environ.get("LATTS_RAY_TMP", "/tmp"))


def init_ray(address: str | None, spec: StudySpec) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    # ray.init installs its own SIGTERM handler, which exits at once; the command's (cli.stoppable)
    # hands the running configs back first, so it is put back.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    # log_to_driver: the workers' and engines' output reaches this process, where the worker pool
    # logs it (latts.workers.pool) instead of Ray printing it.
    if address:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    else:
        # Ray's socket paths must stay short; a private folder per run keeps parallel runs apart.
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=ray_root()))
        (folder / MARKER).write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
        ray.init(
            num_cpus=max(len(os.sched_getaffinity(0)), spec.workers.count),
            include_dashboard=False,
            log_to_driver=True,
            logging_level="WARNING",
            _temp_dir=str(folder),
        )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): a pid reused by another process differs."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(folder: Path) -> bool:
    try:
        owner = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return time.time() - folder.stat().st_mtime < UNMARKED_GRACE_S
    return owner["start"] is not None and _start_time(owner["pid"]) == owner["start"]


def _holding(folder: Path) -> list[int]:
    """Processes with a file open under `folder` (their logs and sockets live there)."""
    prefix, found = str(folder) + "/", []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in fd_dir.iterdir()):
                found.append(int(fd_dir.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def reap_orphans() -> None:
    """Kill what the local Ray clusters of dead controllers left running; remove their folders."""
    for folder in sorted(ray_root().glob(PREFIX + "*")):
        if not folder.is_dir() or _owner_alive(folder):
            continue
        for pid in _holding(folder):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone meanwhile
                pass
        shutil.rmtree(folder, ignore_errors=True)
