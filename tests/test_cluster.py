"""latts on a multi-node Ray cluster (two worker nodes on this machine): `latts submit` through Ray's job
server, and a study spread over both nodes that goes on when one of them dies mid-trial."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import yaml

from latts.core.records import TrialState
from latts.storage import Repository
from latts.workers.engine import free_port
from tests.conftest import pg_schema_url, run_latts

pytestmark = pytest.mark.engine

SPEC = {
    "study": "cluster",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 12, "seed": 7},
    "search_space": {"branches": [1, 2, 4, 8, 16, 32], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "sampler": "grid",
    "n_trials": 6,
    "workers": {"count": 2, "engines_per_worker": 1},
    "race": {"finalists": 0},
}


@pytest.fixture(scope="module")
def cluster(demo_model_paths):
    """A head node with the job server and no CPUs for work, and two worker nodes of two CPUs each."""
    from ray.cluster_utils import Cluster

    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    patch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # `latts` on the head, for submitted jobs
    dashboard_port = free_port()
    os.makedirs("/tmp/ray", exist_ok=True)  # where Ray's test cluster notes its address
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),  # nodes on one host must not share the default
            "temp_dir": tempfile.mkdtemp(prefix="r", dir="/tmp"),  # Ray's socket paths must stay short
        },
    )
    nodes = [cluster.add_node(num_cpus=2, dashboard_agent_listen_port=free_port()) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, nodes, f"http://127.0.0.1:{dashboard_port}"
    cluster.shutdown()
    patch.undo()


def test_submit_runs_the_study_as_a_ray_job(cluster, pg_database, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, _, job_server = cluster
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "study": "submitted", "n_trials": 1, "search_space": {**SPEC["search_space"], "branches": [1]}}))
    url = pg_schema_url(pg_database)
    proc = run_latts("submit", str(spec), "--ray-address", job_server, "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = proc.stdout.split("as Ray job ")[1].split()[0]
    assert f"ray job logs --follow {job}" in proc.stdout
    client = JobSubmissionClient(job_server)
    deadline = time.monotonic() + 900
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(2)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    [trial] = Repository(url).trials("submitted")
    assert trial.state == TrialState.COMPLETE and trial.latency_s.mean > 0


def test_submit_refuses_a_local_file_and_an_unreachable_job_server(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    local = run_latts("submit", str(spec), "--ray-address", "http://127.0.0.1:1", "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert local.returncode == 2 and "is a file on this machine" in local.stderr and local.stderr.count("\n") == 1
    nowhere = run_latts("submit", str(spec), "--ray-address", f"http://127.0.0.1:{free_port()}", "--storage", "postgresql+psycopg://u@127.0.0.1/db")
    assert nowhere.returncode == 2 and "no Ray job server answers there" in nowhere.stderr and nowhere.stderr.count("\n") == 1


def test_a_study_spreads_over_two_nodes_and_goes_on_when_one_dies(cluster, tmp_path):
    instance, nodes, _ = cluster
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    controller = subprocess.Popen(
        [sys.executable, "-m", "latts", "tune", str(spec), "--storage", url, "--ray-address", instance.address],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    def hosts_a_worker(node) -> bool:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        # Ray renames a worker process after its actor (and the task it runs): ray::EngineWorker.run_generation
        return any(" ".join(child.cmdline()).startswith("ray::EngineWorker") for child in raylet.children())

    def spread_and_busy():
        if not (tmp_path / "latts.db").exists() or len(Repository(url).running_trials("cluster")) < 2:
            return False
        return all(hosts_a_worker(node) for node in nodes)

    try:
        deadline = time.monotonic() + 900
        while not spread_and_busy():  # one worker on each node, both measuring
            assert time.monotonic() < deadline and controller.poll() is None, "never saw a worker on each node, both running"
            time.sleep(0.5)
        instance.remove_node(nodes[1], allow_graceful=False)
        removed_at = datetime.now(UTC).isoformat()
        _, stderr = controller.communicate(timeout=900)
    finally:
        if controller.poll() is None:
            controller.kill()
    assert controller.returncode == 0, stderr[-3000:]
    trials = Repository(url).trials("cluster")
    failed = [t for t in trials if t.state == TrialState.FAILED]
    assert len(trials) == 6 and len(failed) == 1, [(t.state, t.fail_reason) for t in trials]
    assert "worker died" in failed[0].fail_reason
    assert f"trial {failed[0].number}" in stderr and "failed: worker died" in stderr
    # After the loss, the study finished on the node left.
    later = {t.worker.rsplit("/", 1)[1] for t in trials if t.state == TrialState.COMPLETE and t.extra["finished_at"] > removed_at}
    assert later == {nodes[0].node_id[:8]}
