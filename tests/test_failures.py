"""Failed trials as data: their full reasons, which failures mean a config does not fit its
hardware, and how `latts tune` treats them (one study of engines that cannot start)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from latts.core.failures import ran_out_of_memory
from latts.core.records import TrialState
from latts.storage import Repository
from latts.workers.engine import _reason
from tests.conftest import run_latts

RAN_OUT = [
    # vLLM's CPU build, VLLM_CPU_KVCACHE_SPACE beyond what is free (vllm/v1/worker/cpu_worker.py)
    "ValueError: Available memory on node 0 (17.12/23.44 GiB) on kv cache allocation is less than requested memory "
    "for kv (4096.00 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes.",
    # vLLM, one request of max_model_len does not fit (vllm/v1/core/kv_cache_utils.py)
    "ValueError: To serve at least one request with the model's max seq len (32768), (4.00 GiB KV cache is needed, "
    "which is larger than the available KV cache memory (1.00 GiB).",
    "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB",
    "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. Error code 12 "
    "(Cannot allocate memory)",
    "MemoryError",
    # Ray's memory monitor killed the worker
    "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
    "The actor is dead because its worker process has died. Worker exit detail: Task was killed due to the node running low on memory.",
    # latts' worker, when the kernel's OOM killer struck while a generation ran (latts.workers.pool)
    "httpx.RemoteProtocolError: Server disconnected\n\nkernel OOM killer: 1 process(es) killed in this worker's memory cgroup while it ran",
]

DID_NOT = [
    "RuntimeError: boom",
    "timeout after 1800 s",
    "ValueError: User-specified max_model_len (100000) is greater than the derived max_model_len (max_position_embeddings=512)",
    # Ray names the OOM killer as one possible cause of any unexpected worker death: a SIGKILL reads the same.
    "The actor died unexpectedly before finishing this task. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker "
    "unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the process was killed "
    "by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly",
]


# The shape of vllm-cpu 0.32.0's output when its KV cache does not fit (abridged from a real start).
REFUSED_START = """\
(APIServer pid=3776) WARNING 11-30 03:28:15 [system_utils.py:255] Found ulimit of 20000 ... `OSError: [Errno 24] Too many open files`.
(Worker pid=4237) WARNING 11-30 03:29:30 [utils.py:597] Failed to create oneDNN linear. Exception: could not create a primitive
(Worker pid=4237) ERROR 11-30 03:29:31 [multiproc_executor.py:1063] Traceback (most recent call last):
(Worker pid=4237) ERROR 11-30 03:29:31 [multiproc_executor.py:1063]     raise ValueError(
(Worker pid=4237) ERROR 11-30 03:29:31 [multiproc_executor.py:1063] ValueError: Available memory on node 0 (16.34/20.96 GiB) on \
kv cache allocation is less than requested memory for kv (4096.0 GiB).
(EngineCore pid=4109) ERROR 11-30 03:29:31 [core.py:1510] EngineCore failed to start.
(EngineCore pid=4109) ERROR 11-30 03:29:31 [core.py:1510] RuntimeError: Worker failed with error 'Available memory on node 0 \
(16.34/20.96 GiB) on kv cache allocation ...', please check the stack trace above for the root cause
Traceback (most recent call last):
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_a_refused_start_is_reported_by_its_root_cause(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(REFUSED_START)
    assert _reason(log) == (
        "ValueError: Available memory on node 0 (16.34/20.96 GiB) on kv cache allocation is less than requested memory for kv (4096.0 GiB)."
    )


@pytest.mark.parametrize("text", RAN_OUT)
def test_memory_that_ran_out_is_recognised(text):
    assert ran_out_of_memory(text)


@pytest.mark.parametrize("text", DID_NOT)
def test_other_failures_are_not_memory(text):
    assert not ran_out_of_memory(text)


# Every config of this study asks for more KV cache than any machine has free: vLLM's CPU build
# refuses in its own words before allocating it (eager, so no warm-up compile comes first).
NO_MEMORY = {
    "study": "no-memory",
    "hardware": "cpu-2core",
    "model": "demo:target",
    "benchmark": {"name": "arith", "n_problems": 4, "seed": 0},
    "search_space": {"branches": [1, 2], "speculative": ["none"], "aggregator": ["majority"]},
    "budgets_s": [1.0],
    "sampler": "grid",
    "n_trials": 2,
    "workers": {"count": 1},
    "engine": {"kv_cache_gib": 4096, "enforce_eager": True},
}
VLLMS_WORDS = "is less than requested memory for kv (4096.0 GiB)"


def full_log(reason: str) -> Path:
    """The file a failed trial's reason names."""
    return Path(re.fullmatch(r".* \(full log: (.+)\)", reason).group(1))


@pytest.mark.engine
def test_engines_that_run_out_of_memory_fail_with_vllms_words_and_are_not_run_again(tmp_path, demo_model_paths):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(NO_MEMORY))
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    repo = Repository(url)

    # --max-failures 1 stops the study at its first failure, which stays stored.
    proc = run_latts("tune", str(spec), "--storage", url, "--max-failures", "1", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: stopped after 1 failed trials in this run (--max-failures 1)")
    (failed,) = repo.trials("no-memory")
    assert failed.state == TrialState.FAILED and failed.fail_reason.startswith(
        "out of memory: EngineStartError: vLLM server exited with 1: ValueError: Available memory on node"
    )
    assert VLLMS_WORDS in failed.fail_reason, failed.fail_reason
    path = full_log(failed.fail_reason)
    assert path == tmp_path / "latts-logs" / "no-memory" / f"generation-{failed.generation_id}.log"
    full = path.read_text()
    assert "Traceback (most recent call last)" in full and "Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE" in full
    # The study's log (named at start) holds the workers' output, the engine's own lines among it.
    log = tmp_path / "latts-logs" / "no-memory.log"
    assert f"log: {log}" in proc.stderr
    forwarded = [line for line in log.read_text().splitlines() if "latts.workers.remote" in line]
    assert any("engine demo:target" in line and VLLMS_WORDS in line for line in forwarded), log.read_text()[-3000:]

    # Resumed without a limit: the config that ran out of memory is not run again, the other one
    # fails too, and the study ends (exit 0: failed trials are results).
    proc = run_latts("tune", str(spec), "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = repo.trials("no-memory")
    assert sorted(t.config.branches for t in trials) == [1, 2] and {t.state for t in trials} == {TrialState.FAILED}
    assert len(repo.generations("no-memory")) == 2  # one engine start per config
    assert all(VLLMS_WORDS in full_log(t.fail_reason).read_text() for t in trials)

    # A new study with the same model and engine settings on this hardware target starts no engine.
    spec.write_text(yaml.safe_dump({**NO_MEMORY, "study": "no-memory-again"}))
    proc = run_latts("tune", str(spec), "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = repo.trials("no-memory-again")
    assert repo.generations("no-memory-again") == [] and len(again) == 2
    assert all(t.fail_reason.startswith("out of memory: not run again, as no-memory#") for t in again)
