"""`latts export`: the YAML goes through the installed vLLM's own `vllm serve` parser unchanged."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from latts.core.records import BudgetAnswer
from latts.demo import models as demo_models
from latts.optimizer.frontier import best_within
from latts.reporting import export
from latts.storage import Repository
from tests.conftest import run_latts
from tests.handmade import HandTrial, config, make_study, spec_dict, store_trials


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{folder / 'latts.db'}"
    repo = make_study(url, folder)
    return url, repo, folder


@pytest.fixture(scope="module")
def vllm_serve_parse():
    """Parse `vllm serve --config FILE` exactly as the `vllm` command does, without starting anything."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def parse(path):
        parser = FlexibleArgumentParser()
        serve = ServeSubcommand()
        serve.subparser_init(parser.add_subparsers(dest="subparser"))
        args = parser.parse_args(["serve", "--config", str(path)])
        serve.validate(args)
        return args

    return parse


@pytest.mark.parametrize(
    "budget, number, speculative",
    [
        (0.15, 0, None),
        (0.5, 1, {"method": "ngram", "num_speculative_tokens": 4}),
        (2.0, 3, {"method": "draft_model", "num_speculative_tokens": 2, "model": "DRAFT"}),
    ],
)
def test_vllm_yaml_round_trips_through_vllm_serve_parser(hand, vllm_serve_parse, tmp_path, budget, number, speculative):
    url, repo, folder = hand
    chosen = best_within(repo.trials("hand"), budget)
    assert chosen.number == number
    path = tmp_path / "serve.yaml"
    path.write_text(export.render("vllm-yaml", repo.study_spec("hand"), chosen, budget, "mean"))

    args = vllm_serve_parse(path)
    if speculative and "model" in speculative:
        speculative["model"] = str(folder / "draft-model")
    assert args.speculative_config == speculative
    assert args.model == str(folder / "target-model")
    assert (args.dtype, args.tensor_parallel_size, args.max_model_len) == ("float32", 1, 384)


def test_export_cli_writes_yaml_and_json(hand, tmp_path):
    url, repo, folder = hand
    out = tmp_path / "serve.yaml"
    proc = run_latts("export", "--study", "hand", "--budget", "2", "--format", "vllm-yaml", "-o", str(out), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "trial #3" in proc.stderr
    assert yaml.safe_load(out.read_text())["speculative-config"]["method"] == "draft_model"

    proc = run_latts("export", "--study", "hand", "--budget", "0.5", "--format", "json", "--storage", url)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["request"] == {"model": str(folder / "target-model"), "n": 4, "temperature": 0.8, "top_p": 1.0, "max_tokens": 96}
    assert (doc["trial"], doc["aggregator"], doc["verifier"]) == (1, "majority", None)
    assert doc["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 4}
    assert doc["measured"]["accuracy"] == 0.5 and doc["measured"]["latency_s"]["mean"] == pytest.approx(0.3)

    # A confidence-weighted aggregator needs the engine's token log-probabilities in the response.
    proc = run_latts("export", "--study", "hand", "--budget", "1.5", "--format", "json", "--storage", url)
    assert json.loads(proc.stdout)["request"]["logprobs"] == 0


def test_best_and_export_give_a_raced_budget_its_raced_answer(tmp_path):
    # The race chose trial #1 at 2 s (say #3 was timed again and missed it): best and export must
    # answer what tune printed, not the fastest-looking config of the search; other budgets and
    # --include-lossy still ask the trials.
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    repo = make_study(url, tmp_path)
    assert best_within(repo.trials("hand"), 2.0).number == 3
    repo.record_budget_answers("hand", [BudgetAnswer(2.0, 1, 3, True, 0.0, (-0.1, 0.1), "tied", 3, [1, 3])])

    def best(*extra):
        proc = run_latts("best", "--study", "hand", "--budget", "2", "--json", "--storage", url, *extra)
        assert proc.returncode == 0, proc.stderr
        document = json.loads(proc.stdout)
        assert document["tie"] == "noise"  # the margin's interval holds 0, and #3 is not #1's twin
        return document["best"]["number"]

    exported = run_latts("export", "--study", "hand", "--budget", "2", "--format", "json", "--storage", url)
    assert best() == json.loads(exported.stdout)["trial"] == 1
    assert best("--include-lossy") == 3
    proc = run_latts("best", "--study", "hand", "--budget", "2.5", "--json", "--storage", url)
    assert json.loads(proc.stdout)["best"]["number"] == 3


def test_export_nothing_fits_exits_3_and_writes_nothing(hand, tmp_path):
    url, _, _ = hand
    out = tmp_path / "serve.yaml"
    proc = run_latts("export", "--study", "hand", "--budget", "0.05", "--format", "vllm-yaml", "-o", str(out), "--storage", url)
    assert proc.returncode == 3
    assert "0.05" in proc.stderr and proc.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--study", "hand", "--budget", "1", "--format", "toml"], ["--format", "toml"]),
        (["--study", "hand", "--budget", "0", "--format", "json"], ["--budget"]),
        (["--study", "hand", "--budget", "1", "--format", "json", "--statistic", "p42"], ["--statistic"]),
        (["--study", "nope", "--budget", "1", "--format", "json"], ["nope"]),
        (["--study", "hand", "--budget", "1", "--format", "vllm-yaml", "-o", "serve.txt"], [".yaml"]),
    ],
)
def test_export_bad_input_is_one_line_exit_2(hand, tmp_path, args, words):
    url, _, _ = hand
    proc = run_latts("export", *args, "--storage", url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.engine
def test_export_of_tuned_study_names_local_demo_models(sqlite_study, vllm_serve_parse, tmp_path):

    url, _ = sqlite_study
    trials = Repository(url).trials("e2e")
    budget = max(t.latency_s.mean for t in trials if t.latency_s) * 2
    out = tmp_path / "serve.yaml"
    proc = run_latts("export", "--study", "e2e", "--budget", str(budget), "--format", "vllm-yaml", "-o", str(out), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    args = vllm_serve_parse(out)
    assert args.model == str(demo_models.model_path("demo:target"))  # vLLM knows no `demo:` names
    chosen = best_within(trials, budget)
    expected = {"method": "ngram", "num_speculative_tokens": 2} if chosen.config.speculative_method else None
    assert args.speculative_config == expected


def test_export_names_demo_models_without_training_them(tmp_path):
    """An export only reads: a study on demo:target exports from a machine whose cache is empty."""
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    repo = Repository(url)
    spec = spec_dict("demo", "demo:target")
    repo.ensure_hardware("cpu-2core", {"cpu_count": 2, "gpus": []})
    repo.ensure_study("demo", "cpu-2core", "demo:target", "arith", spec)
    trial = HandTrial(config(2, speculative_method="draft_model", draft_model="demo:draft", num_speculative_tokens=2), (0.1,), (True,))
    store_trials(repo, "demo", (trial,))
    cache = tmp_path / "cache"
    env = {**os.environ, "LATTS_CACHE_DIR": str(cache)}
    proc = run_latts("export", "--study", "demo", "--budget", "1", "--format", "vllm-yaml", "--storage", url, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root = cache / "demo-models" / demo_models.VERSION
    served = yaml.safe_load(proc.stdout)
    assert served["model"] == str(root / "target")
    assert served["speculative-config"]["model"] == str(root / "draft")
    assert not cache.exists() or not any(root.glob("*/model.safetensors"))  # nothing trained
