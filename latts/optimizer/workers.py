"""The workers as the controller sees them: a small protocol, so that what runs generations can be swapped.

`latts.workers.pool.WorkerPool` (Ray actors holding vLLM engines) is the real one; tests drive the
controller with a fake that answers at once. Runs in the `latts tune` process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from latts.core.records import GenerationPlan
from latts.core.spec import StudySpec
from latts.problems import Problem
from latts.workers.pool import Finished


class Workers(Protocol):
    """Runs generation plans, several at once, and says which have finished."""

    @property
    def idle(self) -> int:
        """How many workers could take a plan now."""
        ...

    def submit(self, generation_id: int, plan: GenerationPlan) -> None:
        """Start a plan on an idle worker."""
        ...

    def wait(self, timeout_s: float = 1.0) -> list[Finished]:
        """Generations that ended within `timeout_s` (a failed one carries its one-line reason)."""
        ...

    def run(self, generation_id: int, plan: GenerationPlan) -> Finished:
        """Submit one plan and wait for it."""
        ...

    def detect_hardware(self) -> dict[str, Any]:
        """What the workers run on."""
        ...

    def shutdown(self) -> None: ...


# Starts the workers for a study and its problem list.
WorkersFactory = Callable[[StudySpec, list[Problem]], Workers]
