"""Serving configs for a chosen trial: the engine side as a `vllm serve --config` YAML, the request
side (branches, sampling, aggregation) as JSON for the client that sends requests and aggregates."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal, get_args

import yaml

from latts.aggregation import RULES
from latts.core.records import EngineKey, LatencyStatistic, TrialSummary
from latts.core.spec import EngineSpec
from latts.demo.models import local_name

ExportFormat = Literal["vllm-yaml", "json"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)


def engine_key(spec: dict[str, Any], trial: TrialSummary) -> EngineKey:
    """The engine the trial ran on, from the study's stored spec (`StudySpec.model_dump(mode="json")`)."""
    return EngineSpec.model_validate(spec.get("engine", {})).key_for(spec["model"], trial.config)


def vllm_serve_config(spec: dict[str, Any], trial: TrialSummary) -> dict[str, Any]:
    """What latts' workers served for this trial; demo names become their cache folders."""
    return EngineSpec.model_validate(spec.get("engine", {})).serve_config(engine_key(spec, trial), local_name)


def request_settings(spec: dict[str, Any], trial: TrialSummary, budget_s: float, statistic: LatencyStatistic) -> dict[str, Any]:
    """What a client sends per problem and how it combines the answers, with what the trial measured."""
    config = trial.config
    request: dict[str, Any] = {
        "model": local_name(spec["model"]),  # vLLM's served model name defaults to this path
        "n": config.branches,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens,
    }
    if RULES[config.aggregator].needs_logprobs:
        request["logprobs"] = 0  # vLLM then returns each sampled token's own log-probability
    return {
        "study": trial.study,
        "trial": trial.number,
        "hardware": trial.hardware,
        "budget_s": budget_s,
        "statistic": statistic,
        "request": request,
        "aggregator": config.aggregator,
        "verifier": local_name(config.verifier) if config.verifier else None,
        "speculative_config": engine_key(spec, trial).speculative_config(),
        "measured": {
            "accuracy": trial.accuracy,
            "accuracy_ci": list(trial.accuracy_ci) if trial.accuracy_ci else None,
            "latency_s": asdict(trial.latency_s) if trial.latency_s else None,
            "n_problems": trial.n_problems,
            "mean_acceptance_length": trial.mean_acceptance_length,
        },
    }


def render(fmt: ExportFormat, spec: dict[str, Any], trial: TrialSummary, budget_s: float, statistic: LatencyStatistic) -> str:
    if fmt == "json":
        return json.dumps(request_settings(spec, trial, budget_s, statistic), indent=2) + "\n"
    if fmt != "vllm-yaml":
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if trial.latency_s is None or trial.accuracy is None:
        raise ValueError(f"trial {trial.number} of study {trial.study} has no measurements; export a completed trial")
    latency = trial.latency_s.get(statistic)
    header = (
        f"# latts export: study {trial.study}, trial {trial.number} ({trial.config.label()}) on {trial.hardware}\n"
        f"# accuracy {trial.accuracy:.1%}, {statistic} latency {latency:.3f} s within a budget of {budget_s:g} s\n"
        f"# serve: python -m vllm.entrypoints.openai.api_server --config FILE (or `vllm serve --config FILE` on GPU builds)\n"
        f"# request settings (n={trial.config.branches}, ...): latts export --format json\n"
    )
    return header + yaml.safe_dump(vllm_serve_config(spec, trial), sort_keys=False)
