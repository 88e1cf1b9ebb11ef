"""The study controller: Optuna ask/tell over the search space, trials dispatched to Ray workers.

One trial in flight per worker. Every result goes to storage before Optuna hears of it, so a
controller killed at any point loses at most the trials that were still running; the next
`latts tune` marks those failed and re-runs their configs.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState as OptunaState

from latts.core.records import TrialState, TrialSummary, TTSConfig
from latts.core.spec import SearchSpace, SpecError, StudySpec
from latts.optimizer.frontier import best_within
from latts.optimizer.losslessness import check_untested
from latts.problems import load_problems
from latts.storage import Repository
from latts.workers import hardware

optuna.logging.set_verbosity(optuna.logging.WARNING)

INTERRUPTED = "interrupted: the controller stopped before this trial finished; its config was re-run"
# The sampler has proposed only measured configs this many times in a row: the space is exhausted.
MAX_REPEATS = 200


@dataclass
class TuneState:
    """What the progress display shows; updated after every event."""

    target: int
    done: int = 0
    initial_done: int = 0  # finished before this run (resumed studies)
    failed: int = 0
    in_flight: int = 0
    started_at: float = field(default_factory=time.monotonic)
    best: dict[float, TrialSummary | None] = field(default_factory=dict)
    exhausted: bool = False


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=spec.seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed)
    # `grid` enqueues every point up front (see Controller._enqueue_grid); Optuna's GridSampler
    # calls Study.stop() when done, which the ask/tell interface does not allow.
    return optuna.samplers.RandomSampler(seed=spec.seed)


def config_key(config: TTSConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _statistic(spec: StudySpec, summary: TrialSummary) -> float:
    return summary.latency_s.get(spec.latency_statistic)


class Controller:
    def __init__(self, spec: StudySpec, repo: Repository, storage_url: str, n_trials: int | None = None) -> None:
        self.spec = spec
        self.repo = repo
        self.storage_url = storage_url
        self.state = TuneState(target=n_trials or spec.n_trials)
        self._distributions = {name: CategoricalDistribution(c) for name, c in spec.search_space.choices().items()}

    def run(self, ray_address: str | None, on_update: Callable[[TuneState], None] = lambda _: None) -> TuneState:
        spec = self.spec
        spec.check_resumable(self.repo.study_spec(spec.study))
        problems = load_problems(spec.benchmark)
        _init_ray(ray_address, spec)
        from latts.workers.pool import WorkerPool

        pool = WorkerPool(spec, problems)
        try:
            detected = pool.detect_hardware()
            recorded = self.repo.hardware(spec.hardware)
            differs = recorded and hardware.mismatch(recorded, detected)
            if differs:
                raise SpecError(
                    f"hardware: target '{spec.hardware}' was measured on another machine ({differs}); "
                    "name a new hardware target for these workers"
                )
            self.repo.ensure_hardware(spec.hardware, detected)
            self.repo.ensure_study(spec.study, spec.hardware, spec.model, spec.benchmark.name, spec.model_dump(mode="json"))
            study = optuna.create_study(
                study_name=spec.study,
                storage=optuna.storages.RDBStorage(self.storage_url),
                directions=["maximize", "minimize"],
                sampler=make_sampler(spec),
                load_if_exists=True,
            )
            fresh = not study.trials
            # Baselines first: every speculative config is tested against one (latts.optimizer.losslessness).
            for params in spec.search_space.baselines():
                study.enqueue_trial(params, skip_if_exists=True)
            if spec.sampler == "grid" and fresh:
                self._enqueue_grid(study)
            self._recover_interrupted(study)
            check_untested(self.repo, spec.study, spec.seed)  # a killed controller may have left some
            self._loop(study, pool, on_update)
        finally:
            pool.shutdown()
        return self.state

    def _enqueue_grid(self, study: optuna.Study) -> None:
        choices = self.spec.search_space.choices()
        for point in itertools.product(*choices.values()):
            params = dict(zip(choices, point))
            if SearchSpace.pairs(params):
                study.enqueue_trial(params, skip_if_exists=True)

    def _recover_interrupted(self, study: optuna.Study) -> None:
        """Trials a killed controller left running: failed in both stores, their configs queued again."""
        for trial in self.repo.running_trials(self.spec.study):
            self.repo.fail_trial(trial.id, INTERRUPTED)
        for trial in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            study.tell(trial.number, state=OptunaState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)

    def _loop(self, study: optuna.Study, pool, on_update: Callable[[TuneState], None]) -> None:
        spec, state = self.spec, self.state
        finished = [t for t in self.repo.trials(spec.study) if t.fail_reason != INTERRUPTED and t.state != TrialState.RUNNING]
        measured = {config_key(t.config): t for t in finished}
        state.done = state.initial_done = len(finished)
        state.failed = sum(t.state == TrialState.FAILED for t in finished)
        self._update_best()
        pending: dict[int, tuple[optuna.Trial, TTSConfig]] = {}
        waiting: dict[str, list[optuna.Trial]] = {}  # asked again while the same config is in flight
        repeats = 0
        on_update(state)
        while True:
            while pool.idle and not state.exhausted and state.done + len(pending) < state.target:
                trial = study.ask(self._distributions)
                config = spec.config_from_params(trial.params) if SearchSpace.pairs(trial.params) else None
                key = config_key(config) if config else None
                if config is None:  # e.g. best_of_n without a verifier: not a config
                    study.tell(trial, state=OptunaState.PRUNED)
                elif key in measured:  # measured already: answer Optuna from storage
                    self._tell(study, trial, measured[key])
                elif any(config_key(c) == key for _, c in pending.values()):
                    waiting.setdefault(key, []).append(trial)
                    continue
                else:
                    repeats = 0
                    trial_id = self.repo.start_trial(spec.study, trial.number, config)
                    pool.submit(trial_id, config, spec.engine.key_for(spec.model, config))
                    pending[trial_id] = (trial, config)
                    continue
                # Answered without spending a measurement; many in a row mean the space is spent.
                repeats += 1
                state.exhausted = repeats >= MAX_REPEATS
            state.in_flight = len(pending)
            on_update(state)
            if not pending:
                break
            for result in pool.wait(timeout_s=1.0):
                trial, config = pending.pop(result.trial_id)
                if result.result is not None:
                    self.repo.finish_trial(result.trial_id, result.result)
                    # This trial, or the speculative ones that waited for it as their baseline.
                    check_untested(self.repo, spec.study, spec.seed)
                    summary = self.repo.trial(result.trial_id)
                else:
                    summary = self.repo.fail_trial(result.trial_id, result.error or "unknown error")
                    state.failed += 1
                key = config_key(config)
                measured[key] = summary
                for same in [trial, *waiting.pop(key, [])]:
                    self._tell(study, same, summary)
                state.done += 1
                self._update_best()

    def _tell(self, study: optuna.Study, trial: optuna.Trial, summary: TrialSummary) -> None:
        if summary.state != TrialState.COMPLETE:
            study.tell(trial, state=OptunaState.FAIL)
            return
        latency = _statistic(self.spec, summary)
        # Feasible iff within the largest budget and not lossy (Optuna: constraint values <= 0 are satisfied).
        trial.set_constraint("latency_over_largest_budget_s", latency - max(self.spec.budgets_s))
        trial.set_constraint("lossy", float(summary.lossy))
        study.tell(trial, [summary.accuracy, latency])

    def _update_best(self) -> None:
        # From storage: a verdict that arrives later (a baseline finishing) can take a trial out.
        trials = self.repo.trials(self.spec.study)
        self.state.best = {b: best_within(trials, b, self.spec.latency_statistic) for b in self.spec.budgets_s}


def _init_ray(address: str | None, spec: StudySpec) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        return
    ray.init(
        num_cpus=max(len(os.sched_getaffinity(0)), spec.workers.count),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        # Ray's socket paths must stay short; a private folder per run keeps parallel runs apart.
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir=os.environ.get("LATTS_RAY_TMP", "/tmp")),
    )
