"""Plain records that cross module boundaries: configs, measurements, summaries.

Workers produce them, storage persists them, everything that answers questions reads them.
The lists of choices that several modules share (latency statistics, speculative methods, trial
states) are spelled here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

LatencyStatistic = Literal["mean", "p50", "p90", "p99"]
STATISTICS: tuple[LatencyStatistic, ...] = get_args(LatencyStatistic)

SpeculativeMethod = Literal["ngram", "draft_model", "eagle", "eagle3", "mtp"]
# Methods that need a second model: the draft, or the EAGLE head.
METHODS_WITH_MODEL: tuple[SpeculativeMethod, ...] = ("draft_model", "eagle", "eagle3")


LosslessVerdict = Literal["lossless", "lossy", "untested"]
# What latts did to the CPU build's speculative sampling in a trial's engine (latts.workers.vllm_cpu_fix).
CpuFixVerdict = Literal["applied", "not-needed", "off"]


class TrialState(StrEnum):
    """Where a stored trial stands. A StrEnum, so it compares equal to its name and prints as it."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class TTSConfig:
    """One candidate: how to spend inference compute on one problem."""

    branches: int
    aggregator: str
    temperature: float
    top_p: float
    max_tokens: int
    speculative_method: SpeculativeMethod | None = None  # None = no speculative decoding
    draft_model: str | None = None
    num_speculative_tokens: int | None = None
    verifier: str | None = None

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
class EngineKey:
    """What needs its own engine; branches, aggregator and sampling change per request instead.

    Built from a study's `engine:` settings by `EngineSpec.key_for` and `EngineSpec.verifier_key`.
    """

    model: str
    speculative_method: str | None
    draft_model: str | None
    num_speculative_tokens: int | None
    dtype: str
    tensor_parallel_size: int
    max_model_len: int | None
    runner: str = "generate"  # "pooling" for a verifier (an outcome reward model)

    def speculative_config(self) -> dict[str, Any] | None:
        """vLLM's `speculative_config`, exactly as `vllm serve` takes it."""
        if self.speculative_method is None:
            return None
        config: dict[str, Any] = {
            "method": self.speculative_method,
            "num_speculative_tokens": self.num_speculative_tokens,
        }
        if self.draft_model is not None:
            config["model"] = self.draft_model
        return config


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
    vllm_cpu_fix: CpuFixVerdict | None = None


@dataclass(frozen=True)
class Losslessness:
    """Whether a speculative trial sampled the same answers as the same sampling without speculation."""

    verdict: LosslessVerdict
    p_value: float | None = None  # of the answer-shift test (latts.core.statistics.answer_shift_p_value)
    baseline_trial: int | None = None  # number of the trial without speculation it was tested against


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    p50: float
    p90: float
    p99: float

    def get(self, statistic: LatencyStatistic) -> float:
        return getattr(self, statistic)


@dataclass
class TrialSummary:
    """A stored trial as the answering side sees it."""

    id: int
    study: str
    number: int  # Optuna trial number
    config: TTSConfig
    state: TrialState
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
    lossless: Losslessness | None = None  # None for trials without speculation: nothing to check
    vllm_cpu_fix: CpuFixVerdict | None = None
    worker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lossy(self) -> bool:
        return self.lossless is not None and self.lossless.verdict == "lossy"
