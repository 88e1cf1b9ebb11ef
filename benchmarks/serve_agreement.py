"""Served latency against stored latency: each budget's choice exported, served, and timed by a client.

    .venv/bin/python benchmarks/serve_agreement.py [--spec examples/quickstart.yaml] [--storage URL] [--rounds 5]

Unless the study is already in `--storage` (default: a fresh SQLite database), runs `latts tune
SPEC` first. Then, for each budget, as a user would: `latts export --budget B` writes the chosen
config's `vllm-yaml` and `json`; the YAML is served by vLLM's OpenAI-compatible server
(`python -m vllm.entrypoints.openai.api_server --config FILE`, with vLLM's own defaults, as the
README's serving step says); a client sends each problem latts timed for that trial, one request
at a time with the exported request settings and the same seeds: once to warm the server, then
`--rounds` times over with the prefix cache emptied before each request (so each is a new
question, as latts times it), and aggregates the returned branches with the exported rule. A problem's served latency is request
sent -> response read, plus the rule's time on the branches: what latts stores for a problem.

Budgets that chose the same trial share one server. All servers are up at once and the rounds
rotate over them, as latts' race rotates over finalists, so that a slow minute of the machine hits
every budget alike instead of one. Before each server's turn the client waits a little over 1 s:
vLLM's worker keeps polling for 1 s after its last step, and a lone server has no such neighbour.

The last line is `serve_ratio=<served/stored statistic, the budget farthest from 1>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from latts.aggregation import aggregate
from latts.core.records import Branch
from latts.core.spec import load_spec
from latts.core.statistics import latency_stats
from latts.optimizer.evaluation import stable_seed
from latts.problems import extract_boxed, load_problems
from latts.storage import Repository, redact, sqlite_file
from latts.workers.engine import BUSY_POLL_S, EngineStartError, free_port, wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parent.parent
# A server's turn starts once the previous one's workers have stopped busy-polling, with a margin.
QUIET_S = BUSY_POLL_S + 0.5


def absolute(url: str) -> str:
    """The storage URL with a relative SQLite path made absolute: the latts commands below run in another folder."""
    database = sqlite_file(url)
    if database is None:
        return url
    return make_url(url).set(database=str(database.resolve())).render_as_string(hide_password=False)


def latts(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "latts", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(redact(f"latts {' '.join(args)} failed:\n{proc.stderr[-3000:]}"))


class Server:
    """`python -m vllm.entrypoints.openai.api_server --config FILE`, as the README serves an export."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        port = free_port()
        self.log = config.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--config", str(config), "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        try:
            wait_until_healthy(self.process, self.client, self.log)
        except EngineStartError as exc:
            self.close()
            sys.exit(f"{exc}; see {self.log}")

    def forget_prompts(self) -> None:
        """Empty the prefix cache (a dev-mode endpoint), so that a problem sent again is computed again."""
        while not self.client.post("/reset_prefix_cache").json().get("success"):
            time.sleep(0.01)

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
        time.sleep(2)  # let its engine core go before the next server starts


def served_latency(server: Server, settings: dict, prompt: str, seed: int, parameters: dict) -> float:
    """One problem as a client of the exported config sees it: the request, then the aggregation."""
    started = time.perf_counter()
    response = server.client.post("/v1/completions", json={**settings["request"], "prompt": prompt, "seed": seed})
    response.raise_for_status()
    branches = []
    for choice in sorted(response.json()["choices"], key=lambda c: c["index"]):
        logprobs = tuple((choice.get("logprobs") or {}).get("token_logprobs") or ())
        branches.append(Branch(choice["text"], extract_boxed(choice["text"]), len(logprobs), logprobs))
    aggregate(settings["aggregator"], branches, parameters)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(REPO_ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--storage", help="a database that already holds the spec's study (default: tune into a fresh one)")
    parser.add_argument("--rounds", type=int, default=5, help="times each timed problem is sent")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    folder = Path(tempfile.mkdtemp(prefix="latts-serve-agreement-"))
    url = absolute(args.storage) if args.storage else f"sqlite:///{folder / 'latts.db'}"
    repo = Repository(url)
    if repo.study(spec.study) is None or not repo.trials(spec.study):
        print(f"tuning {spec.study} into {repo.url} first", file=sys.stderr)
        latts("tune", str(Path(args.spec).resolve()), "--storage", url, cwd=folder)
    info = repo.study(spec.study)
    trials = {t.number: t for t in repo.trials(spec.study)}
    problems = load_problems(spec.benchmark)
    parameters = spec.aggregation.model_dump()
    # What the README asks of a CPU server (latts' workers set the same); vLLM's defaults otherwise.
    # Dev mode only adds the endpoint that empties the prefix cache between rounds.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(spec.engine.kv_cache_gib), "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_SERVER_DEV_MODE": "1"}

    chosen: dict[int, dict] = {}  # trial number -> its exported settings
    budgets: list[tuple[float, int]] = []
    for budget in info.budgets_s:
        yaml_file, json_file = folder / f"budget-{budget:g}.yaml", folder / f"budget-{budget:g}.json"
        latts("export", "--study", spec.study, "--budget", str(budget), "--format", "vllm-yaml", "-o", str(yaml_file), "--storage", url, cwd=folder)
        latts("export", "--study", spec.study, "--budget", str(budget), "--format", "json", "-o", str(json_file), "--storage", url, cwd=folder)
        settings = json.loads(json_file.read_text())
        if settings["verifier"]:
            sys.exit(f"budget {budget:g} s chose a verifier config; this benchmark serves generators only")
        chosen.setdefault(settings["trial"], {**settings, "yaml": yaml_file})
        budgets.append((budget, settings["trial"]))

    served: dict[int, list[float]] = {number: [] for number in chosen}
    servers: dict[int, tuple[Server, dict[int, int]]] = {}  # trial number -> its server and seed by problem
    try:
        for number, settings in chosen.items():
            trial = trials[number]
            indexes = sorted({p.index for p in repo.timed_problems(trial.generation_id)})
            generation = trial.config.generation()
            server = Server(settings["yaml"], env)
            servers[number] = (server, {i: stable_seed(spec.seed, generation.key(), i) for i in indexes})
        for number, (server, seeds) in servers.items():  # a warm pass, as latts makes: a server up for a while has run every shape
            for i, seed in seeds.items():
                served_latency(server, chosen[number], problems[i].prompt, seed, parameters)
        for _ in range(args.rounds):
            for number, (server, seeds) in servers.items():
                time.sleep(QUIET_S)
                for i, seed in seeds.items():
                    server.forget_prompts()  # each request a new question, as latts times it
                    served[number].append(served_latency(server, chosen[number], problems[i].prompt, seed, parameters))
    finally:
        for server, _ in servers.values():
            server.close()

    rows = []
    for budget, number in budgets:
        statistic = chosen[number]["statistic"]
        stored = trials[number].latency_s.get(statistic)
        served_s = latency_stats(served[number]).get(statistic)
        rows.append((budget, trials[number], len(servers[number][1]), stored, served_s, served_s / stored))

    console = Console(width=160)
    table = Table(title=f"{spec.study}: {spec.latency_statistic} latency, stored by latts vs served and timed by a client ({args.rounds} rounds)")
    for column in ("budget s", "trial", "config", "problems", "stored s", "served s", "served/stored"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for budget, trial, n, stored, served, ratio in rows:
        table.add_row(f"{budget:.4g}", f"#{trial.number}", trial.config.label(), str(n), f"{stored:.4f}", f"{served:.4f}", f"{ratio:.3f}")
    console.print(table)
    worst = max((row[-1] for row in rows), key=lambda r: abs(r - 1))
    print(f"serve_ratio={worst:.3f}")


if __name__ == "__main__":
    main()
