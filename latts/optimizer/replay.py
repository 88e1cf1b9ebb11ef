"""Replay landscapes: workers that answer generations from a finished study's stored rows, no engine.

For benchmarking search strategies only (`benchmarks/search_efficiency.py`): a replayed study's
numbers are the source study's, not measurements, and its trials name the worker `replay
(benchmarking only)`. The replayed study must share the source's database (its sample pool) and
its spec's measurement fields (`seed` included: the same probes and sampling seeds, so the replayed
branches add nothing new to the pool). Runs in the controller's process.
"""

from __future__ import annotations

from typing import Any

from latts.core.records import GenerationPlan, GenerationResult, TrialState
from latts.storage import Repository
from latts.workers.pool import Finished

LABEL = "replay (benchmarking only)"


class ReplayWorkers:
    """`count` workers that answer each plan with what `source` stored for the same generation."""

    def __init__(self, repo: Repository, source: str, count: int = 1) -> None:
        info = repo.study(source)
        if info is None:
            raise ValueError(f"study {source!r} does not exist in '{repo.url}'; replay a finished study")
        self.repo = repo
        self.source = source
        self.count = count
        self._stored = {g.generation.key(): g for g in repo.generations(source)}
        self._hardware = repo.hardware(info.hardware) or {}
        self._pending: list[tuple[int, GenerationPlan]] = []

    @property
    def idle(self) -> int:
        return self.count - len(self._pending)

    def submit(self, generation_id: int, plan: GenerationPlan) -> None:
        self._pending.append((generation_id, plan))

    def wait(self, timeout_s: float = 1.0) -> list[Finished]:
        finished = [self._answer(generation_id, plan) for generation_id, plan in self._pending]
        self._pending = []
        return finished

    def run(self, generation_id: int, plan: GenerationPlan) -> Finished:
        return self._answer(generation_id, plan)

    def detect_hardware(self) -> dict[str, Any]:
        """The source's hardware target as first recorded: the replay runs on its numbers."""
        return self._hardware

    def shutdown(self) -> None:
        self._pending = []

    def _answer(self, generation_id: int, plan: GenerationPlan) -> Finished:
        stored = self._stored.get(plan.generation.key())
        if stored is None or stored.state == TrialState.RUNNING:
            return Finished(generation_id, None, f"{LABEL}: study {self.source} never measured this generation")
        if stored.state == TrialState.FAILED:
            return Finished(generation_id, None, f"{LABEL}: {stored.fail_reason}")
        if plan.fill:
            return Finished(generation_id, None, f"{LABEL}: the sample pool lacks samples that study {self.source} never generated")
        timed = {(p.round, p.index): p for p in self.repo.timed_problems(stored.id) if p.round < plan.rounds}
        wanted = [(round_, index) for round_ in range(plan.rounds) for index, _ in plan.timed]
        if any(key not in timed for key in wanted):
            message = f"study {self.source} timed other problems or fewer latency rounds; replay it with its own spec"
            return Finished(generation_id, None, f"{LABEL}: {message}")
        result = GenerationResult(
            timed=[timed[key] for key in wanted],
            worker=LABEL,
            engine_start_s=0.0,
            warmup_s=0.0,
            generated_tokens=0,
        )
        return Finished(generation_id, result, None)
