"""Ray actors that hold engines and run whole trials, and the pool the controller drives them through."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from latts.aggregation import aggregate
from latts.core.errors import first_line
from latts.core.records import Branch, EngineKey, ProblemResult, TrialResult, TTSConfig
from latts.core.spec import StudySpec
from latts.problems import Problem, extract_boxed, grade
from latts.workers import hardware
from latts.workers.engine import EngineCache


class TrialFailed(Exception):
    """A trial that could not be measured; the message is its one-line reason."""


class EngineWorker:
    """One Ray actor: an engine cache and the problem list; runs a trial start to finish."""

    def __init__(self, name: str, spec: StudySpec, problems: list[Problem]) -> None:
        self.name = f"{name}@{socket.gethostname()}"
        self.spec = spec
        self.problems = problems
        self.cache = EngineCache(spec.workers.engines_per_worker, spec.engine, spec.seed)

    def detect_hardware(self) -> dict[str, Any]:
        return hardware.detect()

    @staticmethod
    def _scores(verifier, prompt: str, samples) -> list[float | None]:
        if verifier is None:
            return [None] * len(samples)
        return verifier.score(prompt, [s.text for s in samples])

    def run_trial(self, config: TTSConfig, key: EngineKey) -> TrialResult:
        try:
            return self._run_trial(config, key)
        except Exception as exc:
            # Ray must pickle what a task raises, and vLLM's errors do not always pickle.
            raise TrialFailed(_reason(exc)) from None

    def _run_trial(self, config: TTSConfig, key: EngineKey) -> TrialResult:
        from latts.workers import vllm_cpu_fix  # torch: on workers only
        engine, started = self.cache.get(key)
        engine_start_s = engine.start_s if started else 0.0
        verifier = None
        if config.verifier is not None:
            verifier, started = self.cache.get(self.spec.engine.verifier_key(config.verifier))
            engine_start_s += verifier.start_s if started else 0.0
        parameters = self.spec.aggregation.model_dump()
        # Warm the request path for this branch count; recorded, never counted in problem latency.
        warm_start = time.perf_counter()
        (warm,) = engine.generate([self.problems[0].prompt], config, seeds=[self.spec.seed])
        self._scores(verifier, self.problems[0].prompt, warm)
        warmup_s = time.perf_counter() - warm_start
        counters_before = engine.spec_counters()

        # Problems go one at a time (the latency-sensitive single-request setting), or in groups of
        # `concurrency` submitted together; then each problem's latency is its group's wall time.
        results: list[ProblemResult] = []
        group_size = self.spec.concurrency
        for start in range(0, len(self.problems), group_size):
            group = self.problems[start : start + group_size]
            indices = range(start, start + len(group))
            submitted = time.perf_counter()
            samples = engine.generate(
                [p.prompt for p in group], config, seeds=[self.spec.seed * 1_000_003 + i for i in indices]
            )
            branches = [
                tuple(
                    Branch(s.text, extract_boxed(s.text), s.n_tokens, s.token_logprobs, score)
                    for s, score in zip(problem_samples, self._scores(verifier, problem.prompt, problem_samples))
                )
                for problem, problem_samples in zip(group, samples, strict=True)
            ]
            answers = [aggregate(config.aggregator, b, parameters) for b in branches]
            latency_s = time.perf_counter() - submitted
            results.extend(
                ProblemResult(
                    index=index,
                    problem_id=problem.id,
                    reference=problem.answer,
                    branches=problem_branches,
                    aggregated_answer=answer,
                    correct=grade(answer, problem.answer),
                    latency_s=latency_s,
                )
                for index, problem, problem_branches, answer in zip(indices, group, branches, answers, strict=True)
            )

        counters = {k: v - counters_before[k] for k, v in engine.spec_counters().items()}
        speculative = config.speculative_method is not None
        return TrialResult(
            problems=results,
            worker=self.name,
            engine_start_s=engine_start_s,
            warmup_s=warmup_s,
            drafted_tokens=counters["drafted_tokens"] if speculative else None,
            accepted_tokens=counters["accepted_tokens"] if speculative else None,
            num_drafts=counters["num_drafts"] if speculative else None,
            # vLLM ran the plugin in each of its processes already; this reads the same verdict.
            vllm_cpu_fix=vllm_cpu_fix.apply(),
        )


def worker_env(spec: StudySpec, index: int) -> dict[str, str]:
    """Environment of worker `index`: vLLM's CPU knobs, and its own slice of the cores where they suffice.

    Within a slice of two or more cores, the first is left to the engine's
    scheduler process (it polls while busy) and the actor, as vLLM's own
    auto binding does: sharing a core with the OMP threads doubled the
    latency of the demo model on 2 cores.
    """
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(spec.engine.kv_cache_gib),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for name in ("LATTS_CACHE_DIR", "LATTS_VLLM_CPU_FIX"):  # where demo models live; the CPU fix's switch
        if name in os.environ:
            env[name] = os.environ[name]
    cores = sorted(os.sched_getaffinity(0))
    if spec.workers.gpus_per_worker == 0 and spec.workers.count <= len(cores):
        share = len(cores) // spec.workers.count
        mine = cores[index * share : (index + 1) * share]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine[1:] if len(mine) > 1 else mine))
    return env


@dataclass
class _Slot:
    index: int
    actor: Any
    keys: list[EngineKey] = field(default_factory=list)
    running: tuple[int, Any, float] | None = None  # (trial id, object ref, start time)


@dataclass(frozen=True)
class Finished:
    trial_id: int
    result: TrialResult | None
    error: str | None  # one line, when the trial failed


class WorkerPool:
    """The controller's view of the actors: who is idle, who holds which engine."""

    def __init__(self, spec: StudySpec, problems: list[Problem]) -> None:
        import ray

        self._ray = ray
        self.spec = spec
        self._problems = ray.put(problems)
        self._remote = ray.remote(EngineWorker)
        self._slots = [self._start(i) for i in range(spec.workers.count)]

    def _start(self, index: int) -> _Slot:
        actor = self._remote.options(
            num_cpus=1,
            num_gpus=self.spec.workers.gpus_per_worker,
            runtime_env={"env_vars": worker_env(self.spec, index)},
        ).remote(f"worker-{index}", self.spec, self._problems)
        return _Slot(index, actor)

    def detect_hardware(self) -> dict[str, Any]:
        """What the workers run on (the controller may sit on another machine)."""
        return self._ray.get(self._slots[0].actor.detect_hardware.remote())

    @property
    def idle(self) -> int:
        return sum(slot.running is None for slot in self._slots)

    @property
    def in_flight(self) -> list[int]:
        return [slot.running[0] for slot in self._slots if slot.running]

    def submit(self, trial_id: int, config: TTSConfig, key: EngineKey) -> None:
        idle = [slot for slot in self._slots if slot.running is None]
        # Prefer a worker that already holds this engine: an engine start costs seconds to minutes.
        slot = next((s for s in idle if key in s.keys), None) or min(idle, key=lambda s: len(s.keys))
        ref = slot.actor.run_trial.remote(config, key)
        slot.running = (trial_id, ref, time.monotonic())
        slot.keys = [k for k in slot.keys if k != key] + [key]
        del slot.keys[: -self.spec.workers.engines_per_worker]

    def wait(self, timeout_s: float = 1.0) -> list[Finished]:
        """Trials that ended within `timeout_s`; a dead or overdue worker is replaced."""
        ray = self._ray
        running = {slot.running[1]: slot for slot in self._slots if slot.running}
        if not running:
            return []
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=timeout_s)
        finished = []
        for ref in ready:
            slot = running[ref]
            trial_id = slot.running[0]
            try:
                finished.append(Finished(trial_id, ray.get(ref), None))
                slot.running = None
            except ray.exceptions.RayActorError as exc:
                finished.append(Finished(trial_id, None, f"worker died: {_reason(exc)}"))
                self._replace(slot)
            except ray.exceptions.RayTaskError as exc:  # the trial raised inside the worker: engine start, OOM...
                finished.append(Finished(trial_id, None, str(exc.cause) if isinstance(exc.cause, TrialFailed) else _reason(exc)))
                slot.running = None
        now = time.monotonic()
        for slot in self._slots:
            if slot.running and now - slot.running[2] > self.spec.trial_timeout_s:
                finished.append(Finished(slot.running[0], None, f"timeout after {self.spec.trial_timeout_s:g} s"))
                ray.kill(slot.actor)
                self._replace(slot)
        return finished

    def _replace(self, slot: _Slot) -> None:
        self._slots[slot.index] = self._start(slot.index)

    def shutdown(self) -> None:
        for slot in self._slots:
            self._ray.kill(slot.actor)


def _reason(exc: BaseException) -> str:
    """A failed trial's reason: the root cause's type and its first line."""
    cause = getattr(exc, "cause", None) or exc
    errors = getattr(cause, "errors", None)
    # pydantic (vLLM's config checks): the first error's own message, not the summary line.
    text = str(errors()[0]["msg"]) if callable(errors) else first_line(cause)
    return f"{type(cause).__name__}: {text}"[:500]
