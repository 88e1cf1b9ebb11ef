"""Plain records that cross module boundaries: configs, measurements, summaries.

Workers produce them, storage persists them, everything that answers questions reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TTSConfig:
    """One candidate: how to spend inference compute on one problem."""

    branches: int
    aggregator: str
    speculative_method: str | None = None  # None = no speculative decoding
    draft_model: str | None = None
    num_speculative_tokens: int | None = None
    verifier: str | None = None
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 96

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTSConfig:
        return cls(**data)

    def label(self) -> str:
        """Short human-readable name, e.g. `B=8 ngram(k=4) majority`."""
        spec = "no-spec"
        if self.speculative_method:
            spec = f"{self.speculative_method}(k={self.num_speculative_tokens})"
        verifier = f" +{self.verifier}" if self.verifier else ""
        return f"B={self.branches} {spec} {self.aggregator}{verifier}"


@dataclass(frozen=True)
class Branch:
    """One sampled continuation of a problem, with what any aggregator needs."""

    text: str
    answer: str | None  # extracted final answer; None when there is none
    n_tokens: int
    token_logprobs: tuple[float, ...]  # the engine's log-probability of each sampled token
    verifier_score: float | None = None


@dataclass(frozen=True)
class ProblemResult:
    index: int  # position in the study's problem list
    problem_id: str
    reference: str
    branches: tuple[Branch, ...]
    aggregated_answer: str | None
    correct: bool
    latency_s: float  # submit of all branches -> aggregated answer, verifier included


@dataclass
class TrialResult:
    """What a worker measured for one config on the whole problem list."""

    problems: list[ProblemResult]
    worker: str
    engine_start_s: float  # 0 when the engine was already cached on the worker
    warmup_s: float
    drafted_tokens: int | None = None  # speculative decoding counters, from the engine
    accepted_tokens: int | None = None
    num_drafts: int | None = None


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    p50: float
    p90: float
    p99: float

    def get(self, statistic: str) -> float:
        return getattr(self, statistic)


@dataclass
class TrialSummary:
    """A stored trial as the answering side sees it."""

    id: int
    study: str
    number: int  # Optuna trial number
    config: TTSConfig
    state: str  # RUNNING | COMPLETE | FAILED
    hardware: str
    fail_reason: str | None = None
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    latency_s: LatencyStats | None = None
    n_problems: int | None = None
    engine_start_s: float | None = None
    warmup_s: float | None = None
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None
    mean_acceptance_length: float | None = None
    worker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy_ci"] = list(self.accuracy_ci) if self.accuracy_ci else None
        return data
