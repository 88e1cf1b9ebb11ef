"""Ray actors that hold engines and run whole generations, and the pool the controller drives them through.

A generation that fails comes back with a one-line reason and its full text: the traceback, the
tail of its engines' own logs, or what Ray said about a worker that died, with the last lines that
worker wrote. Everything the workers and their engines write reaches the controller's logging
(logger `latts.workers.remote`), forwarded by Ray.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from latts.aggregation import aggregate
from latts.core.errors import first_line
from latts.core.records import Branch, EngineKey, FilledProblem, GenerationPlan, GenerationResult, TimedProblem
from latts.core.spec import StudySpec
from latts.problems import Problem, extract_boxed
from latts.workers import hardware
from latts.workers.engine import LOG_TAIL_LINES, EngineCache, Sample
from latts.workers.engine import label as engine_label

# The core of a worker's slice left to its actor, engine server and engine core (see worker_env).
CONTROL_CORE = "LATTS_CONTROL_CORE"
OUTPUT_TAIL_LINES = 200  # of what a worker wrote, kept with the full reason when it dies
# Workers a generation may be handed to when each died before it started (see WorkerPool.wait).
START_ATTEMPTS = 3
# Cgroup files that count the kernel OOM killer's kills: cgroup v2, then v1.
OOM_KILL_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")

logger = logging.getLogger(__name__)
# What the workers and their engines wrote, forwarded by Ray to the controller.
remote = logging.getLogger("latts.workers.remote")


class TrialFailed(Exception):
    """A generation that could not be measured: its one-line reason and its full text."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)  # Ray pickles the arguments
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return self.reason


class EngineWorker:
    """One Ray actor: an engine cache and the problem list; runs a generation plan start to finish."""

    def __init__(self, name: str, spec: StudySpec, problems: list[Problem]) -> None:
        if CONTROL_CORE in os.environ:  # see worker_env
            os.sched_setaffinity(0, {int(os.environ[CONTROL_CORE])})
        # Ray forwards this process's output to the controller, where it reaches the study's log.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ours = logging.getLogger("latts")
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False  # once, whatever handlers Ray gave the root logger
        import ray

        # Host and Ray node: several nodes can share a host (and do, in tests), and a trial row should
        # say which node measured it.
        self.name = f"{name}@{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        self.spec = spec
        self.problems = problems
        self.cache = EngineCache(spec.workers.engines_per_worker, spec.engine, spec.seed)

    def __repr__(self) -> str:
        return self.name  # Ray labels this actor's forwarded output with it

    def detect_hardware(self) -> dict[str, Any]:
        return hardware.detect()

    def run_generation(self, plan: GenerationPlan) -> GenerationResult:
        what = f"generation B={plan.generation.branches} on {engine_label(plan.engine)}"
        oom_kills = _oom_kills()
        logger.info("%s starting", what)
        try:
            result = self._run(plan)
        except Exception as exc:
            reason = _reason(exc)
            logger.warning("%s failed: %s", what, reason)
            # Ray must pickle what a task raises, and vLLM's errors do not always pickle: text only.
            raise TrialFailed(reason, self._detail(exc, oom_kills)) from None
        logger.info("%s done", what)
        return result

    def _detail(self, exc: Exception, oom_kills_before: int | None) -> str:
        """A failure's full text: the traceback, the kernel's OOM kills meanwhile, the engines' last lines."""
        parts = ["".join(traceback.format_exception(exc)).rstrip()]
        kills = _oom_kills()
        if kills is not None and oom_kills_before is not None and kills > oom_kills_before:
            # An engine process (the largest one here) killed by the kernel shows only as a lost
            # connection; the cgroup's counter says why.
            parts.append(f"kernel OOM killer: {kills - oom_kills_before} process(es) killed in this worker's memory cgroup while it ran")
        tail = getattr(exc, "log_tail", None)  # an engine that did not start: its log, its folder gone
        parts += [f"--- last {LOG_TAIL_LINES} lines of the engine that did not start ---\n{tail}"] if tail else []
        parts += self.cache.log_tails()
        return "\n\n".join(parts)

    def _branches(self, verifier, prompt: str, samples: list[Sample]) -> tuple[Branch, ...]:
        scores = verifier.score(prompt, [s.text for s in samples]) if verifier else [None] * len(samples)
        return tuple(
            Branch(s.text, extract_boxed(s.text), s.n_tokens, s.token_logprobs, score)
            for s, score in zip(samples, scores, strict=True)
        )

    def _run(self, plan: GenerationPlan) -> GenerationResult:
        from latts.workers import vllm_cpu_fix  # torch: on workers only

        generation = plan.generation
        starts: list[float] = []  # seconds of each engine started for this plan

        def cached(key: EngineKey):
            found, started = self.cache.get(key)
            if started:
                starts.append(found.start_s)
            return found

        engine = cached(plan.engine)
        verifier = cached(self.spec.engine.verifier_key(generation.verifier)) if generation.verifier else None
        # Timed problems go one at a time (the latency-sensitive single-request setting), or in groups
        # of `concurrency` submitted together; then each problem's latency is its group's wall time.
        groups = [plan.timed[start : start + self.spec.concurrency] for start in range(0, len(plan.timed), self.spec.concurrency)]
        # Warm pass: each group once, untimed, so that every shape its requests take (prompt lengths,
        # decode batch sizes) has run before; the CPU build builds kernels on a shape's first use, a
        # server that has been up a while has them. Recorded, never counted in problem latency.
        # Garbage collection is held off from before the warm pass, not only from the first timing: the
        # full collection it starts with took 100-160 ms, and the first problem timed right after that
        # gap ran 6% slower than the same problem in later rounds (median of 33 plans in one `latts
        # confirm` on a 2-core Intel Xeon; 1.00 with the collection before the warm pass).
        timed: list[TimedProblem] = []
        with without_gc_pauses():
            warm_start = time.perf_counter()
            tokens = 0
            for group in groups:
                prompts = [self.problems[index].prompt for index, _ in group]
                for prompt, samples in zip(prompts, engine.generate(prompts, generation, seeds=[seed for _, seed in group]), strict=True):
                    self._branches(verifier, prompt, samples)
                    tokens += sum(s.n_tokens for s in samples)
            warmup_s = time.perf_counter() - warm_start
            self.cache.wait_until_quiet(in_use=[e for e in (engine, verifier) if e is not None])
            counters_before = engine.spec_counters()
            for round_ in range(plan.rounds):
                for group in groups:
                    prompts = [self.problems[index].prompt for index, _ in group]
                    for server in filter(None, (engine, verifier)):
                        server.forget_prompts()  # the warm pass left these prompts cached; a new question finds nothing
                    submitted = time.perf_counter()
                    samples = engine.generate(prompts, generation, seeds=[seed for _, seed in group])
                    branches = [self._branches(verifier, prompt, s) for prompt, s in zip(prompts, samples, strict=True)]
                    latency_s = time.perf_counter() - submitted
                    for (index, _), problem_branches in zip(group, branches, strict=True):
                        tokens += sum(b.n_tokens for b in problem_branches)
                        aggregated = self._aggregate_each(plan, problem_branches)
                        timed.append(TimedProblem(index, problem_branches, latency_s, *aggregated, round=round_))
        counters = {k: v - counters_before[k] for k, v in engine.spec_counters().items()}

        # Untimed: fill the sample pool (all at once, for throughput) and score pooled samples.
        filled = []
        if plan.fill:
            filler = cached(plan.fill_engine or plan.engine)
            prompts = [self.problems[index].prompt for index, _, _ in plan.fill]
            outputs = filler.generate(prompts, generation, seeds=[seed for _, _, seed in plan.fill], n=[n for _, n, _ in plan.fill])
            for (index, _, seed), prompt, samples in zip(plan.fill, prompts, outputs, strict=True):
                tokens += sum(s.n_tokens for s in samples)
                filled.append(FilledProblem(index, seed, self._branches(verifier, prompt, samples)))
        scores = {}
        if plan.score and verifier is not None:
            for index in dict.fromkeys(index for _, index, _ in plan.score):
                ids, texts = zip(*[(sample_id, text) for sample_id, i, text in plan.score if i == index], strict=True)
                scores.update(zip(ids, verifier.score(self.problems[index].prompt, list(texts)), strict=True))

        speculative = generation.speculative_method is not None
        return GenerationResult(
            timed=timed,
            worker=self.name,
            engine_start_s=sum(starts),
            engine_starts=len(starts),
            warmup_s=warmup_s,
            generated_tokens=tokens,
            filled=filled,
            scores=scores,
            drafted_tokens=counters["drafted_tokens"] if speculative else None,
            accepted_tokens=counters["accepted_tokens"] if speculative else None,
            num_drafts=counters["num_drafts"] if speculative else None,
            # vLLM ran the plugin in each of its processes already; this reads the same verdict.
            vllm_cpu_fix=vllm_cpu_fix.apply(),
        )

    @staticmethod
    def _aggregate_each(plan: GenerationPlan, branches: tuple[Branch, ...]) -> tuple[dict[str, float], dict[str, str | None]]:
        """Each aggregator's own time on these branches (a config's latency adds it to the generation's)
        and its answer (kept, so that storage can be checked against what the worker saw)."""
        seconds, answers = {}, {}
        for name in plan.aggregators:
            started = time.perf_counter()
            answers[name] = aggregate(name, branches, plan.aggregation)
            seconds[name] = time.perf_counter() - started
        return seconds, answers


@contextlib.contextmanager
def without_gc_pauses():
    """No garbage collection of the worker's own heap inside a timed request: a full collection took
    100-160 ms on a 2-core Intel Xeon (torch imported), and in repeatability.py it landed in the same
    timing of 8 branches in every repeat (the 16th of 16, 0.25-0.53 s against 0.12). The user's
    server has no such pause. Garbage made meanwhile waits for the next collection after the timing."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def worker_env(spec: StudySpec, index: int) -> dict[str, str]:
    """Environment of worker `index`: vLLM's CPU knobs, and its own slice of the cores where they suffice.

    Within a slice of two or more cores, the first is left to the engine's
    scheduler process (it polls while busy) and the actor, as vLLM's own
    auto binding does: sharing a core with the OMP threads doubled the
    latency of the demo model on 2 cores. The actor pins itself, and so the
    server and engine core it starts, to that first core (`CONTROL_CORE`);
    vLLM binds its compute threads to the others itself.
    """
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(spec.engine.kv_cache_gib),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "TOKENIZERS_PARALLELISM": "false",
        # Ray starts workers at niceness 15, below its own daemons (raylet, GCS, dashboard), and the
        # engines a worker starts inherit it: every daemon wake-up then preempted the engine mid-step.
        "RAY_worker_niceness": "0",
    }
    for name in ("LATTS_CACHE_DIR", "LATTS_VLLM_CPU_FIX"):  # where demo models live; the CPU fix's switch
        if name in os.environ:
            env[name] = os.environ[name]
    cores = sorted(os.sched_getaffinity(0))
    if spec.workers.gpus_per_worker == 0 and spec.workers.count <= len(cores):
        share = len(cores) // spec.workers.count
        mine = cores[index * share : (index + 1) * share]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine[1:] if len(mine) > 1 else mine))
        if len(mine) > 1:
            env[CONTROL_CORE] = str(mine[0])
    return env


@dataclass(frozen=True)
class _Running:
    generation_id: int
    plan: GenerationPlan
    ref: Any  # what run_generation returns
    started: float  # time.monotonic()
    attempt: int = 1  # the workers it was handed to (one more each time a worker died before starting)


@dataclass
class _Slot:
    index: int
    actor: Any
    ready: Any  # resolves once the actor runs, raises if it never did
    keys: list[EngineKey] = field(default_factory=list)
    running: _Running | None = None


@dataclass(frozen=True)
class Finished:
    generation_id: int
    result: GenerationResult | None
    error: str | None  # one line, when the generation failed
    detail: str | None = None  # its full text: traceback, engine log, Ray's words


class WorkerPool:
    """The controller's view of the actors: who is idle, who holds which engine."""

    def __init__(self, spec: StudySpec, problems: list[Problem]) -> None:
        import ray

        self._ray = ray
        self.spec = spec
        self._output: dict[str, deque[str]] = {}  # each worker's last lines, by its name
        self._output_lock = threading.Lock()  # Ray's log thread fills them
        _forward_output(self._forwarded)
        self._problems = ray.put(problems)
        self._remote = ray.remote(EngineWorker)
        self._slots = [self._start(i) for i in range(spec.workers.count)]

    def _forwarded(self, data: dict[str, Any]) -> None:
        """Lines a worker (or Ray itself) wrote, as Ray's log monitor forwards them: logged, and the
        workers' last lines kept for the full reason of a worker that dies."""
        source = data.get("actor_name") or data.get("task_name") or str(data.get("pid"))
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status report every few seconds; Ray shows only its events
            lines = [line.split(":event_summary:", 1)[1] for line in lines if ":event_summary:" in line]
        for line in lines:
            remote.info("(%s, %s pid=%s) %s", source, data.get("ip"), data.get("pid"), line)
        with self._output_lock:
            self._output.setdefault(source, deque(maxlen=OUTPUT_TAIL_LINES)).extend(lines)

    def _start(self, index: int) -> _Slot:
        actor = self._remote.options(
            num_cpus=1,
            num_gpus=self.spec.workers.gpus_per_worker,
            runtime_env={"env_vars": worker_env(self.spec, index)},
            # One worker per node where the cluster has room: a lost node then costs the fewest trials,
            # and a replacement goes wherever there is room left.
            scheduling_strategy="SPREAD",
        ).remote(f"worker-{index}", self.spec, self._problems)
        return _Slot(index, actor, actor.__ray_ready__.remote())

    def _last_words(self, slot: _Slot) -> str:
        """What the worker in `slot` wrote last (its name is the slot's, on any host)."""
        with self._output_lock:
            lines = [line for name, tail in self._output.items() if name.startswith(f"worker-{slot.index}@") for line in tail]
        return f"--- last {OUTPUT_TAIL_LINES} lines the worker wrote ---\n" + "\n".join(lines[-OUTPUT_TAIL_LINES:])

    def detect_hardware(self) -> dict[str, Any]:
        """What the workers run on (the controller may sit on another machine)."""
        return self._ray.get(self._slots[0].actor.detect_hardware.remote())

    @property
    def idle(self) -> int:
        return sum(slot.running is None for slot in self._slots)

    def submit(self, generation_id: int, plan: GenerationPlan) -> None:
        idle = [slot for slot in self._slots if slot.running is None]
        keys = self._engines(plan)
        # Prefer the worker that already holds the plan's engine, then the most of the others it uses:
        # an engine start costs seconds to minutes.
        slot = max(idle, key=lambda s: (plan.engine in s.keys, sum(k in s.keys for k in keys), -len(s.keys)))
        self._hand(slot, generation_id, plan, attempt=1)

    def _hand(self, slot: _Slot, generation_id: int, plan: GenerationPlan, attempt: int) -> None:
        ref = slot.actor.run_generation.remote(plan)
        slot.running = _Running(generation_id, plan, ref, time.monotonic(), attempt)
        # The worker's engine cache is least-recently-used over all of them: mirror it.
        keys = self._engines(plan)
        slot.keys = [k for k in slot.keys if k not in keys] + keys
        del slot.keys[: -self.spec.workers.engines_per_worker]

    def _engines(self, plan: GenerationPlan) -> list[EngineKey]:
        """The engines a plan makes its worker use, in the order it uses them (EngineWorker._run)."""
        keys = [plan.engine]
        if plan.generation.verifier:
            keys.append(self.spec.engine.verifier_key(plan.generation.verifier))
        if plan.fill:
            keys.append(plan.fill_engine or plan.engine)
        return list(dict.fromkeys(keys))

    def wait(self, timeout_s: float = 1.0) -> list[Finished]:
        """Generations that ended within `timeout_s`; a dead or overdue worker is replaced."""
        ray = self._ray
        running = {slot.running.ref: slot for slot in self._slots if slot.running}
        if not running:
            return []
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=timeout_s)
        finished = []
        for ref in ready:
            slot = running[ref]
            generation_id = slot.running.generation_id
            try:
                finished.append(Finished(generation_id, ray.get(ref), None))
                slot.running = None
            except ray.exceptions.RayTaskError as exc:  # it raised inside the worker: engine start, OOM...
                cause = exc.cause
                if isinstance(cause, TrialFailed):
                    finished.append(Finished(generation_id, None, cause.reason, cause.detail))
                else:
                    finished.append(Finished(generation_id, None, _reason(exc), str(exc)))
                slot.running = None
            except ray.exceptions.RayError as exc:  # the worker died (its node, the OOM killer, Ray's memory monitor)
                if not self._came_up(slot) and slot.running.attempt < START_ATTEMPTS:
                    # It died before it ran at all: Ray placed it on a node that was already dying,
                    # which it has not noticed yet (seconds). Nothing was measured: run it elsewhere.
                    logger.warning("worker-%d died before it started (%s); handing its generation to another", slot.index, _reason(exc))
                    lost = slot.running
                    self._replace(slot)
                    self._hand(self._slots[slot.index], generation_id, lost.plan, lost.attempt + 1)
                    continue
                reason = f"worker died: {_reason(exc)}"
                logger.warning("%s; replacing it", reason)
                finished.append(Finished(generation_id, None, reason, f"{exc}\n\n{self._last_words(slot)}"))
                self._replace(slot)
        now = time.monotonic()
        for slot in self._slots:
            if slot.running and now - slot.running.started > self.spec.trial_timeout_s:
                reason = f"timeout after {self.spec.trial_timeout_s:g} s"
                logger.warning("%s; replacing its worker", reason)
                finished.append(Finished(slot.running.generation_id, None, reason, f"{reason}\n\n{self._last_words(slot)}"))
                ray.kill(slot.actor)
                self._replace(slot)
        return finished

    def run(self, generation_id: int, plan: GenerationPlan) -> Finished:
        """Submit one plan and wait for it (a race times one generation at a time)."""
        self.submit(generation_id, plan)
        while not (finished := self.wait(timeout_s=1.0)):
            pass
        return finished[0]

    def _came_up(self, slot: _Slot) -> bool:
        """Whether the actor in `slot` ever ran (its constructor finished)."""
        if not self._ray.wait([slot.ready], timeout=0)[0]:
            return False
        try:
            self._ray.get(slot.ready)
            return True
        except self._ray.exceptions.RayError:
            return False

    def _replace(self, slot: _Slot) -> None:
        self._slots[slot.index] = self._start(slot.index)

    def shutdown(self) -> None:
        for slot in self._slots:
            self._ray.kill(slot.actor)
        _forward_output(None)


def _forward_output(handler) -> None:
    """Hand what Ray forwards from the workers to `handler` instead of printing it on the terminal
    (stdout carries tune's tables); None drops it. Ray's hook for this is internal; latts pins
    Ray's version (pyproject.toml)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for name in ("ray_print_logs", "latts"):
        dispatcher.remove_handler(name)
    if handler is not None:
        dispatcher.add_handler("latts", handler)


def _oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory cgroup, where it says."""
    for path in OOM_KILL_COUNTERS:
        try:
            with open(path) as counters:
                return next(int(line.split()[1]) for line in counters if line.startswith("oom_kill "))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return None


def _reason(exc: BaseException) -> str:
    """A failed trial's reason: the root cause's type and its first line."""
    cause = getattr(exc, "cause", None) or exc
    errors = getattr(cause, "errors", None)
    # pydantic (vLLM's config checks): the first error's own message, not the summary line.
    text = str(errors()[0]["msg"]) if callable(errors) else first_line(cause)
    return f"{type(cause).__name__}: {text}"[:500]
