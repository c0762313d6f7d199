import pytest
import torch
import torch.nn.functional as F

from davae_ext import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, LAYOUTS, ORDERS, PAIR_LAYOUTS, check_against_reference, device_dtype_id,
                      latent_pair, make, require_ext)

SHAPES = [  # (B, C, D, H, W, p, hidden)
    (1, 16, 16, 6, 6, 2, 64),
    (3, 4, 12, 2, 2, 1, 32),
    (0, 16, 16, 6, 6, 2, 64),
    (3, 32, 96, 6, 34, 1, 48),
    (1, 16, 16, 34, 66, 2, 40),
    (2, 4, 12, 8, 36, 4, 24),
    (1, 16, 16, 66, 66, 2, 96),
    (2, 16, 16, 34, 34, 2, 200),  # two hidden tiles on CUDA, vector epilogue
    (2, 16, 16, 32, 32, 2, 64),  # T = 256: token tiles never straddle two batch elements
    (1, 3, 6, 10, 14, 2, 130),  # K = 36: a partial K slice; hidden not a multiple of 8
    # Patch tiles (patch_tile.h; 8 tokens on CPU) with 16-byte accesses in every dtype, several
    # tiles a token row: p = 2 (20 tokens a row, a partial last tile), p = 1 (24), p = 4 (12).
    (2, 16, 16, 6, 40, 2, 64),
    (2, 32, 96, 3, 24, 1, 48),
    (1, 4, 12, 8, 48, 4, 24),
]
EPILOGUES = ["bias+pos", "none", "bias", "pos"]


def _inputs(shape, dtype, device, layout, epilogue, requires_grad=True, order="base_first"):
    B, C, D, H, W, p, N = shape
    T = (H // p) * (W // p)
    base, detail = latent_pair(B, C, D, H, W, dtype, device, layout, order, seed=6, requires_grad=requires_grad)
    weight = (make((N, C + D, p, p), dtype, device, seed=8) * (C + D) ** -0.5).requires_grad_(requires_grad)
    bias = make((N,), dtype, device, seed=9, requires_grad=requires_grad) if "bias" in epilogue else None
    pos = make((1, T, N), dtype, device, seed=10, requires_grad=requires_grad) if "pos" in epilogue else None
    return base, detail, weight, bias, pos, p


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("order", ORDERS)
def test_matches_reference(device_dtype, shape, epilogue, order):
    require_ext()
    device, dtype = device_dtype
    layout = "strided" if shape[0] == 3 else "contiguous"
    args = [*_inputs(shape, dtype, device, layout, epilogue, order=order), order]
    check_against_reference(ops.detail_patch_embed, reference.detail_patch_embed, args, dtype)


# Every layout the ops meet, B = 1 and B > 1, both orders: channel slices of one latent and batch
# strides are read (and, backward, never copied) in place; channels_last is copied once.
LAYOUT_SHAPES = [(1, 16, 16, 6, 40, 2, 64), (3, 4, 12, 8, 8, 2, 32), (2, 32, 96, 4, 6, 1, 48)]


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)
@pytest.mark.parametrize("layout", PAIR_LAYOUTS)
@pytest.mark.parametrize("order", ORDERS)
def test_layouts_match_reference(device_dtype, shape, layout, order):
    require_ext()
    device, dtype = device_dtype
    args = [*_inputs(shape, dtype, device, layout, "bias+pos", order=order), order]
    check_against_reference(ops.detail_patch_embed, reference.detail_patch_embed, args, dtype)


def _latent_inputs(shape, dtype, device, layout, epilogue, requires_grad=True):
    """patch_embed's inputs: one latent of C + D channels."""
    B, C, D, H, W, p, N = shape
    latent = make((B, C + D, H, W), dtype, device, layout, seed=11, requires_grad=requires_grad)
    _, _, weight, bias, pos, _ = _inputs(shape, dtype, device, "contiguous", epilogue, requires_grad)
    return latent, weight, bias, pos, p


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] != 0][::2] + [SHAPES[2]], ids=str)
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_latent_matches_reference(device_dtype, shape, epilogue, layout):
    """patch_embed: the one-latent entry point (DetailPatchEmbed.forward(latent)'s)."""
    require_ext()
    device, dtype = device_dtype
    args = list(_latent_inputs(shape, dtype, device, layout, epilogue))
    check_against_reference(ops.patch_embed, reference.patch_embed, args, dtype)


def test_latent_equals_pair():
    """patch_embed(latent) is detail_patch_embed of its two channel ranges, bit for bit."""
    require_ext()
    latent, weight, bias, pos, p = _latent_inputs((2, 16, 16, 8, 6, 2, 32), torch.float32, "cpu", "contiguous",
                                                  "bias+pos", False)
    pair = ops.detail_patch_embed(latent[:, :16], latent[:, 16:], weight, bias, pos, p)
    assert torch.equal(ops.patch_embed(latent, weight, bias, pos, p), pair)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA gather's fallback")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_long_patch_rows(dtype):
    """A patch row over the tile kernel's 32 KB of shared memory (K = 2048 * 4 elements) goes
    through ATen's strided copy, both ways."""
    require_ext()
    args = [*_inputs((2, 1024, 1024, 4, 6, 2, 64), dtype, "cuda", "slices", "bias+pos"), "base_first"]
    check_against_reference(ops.detail_patch_embed, reference.detail_patch_embed, args, dtype)


def test_equals_conv_of_concatenation():
    """The defining identity, against torch's own ops (not our reference)."""
    require_ext()
    base, detail, weight, bias, pos, p = _inputs((2, 16, 16, 8, 6, 2, 32), torch.float64, "cpu", "contiguous", "bias+pos", False)
    expected = F.conv2d(torch.cat([base, detail], 1), weight, bias, stride=p).flatten(2).transpose(1, 2) + pos
    torch.testing.assert_close(ops.detail_patch_embed(base, detail, weight, bias, pos, p), expected)


def test_zero_detail_weights_reproduce_pretrained():
    """With the detail slice of the weight at zero, the output is the pretrained patch embed of
    the base latent alone, whatever the detail latent holds (the warm start of Sec. 4.1)."""
    require_ext()
    base, detail = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8) * 100
    w_base, b = torch.randn(48, 16, 2, 2), torch.randn(48)
    weight = torch.cat([w_base, torch.zeros(48, 16, 2, 2)], 1)
    pretrained = F.conv2d(base, w_base, b, stride=2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ops.detail_patch_embed(base, detail, weight, b, None, 2), pretrained)


def test_backward_skips_unneeded_gradients():
    """Frozen latents (the usual fine-tuning case): no input gradients are computed."""
    require_ext()
    base, detail, weight, bias, pos, p = _inputs((2, 16, 16, 8, 8, 2, 32), torch.float32, "cpu", "contiguous", "bias+pos", False)
    g = torch.randn(2, 16, 32)
    outs = torch.ops.davae_ext.detail_patch_embed_backward(g, base, detail, weight, p, False, [False, True, False, True])
    assert [tuple(o.shape) for o in outs] == [(0,), (0,), tuple(weight.shape), (0,), (1, 16, 32)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
# Everything; and fine-tuning's weight + bias (on CUDA in 16 bits: one cuBLASLt GEMM whose epilogue
# gives d_bias).
@pytest.mark.parametrize("mask", [[True, True, True, True], [False, True, True, False]], ids=["all", "weight+bias"])
def test_deterministic_gradients(device, dtype, mask):
    require_ext()
    base, detail, weight, bias, pos, p = _inputs((4, 16, 16, 32, 32, 2, 64), dtype, device, "contiguous", "bias+pos", False)
    g = torch.randn(4, 256, 64, device=device).to(dtype)
    first = torch.ops.davae_ext.detail_patch_embed_backward(g, base, detail, weight, p, False, mask)
    again = torch.ops.davae_ext.detail_patch_embed_backward(g, base, detail, weight, p, False, mask)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    # And the values: d_weight and d_bias against float64 sums.
    A = torch.cat((base, detail), 1).double().unfold(2, p, p).unfold(3, p, p)  # [B, C+D, Hp, Wp, p, p]
    A = A.permute(0, 2, 3, 1, 4, 5).reshape(4 * 256, -1)
    g64 = g.double().reshape(-1, 64)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(first[2].double().reshape(64, -1), g64.t() @ A, rtol=tol, atol=tol * 4)
    torch.testing.assert_close(first[3].double(), g64.sum(0), rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("epilogue", ["bias+pos", "none"])
@pytest.mark.parametrize("layout", ["contiguous", "slices", "batch_strided"])
def test_gradcheck(order, epilogue, layout):
    require_ext()
    args = _inputs((2, 4, 8, 4, 6, 2, 5), torch.float64, "cpu", layout, epilogue, order=order)
    inputs = tuple(a for a in args[:5] if a is not None)

    def fn(*tensors):
        it = iter(tensors)
        base, detail, weight = next(it), next(it), next(it)
        bias = next(it) if args[3] is not None else None
        pos = next(it) if args[4] is not None else None
        return ops.detail_patch_embed(base, detail, weight, bias, pos, 2, order)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("layout", ["contiguous", "strided", "batch_strided"])
def test_latent_gradcheck(layout):
    require_ext()
    latent, weight, bias, pos, p = _latent_inputs((2, 4, 8, 4, 6, 2, 5), torch.float64, "cpu", layout, "bias+pos")
    assert torch.autograd.gradcheck(lambda *t: ops.patch_embed(*t, p), (latent, weight, bias, pos))


def test_latent_backward_skips_unneeded_gradients():
    require_ext()
    latent, weight, bias, pos, p = _latent_inputs((2, 16, 16, 8, 8, 2, 32), torch.float32, "cpu", "contiguous",
                                                  "bias+pos", False)
    outs = torch.ops.davae_ext.patch_embed_backward(torch.randn(2, 16, 32), latent, weight, p, [False, True, True, False])
    assert [tuple(o.shape) for o in outs] == [(0,), tuple(weight.shape), (32,), (0,)]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_ext()
    for epilogue in ("bias+pos", "none"):
        for requires_grad in (False, True):
            base, detail, weight, bias, pos, p = _inputs((2, 4, 12, 4, 6, 2, 8), torch.float32, device, "contiguous", epilogue, requires_grad)
            torch.library.opcheck(torch.ops.davae_ext.detail_patch_embed.default, (base, detail, weight, bias, pos, p, True))
    base, detail, weight, *_ = _inputs((2, 4, 12, 4, 6, 2, 8), torch.float32, device, "contiguous", "none", False)
    torch.library.opcheck(
        torch.ops.davae_ext.detail_patch_embed_backward.default,
        (torch.randn(2, 6, 8, device=device), base, detail, weight, 2, False, [True, True, True, True]),
    )
    for epilogue in ("bias+pos", "none"):
        for requires_grad in (False, True):
            latent, weight, bias, pos, p = _latent_inputs((2, 4, 12, 4, 6, 2, 8), torch.float32, device, "contiguous",
                                                          epilogue, requires_grad)
            torch.library.opcheck(torch.ops.davae_ext.patch_embed.default, (latent, weight, bias, pos, p))
    torch.library.opcheck(torch.ops.davae_ext.patch_embed_backward.default,
                          (torch.randn(2, 6, 8, device=device), latent.detach(), weight.detach(), 2, [True] * 4))
