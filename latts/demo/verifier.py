"""`demo:verifier`: a tiny outcome reward model for `arith`, served through vLLM's pooling runner.

It reads a problem and a whole chain of thought and scores the chance that the final answer is
right. Like a real outcome reward model it starts from the policy (`demo:target`, which already
knows arithmetic) with a fresh scoring head. Negatives are the target's own kind of error: a chain
with an arithmetic slip carried through to a wrong answer (see demo_models.with_slips).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from latts.demo import models as demo_models
from latts.problems import Problem, arith_problems, arith_training_problems

STEPS, BATCH, LR, SEED = 1200, 32, 1e-3, 3


def labelled_chains(problems: Sequence[Problem], seed: int) -> tuple[list[str], list[float]]:
    """Each problem once, half with its correct chain and half with a slipped one (wrong answer)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for problem in problems:
        chain, label = problem.solution, 1.0
        if rng.random() < 0.5:
            while (chain := demo_models.with_slips(problem.solution, rng, 0.5)) == problem.solution:
                pass
            label = float(chain.endswith(f"\\boxed{{{problem.answer}}}"))
        texts.append(problem.prompt + chain)
        labels.append(label)
    return texts, labels


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Probability that a random correct chain outscores a random wrong one (ties count half)."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def train_verifier(out_dir: Path | str, target: Path | str, log: Callable[[str], object] | None = None) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(target)
    texts, labels = labelled_chains(arith_training_problems(STEPS * BATCH, seed=SEED), seed=SEED)
    # BOS + text and no EOS: exactly what vLLM's classify() feeds the model; the last token is pooled.
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    targets = torch.tensor(labels)

    threads = torch.get_num_threads()
    torch.set_num_threads(demo_models.TRAINING_THREADS)
    try:
        torch.manual_seed(SEED)
        model = LlamaForSequenceClassification.from_pretrained(target, num_labels=1)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        started = time.perf_counter()
        for step in range(STEPS):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            mask = encoded.attention_mask[rows]
            width = int(mask.sum(1).max())
            logits = model(input_ids=encoded.input_ids[rows, :width], attention_mask=mask[:, :width]).logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log and (step % 100 == 0 or step == STEPS - 1):
                log(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
        model.eval()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def held_out_auc(path: Path | str, n: int = 400) -> float:
    """AUC on held-out problems (evaluation seed 0), scored by transformers on the saved model."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    texts, labels = labelled_chains(arith_problems(n, seed=0), seed=1)
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        scores = model(**encoded).logits[:, 0].tolist()
    return auc(scores, labels)


if __name__ == "__main__":  # python -m latts.demo.verifier OUT_DIR (see latts.demo.models._train_in_subprocesses)
    import sys

    train_verifier(sys.argv[1], demo_models.model_path("demo:target"), log=print)
