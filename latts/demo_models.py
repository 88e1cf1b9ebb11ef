"""Tiny demo models that latts trains itself on `arith` and caches.

`demo:target` is a small Llama that solves arith with a short chain of thought,
well enough to be right often and noisily enough that sampling several branches
and voting visibly beats one branch. `demo:draft` is a smaller Llama with the
same tokenizer, for draft-model speculative decoding. Both train in seconds on
two CPU cores, deterministically, and are cached under
cache_dir()/demo-models/<VERSION>/<name>.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEMO_MODELS = ("demo:target", "demo:draft")  # demo:verifier comes later

# Bump whenever the recipe below changes: cached models are keyed by it.
VERSION = "arith-v1"


@dataclass(frozen=True)
class _Recipe:
    hidden: int
    layers: int
    heads: int  # head_dim = hidden / heads must be one vLLM's CPU attention supports (32, 64, ...)
    intermediate: int
    steps: int
    batch: int = 16  # small batches, many steps: tiny models learn arith per step, not per example
    lr: float = 3e-3
    slip: float = 0.0  # chance that a training CoT step holds an arithmetic slip (see _with_slips)
    seed: int = 0


_RECIPES: dict[str, _Recipe] = {
    "target": _Recipe(hidden=128, layers=2, heads=4, intermediate=256, steps=900, slip=0.25),
    "draft": _Recipe(hidden=64, layers=2, heads=2, intermediate=128, steps=600),
}
_MAX_POSITIONS = 256  # prompt (~15 tokens) + 96 generated tokens fit with room to spare
_THREADS = 1  # fixed for identical bytes anywhere; 2 threads run up to 9x SLOWER when another process shares the 2 cores
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def cache_dir() -> Path:
    env = os.environ.get("LATTS_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("latts"))


def _models_root() -> Path:
    return cache_dir() / "demo-models" / VERSION


def is_demo_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith("demo:")


def _kind(name: str) -> str:
    kind = name.removeprefix("demo:")
    if kind not in _RECIPES:
        raise ValueError(f"unknown demo model {name!r}; known: {', '.join(DEMO_MODELS)}")
    return kind


def model_path(name: str) -> Path:
    """Where a demo model lives in the cache (it may not exist yet)."""
    return _models_root() / _kind(name)


def resolve_model(name: str) -> str:
    """A local folder for a demo model (trained first if missing); other names unchanged."""
    if not is_demo_model(name):
        return name
    return str(ensure_demo_models([name], log=lambda *_: None)[name])


def ensure_demo_models(
    names: Iterable[str] = DEMO_MODELS, log: Callable[[str], object] = print
) -> dict[str, Path]:
    """Train whichever of `names` is not cached yet; return name -> folder.

    Safe under concurrency: one process trains while others wait on a file
    lock, and a model folder appears only complete (written aside, then
    renamed into place).
    """
    from filelock import FileLock

    names = list(names)
    paths = {n: model_path(n) for n in names}
    if all(_complete(p) for p in paths.values()):
        return paths
    root = _models_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        for name, path in paths.items():
            if _complete(path):
                continue
            t0 = time.perf_counter()
            log(f"latts: training demo model {name} (one-off, cached in {path}) ...")
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=root))
            try:
                train_model(_kind(name), tmp)
                if path.exists():  # a stale, incomplete leftover
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"latts: trained {name} in {time.perf_counter() - t0:.1f} s")
    return paths


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


# ---------------------------------------------------------------- training


def build_tokenizer():
    """Byte-level BPE trained on the arith corpus, digits always single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from latts.benchmarks import arith_training_problems

    tok = Tokenizer(models.BPE())
    # Single-digit tokens keep arithmetic learnable; byte-level keeps any text encodable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [p.prompt + p.solution for p in arith_training_problems(2000, seed=1)]
    tok.train_from_iterator(corpus, trainer)
    # Prompts start with BOS, as Llama's do; vLLM encodes prompts with special tokens.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=_MAX_POSITIONS
    )


_STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")


def _with_slips(solution: str, rng: random.Random, slip: float) -> str:
    """The solution with occasional arithmetic slips, carried through to the answer.

    Each step's result is off by a small amount (a wrong digit or carry) with
    probability `slip`; later steps compute correctly from the wrong value. A
    model trained on this is right on average but errs at random when sampled,
    which is what makes voting over branches pay off, as with real LLMs.
    """
    steps, acc, out = _STEP.findall(solution), None, []
    for a, op, b, _ in steps:
        a = int(a) if acc is None else acc
        r = {"+": a + int(b), "-": a - int(b), "*": a * int(b)}[op]
        if rng.random() < slip:
            d = rng.choice((-10, -2, -1, 1, 2, 10))
            r = r + d if r + d >= 0 else r - d
        out.append(f"{a}{op}{b}={r}.")
        acc = r
    return " " + " ".join(out) + f" \\boxed{{{acc}}}"


def _encode_corpus(tokenizer, prompts: list[str], solutions: list[str]):
    """(ids, labels) tensors, right-padded; loss only on the solution and EOS."""
    import torch

    tok = tokenizer.backend_tokenizer
    rows = []
    for prompt, answer in zip(
        tok.encode_batch(prompts),  # BOS + prompt, exactly what vLLM sees
        tok.encode_batch(solutions, add_special_tokens=False),
    ):
        prompt, answer = prompt.ids, answer.ids + [tokenizer.eos_token_id]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a)] = torch.tensor(a)
        labels[i, : len(b)] = torch.tensor(b)
    return ids, labels


def train_model(
    kind: str, out_dir: Path | str, recipe: _Recipe | None = None, log: Callable[[str], object] | None = None
) -> Path:
    """Train demo model `kind` ("target" / "draft") into out_dir; deterministic."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from latts.benchmarks import arith_training_problems

    r = recipe or _RECIPES[kind]
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    problems = arith_training_problems(r.steps * r.batch, seed=r.seed)  # one pass, fresh problems
    rng = random.Random(r.seed)
    solutions = [_with_slips(p.solution, rng, r.slip) for p in problems]
    ids, labels = _encode_corpus(tokenizer, [p.prompt for p in problems], solutions)

    threads = torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    try:
        torch.manual_seed(r.seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=r.hidden,
            intermediate_size=r.intermediate,
            num_hidden_layers=r.layers,
            num_attention_heads=r.heads,
            num_key_value_heads=r.heads,
            max_position_embeddings=_MAX_POSITIONS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.01, betas=(0.9, 0.98))
        warmup = max(1, r.steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / r.steps))),
        )
        t_start = time.perf_counter()
        for step in range(r.steps):
            x, y = ids[step * r.batch : (step + 1) * r.batch], labels[step * r.batch : (step + 1) * r.batch]
            width = int((y != -100).nonzero()[:, 1].max()) + 1  # trim the padding columns
            loss = model(input_ids=x[:, :width], labels=y[:, :width]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if log and (step % 100 == 0 or step == r.steps - 1):
                log(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - t_start:.0f} s)")
        model.eval()
    finally:
        torch.set_num_threads(threads)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
