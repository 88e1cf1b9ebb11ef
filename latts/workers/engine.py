"""The vLLM backend: the one place latts starts engines and generates. Same code on CPU and GPU builds.

Runs on workers. Each engine is vLLM's OpenAI-compatible server (`python -m
vllm.entrypoints.openai.api_server --config FILE`, which works on the CPU build where `vllm serve`
does not), started from the same serving config that `latts export` writes, and every request goes
to it over HTTP as a client of the exported config would send it. A problem's latency is therefore
what the user's server will show: HTTP, the API server's tokenizer and detokenizer, and the engine
core in its own process, as in production. Its output goes to a log file in the engine's folder and
on to the worker's output (see latts.workers.supervise), which Ray forwards to `latts tune`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from latts.core.records import EngineKey, Generation
from latts.core.spec import EngineSpec
from latts.demo import models as demo_models

# Prometheus counters on the server's /metrics, and what latts calls them.
SPEC_DECODE_COUNTERS = {
    "vllm:spec_decode_num_drafts_total": "num_drafts",
    "vllm:spec_decode_num_draft_tokens_total": "drafted_tokens",
    "vllm:spec_decode_num_accepted_tokens_total": "accepted_tokens",
}
START_TIMEOUT_S = 900  # a cold CPU start compiles for minutes; a GPU start loads big weights
REQUEST_TIMEOUT_S = 600
# After its last step, a vLLM server's worker and engine core keep polling their cores for 1 s
# before they sleep (SpinCondition in vllm/distributed/device_communicators/shm_broadcast.py).
BUSY_POLL_S = 1.0
LOG_TAIL_LINES = 200  # of an engine's own log, kept with a failed trial's full reason

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """The server did not come up; the message holds vLLM's own last words, `log_tail` its last lines."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int
    token_logprobs: tuple[float, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:  # the supervisor did not get as far as creating it
        return []


# The last line of a traceback, as vLLM's processes log it: after the process's label and, from
# its logger, the level, time and source.
_RAISED = re.compile(
    r"^(?:\([\w.-]+ pid=\d+\) )?(?:[A-Z]+ [\d-]+ [\d:]+ \[[^\]]+\] )?((?:[\w.]+\.)?\w*(?:Error|Exception)\b.*)$"
)


def _reason(log: Path) -> str:
    """Why a server did not start, for a failed trial's reason: the first exception it logged (the
    root cause; vLLM's processes raise it on, wrapped, and the API server says "see root cause
    above"), else its last error line."""
    lines = [line.strip() for line in _lines(log) if line.strip()]
    raised = [m.group(1) for line in lines if (m := _RAISED.match(line)) and "See root cause above" not in line]
    if raised:
        return raised[0][:500]
    errors = [line for line in lines if re.search(r"Error|error:|Exception", line)]
    return (errors or lines or ["(no output)"])[-1][-500:]


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of an engine's log."""
    return "\n".join(_lines(log)[-lines:]) or "(no output)"


def wait_until_healthy(process: subprocess.Popen, client, log: Path) -> None:
    """Wait until a starting vLLM server answers /health; EngineStartError with its last words when
    it exits or is not up within START_TIMEOUT_S."""
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineStartError(f"vLLM server exited with {process.returncode}: {_reason(log)}", log_tail(log))
        try:
            if client.get("/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise EngineStartError(f"vLLM server not ready after {START_TIMEOUT_S} s: {_reason(log)}", log_tail(log))


class Engine:
    """One vLLM OpenAI-compatible server on a free loopback port, and an HTTP client for it."""

    def __init__(self, key: EngineKey, settings: EngineSpec, seed: int) -> None:
        import httpx

        self.key = key
        self.folder = Path(tempfile.mkdtemp(prefix="latts-engine-"))
        config = settings.serve_config(key, demo_models.resolve_model)
        self.model = config["model"]  # the served model name defaults to the model path
        (self.folder / "serve.yaml").write_text(yaml.safe_dump({**config, "seed": seed}, sort_keys=False))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.folder / "server.log"
        self.label = f"engine {label(key)} :{port}"
        started = time.perf_counter()
        logger.info("%s starting", self.label)
        self.process = subprocess.Popen(
            # The supervisor leads a process group with the server and its engine core, and ends
            # the group when this worker dies, even by SIGKILL; close() ends the group too. It
            # passes the server's log on to this worker's output, labelled.
            [sys.executable, "-m", "latts.workers.supervise", str(self.log), self.label,
             sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--config", str(self.folder / "serve.yaml"),
             "--host", "127.0.0.1", "--port", str(port)],
            start_new_session=True,
            # Dev mode adds /reset_prefix_cache (see forget_prompts); nothing else changes.
            env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"},
        )
        self.client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)
        try:
            wait_until_healthy(self.process, self.client, self.log)
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - started
        self.polling_until = time.monotonic() + BUSY_POLL_S  # it ran a profiling step as it started
        logger.info("%s ready in %.1f s", self.label, self.start_s)

    def _stepped(self, response):
        """`response` checked, after noting that the server just stepped (it polls BUSY_POLL_S more)."""
        self.polling_until = time.monotonic() + BUSY_POLL_S
        response.raise_for_status()
        return response

    def _complete(self, prompt: str, generation: Generation, seed: int, n: int) -> list[Sample]:
        response = self._stepped(self.client.post(
            "/v1/completions",
            json={
                "model": self.model,
                "prompt": prompt,
                "n": n,
                "temperature": generation.temperature,
                "top_p": generation.top_p,
                "max_tokens": generation.max_tokens,
                "seed": seed,
                "logprobs": 0,  # each sampled token's own log-probability, as the engine computed it
            },
        ))
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
        return [
            Sample(c["text"], len(c["logprobs"]["token_logprobs"]), tuple(c["logprobs"]["token_logprobs"]))
            for c in choices
        ]

    def generate(
        self, prompts: list[str], generation: Generation, seeds: list[int], n: list[int] | None = None
    ) -> list[list[Sample]]:
        """`generation.branches` samples for each prompt (or `n[i]` for prompt i), all requests sent at once."""
        counts = n or [generation.branches] * len(prompts)
        if len(prompts) == 1:
            return [self._complete(prompts[0], generation, seeds[0], counts[0])]
        with ThreadPoolExecutor(max_workers=min(len(prompts), 64)) as pool:
            return list(pool.map(lambda args: self._complete(args[0], generation, args[1], args[2]), zip(prompts, seeds, counts, strict=True)))

    def score(self, prompt: str, texts: list[str]) -> list[float]:
        """A verifier's score of each completed solution: the reward model's probability that it is right."""
        response = self._stepped(self.client.post("/classify", json={"model": self.model, "input": [prompt + text for text in texts]}))
        return [float(item["probs"][0]) for item in sorted(response.json()["data"], key=lambda d: d["index"])]

    def forget_prompts(self) -> None:
        """Empty the server's prefix cache, so that the next request computes its whole prompt, as a
        new question does (timing the same problems again would otherwise find their prompts cached)."""
        for _ in range(50):  # it refuses while a finishing request still holds blocks
            response = self.client.post("/reset_prefix_cache")
            response.raise_for_status()
            if response.json().get("success"):
                return
            time.sleep(0.01)
        raise RuntimeError("vLLM server kept refusing to reset its prefix cache")

    def spec_counters(self) -> dict[str, int]:
        """Cumulative speculative-decoding counters of this server."""
        totals = dict.fromkeys(SPEC_DECODE_COUNTERS.values(), 0)
        for line in self.client.get("/metrics").text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in SPEC_DECODE_COUNTERS:
                totals[SPEC_DECODE_COUNTERS[name]] += int(float(line.rsplit(" ", 1)[1]))
        return totals

    def log_tail(self) -> str:
        """The last lines of the server's log, headed by what it is."""
        return f"--- last {LOG_TAIL_LINES} lines of {self.label} ({self.log}) ---\n{log_tail(self.log)}"

    def close(self) -> None:
        """Stop the server and its engine core (their process group), free its memory, remove its folder."""
        logger.info("%s closing", self.label)
        self.client.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_until_quiet(engines: Iterable[Engine]) -> float:
    """Sleep until none of `engines` is still polling after its last step; the seconds slept."""
    wait = max((e.polling_until for e in engines), default=0.0) - time.monotonic()
    if wait <= 0:
        return 0.0
    time.sleep(wait)
    return wait


def label(key: EngineKey) -> str:
    """How logs name an engine: its model and what sets it apart."""
    parts = [key.model]
    if key.speculative_method:
        parts.append(f"{key.speculative_method} k={key.num_speculative_tokens}")
    if key.runner != "generate":
        parts.append(key.runner)
    return " ".join(parts)


class EngineCache:
    """Engines by key, least recently used evicted first once `capacity` is reached."""

    def __init__(self, capacity: int, settings: EngineSpec, seed: int) -> None:
        self.capacity = capacity
        self.settings = settings
        self.seed = seed
        self._engines: OrderedDict[EngineKey, Engine] = OrderedDict()

    def keys(self) -> list[EngineKey]:
        return list(self._engines)

    def log_tails(self) -> list[str]:
        """The last lines of each engine's log, most recently used first."""
        return [engine.log_tail() for engine in reversed(self._engines.values())]

    def get(self, key: EngineKey) -> tuple[Engine, bool]:
        """The engine for `key` and whether it was started just now."""
        if key in self._engines:
            if self._engines[key].process.poll() is None:
                self._engines.move_to_end(key)
                return self._engines[key], False
            # It died (a crash, the OOM killer): the generation it failed has its log; start afresh.
            dead = self._engines.pop(key)
            logger.warning("%s had exited (code %s); starting it again", dead.label, dead.process.returncode)
            dead.close()
        while len(self._engines) >= self.capacity:
            _, evicted = self._engines.popitem(last=False)
            evicted.close()
        engine = Engine(key, self.settings, self.seed)
        self._engines[key] = engine
        return engine, True

    def wait_until_quiet(self, in_use: list[Engine]) -> float:
        """Wait until every engine but `in_use` has stopped polling (see BUSY_POLL_S); the seconds waited.

        An idle engine's worker polls the cores that the next engine computes on. Three servers of one
        config taking turns, each sent 4 problems right after the one before, took 0.28-0.35 s per
        problem in 14 of 24 turns against 0.12-0.13 s with 1.5 s between turns (2-core Intel Xeon, 16
        branches with the draft model); and the only two problems of 66 timing plans over 2x their
        config's median (0.35 and 0.50 s against 0.12 and 0.09) were each the first timed on an
        engine right after a switch from another, within that engine's polling second.
        """
        return wait_until_quiet(e for e in self._engines.values() if e not in in_use)

    def close(self) -> None:
        while self._engines:
            self._engines.popitem()[1].close()
