"""A config's accuracy and latency, computed from its generation's stored branches (and the pool).

Runs in the controller; pure functions of stored records. Generation happens once per generation;
every aggregator of the study is scored from the same branches here, search-and-learn style.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

from latts.aggregation import aggregate
from latts.aggregation.estimators import problem_accuracy
from latts.core.records import Branch, Generation, LatencyStatistic, TimedProblem, TrialNumbers, TTSConfig
from latts.core.statistics import bootstrap_mean_interval, latency_intervals, latency_stats, wilson_interval
from latts.problems import Problem, grade


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def pool_key(model: str, dtype: str, generation: Generation) -> str:
    """Which pool a generation's branches join: answers depend on the model and sampling, not on the
    hardware or the engine's speculation (lossless engines only join)."""
    sampling = {"temperature": generation.temperature, "top_p": generation.top_p, "max_tokens": generation.max_tokens}
    return json.dumps({"model": model, "dtype": dtype, **sampling}, sort_keys=True)


def stable_seed(*parts: object) -> int:
    """A sampling seed from parts (the same parts, the same seed, on every machine and run)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "big")


@functools.lru_cache(maxsize=1 << 16)
def _grade(answer: str, reference: str) -> bool:
    return grade(answer, reference)


def _correct(answers: Sequence[str | None], reference: str) -> dict[str, bool]:
    return {a: _grade(a, reference) for a in answers if a is not None}


def latencies(config: TTSConfig, timed: Sequence[TimedProblem]) -> list[float]:
    """Each timed problem's latency for this config: generation plus its aggregator's own time."""
    return [p.latency_s + p.aggregation_s[config.aggregator] for p in timed]


def round_latencies(config: TTSConfig, timed: Sequence[TimedProblem], statistic: LatencyStatistic) -> list[float]:
    """The latency statistic of each timing round on its own (every round times the same problems)."""
    rounds = sorted({p.round for p in timed})
    return [latency_stats(latencies(config, [p for p in timed if p.round == r])).get(statistic) for r in rounds]


def problem_accuracies(
    config: TTSConfig,
    timed: Sequence[TimedProblem],
    problems: Sequence[Problem],
    parameters: Mapping[str, int],
    pool: Mapping[int, Sequence[Branch]] | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """Each problem's accuracy for this config: from the pool (every problem), else 0 or 1 on each timed problem.

    From the pool, the estimated chance that `config.branches` fresh branches aggregate to a correct
    answer (latts.aggregation.estimators); measured, whether the generation's own branches did (its
    first timing only: a race times the same branches again).
    """
    if pool is None:
        measured = {}
        for p in timed:
            if p.round == 0:
                answer = aggregate(config.aggregator, p.branches, parameters)
                measured[p.index] = float(answer is not None and _grade(answer, problems[p.index].answer))
        return measured
    return {
        index: problem_accuracy(
            samples,
            _correct([s.answer for s in samples], problems[index].answer),
            config.branches,
            config.aggregator,
            parameters,
            # Seeded by what decides the answers: a lossless speculative config and its target-alone
            # twin draw the same subsets, so their equal accuracy is estimated equal (faster wins).
            np.random.default_rng(stable_seed(seed, index, config.without_speculation().key())),
        )
        for index, samples in sorted(pool.items())
    }


def evaluate(config: TTSConfig, timed: Sequence[TimedProblem], per_problem: Mapping[int, float], from_pool: bool, seed: int = 0) -> TrialNumbers:
    """A config's numbers from its problems' accuracies (`problem_accuracies`) and its timings.

    Pool accuracy is the mean of the problems' estimates with a 95% bootstrap interval over
    problems; measured accuracy is the share answered correctly, with a Wilson interval. Latency
    is over every timing.
    """
    seconds = latencies(config, timed)
    latency, latency_ci = latency_stats(seconds), latency_intervals(seconds, seed=seed)
    n_timed = len({p.index for p in timed})
    accuracies = list(per_problem.values())
    n, accuracy = len(accuracies), float(np.mean(accuracies))
    if not from_pool:
        right = round(accuracy * n)
        return TrialNumbers(accuracy, wilson_interval(right, n), "measured", n, latency, latency_ci, n_timed)
    interval = bootstrap_mean_interval(accuracies, seed=seed)
    return TrialNumbers(accuracy, interval, "pool", n, latency, latency_ci, n_timed)
