"""Losslessness of speculative generations: each is tested against the sample pool of the same sampling.

Runs in the controller when a speculative generation completes, from stored branches only. A
speculative engine must sample the answers the target alone would; a wrong draft setup or an engine
bug (the CPU build's corrupted speculative sampling, latts.workers.vllm_cpu_fix) would otherwise
trade accuracy for speed without anyone noticing. Until it passes, its branches stay out of the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from latts.core.records import Branch, Losslessness, TimedProblem
from latts.core.statistics import answer_shift_p_value

# A speculative generation whose answer-shift p-value falls below this is lossy; an honest one is
# flagged this often (the test's false-alarm rate).
LOSSY_BELOW_P = 0.01


def check_against_pool(
    timed: Sequence[TimedProblem], pool: Mapping[int, Sequence[Branch]], seed: int, baseline_trial: int | None
) -> Losslessness:
    """The verdict on a speculative generation's timed branches against pooled samples of the same problems.

    The pool's samples come from engines without speculation (or already found lossless), with the
    same model and sampling. "untested" where the pool holds no sample of those problems.
    """
    shared = [p for p in timed if pool.get(p.index)]
    if not shared:
        return Losslessness("untested")
    p_value = answer_shift_p_value(
        [[s.answer for s in pool[p.index]] for p in shared], [[b.answer for b in p.branches] for p in shared], seed=seed
    )
    return Losslessness("lossy" if p_value < LOSSY_BELOW_P else "lossless", p_value, baseline_trial)
