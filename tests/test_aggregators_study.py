"""All seven aggregators searched on the demo models; a verifier's time is part of problem latency."""

from __future__ import annotations

import json
import shutil

import pytest

from latts.aggregation import RULES, aggregate
from latts.storage import Repository
from tests.conftest import run_latts, tune

pytestmark = pytest.mark.engine


def big_random_verifier(folder, tokenizer_source):
    """A reward model much larger than the demo one (random weights): slow to score, same interface."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=768, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=12,
        num_key_value_heads=12, max_position_embeddings=256, num_labels=1, pad_token_id=0,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_source / name).exists():
            shutil.copy(tokenizer_source / name, folder / name)
    return folder


def test_seven_aggregators_and_verifier_latency(tmp_path, demo_model_paths):
    slow = big_random_verifier(tmp_path / "slow-verifier", demo_model_paths["demo:target"])
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    tune(
        tmp_path,
        url,
        study="aggregators",
        benchmark={"name": "arith", "n_problems": 8, "seed": 7},
        search_space={
            "branches": [4],
            "speculative": ["none"],
            "aggregator": list(RULES),
            "verifier": ["none", "demo:verifier", str(slow)],
        },
        n_trials=9,
        workers={"count": 1, "engines_per_worker": 3},
        race={"finalists": 0},  # about aggregators and verifiers: a race would time the generations three rounds more
    )
    repo = Repository(url)
    trials = repo.trials("aggregators")
    assert sorted(t.state for t in trials) == ["COMPLETE"] * 9, [t.fail_reason for t in trials]
    by = {(t.config.aggregator, t.config.verifier): t for t in trials}

    assert len(repo.generations("aggregators")) == 3  # one per verifier: the aggregators share its branches
    for t in trials:
        for row in repo.timed_problems(t.generation_id):
            scored = [b.verifier_score is not None for b in row.branches]
            assert all(scored) if t.config.verifier else not any(scored)
            assert all(len(b.token_logprobs) == b.n_tokens for b in row.branches)
            # The worker applied the named rule: recomputed from the stored branches, it gives its answer.
            assert aggregate(t.config.aggregator, row.branches) == row.answers[t.config.aggregator]

    # Same engine, same seeds: the branches are the same, so the slow verifier's scoring is the difference.
    plain = by[("majority", None)].latency_s.mean
    for rule in ("best_of_n", "weighted_best_of_n"):
        assert by[(rule, str(slow))].latency_s.mean > by[(rule, "demo:verifier")].latency_s.mean
        assert by[(rule, str(slow))].latency_s.mean > plain

    front = json.loads(run_latts("frontier", "--study", "aggregators", "--json", "--storage", url).stdout)["frontier"]
    assert front
    table = run_latts("frontier", "--study", "aggregators", "--storage", url).stdout
    assert all(f"aggregators#{point['number']}" in table and point["config"]["aggregator"] in table for point in front)
