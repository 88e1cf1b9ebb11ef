"""The vLLM backend: the one place latts builds engines and generates. Same code on CPU and GPU builds."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from latts.core.records import EngineKey, Generation
from latts.core.spec import EngineSpec
from latts.demo import models as demo_models

SPEC_DECODE_COUNTERS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "drafted_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
}


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int
    token_logprobs: tuple[float, ...]


class Engine:
    def __init__(self, key: EngineKey, settings: EngineSpec, seed: int) -> None:
        from vllm import LLM  # imported here: the controller never needs vLLM

        speculative = key.speculative_config()
        if speculative and "model" in speculative:
            speculative["model"] = demo_models.resolve_model(speculative["model"])
        model = demo_models.resolve_model(key.model)
        started = time.perf_counter()
        self.llm = LLM(
            model=model,
            dtype=key.dtype,
            tensor_parallel_size=key.tensor_parallel_size,
            max_model_len=key.max_model_len,
            speculative_config=speculative,
            runner=key.runner,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
            seed=seed,
            disable_log_stats=False,  # spec-decode counters come from the engine's stats
        )
        self.start_s = time.perf_counter() - started

    def generate(
        self, prompts: list[str], generation: Generation, seeds: list[int], n: list[int] | None = None
    ) -> list[list[Sample]]:
        """`generation.branches` samples for each prompt (or `n[i]` for prompt i), submitted together."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=count,
                temperature=generation.temperature,
                top_p=generation.top_p,
                max_tokens=generation.max_tokens,
                logprobs=0,  # the sampled token's own log-probability, as the engine computed it
                seed=seed,
            )
            for seed, count in zip(seeds, n or [generation.branches] * len(seeds), strict=True)
        ]
        requests = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [
                Sample(
                    text=out.text,
                    n_tokens=len(out.token_ids),
                    token_logprobs=tuple(step[token].logprob for token, step in zip(out.token_ids, out.logprobs or [])),
                )
                for out in request.outputs
            ]
            for request in requests
        ]

    def score(self, prompt: str, texts: list[str]) -> list[float]:
        """A verifier's score of each completed solution: the reward model's probability that it is right."""
        outputs = self.llm.classify([prompt + text for text in texts], use_tqdm=False)
        return [float(out.outputs.probs[0]) for out in outputs]

    def spec_counters(self) -> dict[str, int]:
        """Cumulative speculative-decoding counters of this process's engines."""
        totals = dict.fromkeys(SPEC_DECODE_COUNTERS.values(), 0)
        for metric in self.llm.get_metrics():
            if metric.name in SPEC_DECODE_COUNTERS:
                totals[SPEC_DECODE_COUNTERS[metric.name]] += int(metric.value)
        return totals

    def close(self) -> None:
        # The engine core runs in its own process; shutting it down returns its KV cache memory.
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm


class EngineCache:
    """Engines by key, least recently used evicted first once `capacity` is reached."""

    def __init__(self, capacity: int, settings: EngineSpec, seed: int) -> None:
        self.capacity = capacity
        self.settings = settings
        self.seed = seed
        self._engines: OrderedDict[EngineKey, Engine] = OrderedDict()

    def keys(self) -> list[EngineKey]:
        return list(self._engines)

    def get(self, key: EngineKey) -> tuple[Engine, bool]:
        """The engine for `key` and whether it was started just now."""
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key], False
        while len(self._engines) >= self.capacity:
            _, evicted = self._engines.popitem(last=False)
            evicted.close()
        engine = Engine(key, self.settings, self.seed)
        self._engines[key] = engine
        return engine, True
