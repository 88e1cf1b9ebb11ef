"""The supervisor between a worker and its engine server leaves no server behind, however it ends,
and passes the server's output on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# A stand-in server: it writes its pid, then waits to be told to stop (it ignores nothing).
SERVER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"


def supervise(tmp_path, *command: str, **popen) -> subprocess.Popen:
    log = tmp_path / "server.log"
    return subprocess.Popen(
        [sys.executable, "-m", "latts.workers.supervise", str(log), "engine demo", *command], start_new_session=True, **popen
    )


def start(tmp_path) -> tuple[subprocess.Popen, int]:
    pid_file = tmp_path / "server.pid"
    supervisor = supervise(tmp_path, sys.executable, "-c", SERVER, str(pid_file))
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.05)
    return supervisor, int(pid_file.read_text())


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_sigkilled_supervisor_takes_its_server_down(tmp_path):
    # Ray SIGKILLs a dead worker's children: the supervisor gets no chance to stop the group itself.
    supervisor, server = start(tmp_path)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    try:
        assert gone(server, within_s=10)
    finally:
        if not gone(server, 0):
            os.kill(server, signal.SIGKILL)


def test_sigterm_to_the_supervisor_stops_the_group(tmp_path):
    supervisor, server = start(tmp_path)
    os.kill(supervisor.pid, signal.SIGTERM)
    supervisor.wait(timeout=30)
    assert gone(server, within_s=10)


def test_the_servers_output_goes_to_its_log_and_on_with_a_label(tmp_path):
    # Written in pieces over several polls, the last line without its end: each line arrives whole.
    talk = "import sys, time; print('first', flush=True); time.sleep(1.2); sys.stdout.write('sec'); sys.stdout.flush(); " \
        "time.sleep(0.7); print('ond', flush=True); print('error: last words', file=sys.stderr, end='')"
    supervisor = supervise(tmp_path, sys.executable, "-c", talk, stdout=subprocess.PIPE)
    out, _ = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0
    assert out.decode().splitlines() == ["engine demo: first", "engine demo: second", "engine demo: error: last words"]
    assert (tmp_path / "server.log").read_text() == "first\nsecond\nerror: last words"
