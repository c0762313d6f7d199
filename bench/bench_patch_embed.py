"""detail_patch_embed: fused vs eager reference vs torch.compile(reference) vs reshape+addmm (the
best eager formulation, as vLLM/SGLang do) vs the op's bare GEMMs (the floor)."""

import contextlib
import os

import pytest
import torch

from davae_ext import ops, reference
from common import DIRECTIONS, case_id, compiled, devices_and_shapes, time_direction

# fused: the op (CUDA 16-bit: gather + one cuBLASLt GEMM with the epilogue). CUDA only, the op with
# one of its paths switched off by the variable it reads on every call (ENV_PROVIDERS):
#   fused_tiled: DAVAE_PATCH_EMBED_LT=0, the single tiled WMMA kernel forward and, backward, at::mm
#                plus the d_pos/d_bias pass instead of the cuBLASLt weight+bias GEMM;
#   fused_element_move: DAVAE_PATCH_TILE_MOVE=0, the per-element gather / scatter kernel instead of
#                the shared-memory tile kernel (patch_tile.h) around the GEMMs;
# and one with a path switched on that is off by default:
#   fused_pos_chunked, fused_pos_chunked_8mib: DAVAE_PATCH_EMBED_POS_CHUNK=4 or 8 MiB, the forward's
#                GEMM per chunk of tokens whose positional-embedding slice stays in L2 for every batch
#                entry (chunks only at 2048 px: 4 of 1024 tokens, or 2 of 2048 with fewer partial waves).
POS_CHUNK_BYTES = {"fused_pos_chunked": 4 << 20, "fused_pos_chunked_8mib": 8 << 20}
ENV_PROVIDERS = {"fused_tiled": {"DAVAE_PATCH_EMBED_LT": "0"},
                 "fused_element_move": {"DAVAE_PATCH_TILE_MOVE": "0"},
                 **{name: {"DAVAE_PATCH_EMBED_POS_CHUNK": str(b)} for name, b in POS_CHUNK_BYTES.items()}}
PROVIDERS = ["fused", *ENV_PROVIDERS, "eager", "compile", "reshape_addmm", "bare_gemm"]


def reshape_addmm(base, detail, weight, bias, pos_embed, patch_size, order):
    """cat -> view/permute into patch rows -> one addmm -> + pos (no conv)."""
    x = torch.cat((detail, base) if order == "detail_first" else (base, detail), dim=1)
    B, CD, H, W = x.shape
    p = patch_size
    rows = x.view(B, CD, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, CD * p * p)
    out = torch.addmm(bias, rows, weight.view(weight.shape[0], -1).t())
    return out.view(B, -1, weight.shape[0]) + pos_embed


@contextlib.contextmanager
def env_vars(values: dict[str, str]):
    """Set these environment variables for the duration (the CUDA op reads them on every call)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def make_inputs(device, dtype, s, requires_grad, only_weight_bias=False):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0, trained=True):
        t = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad and trained)

    # By default every input is differentiable, so the backward runs all three GEMMs (d-input,
    # d-weight) and the d_pos pass, as in end-to-end training through the latents.
    # only_weight_bias: fine-tuning's case (frozen latents, pos_embed a buffer).
    all_inputs = not only_weight_bias
    base = rnd(s.B, s.C, s.H, s.W, trained=all_inputs)
    detail = rnd(s.B, s.D, s.H, s.W, trained=all_inputs)
    return [base, detail, rnd(s.hidden, s.C + s.D, s.p, s.p, scale=s.K ** -0.5), rnd(s.hidden),
            rnd(1, s.T, s.hidden, trained=all_inputs), s.p, "base_first"]


def counts(s, elem, direction):
    fwd_bytes = elem * (s.M * s.K + s.hidden * s.K + s.hidden + s.T * s.hidden + s.M * s.hidden)
    bwd_bytes = elem * (s.M * s.hidden + 2 * s.M * s.K + 2 * s.hidden * s.K + s.T * s.hidden + s.hidden)
    fwd_flops, bwd_flops = 2 * s.M * s.hidden * s.K, 4 * s.M * s.hidden * s.K  # bwd: d-input + d-weight
    return {"fwd": (fwd_bytes, fwd_flops), "bwd": (bwd_bytes, bwd_flops),
            "fwdbwd": (fwd_bytes + bwd_bytes, fwd_flops + bwd_flops)}[direction]


def bare_gemm(device, dtype, s, direction):
    """The GEMMs of the op alone on pre-packed operands: out = A W^T; dA = dOut W; dW = dOut^T A."""
    A = torch.randn(s.M, s.K, device=device, dtype=dtype)
    Wt = torch.randn(s.hidden, s.K, device=device, dtype=dtype).t()
    dout = torch.randn(s.M, s.hidden, device=device, dtype=dtype)
    fwd = lambda: torch.mm(A, Wt)  # noqa: E731
    W = Wt.t()
    bwd = lambda: (torch.mm(dout, W), torch.mm(dout.t(), A))  # noqa: E731
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": lambda: (fwd(), bwd())}[direction]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_patch_embed(benchmark, case, direction, provider):
    device, dtype, s = case
    benchmark.group = f"patch_embed-{direction}-{case_id(case)}"
    nbytes, flops = counts(s, torch.finfo(dtype).bits // 8, direction)
    if provider in ENV_PROVIDERS:
        if device != "cuda":
            pytest.skip(f"{provider} switches off one of the CUDA op's paths")
        chunk = POS_CHUNK_BYTES.get(provider)
        if chunk and (direction != "fwd" or s.T * s.hidden * 2 <= chunk):
            pytest.skip(f"the positional chunks are the forward's, and need pos over {chunk >> 20} MiB")
        with env_vars(ENV_PROVIDERS[provider]):
            time_direction(benchmark, device, ops.detail_patch_embed, make_inputs(device, dtype, s, direction != "fwd"), direction, nbytes, flops)
        return
    if provider == "bare_gemm":
        fn = bare_gemm(device, dtype, s, direction)
        time_direction(benchmark, device, lambda: fn(), [], "fwd", nbytes, flops)
        return
    forward = {"fused": ops.detail_patch_embed, "eager": reference.detail_patch_embed,
               "compile": compiled(reference.detail_patch_embed), "reshape_addmm": reshape_addmm}[provider]
    time_direction(benchmark, device, forward, make_inputs(device, dtype, s, direction != "fwd"),
                   direction, nbytes, flops)


@pytest.mark.parametrize("provider", ["fused", "fused_tiled", "fused_element_move", "eager", "reshape_addmm"])
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_patch_embed_finetune_bwd(benchmark, case, provider):
    """The backward of fine-tuning: gradients for weight and bias only (frozen latents, pos_embed
    a buffer). On CUDA in 16 bits the fused op gets both from one cuBLASLt GEMM (BGRADB epilogue):
    dOut read once; fused_tiled (DAVAE_PATCH_EMBED_LT=0) is at::mm plus the d_bias pass."""
    device, dtype, s = case
    if provider in ENV_PROVIDERS and device != "cuda":
        pytest.skip(f"{provider} switches off one of the CUDA op's paths")
    benchmark.group = f"patch_embed-finetune_bwd-{case_id(case)}"
    elem = torch.finfo(dtype).bits // 8
    nbytes = elem * (s.M * s.hidden + s.M * s.K + s.hidden * s.K + s.hidden)  # dOut, latents, dW, d_bias
    forward = reference.detail_patch_embed if provider == "eager" else (
        reshape_addmm if provider == "reshape_addmm" else ops.detail_patch_embed)
    inputs = make_inputs(device, dtype, s, True, only_weight_bias=True)
    with env_vars(ENV_PROVIDERS.get(provider, {})):
        time_direction(benchmark, device, forward, inputs, "bwd", nbytes, 2 * s.M * s.hidden * s.K)
