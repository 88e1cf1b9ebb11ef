"""The study controller: Optuna ask/tell over the search space, generations dispatched to the workers.

Optuna is offered only valid configs (aggregator and verifier as one dimension of their valid
pairs), and each config is measured once: a proposal already measured or in flight is answered
from storage (user attribute `latts_repeat_of`) and followed by random unmeasured configs, so the
loop ends when every distinct config is measured and the study holds few repeats. With
`sampler: greedy` the greedy walks (latts.optimizer.greedy), and with `sampler: staged` the staged
search (latts.optimizer.staged), choose the configs instead of Optuna's sampler; Optuna still
records every trial.

Runs in the `latts tune` process. A config is a generation (branches, engine, sampling, verifier)
and an aggregator; a generation runs once, on one worker, and every aggregator of the study is
then scored from its stored branches. With the sample pool (the default), a generation times only
the probe problems and its configs' accuracy comes from the pool, which it tops up where it holds
fewer samples than branches. Every result goes to storage before Optuna hears of it, so a
controller killed at any point loses at most the generations still running; the next `latts tune`
marks those failed and re-runs their configs.

Several controllers may share a study (one Optuna study and database): each leases the generations
it runs (latts.optimizer.leases), sees what the others measured and run, and the database's unique
indexes refuse a second measurement of a config that two of them start at once. A resume re-runs
only what dead controllers left; one stopped by SIGINT or SIGTERM hands its running configs back
itself.

A failed generation fails its trials with a one-line reason naming a file that holds its full text.
One that ran out of memory is not run again on the hardware target, with the same model and engine
settings, in this study or any other (latts.core.failures); its configs are answered failed.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState as OptunaState

from latts.aggregation import RULES
from latts.core.failures import OUT_OF_MEMORY, out_of_memory, ran_out_of_memory
from latts.core.records import (
    Branch,
    BudgetAnswer,
    Generation,
    GenerationPlan,
    GenerationResult,
    GenerationSummary,
    PoolDraw,
    PooledSample,
    TimedProblem,
    TrialNumbers,
    TrialState,
    TrialSummary,
    TTSConfig,
)
from latts.core.spec import EngineSpec, SpecError, StudySpec
from latts.demo.models import local_name
from latts.optimizer import greedy, leases, staged
from latts.optimizer.evaluation import evaluate, pool_key, problem_accuracies, prompt_sha, round_latencies, stable_seed
from latts.optimizer.frontier import best_within
from latts.optimizer.losslessness import check_against_pool
from latts.optimizer.racing import budget_answer, finalists
from latts.optimizer.workers import Workers, WorkersFactory
from latts.problems import Problem, load_problems
from latts.storage import Repository, StudyFull, Taken
from latts.workers import hardware
from latts.workers.cluster import init_ray
from latts.workers.pool import Finished

optuna.logging.set_verbosity(optuna.logging.WARNING)
logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the controller stopped before this trial finished; its config was re-run"
# User attribute of an Optuna trial answered from storage: the number of the trial that measured its config.
REPEAT_OF = "latts_repeat_of"
# User attribute of every Optuna trial a controller asks: the controller's name (leases.controller_name).
ASKED_BY = "latts_controller"
SYNC_S = 5.0  # how often a controller sharing its study reads what the others measured and run


@dataclass
class TuneState:
    """What the progress display shows; updated after every event."""

    target: int  # distinct configs to measure: n_trials, or every config of a smaller space
    asked: int = 0  # n_trials as given
    done: int = 0
    initial_done: int = 0  # finished before this run (resumed studies)
    failed: int = 0
    failed_now: int = 0  # trials that failed in this run (configs answered from an earlier failure not counted)
    in_flight: int = 0
    started_at: float = field(default_factory=time.monotonic)
    best: dict[float, TrialSummary | None] = field(default_factory=dict)
    greedy_stopped: bool = False  # `sampler: greedy` ended before the target: no budget's path can move on
    racing: bool = False  # the search is over; the finalists are being timed again
    # The search ended early, nothing raced: `max_failures` trials failed in this run, or the caller's
    # on_update set it (benchmarks/search_efficiency.py, once what it looks for is measured).
    stopped: bool = False

    @property
    def capped(self) -> str | None:
        """One line when n_trials asks for more configs than the search space holds."""
        if self.asked <= self.target:
            return None
        return f"n_trials {self.asked} is more than the {self.target} distinct configs of the search space; measuring each once"


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage. Controllers opening a fresh database at once race to create Optuna's tables
    (it does not lock); the loser finds them made, and opens it again."""
    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.DBAPIError as exc:
            attempt += 1
            raced = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)
            if not raced or attempt == 10:
                raise
            time.sleep(0.1 * attempt)


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # `grid` enqueues every point up front (see Controller._enqueue_grid); Optuna's GridSampler
    # calls Study.stop() when done, which the ask/tell interface does not allow. `greedy` and `staged`
    # enqueue each config they want (see Controller._propose); the sampler only answers the Optuna study.
    return optuna.samplers.RandomSampler(seed=seed)


@dataclass
class _InFlight:
    """A generation on a worker, and the asked configs (Optuna trial, latts trial id) waiting for it."""

    generation: Generation
    plan: GenerationPlan
    asked: list[tuple[optuna.Trial, TTSConfig, int]] = field(default_factory=list)
    repeats: list[tuple[optuna.Trial, str]] = field(default_factory=list)  # Optuna trials that asked again, config keys


class Controller:
    """Drives one study. `workers` starts what runs generations (default: Ray actors with vLLM engines);
    `sampler_seed` seeds the search apart from the spec's `seed`, which also seeds the sampling itself
    (benchmarks replaying one study under many search seeds). The search stops once `max_failures`
    trials have failed in this run; each failed generation's full reason goes to a file in
    `failure_logs` (without one, only its one-line reason is kept)."""

    def __init__(
        self,
        spec: StudySpec,
        repo: Repository,
        storage_url: str,
        n_trials: int | None = None,
        workers: WorkersFactory | None = None,
        sampler_seed: int | None = None,
        max_failures: int | None = None,
        failure_logs: Path | None = None,
    ) -> None:
        self.spec = spec
        self.repo = repo
        self.storage_url = storage_url
        self.max_failures = max_failures
        self.failure_logs = failure_logs
        self._no_memory: dict[str, str] = {}  # generation key -> the reason its configs fail without running
        self._workers = workers
        self._distributions = {name: CategoricalDistribution(c) for name, c in spec.search_space.choices().items()}
        points = spec.search_space.points()
        # Every distinct config of the space (its key -> its params), and the configs at each point of
        # the greedy lattice (branches, speculative choice).
        self._configs = {spec.config_from_params(p).key(): p for p in points}
        self._at_point: dict[greedy.Point, list[str]] = {}
        for key, params in self._configs.items():
            self._at_point.setdefault((params["branches"], params["speculative"]), []).append(key)
        self._lattice = greedy.Lattice(tuple(spec.search_space.choices()["branches"]), tuple(map(tuple, spec.search_space.drafts())))
        asked = n_trials or spec.n_trials
        self.state = TuneState(target=min(asked, len(self._configs)), asked=asked)
        self._sampler_seed = spec.seed if sampler_seed is None else sampler_seed
        self._random = random.Random(self._sampler_seed)
        self._repeats = 0  # Optuna trials of the study answered from storage
        self._owed = 0  # configs the controller picks at random before the sampler chooses again
        self._problems: list[Problem] = []
        self._shas: list[str] = []
        # Each pool as last read: its version, samples, and the accuracy estimates made on them.
        self._pools: dict[tuple[str, str | None], tuple[tuple, dict[str, list[PooledSample]], dict[str, dict[int, float]]]] = {}
        self.budgets: list[float] = []  # in seconds; relative ones join once the reference config is measured
        self._controller: tuple[int, str] | None = None  # this controller's id and name, while it runs
        self._elsewhere: dict[str, int] = {}  # configs other controllers of the study run now -> their trial numbers
        self._synced = 0.0  # when the others' work was last read (time.monotonic)
        self._sharing = False  # other controllers of the study were alive at the last read

    def run(self, ray_address: str | None, on_update: Callable[[TuneState], None] = lambda _: None) -> TuneState:
        spec = self.spec
        spec.check_resumable(self.repo.study_spec(spec.study))
        self._problems = load_problems(spec.benchmark)
        self._shas = [prompt_sha(p.prompt) for p in self._problems]
        pool = self._start_workers(ray_address)
        try:
            self.repo.ensure_hardware(spec.hardware, self._check_hardware(pool))
            self.repo.ensure_study(spec.study, spec.hardware, spec.model, spec.benchmark.name, spec.model_dump(mode="json"))
            with leases.held(self.repo, spec.study) as self._controller:
                study = optuna.create_study(
                    study_name=spec.study,
                    storage=optuna_storage(self.storage_url),
                    directions=["maximize", "minimize"],
                    sampler=make_sampler(spec, self._sampler_seed),
                    load_if_exists=True,
                )
                fresh = not study.trials
                # First the reference config of relative budgets, then the baselines: they fill the pool
                # that speculative generations are tested against.
                firsts = [spec.reference_params()] if spec.relative_budgets else []
                for params in firsts + spec.search_space.baselines():
                    study.enqueue_trial(params, skip_if_exists=True)
                if spec.sampler == "grid" and fresh:
                    self._enqueue_grid(study)
                self._recover_interrupted(study)
                try:
                    self._loop(study, pool, on_update)
                except KeyboardInterrupt:  # SIGINT or SIGTERM (see cli): hand the running configs back now
                    self._recover_interrupted(study, mine_too=True)
                    raise
                # The last controller of a shared study to end its search races the finalists: each marks
                # itself ended before looking, so at least one sees the others ended.
                self.repo.stop_controllers([self._controller[0]])
                last = not self.repo.active_controllers(spec.study)
                # A rerun that measured nothing new keeps the answers it has (`latts confirm` races again).
                measured_now = self.state.done > self.state.initial_done
                race_now = spec.race.finalists and (measured_now or not self.repo.budget_answers(spec.study))
                if last and race_now and not self.state.stopped:
                    self.state.racing = True
                    on_update(self.state)
                    self._race(pool)  # scores every trial on the pool as it is first
                elif last and measured_now and spec.sample_pool and not self.state.stopped:
                    # A trial scored early saw fewer pooled samples: configs that share them must compare equal.
                    self._refresh_numbers()
        finally:
            pool.shutdown()
        return self.state

    def confirm(self, ray_address: str | None) -> list[BudgetAnswer]:
        """Race each budget's finalists again (`latts confirm`): more timings, fresh answers."""
        self._problems = load_problems(self.spec.benchmark)
        self._shas = [prompt_sha(p.prompt) for p in self._problems]
        self._resolve_budgets(self.repo.trials(self.spec.study))
        pool = self._start_workers(ray_address)
        try:
            self._check_hardware(pool)
            return self._race(pool)
        finally:
            pool.shutdown()

    def _start_workers(self, ray_address: str | None) -> Workers:
        if self._workers is not None:
            return self._workers(self.spec, self._problems)
        init_ray(ray_address, self.spec)
        from latts.workers.pool import WorkerPool

        return WorkerPool(self.spec, self._problems)

    def _check_hardware(self, pool: Workers) -> dict:
        """What the workers run on; refused when the hardware target was measured on another machine."""
        detected = pool.detect_hardware()
        recorded = self.repo.hardware(self.spec.hardware)
        differs = recorded and hardware.mismatch(recorded, detected)
        if differs:
            raise SpecError(
                f"hardware: target '{self.spec.hardware}' was measured on another machine ({differs}); "
                "name a new hardware target for these workers"
            )
        return detected

    def _race(self, pool: Workers) -> list[BudgetAnswer]:
        """Time every budget's finalists again in interleaved rounds; store their new numbers and the answers.

        Relative budgets are settled first: their reference config is timed again as many rounds,
        just before the finalists, so that the budgets and the finalists' latencies are measured on
        the machine as it is now (one timing of the reference early in the search moved every
        relative budget by as much as the machine drifts: up to 50% between runs here). Even so the
        reference moves between its timing rounds (0.420 to 0.488 s over one quickstart run on a
        2-core EPYC, whose next runs put its mean 10% lower): each relative budget may lie anywhere
        its reference's fastest and slowest rounds put it, and the answer says so at that edge.
        """
        spec, statistic = self.spec, self.spec.latency_statistic
        # Every trial scored on the pool as it is now: one scored early saw fewer samples, and configs
        # sharing pooled samples must compare equal on accuracy.
        self._refresh_numbers()
        reference = self._reference_trial(self.repo.trials(spec.study)) if spec.relative_budgets else None
        ranges: dict[float, tuple[float, float]] = {}
        if reference is not None:
            self._time_again(pool, [reference.generation_id])
        trials = self.repo.trials(spec.study)
        if reference is not None:
            self._resolve_budgets(trials, settle=True)
            reference = self._reference_trial(trials)
            per_round = round_latencies(reference.config, self.repo.timed_problems(reference.generation_id), statistic)
            ranges = spec.budget_ranges(reference.latency_s.get(statistic), (min(per_round), max(per_round)))
        picks = {b: finalists(trials, b, statistic, spec.race.finalists, ranges.get(b)) for b in self.budgets}
        self._time_again(pool, sorted({t.generation_id for raced in picks.values() for t in raced}))
        trials = {t.number: t for t in self.repo.trials(spec.study)}
        answers = []
        for budget, raced in picks.items():
            refreshed = [trials[t.number] for t in raced]
            accuracies = {
                t.number: self._problem_accuracies(t.config, self.repo.timed_problems(t.generation_id), self._pool_for(t.config, t.generation_id))
                for t in refreshed
            }
            answers.append(budget_answer(budget, refreshed, accuracies, statistic, spec.race.rounds, spec.seed, ranges.get(budget)))
        self.repo.record_budget_answers(spec.study, answers)
        self._update_best()
        return answers

    def _time_again(self, pool: Workers, generations: list[int]) -> None:
        """Time `generations` again in the race's interleaved rounds; refresh the numbers of their trials."""
        if not generations:  # no budget has a config that fits
            return
        stored = {g.id: g for g in self.repo.generations(self.spec.study)}
        start = {gid: 1 + max(p.round for p in self.repo.timed_problems(gid)) for gid in generations}
        for offset in range(self.spec.race.rounds):
            # Rotate the order each round: no finalist always runs first, or right after an engine switch.
            for gid in generations[offset % len(generations):] + generations[: offset % len(generations)]:
                done = pool.run(gid, self._plan(stored[gid].generation, timing_only=True))
                if done.result is None:  # a worker that died mid-race costs that round's timing only
                    logger.warning("timing generation %d again failed: %s\n%s", gid, done.error, done.detail or "")
                else:
                    first = start[gid] + offset * self.spec.latency_rounds
                    self.repo.add_timing_round(gid, [replace(p, round=first + p.round) for p in done.result.timed])
        self._refresh_numbers(set(generations))

    def _refresh_numbers(self, generations: set[int] | None = None) -> None:
        """Compute the numbers of the study's complete trials (of `generations`, or all) again, from
        their stored timings and the pool as it is now."""
        for trial in self.repo.trials(self.spec.study, states=[TrialState.COMPLETE]):
            if generations is None or trial.generation_id in generations:
                self.repo.update_trial_numbers(trial.id, self._numbers(trial.config, trial.generation_id))

    def _enqueue_grid(self, study: optuna.Study) -> None:
        # Grouped by speculative choice (one engine each), so that each engine starts once whatever
        # engines_per_worker: in branch order, a space of 17 draft settings started 119 engines.
        order = {label: i for i, label in enumerate(self.spec.search_space.choices()["speculative"])}
        for params in sorted(self._configs.values(), key=lambda params: order[params["speculative"]]):
            study.enqueue_trial(params, skip_if_exists=True)

    def _recover_interrupted(self, study: optuna.Study, mine_too: bool = False) -> None:
        """What controllers no longer alive left running (this one's too when `mine_too`): failed in
        both stores, their configs queued again.

        Queued from latts' own rows, so that a study begun by an older release (other Optuna
        parameters) resumes too, and an Optuna trial that only waited for a config in flight is not.
        Each row is claimed by a conditional update: of two controllers recovering at once, one
        queues its config again.
        """
        study_name, (me, my_name) = self.spec.study, self._controller
        others = [c for c in self.repo.active_controllers(study_name) if c.id != me]
        found = leases.dead(others, datetime.now(UTC), socket.gethostname())
        self.repo.stop_controllers([c.id for c in found])
        alive = [c for c in others if c not in found]
        ids, names = {c.id for c in alive}, {c.name for c in alive}
        if not mine_too:
            ids.add(me)
            names.add(my_name)
        interrupted = self.repo.interrupt_running(study_name, INTERRUPTED, keep=ids)
        for trial in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
            asked_by = trial.user_attrs.get(ASKED_BY)
            # No name yet: just asked by a live controller, unless none is (or asked by an older release).
            if asked_by not in names and (asked_by is not None or not alive):
                study.tell(trial.number, state=OptunaState.FAIL)
        for config in dict.fromkeys(t.config for t in interrupted):
            study.enqueue_trial(self.spec.search_space.params_for(config), skip_if_exists=False)

    # ------------------------------------------------------------------ the loop

    def _loop(self, study: optuna.Study, pool: Workers, on_update: Callable[[TuneState], None]) -> None:
        """Ask for configs while workers are idle and configs are left to measure; store and tell what ends.

        Ends when the target is measured, or when every distinct config is measured or in flight and
        nothing runs any more: each ask either measures a new config or is answered once from storage.
        """
        spec, state = self.spec, self.state
        finished = [t for t in self.repo.trials(spec.study) if t.fail_reason != INTERRUPTED and t.state != TrialState.RUNNING]
        measured = {t.config.key(): t for t in finished}
        state.done = state.initial_done = len(measured)
        state.failed = sum(t.state == TrialState.FAILED for t in measured.values())
        self._repeats = sum(REPEAT_OF in t.user_attrs for t in study.get_trials(deepcopy=False))
        self._no_memory = self._out_of_memory_before()
        self._update_best()
        in_flight: dict[int, _InFlight] = {}  # generation id -> what waits for it
        while True:
            # Before proposing: the caller may end the search here (state.stopped) as results come in.
            on_update(state)
            self._sync(measured, set(in_flight))
            while pool.idle and state.done + state.in_flight + len(self._elsewhere) < state.target and not state.stopped:
                if self._sharing:  # what the others did since, before choosing what to start
                    self._sync(measured, set(in_flight))
                flying = {c.key(): (gid, t.number) for gid, f in in_flight.items() for t, c, _ in f.asked}
                if not self._propose(study, measured, flying):
                    break
                trial = study.ask(self._distributions)
                trial.set_user_attr(ASKED_BY, self._controller[1])
                config = spec.config_from_params(trial.params)
                key = config.key()
                if key in measured:  # measured already: answered from storage, once
                    trial.set_user_attr(REPEAT_OF, measured[key].number)
                    self._tell(study, trial, measured[key])
                    self._repeated()
                    continue
                if key in flying:  # running now: answered when it ends
                    gid, number = flying[key]
                    trial.set_user_attr(REPEAT_OF, number)
                    in_flight[gid].repeats.append((trial, key))
                    self._repeated()
                    continue
                try:
                    if key in self._elsewhere:
                        raise Taken(key)
                    self._start(study, trial, config, in_flight, measured, pool)
                except (Taken, StudyFull) as taken:  # another controller of the study runs it, or the rest
                    self._synced, self._sharing = 0.0, True
                    study.tell(trial, state=OptunaState.PRUNED)
                    self._repeated()
                    if isinstance(taken, StudyFull):
                        self._sync(measured, set(in_flight))
                        break
            if not in_flight:
                break
            for finished_generation in pool.wait(timeout_s=1.0):
                flight = in_flight.pop(finished_generation.generation_id)
                state.in_flight -= len(flight.asked)
                if finished_generation.result is None:
                    reason = self._failed(finished_generation, flight)
                    self.repo.fail_generation(finished_generation.generation_id, reason)
                    for trial, config, trial_id in flight.asked:
                        summary = self.repo.fail_trial(trial_id, reason)
                        measured[config.key()] = summary
                        self._tell(study, trial, summary)
                    state.failed += len(flight.asked)
                    state.failed_now += len(flight.asked)
                    state.done += len(flight.asked)
                else:
                    logger.info("generation %d finished", finished_generation.generation_id)
                    self._store(finished_generation.generation_id, flight, finished_generation.result)
                    summaries = self._score(study, flight.asked, finished_generation.generation_id, measured)
                    summaries += self._siblings(study, flight, finished_generation.generation_id, measured)
                    state.done += len(summaries)
                for trial, key in flight.repeats:
                    self._tell(study, trial, measured[key])
                self._update_best()
            if self.max_failures is not None and state.failed_now >= self.max_failures and not state.stopped:
                # What still runs is abandoned as a killed controller's would be: queued again for the next run.
                logger.warning("%d trials failed in this run (max_failures %d): stopping", state.failed_now, self.max_failures)
                state.stopped = True
                self._recover_interrupted(study, mine_too=True)
                state.in_flight = 0
                on_update(state)
                return
        state.greedy_stopped = spec.sampler == "greedy" and state.done < state.target

    def _start(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        config: TTSConfig,
        in_flight: dict[int, _InFlight],
        measured: dict[str, TrialSummary],
        pool: Workers,
    ) -> None:
        """Measure a config nobody measured: with its generation running here, from a stored one, or on a worker."""
        spec, state = self.spec, self.state
        running = {f.generation.key(): gid for gid, f in in_flight.items()}
        generation = config.generation()
        # Capped in the database only while other controllers share the study: alone, the loop's own count holds.
        cap = state.target if self._sharing else None
        if generation.key() in self._no_memory:  # it ran out of memory before: failed, not run again
            trial_id = self.repo.start_trial(spec.study, trial.number, config, None, cap)
            summary = self.repo.fail_trial(trial_id, self._no_memory[generation.key()])
            logger.info("trial %d (%s) not run: %s", trial.number, config.label(), summary.fail_reason)
            measured[config.key()] = summary
            self._tell(study, trial, summary)
            state.done += 1
            state.failed += 1
        elif generation.key() in running:  # another aggregator of a generation running now: wait for it
            gid = running[generation.key()]
            in_flight[gid].asked.append((trial, config, self.repo.start_trial(spec.study, trial.number, config, gid, cap)))
            state.in_flight += 1
        elif (done := self._completed_generation(generation)) is not None:
            # Another aggregator of a measured generation: scored from storage, no engine.
            trial_id = self.repo.start_trial(spec.study, trial.number, config, done.id, cap)
            state.done += len(self._score(study, [(trial, config, trial_id)], done.id, measured))
            self._update_best()
        else:
            gid, trial_id = self.repo.claim(spec.study, trial.number, config, self._controller[0], cap)
            flight = _InFlight(generation, self._plan(generation))
            flight.asked.append((trial, config, trial_id))
            in_flight[gid] = flight
            pool.submit(gid, flight.plan)
            logger.info("generation %d (trial %d, %s) submitted", gid, trial.number, config.label())
            state.in_flight += 1

    def _sync(self, measured: dict[str, TrialSummary], mine: set[int]) -> None:
        """What other controllers of the study measured joins `measured`, what they run now is
        `_elsewhere` (neither proposed nor counted twice). Read every SYNC_S, and before every
        proposal while others are alive."""
        if not self._sharing and time.monotonic() - self._synced < SYNC_S:
            return
        self._synced = time.monotonic()
        self._elsewhere = {}
        self._sharing = len(self.repo.active_controllers(self.spec.study)) > 1
        for t in self.repo.trials(self.spec.study):
            key = t.config.key()
            if t.state == TrialState.RUNNING and t.generation_id not in mine:
                self._elsewhere[key] = t.number
            elif t.state != TrialState.RUNNING and t.fail_reason != INTERRUPTED and key not in measured:
                measured[key] = t
                self.state.done += 1
                self.state.failed += t.state == TrialState.FAILED

    def _failed(self, finished: Finished, flight: _InFlight) -> str:
        """The one-line reason of a failed generation, marked when memory ran out, naming the file that
        holds its full text."""
        reason = finished.error or "unknown error"
        detail = finished.detail or reason
        if ran_out_of_memory(detail):
            reason = f"{OUT_OF_MEMORY}: {reason}"
            number = flight.asked[0][0].number
            self._no_memory[flight.generation.key()] = self._not_run_again(self.spec.study, number, reason)
        if self.failure_logs is None:
            logger.warning("generation %d failed: %s", finished.generation_id, reason)
            return reason
        path = self.failure_logs / f"generation-{finished.generation_id}.log"
        trials = ", ".join(f"#{trial.number} {config.label()}" for trial, config, _ in flight.asked)
        heading = (
            f"study {self.spec.study}, generation {finished.generation_id} (trials {trials}), "
            f"failed {datetime.now(UTC).isoformat(timespec='seconds')} on hardware target {self.spec.hardware}\n"
            f"reason: {reason}\n\n"
        )
        try:
            self.failure_logs.mkdir(parents=True, exist_ok=True)
            path.write_text(heading + detail + "\n")
        except OSError as exc:  # a full disk must not stop the study; the reason still names the problem
            reason = f"{reason} (full log not written: {exc.strerror})"
        else:
            reason = f"{reason} (full log: {path.resolve()})"
        logger.warning("generation %d failed: %s", finished.generation_id, reason)
        return reason

    def _not_run_again(self, study: str, number: int, reason: str) -> str:
        """The reason of a config whose generation ran out of memory as trial `number` of `study` did."""
        cause = reason.removeprefix(OUT_OF_MEMORY).removeprefix(": ")
        return f"{OUT_OF_MEMORY}: not run again, as {study}#{number} on {self.spec.hardware}: {cause}"

    def _out_of_memory_before(self) -> dict[str, str]:
        """Generations that ran out of memory on this hardware target with this model and engine
        settings, in any study: their key -> the reason their configs fail without running."""
        spec, found = self.spec, {}
        same: dict[str, bool] = {}  # study -> whether it has this model and these engine settings
        for trial in self.repo.trials(states=[TrialState.FAILED], hardware=spec.hardware):
            # Answered-from-memory copies have no generation: the original is cited instead.
            if not out_of_memory(trial.fail_reason) or trial.generation_id is None:
                continue
            if trial.study not in same:
                same[trial.study] = self._same_engines(self.repo.study_spec(trial.study) or {})
            if same[trial.study]:
                found.setdefault(trial.config.generation().key(), self._not_run_again(trial.study, trial.number, trial.fail_reason))
        return found

    def _same_engines(self, other: dict) -> bool:
        """Whether a stored spec has this study's model, engine settings and concurrency: what decides
        how much memory a generation needs."""
        try:
            engine = EngineSpec.model_validate(other.get("engine", {}))
        except ValueError:  # written by a release with other engine settings
            return False
        spec = self.spec
        return (other.get("model"), engine, other.get("concurrency", 1)) == (spec.model, spec.engine, spec.concurrency)

    def _propose(self, study: optuna.Study, measured: dict[str, TrialSummary], flying: dict[str, tuple[int, int]]) -> bool:
        """Whether to ask Optuna for a config now; queues the controller's own choice where the sampler
        does not choose: queued trials first (baselines, the reference, interrupted configs), then
        greedy's or staged's next config, or a random pick owed after a repeat."""
        unmeasured = [key for key in self._configs if key not in measured and key not in flying and key not in self._elsewhere]
        if not unmeasured:
            return False
        if study.get_trials(deepcopy=False, states=(OptunaState.WAITING,)):
            return True
        if self.spec.sampler in ("greedy", "staged"):
            pick = self._lattice_pick(measured, flying)
            if pick is None:  # waiting for configs in flight, or greedy's walks have stopped
                return False
        elif self._owed:
            pick = self._random.choice(unmeasured)
            self._owed -= 1
        else:
            return True
        study.enqueue_trial(self._configs[pick])
        return True

    def _repeated(self) -> None:
        """The sampler proposed a config measured or in flight. The next configs are random unmeasured
        ones, twice as many after each repeat, so a study holds at most about log2(configs) + 1
        repeats per run instead of asking again and again."""
        self._repeats += 1
        self._owed = 2 ** (self._repeats - 1)

    def _lattice_pick(self, measured: dict[str, TrialSummary], flying: dict[str, tuple[int, int]]) -> str | None:
        """The next config that greedy's walks or the staged search want measured (every config at a
        point measures the point)."""
        statistic = self.spec.latency_statistic
        outcomes = {
            point: [(measured[k].accuracy, measured[k].latency_s.get(statistic)) for k in keys if _usable(measured[k])]
            for point, keys in self._at_point.items()
            if all(k in measured for k in keys)
        }
        if self.spec.sampler == "greedy":
            wanted = greedy.walk(self._lattice, self.budgets, outcomes).wanted
        else:
            wanted = staged.plan(self._lattice, self.budgets, outcomes)
        busy = flying.keys() | self._elsewhere.keys()
        return next((k for point in wanted for k in self._at_point[point] if k not in measured and k not in busy), None)

    def _completed_generation(self, generation: Generation) -> GenerationSummary | None:
        key = generation.key()
        done = self.repo.generations(self.spec.study, states=[TrialState.COMPLETE])
        return next((g for g in done if g.generation.key() == key), None)

    # ------------------------------------------------------------------ planning and storing

    def _pool_key(self, generation: Generation) -> str:
        return pool_key(local_name(self.spec.model), self.spec.engine.dtype, generation)

    def _plan(self, generation: Generation, timing_only: bool = False) -> GenerationPlan:
        """Time the probes; top up the pool where it holds fewer samples than branches; score it for the verifier.

        The probes' seeds follow from the generation, so timing it again repeats the same work.
        """
        spec = self.spec
        probes = spec.probes(len(self._problems))
        seeds = [stable_seed(spec.seed, generation.key(), index) for index in probes]
        fill: list[tuple[int, int, int]] = []
        score: list[tuple[int, int, str]] = []
        if spec.sample_pool and not timing_only:
            pooled = self._pool(generation)
            # An engine without speculation adds its timed branches to the pool; a speculative one
            # only once it proved lossless, so its probes are topped up too.
            adds = {index: generation.branches for index in probes} if generation.speculative_method is None else {}
            for index, sha in enumerate(self._shas):
                have = len(pooled[sha])
                short = generation.branches - have - adds.get(index, 0)
                if short > 0:
                    fill.append((index, short, stable_seed("fill", self._pool_key(generation), sha, have)))
                if generation.verifier:
                    score += [(s.id, index, s.branch.text) for s in pooled[sha] if s.branch.verifier_score is None]
        fill_engine = generation.without_speculation()
        return GenerationPlan(
            generation=generation,
            engine=spec.engine.key_for(spec.model, generation),
            timed=tuple(zip(probes, seeds, strict=True)),
            rounds=spec.latency_rounds,
            fill=tuple(fill),
            fill_engine=spec.engine.key_for(spec.model, fill_engine),
            score=tuple(score),
            aggregators=tuple(self._aggregators(generation)),
            aggregation=spec.aggregation.model_dump(),
        )

    def _aggregators(self, generation: Generation) -> list[str]:
        """The study's aggregators that go with this generation's verifier (or its lack of one)."""
        return [a for a in self.spec.search_space.aggregator if RULES[a].needs_verifier == (generation.verifier is not None)]

    def _store(self, generation_id: int, flight: _InFlight, result: GenerationResult) -> None:
        """The generation's rows, then its branches into the pool: the fill at once, the timed ones
        once they are known to be lossless (at once without speculation)."""
        spec, generation = self.spec, flight.generation
        self.repo.finish_generation(generation_id, result)
        if not spec.sample_pool:
            return
        key = self._pool_key(generation)
        verifier = generation.verifier
        if result.scores and verifier:
            self.repo.add_pool_scores(verifier, result.scores)
        fill = [PoolDraw(self._shas[p.index], p.seed, i, b) for p in result.filled for i, b in enumerate(p.branches)]
        self.repo.add_pool_samples(key, fill, generation_id, verifier)
        seeds = dict(flight.plan.timed)
        first = [p for p in result.timed if p.round == 0]  # later rounds repeat its seeds: the same branches
        timed = [PoolDraw(self._shas[p.index], seeds[p.index], i, b) for p in first for i, b in enumerate(p.branches)]
        if generation.speculative_method is not None:
            pooled = self._pooled(generation, [p.index for p in first], scored_only=False)
            verdict = check_against_pool(first, pooled, spec.seed, self._baseline_trial(generation))
            self.repo.record_losslessness(generation_id, verdict)
            if verdict.verdict != "lossless":
                return
        self.repo.add_pool_samples(key, timed, generation_id, verifier)

    def _baseline_trial(self, generation: Generation) -> int | None:
        """The number of this study's trial without speculation, same sampling, most branches."""
        trials = [
            t
            for t in self.repo.trials(self.spec.study, states=[TrialState.COMPLETE])
            if t.config.speculative_method is None and self._pool_key(t.config) == self._pool_key(generation)
        ]
        baseline = min(trials, key=lambda t: (-t.config.branches, t.number), default=None)
        return baseline.number if baseline else None

    def _pool(self, generation: Generation) -> dict[str, list[PooledSample]]:
        """The generation's pool, every problem's samples, with its verifier's scores: read again only
        once it changed (every config is scored on it, and a pool holds thousands of samples)."""
        key = self._pool_cache_key(generation)
        version = self.repo.pool_version(*key)
        if key not in self._pools or self._pools[key][0] != version:
            self._pools[key] = (version, self.repo.pool_samples(key[0], self._shas, key[1]), {})
        return self._pools[key][1]

    def _pool_cache_key(self, generation: Generation) -> tuple[str, str | None]:
        return (self._pool_key(generation), generation.verifier)

    def _pooled(self, generation: Generation, indices: list[int], scored_only: bool = True) -> dict[int, list[Branch]]:
        """Pooled samples of these problems (with the generation's verifier scores where it has one)."""
        found = self._pool(generation)
        keep = (lambda b: b.verifier_score is not None) if generation.verifier and scored_only else (lambda b: True)
        return {i: [s.branch for s in found[self._shas[i]] if keep(s.branch)] for i in indices}

    # ------------------------------------------------------------------ scoring configs

    def _score(
        self,
        study: optuna.Study,
        asked: list[tuple[optuna.Trial, TTSConfig, int]],
        generation_id: int,
        measured: dict[str, TrialSummary],
    ) -> list[TrialSummary]:
        """Accuracy and latency of configs on a stored generation; Optuna hears of each."""
        summaries = []
        for trial, config, trial_id in asked:
            summary = self.repo.complete_trial(trial_id, self._numbers(config, generation_id))
            measured[config.key()] = summary
            self._tell(study, trial, summary)
            summaries.append(summary)
        return summaries

    def _numbers(self, config: TTSConfig, generation_id: int) -> TrialNumbers:
        timed, pool = self.repo.timed_problems(generation_id), self._pool_for(config, generation_id)
        return evaluate(config, timed, self._problem_accuracies(config, timed, pool), pool is not None, self.spec.seed)

    def _problem_accuracies(self, config: TTSConfig, timed: list[TimedProblem], pool: dict[int, list[Branch]] | None) -> dict[int, float]:
        """Each problem's accuracy for the config (from `pool`, `_pool_for`'s, where not None). From the
        pool it depends only on the pool and the config without its speculation, so it is estimated
        once per pool version for a config and all its lossless twins (a grid of 17 speculative
        choices asked 17 times for each, and a replay spent three quarters of its time there)."""
        parameters = self.spec.aggregation.model_dump()
        if pool is None:
            return problem_accuracies(config, timed, self._problems, parameters)
        known = self._pools[self._pool_cache_key(config)][2]  # as _pool_for just read it
        twins = config.without_speculation().key()
        if twins not in known:
            known[twins] = problem_accuracies(config, timed, self._problems, parameters, pool, self.spec.seed)
        return known[twins]

    def _pool_for(self, config: TTSConfig, generation_id: int) -> dict[int, list[Branch]] | None:
        """Every problem's pooled samples when the config's accuracy can come from the pool, else None."""
        if not self.spec.sample_pool or self._lossy_or_untested(config.generation(), generation_id):
            return None
        pooled = self._pooled(config.generation(), list(range(len(self._problems))))
        return pooled if all(len(samples) >= config.branches for samples in pooled.values()) else None

    def _lossy_or_untested(self, generation: Generation, generation_id: int) -> bool:
        if generation.speculative_method is None:
            return False
        lossless = self.repo.generation(generation_id).lossless
        return lossless is None or lossless.verdict != "lossless"

    def _siblings(
        self, study: optuna.Study, flight: _InFlight, generation_id: int, measured: dict[str, TrialSummary]
    ) -> list[TrialSummary]:
        """The generation's other aggregators: scored from its branches, added to Optuna as finished trials."""
        summaries = []
        for aggregator in self._aggregators(flight.generation):
            config = flight.generation.with_aggregator(aggregator)
            if config.key() in measured or config.key() in self._elsewhere:
                continue
            numbers = self._numbers(config, generation_id)
            frozen = optuna.trial.create_trial(
                params=self.spec.search_space.params_for(config),
                distributions=self._distributions,
                values=[numbers.accuracy, numbers.latency_s.get(self.spec.latency_statistic)],
                constraints=self._constraints(numbers.latency_s.get(self.spec.latency_statistic), self._lossy(generation_id)),
                user_attrs={"latts_generation": generation_id, "latts_config": config.key()},
            )
            study.add_trial(frozen)
            number = next(t.number for t in reversed(study.get_trials(deepcopy=False)) if t.user_attrs.get("latts_config") == config.key())
            try:
                trial_id = self.repo.start_trial(self.spec.study, number, config, generation_id)
            except Taken:  # another controller of the study measures it now
                continue
            summary = self.repo.complete_trial(trial_id, numbers)
            measured[config.key()] = summary
            summaries.append(summary)
        return summaries

    def _lossy(self, generation_id: int) -> bool:
        lossless = self.repo.generation(generation_id).lossless
        return lossless is not None and lossless.verdict == "lossy"

    def _constraints(self, latency: float, lossy: bool) -> dict[str, float]:
        # Feasible iff within the largest budget and not lossy (Optuna: constraint values <= 0 are satisfied).
        over = latency - max(self.budgets) if self.budgets else 0.0  # relative budgets unresolved yet: no bound
        return {"latency_over_largest_budget_s": over, "lossy": float(lossy)}

    def _tell(self, study: optuna.Study, trial: optuna.Trial, summary: TrialSummary) -> None:
        if summary.state != TrialState.COMPLETE:
            study.tell(trial, state=OptunaState.FAIL)
            return
        latency = summary.latency_s.get(self.spec.latency_statistic)
        for name, value in self._constraints(latency, summary.lossy).items():
            trial.set_constraint(name, value)
        study.tell(trial, [summary.accuracy, latency])

    def _update_best(self) -> None:
        trials = self.repo.trials(self.spec.study)
        self._resolve_budgets(trials)
        self.state.best = {b: best_within(trials, b, self.spec.latency_statistic) for b in self.budgets}

    def _resolve_budgets(self, trials: list[TrialSummary], settle: bool = False) -> None:
        """Budgets in seconds: relative ones are multiples of the reference config's latency, as first
        measured and then as settled by the race (kept in between, so that they do not move with
        every timing), or as it stands now when `settle`."""
        spec = self.spec
        budgets = [b for b in spec.budgets_s if not isinstance(b, str)]
        reference_s = None
        if spec.relative_budgets:
            info = self.repo.study(spec.study)
            reference_s = None if settle or info is None else info.reference_s
            if reference_s is None:
                measured = self._reference_trial(trials)
                if measured is None:
                    self.budgets = budgets  # the relative ones wait for their reference
                    return
                reference_s = measured.latency_s.get(spec.latency_statistic)
            budgets = spec.resolve_budgets(reference_s)
        if budgets != self.budgets or settle:
            self.budgets = budgets
            self.repo.set_budgets(spec.study, budgets, reference_s)

    def _reference_trial(self, trials: list[TrialSummary]) -> TrialSummary | None:
        """The measured config that relative budgets are multiples of, if it is measured yet."""
        reference = self.spec.config_from_params(self.spec.reference_params())
        return next((t for t in trials if t.config == reference and t.state == TrialState.COMPLETE), None)


def _usable(trial: TrialSummary) -> bool:
    """A measured config that can answer a budget: complete, and not found lossy."""
    return trial.state == TrialState.COMPLETE and not trial.lossy
