import pytest
import torch

from davae_ext import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, ORDERS, PAIR_LAYOUTS, check_against_reference, device_dtype_id,
                      latent_pair, require_cuda_memory, require_ext)

SHAPES = [  # (B, C, D, H, W)
    (1, 16, 16, 6, 6),
    (3, 4, 12, 2, 2),
    (0, 16, 16, 6, 6),
    (3, 32, 96, 34, 66),
    (1, 16, 16, 66, 34),
]


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("layout", PAIR_LAYOUTS)
def test_matches_reference(device_dtype, shape, order, layout):
    require_ext()
    device, dtype = device_dtype
    base, detail = latent_pair(*shape, dtype, device, layout, order, seed=1, requires_grad=True)
    check_against_reference(ops.latent_concat, reference.latent_concat, [base, detail, order], dtype)


@pytest.mark.parametrize("order", ORDERS)
def test_exact_layout_and_gradient_views(order):
    """The op is an exact copy, and its gradients are the two channel ranges of the output's
    gradient, as views (torch.cat's backward gives the same; no copy)."""
    require_ext()
    base = torch.randn(2, 4, 3, 5, requires_grad=True)
    detail = torch.randn(2, 12, 3, 5, requires_grad=True)
    out = ops.latent_concat(base, detail, order)
    first, second = (detail, base) if order == "detail_first" else (base, detail)
    assert torch.equal(out[:, : first.shape[1]], first) and torch.equal(out[:, first.shape[1]:], second)
    grad = torch.randn_like(out)
    d_base, d_detail = torch.autograd.grad(out, (base, detail), grad)
    for part, ref in zip((d_base, d_detail), torch.autograd.grad(torch.cat((first, second), 1), (base, detail), grad)):
        assert part._base is grad and torch.equal(part, ref) and part.stride() == ref.stride()


@pytest.mark.parametrize("layout", ["contiguous", "slices", "batch_strided"])
def test_gradcheck(layout):
    require_ext()
    for order in ORDERS:
        base, detail = latent_pair(2, 4, 8, 3, 5, torch.float64, "cpu", layout, order, requires_grad=True)
        assert torch.autograd.gradcheck(lambda b, d: ops.latent_concat(b, d, order), (base, detail))
        assert torch.autograd.gradgradcheck(lambda b, d: ops.latent_concat(b, d, order), (base, detail))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_ext()
    for order in (False, True):
        for requires_grad in (False, True):
            base = torch.randn(2, 4, 3, 5, device=device, requires_grad=requires_grad)
            detail = torch.randn(2, 12, 3, 5, device=device, requires_grad=requires_grad)
            torch.library.opcheck(torch.ops.davae_ext.latent_concat.default, (base, detail, order))


def test_cuda_past_2_31_vectors():
    """Past 2^31 vector indices the CUDA kernels switch from FastDivmod to 64-bit division
    (divmod.h). An odd plane (H x W = 32767 x 32771) makes every vector one element, so base and
    detail of one channel each give 2^31 + 131066 elements (4.3 GB in bfloat16)."""
    require_ext()
    require_cuda_memory(20)
    base = torch.randn(1, 1, 32767, 32771, device="cuda", dtype=torch.bfloat16)
    detail = torch.randn_like(base)
    out = ops.latent_concat(base, detail, "base_first")
    assert out.numel() >= 2**31
    assert torch.equal(out[:, :1], base) and torch.equal(out[:, 1:], detail)
