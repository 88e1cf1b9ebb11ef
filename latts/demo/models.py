"""Tiny demo models that latts trains itself on `arith` and caches.

`demo:target` (Llama, 0.36M parameters) solves arith with a short chain of
thought. It is trained on chains that hold occasional arithmetic slips, so it
errs at random when sampled: on the quickstart's 48 problems one copy trained
on the project's 2-core machine scored 56% greedy, about 44% per branch at
temperature 0.8 and about 60% with a majority vote over 8 branches
(tests/test_demo_models.py re-measures the gain). That gap is what latts'
demos measure. `demo:draft` (0.1M parameters, same tokenizer, trained on clean
chains) agrees with the target's greedy output often enough for draft-model
speculative decoding (~94% of drafted tokens accepted at temperature 0).

Both train from scratch at once, single-threaded and deterministic, in about a
minute on two CPU cores, and are cached under
cache_dir()/demo-models/<VERSION>/<name>.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_MODELS = ("demo:target", "demo:draft", "demo:verifier", "demo:target-xl")
# Trained together on first use of any model: one single-threaded process each, side by side.
_GENERATORS = ("demo:target", "demo:draft")
# Built from the trained target, so after it: the verifier (latts.demo.verifier) and the target's
# function-preserving deep and wide copy (latts.demo.deep), whose steps cost what real ones do.
_NEEDS = {"demo:verifier": "demo:target", "demo:target-xl": "demo:target"}
# How the models that are not trained from a recipe are made: `python -m MODULE OUT_DIR`.
_BUILDERS = {"verifier": "latts.demo.verifier", "target-xl": "latts.demo.deep"}

# Bump whenever the recipe below changes: cached models are keyed by it.
VERSION = "arith-v3"


@dataclass(frozen=True)
class Recipe:
    hidden: int
    layers: int
    heads: int  # head_dim = hidden / heads must be one vLLM's CPU attention supports (32, 64, ...)
    intermediate: int
    steps: int
    batch: int = 16  # small batches, many steps: tiny models learn arith per step, not per example
    lr: float = 2e-3
    slip: float = 0.0  # chance that a training CoT step holds an arithmetic slip (see with_slips)
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    "target": Recipe(hidden=128, layers=2, heads=4, intermediate=256, steps=1200, slip=0.2),
    "draft": Recipe(hidden=64, layers=2, heads=2, intermediate=128, steps=1500),
}
_MAX_POSITIONS = 256  # prompt (~15 tokens) + 96 generated tokens fit with room to spare
# Fixed, so the same recipe gives the same bytes; and 2 threads ran up to 9x slower here
# whenever another process shared the 2 cores. The verifier trains with it too.
TRAINING_THREADS = 1
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
    if kind not in RECIPES and kind not in _BUILDERS:
        raise ValueError(f"unknown demo model {name!r}; known: {', '.join(DEMO_MODELS)}")
    return kind


def model_path(name: str) -> Path:
    """Where a demo model lives in the cache (it may not exist yet)."""
    return _models_root() / _kind(name)


def local_name(name: str) -> str:
    """The folder a demo model lives in (it may not be trained yet); other names unchanged. Never trains."""
    return str(model_path(name)) if is_demo_model(name) else name


def resolve_model(name: str) -> str:
    """A local folder for a demo model (trained first if missing); other names unchanged.

    Training the target or the draft trains both at once: in parallel that
    costs no extra wall time on two cores, and the other one is often wanted
    next. The verifier and demo:target-xl are built only when asked for (after
    the target). Progress goes to this module's logger (on a worker: the study's log).
    """
    if not is_demo_model(name):
        return name
    _kind(name)  # unknown demo names fail before any training
    if name in _GENERATORS or _NEEDS.get(name) in _GENERATORS:
        ensure_demo_models(_GENERATORS)
    return str(ensure_demo_models([name])[name])


def ensure_demo_models(
    names: Iterable[str] = DEMO_MODELS, log: Callable[[str], object] = logger.info
) -> dict[str, Path]:
    """Train whichever of `names` is not cached yet; return name -> folder.

    Safe under concurrency: one process trains while others wait on a file
    lock, and a model folder appears only complete (written aside, then
    renamed into place). Missing models train at once, one single-threaded
    subprocess each, so two models take the wall time of one on two cores.
    """
    from filelock import FileLock

    paths = {n: model_path(n) for n in names}
    if all(_complete(p) for p in paths.values()):
        return paths
    if any(n in _NEEDS for n in paths):  # the verifier starts from the target: train that first
        ensure_demo_models({_NEEDS.get(n, n) for n in paths}, log)
    root = _models_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        missing = {n: p for n, p in paths.items() if not _complete(p)}
        if not missing:
            return paths
        t0 = time.perf_counter()
        log(f"latts: training demo models {', '.join(missing)} (one-off, cached in {root}) ...")
        tmps = {n: Path(tempfile.mkdtemp(prefix=f".{p.name}-", dir=root)) for n, p in missing.items()}
        try:
            _train_in_subprocesses({n: tmps[n] for n in missing})
            for name, path in missing.items():
                if not _complete(tmps[name]):
                    raise RuntimeError(f"making demo model {name} left no model in {tmps[name]}")
                if path.exists():  # an incomplete leftover from outside latts
                    shutil.rmtree(path)
                tmps[name].chmod(0o755)  # mkdtemp makes it private; the cache may be shared
                os.replace(tmps[name], path)
        finally:
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
        log(f"latts: trained {', '.join(missing)} in {time.perf_counter() - t0:.0f} s")
    return paths


def _train_in_subprocesses(jobs: dict[str, Path]) -> None:
    """Make each demo model into its folder, all at once, in fresh interpreters.

    A plain subprocess (not multiprocessing) so the caller's __main__ is never
    re-imported, and torch's thread settings stay out of the caller's process.
    """
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # the folder holding `latts`: works without latts installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    def command(name: str, out: Path) -> list[str]:
        kind = _kind(name)
        if kind in RECIPES:
            return [sys.executable, "-m", "latts.demo.models", json.dumps(asdict(RECIPES[kind])), str(out)]
        return [sys.executable, "-m", _BUILDERS[kind], str(out)]

    procs = {
        name: subprocess.Popen(command(name, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, out in jobs.items()
    }
    failed = []
    for name, proc in procs.items():
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"--- {name} (exit {proc.returncode}):\n{output[-4000:]}")
    if failed:
        raise RuntimeError("training demo models failed\n" + "\n".join(failed))


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


# ---------------------------------------------------------------- training


def build_tokenizer():
    """Byte-level BPE trained on the arith corpus, digits always single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from latts.problems import arith_training_problems

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


def with_slips(solution: str, rng: random.Random, slip: float) -> str:
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


def train_model(kind: str | Recipe, out_dir: Path | str, log: Callable[[str], object] | None = None) -> Path:
    """Train demo model `kind` ("target", "draft" or a recipe) into out_dir.

    Deterministic: the same recipe gives the same bytes (on one kind of CPU).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from latts.problems import arith_training_problems

    r = RECIPES[kind] if isinstance(kind, str) else kind
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    problems = arith_training_problems(r.steps * r.batch, seed=r.seed)  # one pass, fresh problems
    rng = random.Random(r.seed)
    solutions = [with_slips(p.solution, rng, r.slip) for p in problems]
    ids, labels = _encode_corpus(tokenizer, [p.prompt for p in problems], solutions)

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
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


if __name__ == "__main__":  # python -m latts.demo.models RECIPE_JSON OUT_DIR (see _train_in_subprocesses)
    train_model(Recipe(**json.loads(sys.argv[1])), sys.argv[2], log=print)
