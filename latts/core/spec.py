"""The study spec: what to search, on which model, problems and hardware, within which budgets.

Validated once, up front, so that a bad spec costs one line of error and no database writes.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from latts.aggregation import PARAMETER_DEFAULTS, RULES, AggregatorName
from latts.core.errors import redact
from latts.core.records import METHODS_WITH_MODEL, EngineKey, Generation, LatencyStatistic, SpeculativeMethod, TTSConfig
from latts.demo import models as demo_models

ProblemSetName = Literal["arith", "math500", "gsm8k", "jsonl"]
SamplerName = Literal["nsga2", "tpe", "gp", "random", "grid", "greedy", "staged"]
NONE = "none"
# The search dimension that pairs an aggregator with a verifier (or none): only valid pairs are offered.
AGGREGATOR_VERIFIER = "aggregator_verifier"

# A hub id is `org/name`; anything that looks like a filesystem path must exist.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _multiple(budget: str) -> float:
    return float(budget.removesuffix("x"))


def _seconds(budget: float | str, reference_s: float) -> float:
    """A budget in seconds: a relative one as a multiple of the reference's latency (4 significant digits)."""
    return float(f"{_multiple(budget) * reference_s:.4g}") if isinstance(budget, str) else budget


def _check_relative(value: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?x", value) or _multiple(value) <= 0:
        raise ValueError(f"{value!r} is not a budget; give seconds (0.5) or a multiple of one branch without speculation (1.5x)")
    return value


RelativeBudget = Annotated[str, AfterValidator(_check_relative)]


class SpecError(Exception):
    """A spec that cannot run. The message is one line: where, what, and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_model_name(name: str) -> str:
    """Accept demo models, existing local folders and hub ids; reject a path that is not there."""
    if demo_models.is_demo_model(name):
        return name
    looks_like_path = name.startswith(("/", ".", "~")) or Path(name).exists() or not _HUB_ID.match(name)
    if looks_like_path and not Path(name).expanduser().is_dir():
        demo = ", ".join(demo_models.DEMO_MODELS)
        raise ValueError(f"model folder {name!r} does not exist; give an existing local folder, a hub id (org/name) or one of {demo}")
    return name


ModelName = Annotated[str, Field(min_length=1)]


class BenchmarkSpec(_Strict):
    name: ProblemSetName
    n_problems: int | None = Field(default=None, ge=1)
    seed: int = 0
    path: str | None = None  # JSONL file for math500 / gsm8k / jsonl
    problem_field: str = "problem"
    answer_field: str = "answer"

    @model_validator(mode="after")
    def _check(self) -> BenchmarkSpec:
        if self.name == "arith" and self.n_problems is None:
            raise ValueError("arith needs n_problems (how many problems to generate), e.g. n_problems: 64")
        if self.name != "arith":
            if self.path is None:
                raise ValueError(f"{self.name} needs path: a JSONL file of problems")
            if not Path(self.path).expanduser().is_file():
                raise ValueError(f"problem file {self.path!r} does not exist; fix benchmark.path")
        return self


class SamplingSpec(_Strict):
    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=96, ge=1)


class SpeculativeSpec(_Strict):
    method: SpeculativeMethod
    model: ModelName | None = None
    num_speculative_tokens: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)

    @field_validator("num_speculative_tokens", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @model_validator(mode="after")
    def _check(self) -> SpeculativeSpec:
        if self.method in METHODS_WITH_MODEL and self.model is None:
            raise ValueError(f"method {self.method} needs model: the draft/head model to speculate with")
        if self.method == "ngram" and self.model is not None:
            raise ValueError("method ngram drafts from the prompt and takes no model; remove model")
        return self


class SearchSpace(_Strict):
    branches: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    speculative: list[Literal["none"] | SpeculativeSpec] = Field(default_factory=lambda: [NONE], min_length=1)
    aggregator: list[AggregatorName] = Field(default_factory=lambda: ["majority"], min_length=1)
    # Outcome reward models that score each branch; `none` for rules that need no verifier.
    verifier: list[ModelName] = Field(default_factory=lambda: [NONE], min_length=1)
    # Optional dimensions; when absent, `sampling` fixes them.
    temperature: list[Annotated[float, Field(ge=0)]] | None = Field(default=None, min_length=1)
    top_p: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(default=None, min_length=1)

    @field_validator("verifier")
    @classmethod
    def _verifiers_exist(cls, value: list[str]) -> list[str]:
        return [v if v == NONE else check_model_name(v) for v in value]

    @field_validator("speculative")
    @classmethod
    def _baseline_for_speculation(cls, value: list[Any]) -> list[Any]:
        if NONE not in value and value:
            raise ValueError(
                "add none: every speculative config is checked against the same sampling without speculation"
            )
        return value

    @model_validator(mode="after")
    def _pairable(self) -> SearchSpace:
        has_verifier = any(v != NONE for v in self.verifier)
        verifier_rules = [name for name, rule in RULES.items() if rule.needs_verifier]
        if any(a in verifier_rules for a in self.aggregator) and not has_verifier:
            raise ValueError(f"{' and '.join(verifier_rules)} need a verifier; add one, e.g. verifier: [none, demo:verifier]")
        if has_verifier and not any(a in verifier_rules for a in self.aggregator):
            raise ValueError(f"a verifier is only used by {' or '.join(verifier_rules)}; add one to aggregator")
        return self

    def choices(self) -> dict[str, list[Any]]:
        """Each search dimension and its choices, as Optuna categorical parameters.

        Aggregator and verifier are one dimension of their valid pairs (verifier rules with a verifier,
        the others without), so that every point of the space is a config.
        """
        choices: dict[str, list[Any]] = {
            "branches": sorted(set(self.branches)),
            "speculative": list(dict.fromkeys(spec_label for spec_label, _ in self._speculative_options())),
            AGGREGATOR_VERIFIER: list(self._pairs()),
        }
        for name in ("temperature", "top_p"):
            if getattr(self, name) is not None:
                choices[name] = sorted(set(getattr(self, name)))
        return choices

    def points(self) -> list[dict[str, Any]]:
        """Every point of the search space (Optuna's params), each a distinct config."""
        choices = self.choices()
        return [dict(zip(choices, point)) for point in itertools.product(*choices.values())]

    def _pairs(self) -> dict[str, tuple[str, str | None]]:
        """Label -> (aggregator, verifier or None), for the pairs that score nothing in vain."""
        pairs: dict[str, tuple[str, str | None]] = {}
        for aggregator in dict.fromkeys(self.aggregator):
            for verifier in (None if v == NONE else v for v in dict.fromkeys(self.verifier)):
                if RULES[aggregator].needs_verifier == (verifier is not None):
                    pairs[_pair_label(aggregator, verifier)] = (aggregator, verifier)
        return pairs

    def pair(self, label: str) -> tuple[str, str | None]:
        """The aggregator and verifier (None: no verifier) of an aggregator_verifier choice."""
        return self._pairs()[label]

    def drafts(self) -> list[list[str]]:
        """Each speculative option's choices (labels of the speculative dimension), by increasing draft length."""
        drafts: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
        for label, option in self._speculative_options():
            if option is not None:
                drafts.setdefault((option["method"], option["model"]), []).append((option["k"], label))
        return [[label for _, label in sorted(set(lengths))] for lengths in drafts.values()]

    def _speculative_options(self) -> list[tuple[str, dict[str, Any] | None]]:
        options: list[tuple[str, dict[str, Any] | None]] = []
        for entry in self.speculative:
            if entry == NONE:
                options.append((NONE, None))
                continue
            for k in entry.num_speculative_tokens:
                model = f":{entry.model}" if entry.model else ""
                options.append(
                    (f"{entry.method}{model}:k={k}", {"method": entry.method, "model": entry.model, "k": k})
                )
        return options

    def speculative_option(self, label: str) -> dict[str, Any] | None:
        return dict(self._speculative_options())[label]

    def params_for(self, config: TTSConfig) -> dict[str, Any]:
        """The point of the search space (Optuna's params) that `config` is; config_from_params' inverse."""
        label = NONE
        if config.speculative_method is not None:
            model = f":{config.draft_model}" if config.draft_model else ""
            label = f"{config.speculative_method}{model}:k={config.num_speculative_tokens}"
        params: dict[str, Any] = {
            "branches": config.branches,
            "speculative": label,
            AGGREGATOR_VERIFIER: _pair_label(config.aggregator, config.verifier),
        }
        for name in ("temperature", "top_p"):
            if getattr(self, name) is not None:
                params[name] = getattr(config, name)
        return params

    def baselines(self, force: bool = False) -> list[dict[str, Any]]:
        """The params without speculation, one per sampling setting, that speculative configs are tested against.

        Most branches: the largest sample per problem for the test (and a frontier candidate anyway).
        Empty when the space holds no speculation, unless forced.
        """
        choices = self.choices()
        if choices["speculative"] == [NONE] and not force:
            return []
        sampling = {name: choices[name] for name in ("temperature", "top_p") if name in choices}
        base = {"branches": max(choices["branches"]), "speculative": NONE, AGGREGATOR_VERIFIER: choices[AGGREGATOR_VERIFIER][0]}
        return [{**base, **dict(zip(sampling, point))} for point in itertools.product(*sampling.values())]


class WorkersSpec(_Strict):
    count: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0, ge=0)
    # Engines kept alive per worker, least recently used evicted first: an engine
    # holds its KV cache (about 2 GB even for the demo model on CPU).
    engines_per_worker: int = Field(default=2, ge=1)


class EngineSpec(_Strict):
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)  # None: the model's own maximum
    kv_cache_gib: int = Field(default=1, ge=1)  # CPU builds only (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)  # GPU builds only
    enforce_eager: bool = False

    def key_for(self, model: str, generation: Generation) -> EngineKey:
        """The engine that generates a generation's (or a config's) branches."""
        return EngineKey(
            model=model,
            speculative_method=generation.speculative_method,
            draft_model=generation.draft_model,
            num_speculative_tokens=generation.num_speculative_tokens,
            dtype=self.dtype,
            tensor_parallel_size=self.tensor_parallel_size,
            max_model_len=self.max_model_len,
        )

    def serve_config(self, key: EngineKey, name: Callable[[str], str] = str) -> dict[str, Any]:
        """`vllm serve --config` keys (its YAML spells them like the flags) that serve engine `key`.

        What latts' workers serve and what `latts export` writes; `name` maps model names to what
        vLLM loads (demo names to their folders).
        """
        config: dict[str, Any] = {"model": name(key.model), "dtype": key.dtype, "tensor-parallel-size": key.tensor_parallel_size}
        if key.max_model_len is not None:  # otherwise vLLM takes the model's own maximum
            config["max-model-len"] = key.max_model_len
        if key.runner != "generate":
            config["runner"] = key.runner
        speculative = key.speculative_config()
        if speculative is not None:
            if "model" in speculative:
                speculative["model"] = name(speculative["model"])
            config["speculative-config"] = speculative
        config["gpu-memory-utilization"] = self.gpu_memory_utilization  # GPU builds only
        if self.enforce_eager:
            config["enforce-eager"] = True
        return config

    def verifier_key(self, verifier: str) -> EngineKey:
        """The engine that scores branches with `verifier` (vLLM's pooling runner)."""
        return EngineKey(verifier, None, None, None, self.dtype, self.tensor_parallel_size, self.max_model_len, "pooling")


class AggregationSpec(_Strict):
    """Parameters of the aggregation rules; their defaults live in the rule registry."""

    window: int = Field(default=PARAMETER_DEFAULTS["window"], ge=1)  # weighted_min_window, in tokens
    tail: int = Field(default=PARAMETER_DEFAULTS["tail"], ge=1)  # weighted_tail: last K tokens


class RaceSpec(_Strict):
    """At the end of `tune` (and in `latts confirm`), each budget's finalists are timed again."""

    finalists: int = Field(default=3, ge=0)  # per budget, configs sharing samples counting once; 0 switches racing off
    rounds: int = Field(default=3, ge=1)  # interleaved: every finalist once per round


class StudySpec(_Strict):
    # Fields that change what a measurement means: a study cannot change them once it has trials.
    MEASUREMENT_FIELDS: ClassVar[tuple[str, ...]] = (
        "hardware", "model", "benchmark", "sampling", "search_space", "aggregation", "engine", "concurrency", "seed",
        "sample_pool", "latency_probes",
    )

    study: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    hardware: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    model: ModelName
    benchmark: BenchmarkSpec
    sampling: SamplingSpec = SamplingSpec()
    search_space: SearchSpace
    aggregation: AggregationSpec = AggregationSpec()
    # Seconds, or multiples of the single-branch latency without speculation ("1.5x"), measured first.
    budgets_s: list[Annotated[float, Field(gt=0)] | RelativeBudget] = Field(min_length=1)
    latency_statistic: LatencyStatistic = "mean"
    sampler: SamplerName = "nsga2"
    population_size: int = Field(default=8, ge=2)  # NSGA-II generation size
    n_trials: int = Field(default=24, ge=1)
    seed: int = 0
    workers: WorkersSpec = WorkersSpec()
    engine: EngineSpec = EngineSpec()
    concurrency: int = Field(default=1, ge=1)
    # Accuracy from the sample pool (every branch of the same model, sampling and problem, from any
    # trial or study), latency timed on `latency_probes` problems; false: every config on every problem.
    sample_pool: bool = True
    latency_probes: int = Field(default=8, ge=1)
    # The probes timed this many times over, back to back after one warm pass; the latency pools
    # them all. On a shared machine one timing varies by itself (12% here, 1/sqrt(rounds) with more).
    latency_rounds: int = Field(default=1, ge=1)
    race: RaceSpec = RaceSpec()
    trial_timeout_s: float = Field(default=1800, gt=0)
    storage: str | None = None

    @field_serializer("storage")
    def _storage_without_password(self, value: str | None) -> str | None:
        # A dumped spec is stored with its study (and read back by anyone who reads the database).
        return redact(value) if value else value

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str) -> str:
        return check_model_name(value)

    @model_validator(mode="after")
    def _room_for_verifier(self) -> StudySpec:
        if any(v != NONE for v in self.search_space.verifier) and self.workers.engines_per_worker < 2:
            raise ValueError("workers.engines_per_worker must be at least 2 to hold a generator and a verifier")
        return self

    @field_validator("budgets_s")
    @classmethod
    def _sorted_budgets(cls, value: list[float | str]) -> list[float | str]:
        absolute = sorted({b for b in value if not isinstance(b, str)})
        relative = sorted(set(b for b in value if isinstance(b, str)), key=_multiple)
        return [*absolute, *relative]

    @model_validator(mode="after")
    def _reference_for_relative_budgets(self) -> StudySpec:
        if self.relative_budgets and (1 not in self.search_space.branches or NONE not in self.search_space.speculative):
            raise ValueError(
                "relative budgets (like 1.5x) are multiples of one branch without speculation: "
                "add 1 to search_space.branches and none to search_space.speculative"
            )
        return self

    @property
    def relative_budgets(self) -> bool:
        return any(isinstance(b, str) for b in self.budgets_s)

    def reference_params(self) -> dict[str, Any]:
        """The config relative budgets are multiples of: one branch, no speculation."""
        return {**self.search_space.baselines(force=True)[0], "branches": 1}

    def resolve_budgets(self, reference_s: float) -> list[float]:
        """Budgets in seconds, given the reference config's latency statistic."""
        return sorted({_seconds(b, reference_s) for b in self.budgets_s})

    def budget_ranges(self, reference_s: float, reference_range: tuple[float, float]) -> dict[float, tuple[float, float]]:
        """Where each budget (as resolve_budgets gives it) may lie: a relative one moves with its
        reference's latency over `reference_range`; an absolute one stays put."""
        ranges: dict[float, tuple[float, float]] = {}
        for b in self.budgets_s:
            point = _seconds(b, reference_s)
            low, high = (_multiple(b) * reference_range[0], _multiple(b) * reference_range[1]) if isinstance(b, str) else (b, b)
            known = ranges.get(point, (point, point))
            ranges[point] = (min(low, point, known[0]), max(high, point, known[1]))
        return ranges

    def probes(self, n_problems: int) -> list[int]:
        """Indices of the problems whose latency each generation measures (all without the pool)."""
        if not self.sample_pool or self.latency_probes >= n_problems:
            return list(range(n_problems))
        return sorted(random.Random(self.seed).sample(range(n_problems), self.latency_probes))

    def check_resumable(self, stored: dict[str, Any] | None) -> None:
        """Refuse to resume a study whose stored spec measured something else.

        The stored spec is validated first, so fields added since it was written take their
        defaults and do not count as changes.
        """
        if stored is None:
            return
        try:
            before = StudySpec.model_validate(stored)
        except ValidationError as exc:
            where = _error_location(exc.errors()[0]["loc"])
            raise SpecError(
                f"study '{self.study}' was stored with a spec this version cannot read ({where}); pick a new `study:` name"
            ) from None
        for name in self.MEASUREMENT_FIELDS:
            if getattr(before, name) != getattr(self, name):
                raise SpecError(
                    f"study '{self.study}' already exists with a different {name}; keep its spec or pick a new `study:` name"
                )

    def config_from_params(self, params: dict[str, Any]) -> TTSConfig:
        """Turn one point of the search space (Optuna's params) into a TTS config."""
        speculative = self.search_space.speculative_option(params["speculative"])
        aggregator, verifier = self.search_space.pair(params[AGGREGATOR_VERIFIER])
        return TTSConfig(
            branches=int(params["branches"]),
            aggregator=aggregator,
            speculative_method=speculative["method"] if speculative else None,
            draft_model=speculative["model"] if speculative else None,
            num_speculative_tokens=speculative["k"] if speculative else None,
            verifier=verifier,
            temperature=params.get("temperature", self.sampling.temperature),
            top_p=params.get("top_p", self.sampling.top_p),
            max_tokens=self.sampling.max_tokens,
        )


def _pair_label(aggregator: str, verifier: str | None) -> str:
    return aggregator if verifier is None else f"{aggregator}+{verifier}"


def _error_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif isinstance(item, str) and not item.startswith(("literal[", "function-", "constrained-")) and item not in ("SpeculativeSpec", "str"):
            parts.append(item)
    return ".".join(parts)


def parse_spec(data: Any, source: str = "spec") -> StudySpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping of fields (study, model, benchmark, ...)")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        # Report the first problem only: one line, with the field's path and pydantic's reason.
        errors = exc.errors()
        # In a union (`none` or a mapping, seconds or "1.5x") latts' own complaint is the useful one.
        ours = [e for e in errors if e["type"] == "value_error"]
        error = next((e for e in ours or errors if not any(str(p).startswith("literal[") for p in e["loc"])), errors[0])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling against the README's spec format"
        elif error["type"] == "missing":
            message = "required field is missing; add it (see the README's spec format)"
        where = _error_location(error["loc"])
        raise SpecError(f"{source}: {where + ': ' if where else ''}{message}") from None


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: malformed YAML{where}: {problem}; fix the YAML syntax") from None
    return parse_spec(data, source=str(path))
