"""Latents are read in place. Channel-slice views of one latent (what a DA-VAE model holds:
latent[:, :C], latent[:, C:]) and batch-strided views reach the kernels without a copy, and
DetailPatchEmbed.forward(latent), the call the SD3 transformer makes through pos_embed(latent),
writes its latent gradient once, as one tensor: no zero-filled gradient per slice, no add of
slice gradients. Checked with the profiler, on the CPU and (when there is one) on the GPU: none
of the ops that would make such a copy runs."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from davae_ext import ops
from conftest import DEVICES, latent_pair, make, require_ext

B, C, D, H, W, P, N = 2, 16, 16, 16, 12, 2, 64
T = (H // P) * (W // P)
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::_to_copy"}
# A latent-sized one of these is autograd's slice backward (zeros of the whole latent, then the
# slice's gradient copied or added into it).
LATENT_SIZED = {"aten::zeros", "aten::zero_", "aten::fill_", "aten::add", "aten::add_", "aten::slice_backward"}


def _copies(fn) -> list[str]:
    """Runs fn() under the profiler; the copy-making ops it ran, with their input shapes."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
    latent_sizes = {(B, C + D, H, W), (B, C, H, W), (B, D, H, W)}
    found = []
    for e in prof.events():
        shapes = {tuple(s) for s in e.input_shapes if s}
        if e.name in COPIES or (e.name in LATENT_SIZED and shapes & latent_sizes):
            found.append(f"{e.name} {sorted(shapes)}")
    return found


def _grad_step(fn, inputs):
    """Forward and backward of fn(*inputs) against a fixed output gradient, gradients returned
    (torch.autograd.grad: what the op's backward gives, before any accumulation)."""
    out = fn(*inputs)
    grad_out = torch.ones_like(out)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return lambda: torch.autograd.grad(fn(*inputs), leaves, grad_out, allow_unused=True)


OPS = {
    "latent_concat": lambda b, d: ops.latent_concat(b, d),
    "detail_project": lambda b, d: ops.detail_project(d, C),
    "detail_align_loss_mean": lambda b, d: ops.detail_align_loss(d, b),
    "detail_align_loss_none": lambda b, d: ops.detail_align_loss(d, b, "none"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["slices", "batch_strided"])
@pytest.mark.parametrize("op", OPS)
def test_latent_ops_read_views_in_place(device, layout, op):
    require_ext()
    base, detail = latent_pair(B, C, D, H, W, torch.float32, device, layout, requires_grad=True)
    step = _grad_step(OPS[op], (base, detail))
    step()  # warm-up
    assert _copies(step) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["slices", "batch_strided"])
def test_detail_patch_embed_reads_views_in_place(device, layout):
    require_ext()
    base, detail = latent_pair(B, C, D, H, W, torch.float32, device, layout, requires_grad=True)
    weight = make((N, C + D, P, P), torch.float32, device, seed=3, requires_grad=True)
    bias = make((N,), torch.float32, device, seed=4, requires_grad=True)
    pos = make((1, T, N), torch.float32, device, seed=5)
    step = _grad_step(lambda *t: ops.detail_patch_embed(*t, pos, P), (base, detail, weight, bias))
    step()
    assert _copies(step) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_detail_patch_embed_module_on_one_latent(device, dtype):
    """DetailPatchEmbed(latent) as the SD3 transformer calls it (cropped sin-cos table, B = 2),
    forward and backward into the latent, the weight and the bias (.backward(): as training)."""
    require_ext()
    pytest.importorskip("diffusers")
    from davae_ext.nn import DetailPatchEmbed

    module = DetailPatchEmbed(height=H * 2, width=W * 2, patch_size=P, base_channels=C, detail_channels=D,
                              embed_dim=N, pos_embed_max_size=32).to(device, dtype)
    latent = make((B, C + D, H, W), dtype, device, requires_grad=True)
    grad_out = make((B, T, N), dtype, device, seed=9)

    def step():
        module.zero_grad(set_to_none=True)
        latent.grad = None
        module(latent).backward(grad_out)

    step()  # warm-up: the cropped table is made and cached here
    assert _copies(step) == []
    assert latent.grad.shape == latent.shape and module.proj.weight.grad is not None
