"""Losslessness of speculative configs: each is tested against the same sampling without speculation.

Runs in the controller after every stored trial, from stored branches only. A speculative config
must sample the answers the target alone would; a wrong draft setup or an engine bug (the CPU
build's corrupted speculative sampling, latts.workers.vllm_cpu_fix) would otherwise trade accuracy
for speed without anyone noticing.
"""

from __future__ import annotations

from collections.abc import Sequence

from latts.core.records import Losslessness, TrialState, TrialSummary
from latts.core.statistics import answer_shift_p_value
from latts.storage import Repository

# A speculative config whose answer-shift p-value falls below this is lossy; an honest one is
# flagged this often (the test's false-alarm rate).
LOSSY_BELOW_P = 0.01


def _sampling(trial: TrialSummary) -> tuple[float, float, int]:
    return (trial.config.temperature, trial.config.top_p, trial.config.max_tokens)


def baseline_for(trial: TrialSummary, trials: Sequence[TrialSummary]) -> TrialSummary | None:
    """The completed trial without speculation and with the same sampling that has the most branches."""
    candidates = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.config.speculative_method is None and _sampling(t) == _sampling(trial)
    ]
    return min(candidates, key=lambda t: (-t.config.branches, t.number), default=None)


def _answers(repo: Repository, trial: TrialSummary) -> dict[int, list[str | None]]:
    return {row.index: [b.answer for b in row.branches] for row in repo.problem_results(trial.id)}


def check_untested(repo: Repository, study: str, seed: int) -> list[TrialSummary]:
    """Test every completed speculative trial of `study` that has no verdict yet but has a baseline.

    Returns the trials it tested, with their new verdicts.
    """
    trials = repo.trials(study)
    tested = []
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial.lossless is None or trial.lossless.verdict != "untested":
            continue
        baseline = baseline_for(trial, trials)
        if baseline is None:
            continue
        base, candidate = _answers(repo, baseline), _answers(repo, trial)
        shared = sorted(base.keys() & candidate.keys())
        p_value = answer_shift_p_value([base[i] for i in shared], [candidate[i] for i in shared], seed=seed)
        verdict = "lossy" if p_value < LOSSY_BELOW_P else "lossless"
        tested.append(repo.record_losslessness(trial.id, Losslessness(verdict, p_value, baseline.number)))
    return tested
