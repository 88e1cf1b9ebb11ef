"""Small studies written straight through the Repository, with known numbers, and fake workers that
answer the controller at once: fast tests need no engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from latts.core.records import Branch, FilledProblem, GenerationPlan, GenerationResult, TimedProblem, TTSConfig
from latts.core.spec import SamplingSpec, parse_spec
from latts.optimizer.evaluation import evaluate, problem_accuracies
from latts.problems import Problem
from latts.storage import Repository
from latts.workers.pool import Finished


def config(branches: int, aggregator: str = "majority", **changes) -> TTSConfig:
    """A config with the spec's default sampling settings."""
    return TTSConfig(branches=branches, aggregator=aggregator, **SamplingSpec().model_dump(), **changes)


@dataclass(frozen=True)
class HandTrial:
    config: TTSConfig
    latencies: tuple[float, ...] = ()  # one per problem
    correct: tuple[bool, ...] = ()
    fail_reason: str | None = None  # set: the trial is stored FAILED


def spec_dict(name: str, model: str, **changes) -> dict:
    spec = {
        "study": name,
        "hardware": "cpu-2core",
        "model": model,
        "benchmark": {"name": "arith", "n_problems": 4, "seed": 0},
        "search_space": {
            "branches": [1, 4, 8],
            "speculative": ["none", {"method": "ngram", "num_speculative_tokens": [2, 4]}],
            "aggregator": ["majority", "weighted_mean_logprob"],
        },
        "budgets_s": [0.15, 0.5, 2.0],
        "engine": {"dtype": "float32", "max_model_len": 384, "tensor_parallel_size": 1},
        **changes,
    }
    return parse_spec(spec).model_dump(mode="json")


NGRAM4 = {"speculative_method": "ngram", "num_speculative_tokens": 4}


def default_trials(draft: str) -> tuple[HandTrial, ...]:
    """Known numbers (mean latency, accuracy): the frontier is #0 (0.1 s, 25%), #1 (0.3 s, 50%), #3 (1.0 s, 100%)."""
    draft2 = {"speculative_method": "draft_model", "draft_model": draft, "num_speculative_tokens": 2}
    return (
        HandTrial(config(1, "majority"), (0.1, 0.1, 0.1, 0.1), (True, False, False, False)),
        HandTrial(config(4, "majority", **NGRAM4), (0.2, 0.4, 0.3, 0.3), (True, True, False, False)),
        HandTrial(config(4, "weighted_mean_logprob"), (0.5, 0.7, 0.6, 0.6), (True, True, False, False)),
        HandTrial(config(8, "weighted_mean_logprob", **draft2), (0.9, 1.1, 1.0, 1.0), (True,) * 4),
        HandTrial(config(8, "majority", **NGRAM4), fail_reason="engine out of memory"),
    )


def _result(trial: HandTrial) -> GenerationResult:
    """What a worker would have returned: every problem timed, all branches agreeing on the answer."""
    timed = [
        TimedProblem(
            index=i,
            branches=tuple(
                Branch(text="= 42", answer="42" if ok else "41", n_tokens=3, token_logprobs=(-0.1, -0.2, -0.3))
                for _ in range(trial.config.branches)
            ),
            latency_s=latency,
            aggregation_s={trial.config.aggregator: 0.0},
        )
        for i, (latency, ok) in enumerate(zip(trial.latencies, trial.correct, strict=True))
    ]
    spec = trial.config.speculative_method is not None
    return GenerationResult(
        timed=timed,
        worker="w0",
        engine_start_s=1.0,
        warmup_s=0.1,
        generated_tokens=3 * trial.config.branches * len(timed),
        drafted_tokens=40 if spec else None,
        accepted_tokens=20 if spec else None,
        num_drafts=10 if spec else None,
    )


def model_folders(folder: Path) -> tuple[str, str]:
    """Stand-in target and draft model folders: export only names them, nothing loads them."""
    target, draft = folder / "target-model", folder / "draft-model"
    target.mkdir(exist_ok=True)
    draft.mkdir(exist_ok=True)
    return str(target), str(draft)


def make_study(url: str, folder: Path, name: str = "hand", trials: tuple[HandTrial, ...] | None = None, **spec_changes) -> Repository:
    """A study in `url` with `trials` (default: default_trials), its models stand-in folders under `folder`."""
    target, draft = model_folders(folder)
    repo = Repository(url)
    spec = spec_dict(name, target, **spec_changes)
    repo.ensure_hardware(spec["hardware"], {"cpu_count": 2, "gpus": []})
    repo.ensure_study(name, spec["hardware"], spec["model"], spec["benchmark"]["name"], spec)
    repo.set_budgets(name, spec["budgets_s"])
    store_trials(repo, name, trials if trials is not None else default_trials(draft))
    return repo


def store_trials(repo: Repository, study: str, trials: tuple[HandTrial, ...]) -> None:
    """Trials 0, 1, ... of an existing study, as the controller would have stored them (accuracy measured)."""
    for number, trial in enumerate(trials):
        generation_id, trial_id = repo.claim(study, number, trial.config, None)
        if trial.fail_reason:
            repo.fail_generation(generation_id, trial.fail_reason)
            repo.fail_trial(trial_id, trial.fail_reason)
            continue
        result = _result(trial)
        repo.finish_generation(generation_id, result)
        problems = [Problem(f"p{i}", f"Q{i}", "42") for i in range(len(result.timed))]
        repo.complete_trial(trial_id, evaluate(trial.config, result.timed, problem_accuracies(trial.config, result.timed, problems, {}), from_pool=False))


class ControllerDied(Exception):
    """Stands for a SIGKILL: the controller stops where it is, leaving what runs behind."""


class FakeWorkers:
    """Answers every plan at the next wait (a `slow` one at the wait after): each problem's branches
    all give one answer, right for the first `accuracy` share of the problems; every problem takes
    `latency` seconds. `fail` gives a generation's failure: its reason, or (reason, full text)."""

    def __init__(self, problems, count=1, landscape=None, fail=None, die_at_wait=None, slower_in_race=1.0, slow=None, takes_s=0.0):
        self.problems = problems
        self.takes_s = takes_s  # wall time of each wait with something running: controllers sharing a study overlap
        self.slower_in_race = slower_in_race  # the machine's drift: every latency timed in the race, times this
        self.count = count
        self.landscape = landscape or (lambda g: (0.5, 0.01 * g.branches))
        self.fail = fail or (lambda g: None)
        self.slow = slow or (lambda g: False)
        self.die_at_wait = die_at_wait  # raise ControllerDied at this call of wait (1 = the first)
        self.running: dict[int, GenerationPlan] = {}
        self.waited: dict[int, int] = {}  # generation id -> waits it has been running through
        self.submitted = []  # generations of the search
        self.raced = []  # generations timed again for the race
        self.waits = 0
        self.shut = False

    @property
    def idle(self) -> int:
        return self.count - len(self.running)

    def submit(self, generation_id, plan):
        assert self.idle > 0, "submitted to a busy worker"
        self.running[generation_id] = plan
        self.submitted.append(plan.generation)

    def wait(self, timeout_s=1.0):
        self.waits += 1
        if self.waits == self.die_at_wait:
            raise ControllerDied
        if self.running:
            time.sleep(self.takes_s)
        finished = []
        for generation_id, plan in list(self.running.items()):
            self.waited[generation_id] = self.waited.get(generation_id, 0) + 1
            if self.waited[generation_id] < (2 if self.slow(plan.generation) else 1):
                continue
            del self.running[generation_id]
            failure = self.fail(plan.generation)
            if failure is None:
                finished.append(Finished(generation_id, self._result(plan), None))
            else:
                reason, detail = failure if isinstance(failure, tuple) else (failure, None)
                finished.append(Finished(generation_id, None, reason, detail))
        return finished

    def run(self, generation_id, plan):
        self.raced.append(plan.generation)
        return Finished(generation_id, self._result(plan, self.slower_in_race), None)

    def detect_hardware(self):
        return {"cpu_count": 2, "gpus": []}

    def shutdown(self):
        self.shut = True

    def _branches(self, plan, index, n):
        accuracy, _ = self.landscape(plan.generation)
        answer = self.problems[index].answer if index < round(accuracy * len(self.problems)) else "-1"
        score = 0.5 if plan.generation.verifier else None
        return tuple(Branch(f"\\boxed{{{answer}}}", answer, 3, (-0.1, -0.2, -0.3), score) for _ in range(n))

    def _result(self, plan, slower=1.0):
        latency = self.landscape(plan.generation)[1] * slower
        n = plan.generation.branches
        timed = [
            TimedProblem(index, self._branches(plan, index, n), latency, {a: 0.0 for a in plan.aggregators}, round=r)
            for r in range(plan.rounds)
            for index, _ in plan.timed
        ]
        filled = [FilledProblem(index, seed, self._branches(plan, index, short)) for index, short, seed in plan.fill]
        scores = {sample_id: 0.5 for sample_id, _, _ in plan.score}
        return GenerationResult(timed, "fake-0", 0.0, 0.0, 3 * n * len(timed), filled=filled, scores=scores)
