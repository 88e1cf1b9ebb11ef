"""Failed trials as data: the one-line reason tables show, and whether memory ran out.

A failed trial's reason is one line (its full text, traceback and engine log, goes to a file the
line names). A reason that starts with OUT_OF_MEMORY marks a config that does not fit its hardware
target: the controller does not run it again there, in this study or any other with the same model
and engine settings, so the mark lives in the stored reason itself and needs no column.
"""

from __future__ import annotations

import re

OUT_OF_MEMORY = "out of memory"

# Signs that memory ran out, as each layer words it. Only definite ones: Ray's message for a worker
# that died unexpectedly names the OOM killer as one possible cause among several, so it is no sign.
_MEMORY_SIGNS = re.compile(
    "|".join(
        (
            r"OutOfMemoryError",  # torch (CUDA and CPU allocators), ray.exceptions
            r"CUDA out of memory",
            r"\bMemoryError\b",  # Python's own
            r"[Cc]an(?:no|')t allocate memory",  # ENOMEM; torch's CPU allocator
            r"less than requested memory for kv",  # vLLM CPU: VLLM_CPU_KVCACHE_SPACE beyond what is free
            r"less than desired CPU memory utilization",  # vLLM CPU: memory at start-up
            r"No available memory for the cache blocks",  # vLLM: nothing left for the KV cache
            r"larger than the available KV cache memory",  # vLLM: one request of max_model_len does not fit
            r"running low on memory",  # Ray's memory monitor killed the worker
            r"kernel OOM killer: \d+ process",  # counted in the worker's memory cgroup (latts.workers.pool)
        )
    )
)


def ran_out_of_memory(text: str) -> bool:
    """Whether a failure's full text (error, traceback, engine log) shows that memory ran out."""
    return _MEMORY_SIGNS.search(text) is not None


def out_of_memory(reason: str | None) -> bool:
    """Whether a stored failed trial's reason marks it as out of memory."""
    return reason is not None and reason.startswith(OUT_OF_MEMORY)
