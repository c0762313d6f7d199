"""torch.autocast: the fused ops follow the rules of the eager ops they replace (csrc/autocast.cpp):
the patch embed computes in the autocast dtype (a convolution), the alignment loss in float32
(mse_loss), the concat in the wider input dtype (cat), the projection in its input dtype."""

import pytest
import torch

from davae_ext import nn as dnn
from davae_ext import ops, reference
from conftest import CUDA, assert_close_to_reference, require_ext, to64

# (device, autocast dtype): CPU autocast in bfloat16; CUDA in both 16-bit types.
AUTOCAST = [("cpu", torch.bfloat16)] + ([("cuda", torch.bfloat16), ("cuda", torch.float16)] if CUDA else [])


def _ids(param):
    device, dtype = param
    return f"{device}-{str(dtype).replace('torch.', '')}"


def _patch_inputs(device, seed=0):
    """float32 leaves (B=2, C=4, D=8, 8x8 latent, p=2, hidden 32), pos a buffer."""
    g = torch.Generator().manual_seed(seed)
    B, C, D, H, W, p, N = 2, 4, 8, 8, 8, 2, 32

    def leaf(*shape, grad=True):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    return [leaf(B, C, H, W), leaf(B, D, H, W), leaf(N, C + D, p, p), leaf(N), leaf(1, (H // p) * (W // p), N, grad=False)], p


@pytest.mark.parametrize("autocast", AUTOCAST, ids=_ids)
def test_patch_embed_runs_in_the_autocast_dtype(autocast):
    """Under autocast = the op on inputs cast to the autocast dtype: same bits, and the gradients
    reach the float32 leaves through the casts."""
    require_ext()
    device, dtype = autocast
    (base, detail, weight, bias, pos), p = _patch_inputs(device)
    with torch.autocast(device, dtype):
        out = ops.detail_patch_embed(base, detail, weight, bias, pos, p)
    assert out.dtype == dtype
    leaves = [base, detail, weight, bias]
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    grads = torch.autograd.grad(out, leaves, go)
    cast = [t.to(dtype) for t in (base, detail, weight, bias, pos)]
    expected = ops.detail_patch_embed(*cast, p)
    assert torch.equal(out, expected)
    expected_grads = torch.autograd.grad(expected, leaves, go)
    for name, g, e, leaf in zip(("base", "detail", "weight", "bias"), grads, expected_grads, leaves):
        assert g.dtype == leaf.dtype == torch.float32 and torch.equal(g, e), name


@pytest.mark.parametrize("autocast", AUTOCAST, ids=_ids)
def test_patch_embed_matches_the_reference_under_autocast(autocast):
    """The reference (conv2d + pos, as diffusers' PatchEmbed) gives the same dtype under autocast,
    and the fused error against float64 is within the comparison rule."""
    require_ext()
    device, dtype = autocast
    (base, detail, weight, bias, pos), p = _patch_inputs(device)
    with torch.autocast(device, dtype):
        out = ops.detail_patch_embed(base, detail, weight, bias, pos, p)
        ref = reference.detail_patch_embed(base, detail, weight, bias, pos, p)
    assert ref.dtype == out.dtype == dtype
    ref64 = reference.detail_patch_embed(*[to64(t.to(dtype)) for t in (base, detail, weight, bias, pos)], p)
    assert_close_to_reference(out.cpu(), ref.cpu(), ref64, dtype)


@pytest.mark.parametrize("autocast", AUTOCAST, ids=_ids)
def test_align_loss_is_float32_and_concat_promotes(autocast):
    require_ext()
    device, dtype = autocast
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 4, 6, 6, generator=g).to(device)
    detail = torch.randn(2, 8, 6, 6, generator=g).to(device, dtype)
    with torch.autocast(device, dtype):
        loss = ops.detail_align_loss(detail, base)
        loss_ref = reference.detail_align_loss(detail, base)
        cat = ops.latent_concat(base, detail, "detail_first")
        proj = ops.detail_project(base, 2)
    assert loss.dtype == loss_ref.dtype == torch.float32
    assert torch.equal(loss, ops.detail_align_loss(detail.float(), base))
    assert cat.dtype == torch.float32 and torch.equal(cat, torch.cat((detail.float(), base), dim=1))
    assert proj.dtype == torch.float32 and torch.equal(proj, ops.detail_project(base, 2))  # no rule


def test_mixed_dtypes_are_an_error_outside_autocast():
    require_ext()
    base, detail = torch.randn(1, 4, 4, 4), torch.randn(1, 8, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="'detail' must have dtype torch.float32"):
        ops.latent_concat(base, detail)
    compiled = torch.compile(ops.latent_concat, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="'detail' must have dtype torch.float32"):
        compiled(base, detail)


@pytest.mark.parametrize("autocast", AUTOCAST, ids=_ids)
def test_compiled_under_autocast_matches_eager(autocast):
    """Under torch.compile the Python checks run first: they accept what autocast will cast."""
    require_ext()
    device, dtype = autocast
    (base, detail, weight, bias, pos), p = _patch_inputs(device)
    embed = torch.compile(ops.detail_patch_embed, fullgraph=True, backend="aot_eager")
    concat = torch.compile(ops.latent_concat, fullgraph=True, backend="aot_eager")
    with torch.autocast(device, dtype):
        out, eager = embed(base, detail, weight, bias, pos, p), ops.detail_patch_embed(base, detail, weight, bias, pos, p)
        cat = concat(base, detail.to(dtype))
    assert out.dtype == dtype and torch.equal(out, eager)
    assert cat.dtype == torch.float32 and torch.equal(cat, torch.cat((base, detail.to(dtype).float()), dim=1))


@pytest.mark.parametrize("autocast", AUTOCAST, ids=_ids)
def test_fused_module_under_autocast_matches_the_conv_module(autocast):
    """A float32 DetailPatchEmbed under autocast: fused and unfused (two Conv2d) give the autocast
    dtype, like diffusers' PatchEmbed, and agree to its rounding."""
    require_ext()
    pytest.importorskip("diffusers")  # the module's sincos table
    device, dtype = autocast
    fused = dnn.DetailPatchEmbed(height=16, width=16, patch_size=2, base_channels=4, detail_channels=8,
                                 embed_dim=32, pos_embed_max_size=16).to(device)
    with torch.no_grad():
        fused.proj.weight.normal_(std=0.2)
    plain = dnn.DetailPatchEmbed(height=16, width=16, patch_size=2, base_channels=4, detail_channels=8,
                                 embed_dim=32, pos_embed_max_size=16, fused=False).to(device)
    plain.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(3)
    base, detail = torch.randn(2, 4, 16, 16, generator=g).to(device), torch.randn(2, 8, 16, 16, generator=g).to(device)
    with torch.autocast(device, dtype):
        a, b = fused(base, detail), plain(base, detail)
    assert a.dtype == b.dtype == dtype
    scale = b.float().abs().max().item()
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=4 * torch.finfo(dtype).eps * scale)
