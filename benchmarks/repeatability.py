"""How well a latency repeats: one config timed five times, interleaved with others, across engine restarts.

    .venv/bin/python benchmarks/repeatability.py [--spec examples/quickstart.yaml] [--repeats 5]

Runs latts' own measuring harness (a Ray worker serving each engine with vLLM's OpenAI-compatible
server, the spec's probe problems, seeds and latency rounds) on three configs of the spec's model: the measured
one (4 branches, no speculation) and two others between its repeats (8 branches without
speculation, one branch with the spec's first draft model or n-gram speculation). Every repeat
starts a fresh worker, so every engine starts again. The measured config's statistic (the spec's
latency statistic over the probes) is compared across repeats.

Then the machine's own floor: the measured config on one warm engine, timed as many times back to
back (after one discarded timing), so that what latts adds can be told from what the machine does.

The last line is `latency_cv=<standard deviation / mean of the measured config's statistic over the
repeats> floor_cv=<the same on one warm engine>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latts.core.records import Generation, GenerationPlan
from latts.core.spec import load_spec
from latts.core.statistics import latency_stats
from latts.optimizer.evaluation import stable_seed
from latts.problems import load_problems
from latts.workers.cluster import init_ray
from latts.workers.pool import WorkerPool

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(REPO_ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    sampling = {"temperature": spec.sampling.temperature, "top_p": spec.sampling.top_p, "max_tokens": spec.sampling.max_tokens}
    speculative = next(s for s in spec.search_space.speculative if s != "none")
    configs = {
        "B=4 none (measured)": Generation(4, **sampling),
        "B=8 none": Generation(8, **sampling),
        f"B=1 {speculative.method} k={speculative.num_speculative_tokens[-1]}": Generation(
            1, **sampling, speculative_method=speculative.method, draft_model=speculative.model,
            num_speculative_tokens=speculative.num_speculative_tokens[-1],
        ),
    }
    problems = load_problems(spec.benchmark)
    probes = spec.probes(len(problems))
    init_ray(None, spec)

    def measure(pool: WorkerPool, name: str, generation: Generation, label: str) -> float:
        plan = GenerationPlan(
            generation=generation,
            engine=spec.engine.key_for(spec.model, generation),
            timed=tuple((i, stable_seed(spec.seed, generation.key(), i)) for i in probes),
            rounds=spec.latency_rounds,
            aggregators=("majority",),
            aggregation=spec.aggregation.model_dump(),
        )
        done = pool.run(0, plan)
        if done.result is None:
            raise SystemExit(f"{name} failed: {done.error}")
        seconds = [p.latency_s + p.aggregation_s["majority"] for p in done.result.timed]
        value = latency_stats(seconds).get(spec.latency_statistic)
        print(f"{label}: {name}: {value:.4f} s ({', '.join(f'{x:.3f}' for x in seconds)})", file=sys.stderr)
        return value

    results: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        pool = WorkerPool(spec, problems)  # a fresh worker: every engine starts again
        try:
            for name, generation in configs.items():
                results[name].append(measure(pool, name, generation, f"repeat {repeat + 1}"))
        finally:
            pool.shutdown()
            time.sleep(2)  # let the old engines' processes go before the next ones start

    # The machine's own floor: the measured config on one warm engine, timed as often, nothing in between.
    measured_name, measured = next(iter(configs.items()))
    pool = WorkerPool(spec, problems)
    try:
        floor = [measure(pool, measured_name, measured, f"floor {i + 1}") for i in range(args.repeats + 1)][1:]
    finally:
        pool.shutdown()

    console = Console(width=160)
    table = Table(title=f"{spec.latency_statistic} latency over {len(probes)} probe problems: {args.repeats} repeats with fresh engines, interleaved; then one warm engine")
    table.add_column("config")
    for repeat in range(args.repeats):
        table.add_column(f"#{repeat + 1} s", justify="right")
    table.add_column("CV", justify="right")
    for name, values in [*results.items(), (f"{measured_name}, one warm engine, back to back", floor)]:
        table.add_row(name, *(f"{v:.4f}" for v in values), f"{cv(values):.3f}")
    console.print(table)
    print(f"latency_cv={cv(results[measured_name]):.4f} floor_cv={cv(floor):.4f}")


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


if __name__ == "__main__":
    main()
