import pytest
import torch

from davae_ext import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, ORDERS, check_against_reference, device_dtype_id, make, require_cuda_memory,
                      require_ext)

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
@pytest.mark.parametrize("layout", ["contiguous", "strided", "channels_last"])
def test_matches_reference(device_dtype, shape, order, layout):
    require_ext()
    device, dtype = device_dtype
    B, C, D, H, W = shape
    base = make((B, C, H, W), dtype, device, layout, seed=1, requires_grad=True)
    detail = make((B, D, H, W), dtype, device, layout, seed=2, requires_grad=True)
    check_against_reference(ops.latent_concat, reference.latent_concat, [base, detail, order], dtype)


@pytest.mark.parametrize("order", ORDERS)
def test_exact_layout_and_fresh_gradients(order):
    """The op is an exact copy, and its backward returns fresh tensors, not views of the grad."""
    require_ext()
    base, detail = torch.randn(2, 4, 3, 5), torch.randn(2, 12, 3, 5)
    out = ops.latent_concat(base, detail, order)
    first, second = (detail, base) if order == "detail_first" else (base, detail)
    assert torch.equal(out[:, : first.shape[1]], first) and torch.equal(out[:, first.shape[1]:], second)
    grad = torch.randn_like(out)
    d_base, d_detail = torch.ops.davae_ext.latent_concat_backward(grad, 4, order == "detail_first")
    for part in (d_base, d_detail):
        assert part.is_contiguous() and part.untyped_storage().data_ptr() != grad.untyped_storage().data_ptr()


def test_gradcheck():
    require_ext()
    base = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    detail = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    for order in ORDERS:
        assert torch.autograd.gradcheck(lambda b, d: ops.latent_concat(b, d, order), (base, detail))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_ext()
    for order in (False, True):
        for requires_grad in (False, True):
            base = torch.randn(2, 4, 3, 5, device=device, requires_grad=requires_grad)
            detail = torch.randn(2, 12, 3, 5, device=device, requires_grad=requires_grad)
            torch.library.opcheck(torch.ops.davae_ext.latent_concat.default, (base, detail, order))
    grad = torch.randn(2, 16, 3, 5, device=device)
    torch.library.opcheck(torch.ops.davae_ext.latent_concat_backward.default, (grad, 4, True))


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
    d_base, d_detail = torch.ops.davae_ext.latent_concat_backward(out, 1, False)
    assert torch.equal(d_base, base) and torch.equal(d_detail, detail)
