"""A vLLM plugin that repairs the CPU build's Triton-kernel shims (vLLM issue #55005).

This module runs inside every vLLM process, the main (front-end) process and the engine-core
process alike (and the engine core's worker process, where the CPU build runs the kernels),
because vLLM calls `register` through the `vllm.general_plugins` entry point:

    [project.entry-points."vllm.general_plugins"]
    latts_cpu_fix = "latts.workers.vllm_cpu_fix:register"

Without a Triton CPU backend, vLLM's CPU platform swaps Triton kernels for the C++ shims in
`vllm.utils.cpu_triton_utils`. The shim behind the rejection sampler's `expand_batch_to_tokens`
casts its float output to a temporary int64 copy and writes there, so the per-token temperature
(and top-k/top-p) that speculative sampling divides logits by is uninitialised memory: every
speculative request at temperature > 0 samples from corrupted logits.

`apply` runs each shim the speculative path uses (rejection sampling for the draft-model and
n-gram methods, and EAGLE's input preparation) on small hand-made tensors, compares it with a
pure-PyTorch reference that follows the Triton kernel it replaces, and replaces only the shims
that disagree. A fixed vLLM release therefore makes this plugin a no-op.

vLLM binds the shims at `CpuPlatform.register_triton_kernel_overrides`: it reads them from
`vllm.utils.cpu_triton_utils` then and stores each one inside a `KernelOverride` wrapper, so a
later change to the module alone would not reach the kernels. `apply` therefore patches the module
attribute (what a later registration picks up) and, if registration already happened, the
registered wrappers too; either order works. Set `LATTS_VLLM_CPU_FIX=0` to leave vLLM as shipped.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latts.core.records import CpuFixVerdict

__all__ = ["CpuFixVerdict", "apply", "broken_shims", "register"]


_ENV_VAR = "LATTS_VLLM_CPU_FIX"
# A child of vLLM's logger, so the verdict shows in the engine-core and worker logs. (The main
# process loads plugins before vLLM configures its logging, so there the line is dropped.)
_log = logging.getLogger("vllm.plugins.latts_cpu_fix")

_verdict: CpuFixVerdict | None = None
_shipped: dict[str, Callable[..., Any]] = {}  # shim name -> the function vLLM shipped


# --- Pure-PyTorch references: the semantics of each Triton kernel, with its shim's signature. ---
# Each one is both the yardstick its shim is checked against and that shim's replacement, so each
# keeps its shim's parameter list: vLLM launches it in the Triton kernel's argument order.


def _segments(cu_num_tokens: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) per request from an inclusive cumulative count, as the kernels read it."""
    ends = [int(e) for e in cu_num_tokens.tolist()]
    return list(zip([0, *ends[:-1]], ends))


def _expand_kernel_impl(
    output: torch.Tensor,
    input_val: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    replace_from: int,
    replace_to: int,
    MAX_NUM_TOKENS: int | None = None,
) -> None:
    """`expand_kernel`: output[start_i:end_i] = input[i], with replace_from mapped to replace_to."""
    if input_val.shape[0] == 0:
        return
    ends = cu_num_tokens.to(torch.int64)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = input_val.masked_fill(input_val == replace_from, replace_to)
    total = int(ends[-1])
    output[:total] = values.repeat_interleave(counts, output_size=total).to(output.dtype)


def _rejection_greedy_sample_kernel_impl(
    output_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    draft_token_ids: torch.Tensor,
    target_argmax: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    is_greedy: torch.Tensor | None,
    max_spec_len: int,
    uniform_probs: torch.Tensor | None = None,
    synthetic_conditional_rates: torch.Tensor | None = None,
    SYNTHETIC_MODE: bool = False,
) -> None:
    """`rejection_greedy_sample_kernel`: keep the target argmax up to the first mismatch."""
    bonus = bonus_token_ids.reshape(-1)
    for req, (start, end) in enumerate(_segments(cu_num_draft_tokens)):
        if is_greedy is not None and not bool(is_greedy[req]):
            continue
        draft = draft_token_ids[start:end].to(torch.int64)
        target = target_argmax[start:end].to(torch.int64)
        if SYNTHETIC_MODE:
            assert uniform_probs is not None and synthetic_conditional_rates is not None
            rates = synthetic_conditional_rates[: end - start]
            accepted = (uniform_probs[start:end] < rates) & (draft >= 0)
            tokens = torch.where(accepted, draft, target)
        else:
            accepted = draft == target
            tokens = target
        rejections = (~accepted).nonzero()
        written = end - start if len(rejections) == 0 else int(rejections[0]) + 1
        output_token_ids[req, :written] = tokens[:written].to(output_token_ids.dtype)
        if len(rejections) == 0:
            output_token_ids[req, end - start] = bonus[req]


def _rejection_random_sample_kernel_impl(
    output_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    recovered_token_ids: torch.Tensor,
    uniform_probs: torch.Tensor,
    is_greedy: torch.Tensor | None,
    max_spec_len: int,
    vocab_size: int,
    synthetic_conditional_rates: torch.Tensor | None = None,
    NO_DRAFT_PROBS: bool = False,
    SYNTHETIC_MODE: bool = False,
) -> None:
    """`rejection_random_sample_kernel`: accept a draft token when p_target/p_draft >= u."""
    bonus = bonus_token_ids.reshape(-1)
    for req, (start, end) in enumerate(_segments(cu_num_draft_tokens)):
        if is_greedy is not None and bool(is_greedy[req]):
            continue
        rejected = False
        for pos in range(end - start):
            token = start + pos
            draft_id = int(draft_token_ids[token])
            uniform = float(uniform_probs[token])
            if draft_id < 0:  # padded draft slot
                accepted = False
            elif SYNTHETIC_MODE:
                assert synthetic_conditional_rates is not None
                accepted = uniform < float(synthetic_conditional_rates[pos])
            else:
                draft_p = 1.0 if NO_DRAFT_PROBS or draft_probs is None else float(draft_probs[token, draft_id])
                target_p = float(target_probs[token, draft_id])
                accepted = draft_p > 0 and target_p / draft_p >= uniform
            if accepted:
                output_token_ids[req, pos] = draft_id
            else:
                output_token_ids[req, pos] = recovered_token_ids[token]
                rejected = True
                break
        if not rejected:
            output_token_ids[req, end - start] = bonus[req]


def _sample_recovered_tokens_kernel_impl(
    output_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    inv_q: torch.Tensor,
    vocab_size: int,
    BLOCK_SIZE: int | None = None,
    NO_DRAFT_PROBS: bool = False,
    USE_FP64_GUMBEL: bool = False,
) -> None:
    """`sample_recovered_tokens_kernel`: argmax of max(p_target - p_draft, 0) * inv_q[request]."""
    for req, (start, end) in enumerate(_segments(cu_num_draft_tokens)):
        for token in range(start, end):
            if NO_DRAFT_PROBS or draft_probs is None:
                prob = target_probs[token, :vocab_size].clone()
                prob[int(draft_token_ids[token])] = 0
            else:
                prob = (target_probs[token, :vocab_size] - draft_probs[token, :vocab_size]).clamp_min(0)
            output_token_ids[token] = int(torch.argmax(prob * inv_q[req, :vocab_size]))


def _eagle_prepare_inputs_padded_kernel_impl(
    cu_num_draft_tokens: torch.Tensor,
    valid_sampled_tokens_count: torch.Tensor,
    query_start_loc_gpu: torch.Tensor,
    token_indices_to_sample: torch.Tensor,
    num_rejected_tokens_gpu: torch.Tensor,
    num_reqs: int,
) -> None:
    """`eagle_prepare_inputs_padded_kernel`: rejected count and token index to sample per request."""
    ends = cu_num_draft_tokens[:num_reqs].to(torch.int64)
    num_draft = torch.diff(ends, prepend=ends.new_zeros(1))
    valid = valid_sampled_tokens_count[:num_reqs].to(torch.int64)
    rejected = torch.where(num_draft > 0, num_draft + 1 - valid, torch.zeros_like(num_draft))
    last_token = query_start_loc_gpu[1 : num_reqs + 1].to(torch.int64) - 1
    token_indices_to_sample[:num_reqs] = (last_token - rejected).to(token_indices_to_sample.dtype)
    num_rejected_tokens_gpu[:num_reqs] = rejected.to(num_rejected_tokens_gpu.dtype)


def _eagle_prepare_next_token_padded_kernel_impl(
    sampled_token_ids: torch.Tensor,
    discard_request_mask: torch.Tensor,
    backup_next_token_ids: torch.Tensor,
    next_token_ids: torch.Tensor,
    valid_sampled_tokens_count: torch.Tensor,
    vocab_size: int,
    num_sampled_tokens_per_req: int,
    num_reqs: int,
    stride: int | None = None,
    BLOCK_SIZE_TOKENS: int | None = None,
) -> None:
    """`eagle_prepare_next_token_padded_kernel`: last valid sampled token (or the backup) and count."""
    tokens = sampled_token_ids[:num_reqs, :num_sampled_tokens_per_req].to(torch.int64)
    valid = (tokens != -1) & (tokens < vocab_size)
    count = valid.sum(dim=1)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=1)
    last_token = tokens.gather(1, last.clamp_min(0).unsqueeze(1)).squeeze(1)
    discard = discard_request_mask[:num_reqs].to(torch.bool)
    backup = backup_next_token_ids[:num_reqs].to(torch.int64)
    next_token_ids[:num_reqs] = torch.where(discard | (count == 0), backup, last_token).to(next_token_ids.dtype)
    valid_sampled_tokens_count[:num_reqs] = torch.where(discard, torch.zeros_like(count), count).to(
        valid_sampled_tokens_count.dtype
    )


def _eagle_step_slot_mapping_metadata_kernel_impl(
    positions: torch.Tensor,
    block_table: torch.Tensor,
    stride: int,
    seq_lens: torch.Tensor,
    out_clamped_positions: torch.Tensor,
    out_slot_mapping: torch.Tensor,
    block_size: int,
    max_model_len: int,
    n_blocks_per_req: int,
    PAD_ID: int,
    batch_size: int | None = None,
) -> None:
    """`eagle_step_slot_mapping_metadata_kernel`: next position, its slot, seq_lens += 1."""
    batch = positions.shape[0] if batch_size is None else batch_size
    new_position = positions[:batch].to(torch.int64) + 1
    exceeds = new_position >= max_model_len
    clamped = torch.where(exceeds, torch.zeros_like(new_position), new_position)
    block_number = (clamped // block_size).clamp(max=n_blocks_per_req - 1)
    block_id = block_table[:batch].to(torch.int64).gather(1, block_number.unsqueeze(1)).squeeze(1)
    slot = torch.where(exceeds, torch.full_like(clamped, PAD_ID), block_id * block_size + clamped % block_size)
    seq_len = seq_lens[:batch].to(torch.int64)
    new_seq_len = torch.where(exceeds, torch.ones_like(seq_len), seq_len + 1).clamp(max=max_model_len)
    out_clamped_positions[:batch] = clamped.to(out_clamped_positions.dtype)
    out_slot_mapping[:batch] = slot.to(out_slot_mapping.dtype)
    out_slot_mapping[batch:] = PAD_ID  # padded launch slots
    seq_lens[:batch] = new_seq_len.to(seq_lens.dtype)


def _copy_and_expand_eagle_inputs_kernel_impl(
    target_token_ids_ptr: torch.Tensor,
    target_positions_ptr: torch.Tensor,
    next_token_ids_ptr: torch.Tensor,
    out_input_ids_ptr: torch.Tensor,
    out_positions_ptr: torch.Tensor,
    out_is_rejected_token_mask_ptr: torch.Tensor,
    out_is_masked_token_mask_ptr: torch.Tensor,
    out_new_token_indices_ptr: torch.Tensor,
    out_hidden_state_mapping_ptr: torch.Tensor,
    query_start_loc_ptr: torch.Tensor,
    query_end_loc_ptr: torch.Tensor,
    padding_token_id: int,
    parallel_drafting_token_id: int,
    total_input_tokens: int,
    num_padding_slots_per_request: int,
    shift_input_ids: bool,
    BLOCK_SIZE_TOKENS: int | None = None,
    BLOCK_SIZE_REQS: int | None = None,
) -> None:
    """`copy_and_expand_eagle_inputs_kernel`: lay each request's draft inputs out with its new slots."""
    slots = num_padding_slots_per_request
    for req in range(query_end_loc_ptr.shape[0]):
        start = int(query_start_loc_ptr[req])
        next_start = int(query_start_loc_ptr[req + 1])
        end = int(query_end_loc_ptr[req])
        if shift_input_ids:
            num_valid, input_offset, out_start = end - start, 1, start + req * (slots - 1)
        else:
            num_valid, input_offset, out_start = end - start + 1, 0, start + req * slots
        num_out = num_valid + slots + (next_start - end - 1)
        j = torch.arange(num_out)
        valid, bonus = j < num_valid, j == num_valid
        parallel = (j > num_valid) & (j < num_valid + slots)
        rejected = j >= num_valid + slots
        source = (start + input_offset + j).clamp(max=total_input_tokens - 1)
        ids = torch.where(valid, target_token_ids_ptr[source].to(torch.int64), 0)
        ids = torch.where(bonus, int(next_token_ids_ptr[req]), ids)
        ids = torch.where(parallel, parallel_drafting_token_id, ids)
        ids = torch.where(rejected, padding_token_id, ids)
        out = out_start + j
        out_input_ids_ptr[out] = ids.to(out_input_ids_ptr.dtype)
        start_position = int(target_positions_ptr[start])
        out_positions_ptr[out] = torch.where(rejected, 0, start_position + j).to(out_positions_ptr.dtype)
        out_is_rejected_token_mask_ptr[out] = rejected.to(out_is_rejected_token_mask_ptr.dtype)
        out_is_masked_token_mask_ptr[out] = parallel.to(out_is_masked_token_mask_ptr.dtype)
        new = (j >= num_valid) & (j < num_valid + slots)
        out_new_token_indices_ptr[req * slots + j[new] - num_valid] = out[new].to(out_new_token_indices_ptr.dtype)
        if shift_input_ids:
            k = torch.arange(next_start - start)
            out_hidden_state_mapping_ptr[start + k] = (out_start + k).to(out_hidden_state_mapping_ptr.dtype)


# --- Checks: each shim against its reference on small hand-made cases, launched as vLLM does. ---


def _i32(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _i64(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _probs(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _expand_cases() -> list[tuple[Any, ...]]:
    cu = _i32(2, 5, 6)
    return [  # output sentinel-filled: a shim that never writes its output cannot pass by chance
        (torch.full((6,), -7.0), torch.tensor([0.8, 0.0, 1.3]), cu, 0, 1, 128),  # temperature
        (torch.full((6,), -7.0), torch.tensor([0.9, 1.0, 0.5]), cu, 0, 0, 128),  # top-p
        (torch.full((6,), -7, dtype=torch.int32), _i32(3, 0, 7), cu, 0, 0, 128),  # top-k
        (torch.full((6,), -7, dtype=torch.int64), _i64(3, 0, 7), cu, 0, 1, 128),
    ]


def _greedy_cases() -> list[tuple[Any, ...]]:
    def case(is_greedy: torch.Tensor | None) -> tuple[Any, ...]:
        # request 0 all accepted (bonus), 1 rejected at position 1, 2 rejected at 0, 3 has no drafts
        return (
            torch.full((4, 4), -1, dtype=torch.int32),
            _i32(3, 6, 8, 8),
            _i32(5, 6, 7, 1, 9, 2, 4, 4),
            _i64(5, 6, 7, 1, 3, 8, 0, 4),
            _i64(11, 12, 13, 14).reshape(4, 1),
            is_greedy,
            3,
            None,
            None,
            False,
        )

    return [case(None), case(torch.tensor([True, False, True, True]))]


def _random_cases() -> list[tuple[Any, ...]]:
    target = _probs([[0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25],
                     [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.4, 0.4, 0.1, 0.1]])  # fmt: skip
    draft = _probs([[0.1, 0.3, 0.3, 0.3], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.7, 0.1],
                    [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.2, 0.2, 0.3, 0.3]])  # fmt: skip

    def case(draft_probs: torch.Tensor | None, greedy: Sequence[bool]) -> tuple[Any, ...]:
        return (
            torch.full((3, 4), -1, dtype=torch.int32),
            _i32(3, 5, 6),
            _i32(1, 2, 0, 1, 3, 0),
            draft_probs,
            target.clone(),
            _i64(21, 22, 23).reshape(3, 1),
            _i32(30, 31, 32, 33, 34, 35),
            torch.tensor([0.5, 0.2, 0.9, 0.95, 0.3, 0.6], dtype=torch.float64),
            torch.tensor(greedy),
            3,
            4,
            None,
            draft_probs is None,
            False,
        )

    return [case(draft.clone(), [False, False, False]), case(None, [False, True, False])]


def _recovered_cases() -> list[tuple[Any, ...]]:
    target = _probs([[0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1]])
    draft = _probs([[0.1, 0.3, 0.3, 0.3], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.7, 0.1, 0.1]])
    inv_q = torch.tensor([[1.0, 1.1, 0.9, 1.3], [0.5, 2.0, 1.0, 4.0]])

    def case(draft_probs: torch.Tensor | None, inv: torch.Tensor) -> tuple[Any, ...]:
        out = torch.full((4,), -1, dtype=torch.int32)
        return (out, _i32(3, 4), _i32(1, 0, 3, 0), draft_probs, target.clone(), inv, 4, 8192,
                draft_probs is None, inv.dtype == torch.float64)  # fmt: skip

    return [case(draft.clone(), inv_q.clone()), case(None, inv_q.clone()), case(None, inv_q.double())]


def _prepare_inputs_cases() -> list[tuple[Any, ...]]:
    # requests with 3, 0 and 2 drafts; 2, 1 and 3 valid sampled tokens
    return [(_i32(3, 3, 5), _i32(2, 1, 3), _i32(0, 4, 5, 8), _i32(-9, -9, -9), _i32(-9, -9, -9), 3)]


def _next_token_cases() -> list[tuple[Any, ...]]:
    wide = _i32(5, -1, -1, 77, 8, 9, 99, 77, -1, -1, -1, 77, 4, 6, 7, 77, 3, 3, 3, 77).reshape(5, 4)
    sampled = wide[:, :3]  # a strided view, as a slice of a wider buffer
    discard = torch.tensor([False, False, False, False, True])
    return [(sampled, discard, _i32(40, 41, 42, 43, 44), _i32(-9, -9, -9, -9, -9), _i32(-9, -9, -9, -9, -9),
             50, 3, 5, sampled.stride(0), 4)]  # fmt: skip


def _step_slot_cases() -> list[tuple[Any, ...]]:
    block_table = _i32(7, 3, 9, 2, 5, 1, 4, 8, 6).reshape(3, 3)
    return [(_i64(4, 7, 11), block_table, 3, _i32(5, 8, 12), torch.full((3,), -9, dtype=torch.int64),
             torch.full((3,), -9, dtype=torch.int64), 4, 12, 3, -1, 3)]  # fmt: skip


def _copy_expand_cases() -> list[tuple[Any, ...]]:
    def case(shift: bool, slots: int) -> tuple[Any, ...]:
        # request 0: 3 tokens, none rejected; request 1: 4 tokens, last 2 rejected
        query_start, query_end = _i32(0, 3, 7), _i32(2, 4)
        num_out = 7 + 2 * (slots - 1 if shift else slots)
        return (
            _i32(10, 11, 12, 20, 21, 22, 23),
            _i64(5, 6, 7, 40, 41, 42, 43),
            _i32(13, 24),
            torch.full((num_out + 2,), -9, dtype=torch.int32),
            torch.full((num_out + 2,), -9, dtype=torch.int64),
            torch.zeros(num_out + 2, dtype=torch.bool),
            torch.ones(num_out + 2, dtype=torch.bool),
            torch.full((2 * slots,), -9, dtype=torch.int32),
            torch.full((7,), -9, dtype=torch.int32),
            query_start,
            query_end,
            0,
            99,
            7,
            slots,
            shift,
            8,
        )

    return [case(False, 1), case(False, 2), case(True, 2)]


@dataclass(frozen=True)
class _Shim:
    name: str  # the function in vllm.utils.cpu_triton_utils
    fixed: Callable[..., Any]  # the pure-PyTorch reference, also the replacement
    cases: Callable[[], list[tuple[Any, ...]]]  # launch arguments, in the Triton kernel's order


SHIMS = (
    _Shim("_expand_kernel_impl", _expand_kernel_impl, _expand_cases),
    _Shim("_rejection_greedy_sample_kernel_impl", _rejection_greedy_sample_kernel_impl, _greedy_cases),
    _Shim("_rejection_random_sample_kernel_impl", _rejection_random_sample_kernel_impl, _random_cases),
    _Shim("_sample_recovered_tokens_kernel_impl", _sample_recovered_tokens_kernel_impl, _recovered_cases),
    _Shim(
        "_eagle_prepare_inputs_padded_kernel_impl",
        _eagle_prepare_inputs_padded_kernel_impl,
        _prepare_inputs_cases,
    ),
    _Shim(
        "_eagle_prepare_next_token_padded_kernel_impl",
        _eagle_prepare_next_token_padded_kernel_impl,
        _next_token_cases,
    ),
    _Shim(
        "_eagle_step_slot_mapping_metadata_kernel_impl",
        _eagle_step_slot_mapping_metadata_kernel_impl,
        _step_slot_cases,
    ),
    _Shim(
        "_copy_and_expand_eagle_inputs_kernel_impl",
        _copy_and_expand_eagle_inputs_kernel_impl,
        _copy_expand_cases,
    ),
)


def _clone(args: tuple[Any, ...]) -> list[Any]:
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _agrees(shim: Callable[..., Any], reference: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    """Same writes as the reference, checked on every tensor argument (inputs must stay intact)."""
    got, want = _clone(args), _clone(args)
    try:
        shim(*got)
    except Exception:  # a shim that cannot run the kernel's launch is as broken as a wrong one
        return False
    reference(*want)
    return all(
        torch.equal(g, w) for g, w in zip(got, want, strict=True) if isinstance(g, torch.Tensor)
    )


def _on_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _cpu_triton_utils() -> Any | None:
    """vLLM's shim module (None if this vLLM has none), C++ kernels loaded, shipped shims remembered."""
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:
        return None
    if not hasattr(torch.ops._C, "expand_kernel_impl"):
        from vllm.platforms import current_platform

        current_platform.import_kernels()
    for shim in SHIMS:
        if hasattr(cpu_triton_utils, shim.name):  # a shim this vLLM dropped needs no fixing
            _shipped.setdefault(shim.name, getattr(cpu_triton_utils, shim.name))
    return cpu_triton_utils


def broken_shims() -> list[str]:
    """Names (in `vllm.utils.cpu_triton_utils`) of the shims as shipped that disagree with the kernels.

    Always checks the shipped functions, even after `apply` replaced them; empty off the CPU
    platform, where vLLM never uses these shims.
    """
    if not _on_cpu_platform() or _cpu_triton_utils() is None:
        return []
    return [
        shim.name
        for shim in SHIMS
        if shim.name in _shipped
        and not all(_agrees(_shipped[shim.name], shim.fixed, args) for args in shim.cases())
    ]


def _rebind_registered(shipped: Callable[..., Any], fixed: Callable[..., Any]) -> None:
    """Swap `fixed` in where vLLM already registered `shipped` as a kernel override."""
    from vllm.triton_utils import dispatcher

    for name, (original, impl) in list(getattr(dispatcher, "_registry", {}).items()):
        if impl is not shipped:
            continue
        host, attr = dispatcher._resolve_kernel(name)
        wrapper = getattr(host, attr)
        if isinstance(wrapper, dispatcher.KernelOverride) and getattr(wrapper, "_impl", None) is shipped:
            # One wrapper object is shared by every holder of the kernel: mutate it in place.
            wrapper._impl = wrapper.func = fixed
            wrapper._forward_by_name = tuple(inspect.signature(fixed).parameters) == wrapper.arg_names
            dispatcher._registry[name] = (original, fixed)
        else:  # an unfamiliar layout: go through vLLM's public registration instead
            dispatcher.register_kernels({name: fixed})


def apply() -> CpuFixVerdict:
    """Replace the broken CPU shims with correct ones; idempotent within a process.

    Returns "off" when `LATTS_VLLM_CPU_FIX=0` (vLLM left as shipped), "not-needed" off the CPU
    platform, with a Triton CPU backend (no shims in use), or when no shim is broken, and
    "applied" after replacing the broken ones. Works before and after vLLM registers its overrides.
    """
    global _verdict
    if _verdict is not None:
        return _verdict
    if os.environ.get(_ENV_VAR, "1").strip() == "0":
        _verdict = "off"
        _log.info("latts CPU shim fix: off (%s=0), vLLM left as shipped", _ENV_VAR)
        return _verdict
    from vllm.triton_utils import HAS_TRITON

    broken = [] if HAS_TRITON else broken_shims()
    if not broken:
        _verdict = "not-needed"
        _log.debug("latts CPU shim fix: not needed in pid %d", os.getpid())
        return _verdict
    cpu_triton_utils = _cpu_triton_utils()
    assert cpu_triton_utils is not None  # broken shims came from it
    for shim in SHIMS:
        if shim.name in broken:
            setattr(cpu_triton_utils, shim.name, shim.fixed)  # what a later registration binds
            _rebind_registered(_shipped[shim.name], shim.fixed)  # what an earlier one bound
    _verdict = "applied"
    _log.info("latts CPU shim fix: replaced %s in pid %d (vLLM issue #55005)", ", ".join(broken), os.getpid())
    return _verdict


def register() -> None:
    """The `vllm.general_plugins` entry point: vLLM calls it once in each of its processes.

    Never raises: vLLM does not guard plugin calls, and a failure here must not stop the engine.
    """
    try:
        apply()
    except Exception:
        _log.warning("latts CPU shim fix failed; vLLM runs as shipped (see vLLM issue #55005)", exc_info=True)
