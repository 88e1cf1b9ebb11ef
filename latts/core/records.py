"""Plain records that cross module boundaries: configs, measurements, summaries.

Workers produce them, storage persists them, everything that answers questions reads them.
The lists of choices that several modules share (latency statistics, speculative methods, trial
states) are spelled here once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, Self, get_args

LatencyStatistic = Literal["mean", "p50", "p90", "p99"]
STATISTICS: tuple[LatencyStatistic, ...] = get_args(LatencyStatistic)

SpeculativeMethod = Literal["ngram", "draft_model", "eagle", "eagle3", "mtp"]
# Methods that need a second model: the draft, or the EAGLE head.
METHODS_WITH_MODEL: tuple[SpeculativeMethod, ...] = ("draft_model", "eagle", "eagle3")


LosslessVerdict = Literal["lossless", "lossy", "untested"]
# How a budget's choice compares with the runner-up after the race: beyond noise, within it, or alone.
MarginVerdict = Literal["beats", "tied", "alone", "nothing-fits"]
TieReason = Literal["lossless-twin", "budget-range", "noise"]  # why a tied answer ties (racing.tie_reason)
# Where a trial's accuracy comes from: its own branches on every problem, or the sample pool.
AccuracySource = Literal["measured", "pool"]
# What latts did to the CPU build's speculative sampling in a trial's engine (latts.workers.vllm_cpu_fix).
CpuFixVerdict = Literal["applied", "not-needed", "off"]


class TrialState(StrEnum):
    """Where a stored trial stands. A StrEnum, so it compares equal to its name and prints as it."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Generation:
    """What is generated for a config: its branches, engine side and sampling, and the verifier scoring
    them. Configs that differ only in the aggregator share one; their answers come from its stored
    branches."""

    branches: int
    temperature: float
    top_p: float
    max_tokens: int
    speculative_method: SpeculativeMethod | None = None  # None = no speculative decoding
    draft_model: str | None = None
    num_speculative_tokens: int | None = None
    verifier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """Canonical text: equal generations (or configs), equal keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_aggregator(self, aggregator: str) -> TTSConfig:
        return TTSConfig(aggregator=aggregator, **self.to_dict())

    def without_speculation(self) -> Self:
        """The same branches and sampling on the target alone: what a lossless speculative engine samples."""
        return replace(self, speculative_method=None, draft_model=None, num_speculative_tokens=None)


@dataclass(frozen=True, kw_only=True)
class TTSConfig(Generation):
    """One candidate: how to spend inference compute on one problem (a generation and its aggregator)."""

    aggregator: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTSConfig:
        return cls(**data)

    def generation(self) -> Generation:
        fields = self.to_dict()
        del fields["aggregator"]
        return Generation(**fields)

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
class TimedProblem:
    """One problem of a generation whose latency was measured, with its branches."""

    index: int  # position in the study's problem list
    branches: tuple[Branch, ...]
    latency_s: float  # submit of all branches -> every branch (and its verifier score) back
    aggregation_s: dict[str, float]  # seconds each aggregator of the study took on these branches
    answers: dict[str, str | None] = field(default_factory=dict)  # what each of them answered, on the worker
    round: int = 0  # 0 to latency_rounds - 1: the generation itself; later ones: timed again when its configs raced


@dataclass(frozen=True)
class FilledProblem:
    """Branches generated, untimed, only to fill the sample pool of one problem."""

    index: int
    seed: int
    branches: tuple[Branch, ...]


@dataclass(frozen=True)
class GenerationPlan:
    """What a worker is asked to do for one generation."""

    generation: Generation
    engine: EngineKey
    timed: tuple[tuple[int, int], ...]  # (problem index, seed), latency measured one by one
    rounds: int = 1  # the timed problems, timed this many times over (rounds 0, 1, ...)
    fill: tuple[tuple[int, int, int], ...] = ()  # (problem index, branches, seed), untimed
    fill_engine: EngineKey | None = None  # a lossless engine for the fill: `engine` itself without speculation
    score: tuple[tuple[int, int, str], ...] = ()  # (pool sample id, problem index, text) for the verifier
    aggregators: tuple[str, ...] = ()  # whose own time to measure on each timed problem
    aggregation: dict[str, int] = field(default_factory=dict)  # their parameters


@dataclass
class GenerationResult:
    """What a worker measured for one generation."""

    timed: list[TimedProblem]
    worker: str
    engine_start_s: float  # 0 when the engine was already cached on the worker
    warmup_s: float
    generated_tokens: int  # every token the engine generated for this plan, warm-up and fill included
    engine_starts: int = 0  # engines started for this plan (generator, verifier, filler)
    filled: list[FilledProblem] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # pool sample id -> verifier score
    drafted_tokens: int | None = None  # speculative decoding counters, from the engine
    accepted_tokens: int | None = None
    num_drafts: int | None = None
    vllm_cpu_fix: CpuFixVerdict | None = None


@dataclass(frozen=True)
class Losslessness:
    """Whether a speculative trial sampled the same answers as the same sampling without speculation."""

    verdict: LosslessVerdict
    p_value: float | None = None  # of the answer-shift test (latts.core.statistics.answer_shift_p_value)
    baseline_trial: int | None = None  # number of the study's trial without speculation that filled the pool


@dataclass(frozen=True)
class GenerationSummary:
    """A stored generation as the controller sees it."""

    id: int
    generation: Generation
    state: TrialState
    fail_reason: str | None = None
    lossless: Losslessness | None = None  # None without speculation
    generated_tokens: int | None = None
    engine_start_s: float | None = None
    engine_starts: int | None = None


@dataclass(frozen=True)
class PoolDraw:
    """A branch on its way into the sample pool: which prompt, and the seeded request it came from."""

    prompt_sha: str
    seed: int
    branch: int  # position among that request's samples
    sample: Branch


@dataclass(frozen=True)
class PooledSample:
    id: int
    branch: Branch  # verifier_score: the asked-for verifier's, when it scored this sample


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    p50: float
    p90: float
    p99: float

    def get(self, statistic: LatencyStatistic) -> float:
        return getattr(self, statistic)


@dataclass(frozen=True)
class BudgetAnswer:
    """A budget's choice after its finalists were timed again in interleaved rounds, and its margin."""

    budget_s: float
    trial: int | None  # number of the chosen trial; None when nothing fits
    runner_up: int | None
    fits_confidently: bool  # the chosen trial's latency interval lies under the bottom of the budget's range
    margin: float | None  # its accuracy minus the runner-up's, paired over the same problems
    margin_ci: tuple[float, float] | None
    verdict: MarginVerdict  # beats: the margin's interval excludes 0; tied: it does not
    rounds: int
    finalists: list[int]
    # Where the budget may lie: a relative budget moves with its reference, over the reference's
    # fastest to slowest timing round in the study; an absolute one lies at budget_s. None: not stored.
    budget_range_s: tuple[float, float] | None = None
    # The finalists that answer the budget elsewhere in its range (racing.answers_across), in budget order.
    edge: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class TrialNumbers:
    """A config's accuracy and latency, computed from its generation (and the pool)."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    accuracy_source: AccuracySource
    n_problems: int  # behind the accuracy
    latency_s: LatencyStats
    latency_ci: dict[str, tuple[float | None, float | None]]  # 95% interval of each statistic; None: unbounded
    n_latency_problems: int


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
    accuracy_source: AccuracySource | None = None
    n_problems: int | None = None  # behind the accuracy
    latency_s: LatencyStats | None = None
    latency_ci: dict[str, tuple[float | None, float | None]] | None = None  # 95%, per statistic; None ends: unbounded
    n_latency_problems: int | None = None  # behind the latency (the probes, when accuracy comes from the pool)
    generation_id: int | None = None
    generated_tokens: int | None = None  # by the generation this config shares with its aggregator siblings
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
