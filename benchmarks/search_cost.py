"""What the sample pool saves: the quickstart grid measured both ways, side by side, in one run.

    .venv/bin/python benchmarks/search_cost.py [--spec examples/quickstart.yaml] [--out DIR]

*Full*: every config measured in full, as a tuning job without latts' pool would: each config
generates its own branches on every problem and is timed on every problem (one study per
aggregator, so no two configs share a generation; `sample_pool: false`). *Pool*: one study with
the sample pool and latency probes (`sample_pool: true`, the spec's `latency_probes`): each
generation is timed on the probes and shared by its aggregators, accuracy comes from the pool.
Both run `latts tune` as a user does, on fresh SQLite databases, with the grid sampler over the
whole space, and no final race (it would time some configs of each arm again). Both arms answer
the same budgets in seconds: the pool study's, where the spec's budgets are relative. A budget's
choice counts as the same when it is the same config, or when each accuracy lies within the
other's 95% interval.

The last line is `tokens_ratio=<full/pool generated tokens> same_choices=<k>/<budgets>`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from latts.core.records import TrialSummary
from latts.core.spec import SearchSpace, load_spec, parse_spec
from latts.optimizer.frontier import best_within
from latts.storage import Repository

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Arm:
    name: str
    trials: list[TrialSummary]
    tokens: int
    wall_s: float
    engine_starts: int


def grid_size(space: SearchSpace) -> int:
    return len(space.points())


def tune(spec: dict, folder: Path) -> tuple[list[TrialSummary], list[float], int, int, float]:
    """Run `latts tune` on `spec` in a fresh database; its trials, budgets in seconds, generated tokens,
    engine starts, wall time."""
    path = folder / f"{spec['study']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{folder / 'latts.db'}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "latts", "tune", str(path), "--storage", url], cwd=folder, capture_output=True, text=True)
    wall_s = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"latts tune {spec['study']} failed:\n{proc.stderr[-3000:]}")
    repo = Repository(url)
    generations = repo.generations(spec["study"])
    tokens = sum(g.generated_tokens or 0 for g in generations)
    starts = sum(g.engine_starts or 0 for g in generations)
    return repo.trials(spec["study"]), repo.study(spec["study"]).budgets_s, tokens, starts, wall_s


def run_full(base: dict, aggregators: list[str], folder: Path) -> Arm:
    trials, tokens, starts, wall = [], 0, 0, 0.0
    for aggregator in aggregators:
        spec = {
            **base,
            "study": f"full-{aggregator}",
            "search_space": {**base["search_space"], "aggregator": [aggregator]},
            "sample_pool": False,
        }
        spec["n_trials"] = grid_size(parse_spec(spec).search_space)
        found, _, t, s, w = tune(spec, folder / aggregator)
        trials, tokens, starts, wall = trials + found, tokens + t, starts + s, wall + w
    return Arm("full", trials, tokens, wall, starts)


def run_pool(base: dict, folder: Path) -> tuple[Arm, list[float]]:
    spec = {**base, "study": "pool", "sample_pool": True}
    spec["n_trials"] = grid_size(parse_spec(spec).search_space)
    trials, budgets, tokens, starts, wall = tune(spec, folder)
    return Arm("pool", trials, tokens, wall, starts), budgets


def same_choice(a: TrialSummary | None, b: TrialSummary | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.config == b.config:
        return True
    return a.accuracy_ci[0] <= b.accuracy <= a.accuracy_ci[1] and b.accuracy_ci[0] <= a.accuracy <= b.accuracy_ci[1]


def describe(t: TrialSummary | None, statistic: str) -> str:
    if t is None:
        return "nothing fits"
    lo, hi = t.accuracy_ci
    return f"{t.config.label()}: {t.accuracy:.1%} ({lo:.0%}-{hi:.0%}), {t.latency_s.get(statistic):.4g} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(REPO_ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--out", default=None, help="folder for the databases (default: a new temporary one)")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    base = {**spec.model_dump(mode="json", exclude={"storage"}), "sampler": "grid", "race": {"finalists": 0}}
    folder = Path(args.out or tempfile.mkdtemp(prefix="latts-search-cost-"))
    for sub in ["pool", *spec.search_space.aggregator]:
        (folder / sub).mkdir(parents=True, exist_ok=True)

    pool, budgets = run_pool(base, folder / "pool")
    full = run_full({**base, "budgets_s": budgets}, list(spec.search_space.aggregator), folder)

    console = Console(width=200)
    table = Table(title=f"Search cost of the {spec.study} grid ({grid_size(spec.search_space)} configs), full vs pool")
    for column in ("", "full", "pool", "full / pool"):
        table.add_column(column)
    table.add_row("generated tokens", f"{full.tokens:,}", f"{pool.tokens:,}", f"{full.tokens / pool.tokens:.1f}x")
    table.add_row("wall time s", f"{full.wall_s:.0f}", f"{pool.wall_s:.0f}", f"{full.wall_s / pool.wall_s:.1f}x")
    table.add_row("engine starts", str(full.engine_starts), str(pool.engine_starts), "")
    same = 0
    statistic = spec.latency_statistic
    for budget in budgets:
        a, b = best_within(full.trials, budget, statistic), best_within(pool.trials, budget, statistic)
        agree = same_choice(a, b)
        same += agree
        table.add_row(f"<= {budget:g} s", describe(a, statistic), describe(b, statistic), "same" if agree else "DIFFERENT")
    console.print(table)
    console.print(f"databases: {folder}")
    print(f"tokens_ratio={full.tokens / pool.tokens:.2f} same_choices={same}/{len(budgets)}")


if __name__ == "__main__":
    main()
