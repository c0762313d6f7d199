"""davae_ext.nn: the drop-in modules, fused vs plain PyTorch, and the widened input/output layers."""

import pytest
import torch
from torch import nn

import davae_ext

pytest.importorskip("diffusers")
from diffusers.models.embeddings import PatchEmbed  # noqa: E402

from davae_ext.nn import DetailAlignLoss, DetailPatchEmbed, DetailProjection, DetailProjOut, LatentConcat  # noqa: E402
from conftest import DEVICES, ORDERS  # noqa: E402


def _grads(module_fn, inputs, params):
    out = module_fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
    return out, torch.autograd.grad(out, [*inputs, *params], g)


@pytest.mark.parametrize("order", ORDERS)
def test_latent_modules_fused_equals_reference_backend(order):
    base = torch.randn(2, 4, 6, 10, requires_grad=True)
    detail = torch.randn(2, 12, 6, 10, requires_grad=True)
    for module, args in (
        (LatentConcat(order), (base, detail)),
        (DetailProjection(4), (detail,)),
        (DetailAlignLoss(4), (detail, base)),
    ):
        with davae_ext.use_backend("fused"):
            out_f, g_f = _grads(module, args, [])
        with davae_ext.use_backend("reference"):
            out_p, g_p = _grads(module, args, [])
        torch.testing.assert_close(out_f, out_p)
        for a, b in zip(g_f, g_p):
            torch.testing.assert_close(a, b)


def _pretrained_patch_embed(C=16, p=2, N=32, max_size=24, seed=0):
    torch.manual_seed(seed)
    return PatchEmbed(height=32, width=32, patch_size=p, in_channels=C, embed_dim=N, pos_embed_max_size=max_size)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fused", [False, True])
def test_patch_embed_zero_init_reproduces_pretrained(order, fused):
    pretrained = _pretrained_patch_embed()
    module = DetailPatchEmbed.from_patch_embed(pretrained, 16, init="zero", order=order, fused=fused)
    base, detail = torch.randn(2, 16, 12, 10), torch.randn(2, 16, 12, 10) * 10
    latent = torch.cat((detail, base) if order == "detail_first" else (base, detail), 1)
    expected = pretrained(base)
    for out in (module(latent), module(base, detail)):
        if fused:  # one GEMM over the widened K: equal up to float rounding, not bit for bit
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(out, expected)
    for name in ("proj", "pos_embed", "patch_size", "height", "width", "pos_embed_max_size"):
        assert hasattr(module, name)
    assert torch.equal(module.pos_embed, pretrained.pos_embed)


@pytest.mark.parametrize("init", ["random", "repeat_average"])
def test_patch_embed_other_inits_use_the_detail(init):
    pretrained = _pretrained_patch_embed()
    module = DetailPatchEmbed.from_patch_embed(pretrained, 16, init=init)
    base, detail = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    assert not torch.allclose(module(base, detail), pretrained(base))
    if init == "repeat_average":  # r = 1: the detail slice copies the base weights
        assert torch.equal(module.proj.weight[:, 16:], pretrained.proj.weight)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_embed_fused_equals_plain_with_gradients(dtype, device, no_tf32):
    module = DetailPatchEmbed.from_patch_embed(_pretrained_patch_embed(), 16, init="random").to(device, dtype)
    base = torch.randn(2, 16, 8, 12, dtype=dtype).to(device).requires_grad_()
    detail = torch.randn(2, 16, 8, 12, dtype=dtype).to(device).requires_grad_()
    params = [module.proj.weight, module.proj.bias]
    results = {}
    for fused in (True, False):
        module.fused = fused
        results[fused] = _grads(module, (base, detail), params)
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(results[True][0], results[False][0], rtol=tol, atol=tol)
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def test_patch_embed_without_max_size_recomputes_like_diffusers():
    torch.manual_seed(0)
    pretrained = PatchEmbed(height=16, width=16, patch_size=2, in_channels=4, embed_dim=16)
    module = DetailPatchEmbed.from_patch_embed(pretrained, 12, fused=False)
    for size in ((16, 16), (12, 20)):  # native grid, and a grid that needs new sin-cos values
        base = torch.randn(1, 4, *size)
        assert torch.equal(module(base, torch.randn(1, 12, *size)), pretrained(base))


@pytest.mark.parametrize("fused", [True, False])
def test_patch_embed_caches_the_cropped_pos_embed_per_version(fused):
    """SD3's centre crop is a T x N copy: made once per (size, dtype, device) and table version,
    and never stale: in-place changes, load_state_dict and a replaced table all show up."""
    pretrained = _pretrained_patch_embed()
    module = DetailPatchEmbed.from_patch_embed(pretrained, 16, init="zero", fused=fused)
    base, detail = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)

    def check():
        torch.testing.assert_close(module(base, detail), pretrained(base), rtol=1e-5, atol=1e-5)

    check()
    first = module._pos_for(8, 8, base.device)
    assert first.is_contiguous()
    assert module._pos_for(8, 8, base.device) is first  # cached: no copy on the second call
    assert module._pos_for(8, 10, base.device) is not first  # another size: another entry
    pretrained.pos_embed.mul_(-1.5)
    module.pos_embed.mul_(-1.5)  # in place: the version changes
    check()
    assert module._pos_for(8, 8, base.device) is not first
    state = {k: v.clone() for k, v in module.state_dict().items()}
    pretrained.pos_embed.mul_(3.0)
    state["pos_embed"] = pretrained.pos_embed.clone()
    module.load_state_dict(state)
    check()
    module.pos_embed = pretrained.pos_embed.clone()  # a replaced table
    check()
    module.double()  # _apply drops the cache with the old table
    assert "_pos_cache" not in module.__dict__
    assert module._pos_for(8, 8, base.device).dtype == torch.float64


def test_imagenet_style_dit_embedder_patch_size_one():
    """LightningDiT-style x_embedder: a Conv2d with kernel 1 (C=32, D=96), bare or as `.proj`."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, kernel_size=1)

    class XEmbedder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = conv

    for source in (conv, XEmbedder()):
        for fused in (False, True):
            module = DetailPatchEmbed.from_patch_embed(source, 96, fused=fused)
            assert module.pos_embed is None and module.patch_size == 1
            base, detail = torch.randn(2, 32, 16, 16), torch.randn(2, 96, 16, 16)
            expected = conv(base).flatten(2).transpose(1, 2)
            torch.testing.assert_close(module(base, detail), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
def test_proj_out_layout_matches_unpatchify(order):
    """Each base channel of each patch position reads the pretrained row; detail rows are zero."""
    torch.manual_seed(0)
    p, C, D, hidden = 2, 16, 16, 24
    linear = nn.Linear(hidden, p * p * C)
    head = DetailProjOut.from_linear(linear, C, D, p, init="zero", order=order)
    x = torch.randn(3, 5, hidden)
    old = linear(x).reshape(3, 5, p, p, C)
    new = head(x).reshape(3, 5, p, p, C + D)
    base, detail = (new[..., D:], new[..., :D]) if order == "detail_first" else (new[..., :C], new[..., C:])
    assert torch.equal(base, old)
    assert torch.equal(detail, torch.zeros_like(detail))
    assert isinstance(head, nn.Linear) and head.out_features == p * p * (C + D)


def test_proj_out_repeat_average_copies_group_rows():
    linear = nn.Linear(8, 4 * 2)
    head = DetailProjOut.from_linear(linear, 2, 4, 2, init="repeat_average")
    w = head.weight.reshape(4, 6, 8)
    base = linear.weight.reshape(4, 2, 8)
    assert torch.equal(w[:, 2:4], base[:, 0:1].expand(4, 2, 8)) and torch.equal(w[:, 4:6], base[:, 1:2].expand(4, 2, 8))


def test_bad_inputs():
    module = DetailPatchEmbed.from_patch_embed(_pretrained_patch_embed(), 16)
    with pytest.raises(ValueError, match=r"must have shape \[B, 32, H, W\].*got \[1, 30, 8, 8\]"):
        module(torch.randn(1, 30, 8, 8))
    with pytest.raises(TypeError, match="Conv2d 'proj'"):
        DetailPatchEmbed.from_patch_embed(nn.Linear(4, 4), 16)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="'detail_channels' must be a positive int"):
            DetailPatchEmbed.from_patch_embed(_pretrained_patch_embed(), bad)
    with pytest.raises(ValueError, match="'init' must be one of"):
        DetailPatchEmbed.from_patch_embed(_pretrained_patch_embed(), 16, init="ones")
    with pytest.raises(ValueError, match="p\\*p\\*C"):
        DetailProjOut.from_linear(nn.Linear(8, 10), 2, 4, 2)


def test_patch_embed_compiles_fullgraph():
    torch._dynamo.reset()
    module = DetailPatchEmbed.from_patch_embed(_pretrained_patch_embed(), 16, init="random")
    base, detail = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(base, detail), module(base, detail))
    torch.testing.assert_close(compiled(torch.cat([base, detail], 1)), module(base, detail))
