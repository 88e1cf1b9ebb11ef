"""How soon each search strategy measures every budget's best config, on landscapes replayed from storage.

    .venv/bin/python benchmarks/search_efficiency.py [--out DIR] [--seeds 20] [--samplers random,tpe,nsga2,gp,greedy]
    .venv/bin/python benchmarks/search_efficiency.py --storage sqlite:///latts.db --study STUDY

Two landscapes, each an exhaustive study (every generation of its space measured, `sampler: grid`,
no final race), measured first with `latts tune` as a user runs it, with the sample pool and
latency probes, in `--out`'s database (kept: a second run finds them finished and measures
nothing): (a) the quickstart's grid, (b) a larger space built through the pool: branches 1 to 64,
draft lengths 0 to 8 for ngram and the demo draft model, every aggregator without a verifier.
`--storage`/`--study` replays one finished exhaustive study of your own instead.

Each strategy then searches the same space again under each seed, in a new study whose trials are
answered from the landscape's stored rows (latts.optimizer.replay): **replay, for benchmarking
only**; no engine runs and no number is new. The replays go to a copy of the database, never to
the original. `greedy` and `staged` are deterministic: each is replayed once, and its count stands
for every seed.

A replayed config's latency is the landscape's; its accuracy, where it comes from the sample pool,
is estimated again on the pool as the landscape left it, the same for every strategy. So each
budget's best config is the most accurate within it in a `grid` replay. For each strategy: the
trials measured until every budget's best config had been measured, as a share of the grid: median
and interquartile range over seeds, and in how many seeds every best was found at all (greedy's
walks may stop first; such a seed counts as never).

The same, counting a budget's best as found once the search measured it or a tied twin: a config
with the best's accuracy from the same pooled samples (the same branches and aggregator, another
lossless speculative choice) that fits the budget, with a latency interval overlapping the best's.
Twins differ only in latency, and where their intervals overlap which is faster is noise (the
final race decides between them, `racing.finalists`): "the best" alone can be a draft length
0.3% faster than no draft.

The last line is `best=<sampler> trials_fraction=<median share> tied_best=<sampler>
tied_trials_fraction=<median share, twins counted>` on the last landscape: (b), or the study given.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from latts.aggregation import RULES
from latts.core.records import TrialState, TrialSummary
from latts.core.spec import parse_spec
from latts.optimizer.controller import Controller, TuneState
from latts.optimizer.frontier import best_within, completed
from latts.optimizer.racing import latency_interval, twin_key
from latts.optimizer.replay import LABEL, ReplayWorkers
from latts.storage import Repository, redact

SAMPLERS = ("random", "tpe", "nsga2", "gp", "greedy", "staged")
DETERMINISTIC = ("greedy", "staged")  # no seed changes what they measure: replayed once, counted for every seed


def best_configs(trials: Sequence[TrialSummary], budgets: Sequence[float], statistic: str, tied: bool = False) -> list[frozenset[str]]:
    """Per budget that something fits, the keys that answer it: its best config, and with `tied` also
    the best's twins within noise (same pooled accuracy, fitting, latency intervals overlapping)."""
    found = []
    for budget in budgets:
        best = best_within(list(trials), budget, statistic)
        if best is None:
            continue
        keys = {best.config.key()}
        if tied:
            low, high = latency_interval(best, statistic)
            keys |= {
                t.config.key()
                for t in completed(trials)
                if twin_key(t) == twin_key(best) and t.latency_s.get(statistic) <= budget
                and _overlap(latency_interval(t, statistic), low, high)
            }
        found.append(frozenset(keys))
    return found


def _overlap(interval: tuple[float, float], low: float, high: float) -> bool:
    return interval[0] <= high and low <= interval[1]


def trials_needed(order: Sequence[str], targets: Sequence[frozenset[str]]) -> int | None:
    """How many configs were measured (in `order`) until each target had one of its keys measured;
    None if one never had."""
    first = {key: i for i, key in reversed(list(enumerate(order)))}
    hits = [min((first[k] for k in keys if k in first), default=None) for keys in targets]
    if None in hits:
        return None
    return 1 + max(hits, default=-1)


def quartiles(shares: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile; taken from the values themselves, so `inf` (never) stays one."""
    q1, median, q3 = np.quantile(np.asarray(shares, dtype=float), [0.25, 0.5, 0.75], method="inverted_cdf")
    return float(q1), float(median), float(q3)


def missing_generations(repo: Repository, source: str) -> list[str]:
    """Configs of the source's space whose generation it never finished (complete or failed)."""
    spec = parse_spec(repo.study_spec(source), source=f"study {source}'s stored spec")
    finished = {g.generation.key() for g in repo.generations(source, states=[TrialState.COMPLETE, TrialState.FAILED])}
    configs = [spec.config_from_params(p) for p in spec.search_space.points()]
    return [c.label() for c in configs if c.generation().key() not in finished]


def replay(
    repo: Repository, url: str, source: str, sampler: str, seed: int, until: Sequence[frozenset[str]] | None = None
) -> list[TrialSummary]:
    """Search the source's space again with `sampler`, answered from storage; its trials in measuring
    order. The whole space, or until every target in `until` has one of its keys measured."""
    stored = repo.study_spec(source)
    name = f"replay-{source}-{sampler}-{seed}"
    grid = len(parse_spec(stored).search_space.points())
    spec = parse_spec({**stored, "study": name, "sampler": sampler, "n_trials": grid, "race": {**stored.get("race", {}), "finalists": 0}})
    controller = Controller(spec, repo, url, workers=lambda s, _: ReplayWorkers(repo, source, s.workers.count), sampler_seed=seed)

    def stop_once_found(state: TuneState) -> None:
        if until and trials_needed([t.config.key() for t in repo.trials(name)], until) is not None:
            state.stopped = True

    controller.run(None, stop_once_found)
    return repo.trials(name)


Needed = tuple[int | None, int | None]  # trials until every best was measured: exactly, twins counted


def compare(
    repo: Repository, url: str, source: str, samplers: Sequence[str], seeds: Sequence[int], processes: int = 1
) -> dict[str, list[Needed]]:
    """Per sampler, the trials each seed needed until every budget's best config was measured
    (exactly, and with tied twins counted).

    The replays run in `processes` processes, each on its own copy of the database (SQLite takes
    one writer at a time); progress goes to stderr.
    """
    spec = parse_spec(repo.study_spec(source))
    landscape = replay(repo, url, source, "grid", 0)
    budgets = repo.study(landscape[0].study).budgets_s or []
    targets = (best_configs(landscape, budgets, spec.latency_statistic), best_configs(landscape, budgets, spec.latency_statistic, tied=True))
    # Seeds interleaved, so slow samplers spread out; a deterministic sampler once, its count for every seed.
    jobs = [(sampler, seed) for seed in seeds for sampler in samplers if seed == seeds[0] or sampler not in DETERMINISTIC]
    needed: dict[str, list[Needed]] = {sampler: [] for sampler in samplers}
    folder = tempfile.mkdtemp(prefix="latts-replays-")
    context = multiprocessing.get_context("spawn")  # no fork of open database connections
    show = lambda n: n if n is not None else "never"  # noqa: E731
    try:
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_open_copy, initargs=(url, folder)) as pool:
            started = time.monotonic()
            for (sampler, seed), counts in zip(jobs, pool.map(_needed, *zip(*[(source, s, seed, targets) for s, seed in jobs]))):
                print(f"  {sampler} seed {seed}: {show(counts[0])} ({show(counts[1])} twins counted) ({time.monotonic() - started:.0f} s)", file=sys.stderr)
                needed[sampler] += [counts] * (len(seeds) if sampler in DETERMINISTIC else 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return needed


_copy: dict[str, Any] = {}  # in each replay process: its database copy


def _open_copy(url: str, folder: str) -> None:
    copy = sqlite_copy(url, Path(tempfile.mkdtemp(dir=folder)))
    _copy.update(repo=Repository(copy), url=copy)


def _needed(source: str, sampler: str, seed: int, targets: tuple[list[frozenset[str]], list[frozenset[str]]]) -> Needed:
    exact, tied = targets
    order = [t.config.key() for t in replay(_copy["repo"], _copy["url"], source, sampler, seed, until=exact)]
    return trials_needed(order, exact), trials_needed(order, tied)


REPO_ROOT = Path(__file__).resolve().parent.parent


def landscape_specs() -> list[dict]:
    """(a) the quickstart's grid; (b) the larger space: branches 1-64, draft lengths 0-8 for both
    draft options, every aggregator without a verifier. Both exhaustive, without a final race."""
    quickstart = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    lengths = list(range(1, 9))
    large_space = {
        "branches": [1, 2, 4, 8, 16, 32, 64],
        "speculative": [
            "none",
            {"method": "ngram", "num_speculative_tokens": lengths},
            {"method": "draft_model", "model": "demo:draft", "num_speculative_tokens": lengths},
        ],
        "aggregator": [name for name, rule in RULES.items() if not rule.needs_verifier],
    }
    # Two probes timed once, two cached engines (the speculative one and the pool's filler): 119
    # generations on demo:target-xl, up to 64 branches each, on 2 cores.
    large = {
        **quickstart,
        "search_space": large_space,
        "latency_probes": 2,
        "latency_rounds": 1,
        "workers": {**quickstart["workers"], "engines_per_worker": 2},
    }
    specs = []
    for study, spec in (("landscape-quickstart", quickstart), ("landscape-large", large)):
        grid = len(parse_spec(spec).search_space.points())
        specs.append({**spec, "study": study, "sampler": "grid", "n_trials": grid, "race": {"finalists": 0}})
    return specs


def measure(spec: dict, url: str, folder: Path, console: Console) -> None:
    """`latts tune` on the landscape's spec, as a user runs it; a finished landscape measures nothing new."""
    path = folder / f"{spec['study']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    console.print(f"measuring landscape {spec['study']} ({spec['n_trials']} configs) with latts tune; log: {folder / spec['study']}.log")
    started = time.monotonic()
    with open(folder / f"{spec['study']}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "latts", "tune", str(path), "--storage", url], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: latts tune {spec['study']} failed (exit {proc.returncode}); see {folder / spec['study']}.log")
    console.print(f"  done in {time.monotonic() - started:.0f} s")


def sqlite_copy(url: str, folder: Path) -> str:
    """A copy of a SQLite database (consistent even while another process writes it)."""
    path = make_url(url).database
    if make_url(url).get_backend_name() != "sqlite" or not path or not Path(path).is_file():
        sys.exit(f"error: --storage must be an existing SQLite file (sqlite:///FILE), got {redact(url)}")
    target = folder / "replay.db"
    with sqlite3.connect(path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return f"sqlite:///{target}"


def benchmark(storage: str, study: str, samplers: Sequence[str], seeds: int, processes: int, console: Console) -> dict[str, tuple[str, float]]:
    """Replay every sampler on a copy of `storage`'s exhaustive `study`; print the table; the best
    sampler and its median share, exactly and with tied twins counted."""
    folder = Path(tempfile.mkdtemp(prefix="latts-replay-"))
    try:
        url = sqlite_copy(storage, folder)
        repo = Repository(url)
        if repo.study(study) is None:
            sys.exit(f"error: study {study!r} does not exist in {storage}")
        missing = missing_generations(repo, study)
        if missing:
            sys.exit(f"error: study {study} is not exhaustive: {len(missing)} configs never measured, e.g. {missing[0]}")
        grid = len(parse_spec(repo.study_spec(study)).search_space.points())
        console.print(f"{LABEL}: every trial below is answered from study {study}'s stored rows; no engine ran")
        needed = compare(repo, url, study, samplers, range(seeds), processes)
        repo.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = Table(title=f"{study}: trials until every budget's best config is measured, share of the {grid}-config grid ({seeds} seeds, {LABEL})")
    table.add_column("sampler")
    for criterion in ("best", "best or tied twin"):
        for column in ("median", "IQR", "found every"):
            table.add_column(f"{criterion}: {column}")
    summary: dict[str, dict[str, tuple[float, float]]] = {"exact": {}, "tied": {}}
    show = lambda x: "never" if math.isinf(x) else f"{x:.2f}"  # noqa: E731
    for sampler, counts in needed.items():
        row = [sampler]
        for criterion, found in zip(summary, zip(*counts)):
            q1, median, q3 = quartiles([n / grid if n is not None else math.inf for n in found])
            summary[criterion][sampler] = (median, q3)
            row += [show(median), f"{show(q1)}-{show(q3)}", f"{sum(n is not None for n in found)}/{len(found)}"]
        table.add_row(*row)
    console.print(table)
    winners = {}
    for criterion, shares in summary.items():
        best = min(shares, key=lambda sampler: shares[sampler])  # the lowest median, then third quartile
        winners[criterion] = (best, shares[best][0])
    return winners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the landscapes' database (default: a new temporary folder)")
    parser.add_argument("--storage", help="SQLite URL of a database holding --study, instead of the two landscapes")
    parser.add_argument("--study", help="a finished exhaustive study in --storage")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="replays at once (default: one per core)")
    args = parser.parse_args()
    if (args.storage is None) != (args.study is None):
        sys.exit("error: --storage and --study go together: give both to replay your own study, or neither")
    samplers = [s for s in args.samplers.split(",") if s]
    console = Console(highlight=False, width=160)
    if args.study:
        targets = [(args.storage, args.study)]
    else:
        folder = args.out or Path(tempfile.mkdtemp(prefix="latts-landscapes-"))
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder.resolve() / 'latts.db'}"
        targets = []
        for spec in landscape_specs():
            measure(spec, url, folder.resolve(), console)
            targets.append((url, spec["study"]))
    for storage, study in targets:
        winners = benchmark(storage, study, samplers, args.seeds, args.processes, console)
    (best, fraction), (tied, tied_fraction) = winners["exact"], winners["tied"]
    print(f"best={best} trials_fraction={fraction:.3f} tied_best={tied} tied_trials_fraction={tied_fraction:.3f}")


if __name__ == "__main__":
    main()
