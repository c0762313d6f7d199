"""The patch embeds: fused vs eager reference vs torch.compile(reference) vs reshape+addmm (the
best eager formulation, as vLLM/SGLang do) vs the op's bare GEMMs on pre-packed operands (the
floor), and, on the path users run, DetailPatchEmbed on one concatenated latent against the same
module unfused and diffusers' PatchEmbed on the widened convolution.

Ratios (the other provider's time / the fused one's, so below 1 means the fused op is slower) are
in each benchmark's extra_info (fused_speedup) and in the summary printed at the end of the run
(bench/conftest.py)."""

import pytest
import torch

from davae_ext import ops, reference
from common import DIRECTIONS, case_id, compiled, devices_and_shapes, time_direction

PROVIDERS = ["fused", "eager", "compile", "reshape_addmm", "bare_gemm"]


def reshape_addmm(base, detail, weight, bias, pos_embed, patch_size, order):
    """cat -> view/permute into patch rows -> one addmm -> + pos (no conv)."""
    x = torch.cat((detail, base) if order == "detail_first" else (base, detail), dim=1)
    B, CD, H, W = x.shape
    p = patch_size
    rows = x.view(B, CD, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, CD * p * p)
    out = torch.addmm(bias, rows, weight.view(weight.shape[0], -1).t())
    return out.view(B, -1, weight.shape[0]) + pos_embed


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
    """The GEMMs of the op alone on pre-packed operands: out = A W^T; dA = dOut W; dW = dOut^T A;
    fine-tuning's backward ("finetune_bwd") is dW alone."""
    A = torch.randn(s.M, s.K, device=device, dtype=dtype)
    Wt = torch.randn(s.hidden, s.K, device=device, dtype=dtype).t()
    dout = torch.randn(s.M, s.hidden, device=device, dtype=dtype)
    fwd = lambda: torch.mm(A, Wt)  # noqa: E731
    W = Wt.t()
    bwd = lambda: (torch.mm(dout, W), torch.mm(dout.t(), A))  # noqa: E731
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": lambda: (fwd(), bwd()),
            "finetune_bwd": lambda: torch.mm(dout.t(), A)}[direction]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_patch_embed(benchmark, case, direction, provider):
    device, dtype, s = case
    benchmark.group = f"patch_embed-{direction}-{case_id(case)}"
    nbytes, flops = counts(s, torch.finfo(dtype).bits // 8, direction)
    if provider == "bare_gemm":
        fn = bare_gemm(device, dtype, s, direction)
        time_direction(benchmark, device, lambda: fn(), [], "fwd", nbytes, flops)
        return
    forward = {"fused": ops.detail_patch_embed, "eager": reference.detail_patch_embed,
               "compile": compiled(reference.detail_patch_embed), "reshape_addmm": reshape_addmm}[provider]
    time_direction(benchmark, device, forward, make_inputs(device, dtype, s, direction != "fwd"),
                   direction, nbytes, flops)


@pytest.mark.parametrize("provider", ["fused", "eager", "reshape_addmm", "bare_gemm"])
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_patch_embed_finetune_bwd(benchmark, case, provider):
    """The backward of fine-tuning: gradients for weight and bias only (frozen latents, pos_embed
    a buffer). On CUDA in 16 bits the fused op gets both from one cuBLASLt GEMM (BGRADB epilogue):
    dOut read once. bare_gemm: the d_weight GEMM alone."""
    device, dtype, s = case
    benchmark.group = f"patch_embed-finetune_bwd-{case_id(case)}"
    elem = torch.finfo(dtype).bits // 8
    nbytes = elem * (s.M * s.hidden + s.M * s.K + s.hidden * s.K + s.hidden)  # dOut, latents, dW, d_bias
    flops = 2 * s.M * s.hidden * s.K
    if provider == "bare_gemm":
        fn = bare_gemm(device, dtype, s, "finetune_bwd")
        time_direction(benchmark, device, lambda: fn(), [], "fwd", nbytes, flops)
        return
    forward = {"fused": ops.detail_patch_embed, "eager": reference.detail_patch_embed,
               "reshape_addmm": reshape_addmm}[provider]
    time_direction(benchmark, device, forward, make_inputs(device, dtype, s, True, only_weight_bias=True), "bwd",
                   nbytes, flops)


# -- the path users run: the embedder module on one concatenated latent --------------------------
MODULE_PROVIDERS = ["fused", "plain", "diffusers"]


def latent_embedder(provider, s, device, dtype):
    """The patch embedder of a DA-VAE SD3 transformer, SD3-style (a cropped sin-cos table):
    fused: DetailPatchEmbed(fused=True) (ops.patch_embed, in place); plain: the same module with
    fused=False (two convolutions, added); diffusers: PatchEmbed on the widened C + D channels."""
    from diffusers.models.embeddings import PatchEmbed

    from davae_ext.nn import DetailPatchEmbed

    torch.manual_seed(0)
    grid = max(s.H, s.W) // s.p
    kwargs = dict(height=s.H, width=s.W, patch_size=s.p, embed_dim=s.hidden, pos_embed_max_size=grid)
    if provider == "diffusers":
        module = PatchEmbed(in_channels=s.C + s.D, **kwargs)
    else:
        module = DetailPatchEmbed(base_channels=s.C, detail_channels=s.D, fused=provider == "fused", **kwargs)
    return module.to(device, dtype)


LATENT_DIRECTIONS = ["fwd", "finetune_bwd", "fwdbwd"]


@pytest.mark.parametrize("provider", MODULE_PROVIDERS)
@pytest.mark.parametrize("direction", LATENT_DIRECTIONS)
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_patch_embed_module(benchmark, case, direction, provider):
    """fwd: the forward; finetune_bwd: the backward into weight and bias (frozen latent, as in
    fine-tuning); fwdbwd: forward and backward into the latent, weight and bias."""
    pytest.importorskip("diffusers")
    device, dtype, s = case
    benchmark.group = f"patch_embed_module-{direction}-{case_id(case)}"
    module = latent_embedder(provider, s, device, dtype)
    latent = torch.randn(s.B, s.C + s.D, s.H, s.W, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    latent.requires_grad_(direction == "fwdbwd")
    params = [module.proj.weight, module.proj.bias]
    for p in params:
        p.requires_grad_(direction != "fwd")
    nbytes, flops = counts(s, torch.finfo(dtype).bits // 8, "fwd" if direction == "fwd" else "fwdbwd")
    time_direction(benchmark, device, lambda x, *_: module(x), [latent, *params],
                   "fwd" if direction == "fwd" else ("bwd" if direction == "finetune_bwd" else "fwdbwd"), nbytes, flops)
