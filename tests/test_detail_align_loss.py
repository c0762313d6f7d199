import pytest
import torch

from davae_ext import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, PAIR_LAYOUTS, check_against_reference, device_dtype_id, latent_pair, make,
                      require_ext)

SHAPES = [(1, 16, 16, 6, 6), (3, 4, 12, 2, 2), (0, 16, 16, 6, 6), (3, 32, 96, 34, 66), (1, 16, 16, 66, 34)]
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", PAIR_LAYOUTS)
def test_matches_reference(device_dtype, shape, reduction, layout):
    require_ext()
    device, dtype = device_dtype
    if shape[0] == 0 and reduction == "mean":
        pytest.skip("mean over zero elements is NaN in both implementations (checked below)")
    base, detail = latent_pair(*shape, dtype, device, layout, seed=4, requires_grad=True)
    check_against_reference(ops.detail_align_loss, reference.detail_align_loss, [detail, base, reduction], dtype)


def test_empty_mean_is_nan_like_mse_loss():
    require_ext()
    detail, base = torch.randn(0, 8, 3, 3), torch.randn(0, 4, 3, 3)
    assert torch.isnan(ops.detail_align_loss(detail, base)) and torch.isnan(reference.detail_align_loss(detail, base))


def test_stop_gradient_target():
    require_ext()
    detail = torch.randn(2, 8, 5, 5, requires_grad=True)
    base = torch.randn(2, 4, 5, 5, requires_grad=True)
    ops.detail_align_loss(detail, base.detach()).backward()
    assert detail.grad is not None and base.grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_deterministic(reduction, device):
    """Same bits on every run (fixed-order reduction), on a tensor large enough to be split."""
    require_ext()
    detail = torch.randn(4, 96, 64, 64, device=device)
    base = torch.randn(4, 32, 64, 64, device=device)
    first = ops.detail_align_loss(detail, base, reduction)
    for _ in range(3):
        assert torch.equal(ops.detail_align_loss(detail, base, reduction), first)


@pytest.mark.parametrize("layout", ["contiguous", "slices", "batch_strided"])
def test_gradcheck(layout):
    require_ext()
    base, detail = latent_pair(2, 4, 12, 3, 5, torch.float64, "cpu", layout, requires_grad=True)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda d, b: ops.detail_align_loss(d, b, reduction), (detail, base))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["strided", "batch_strided", "channels_last"])
def test_backward_reads_strided_gradient(device, layout):
    """reduction="none": the backward op reads the per-element gradient through its strides."""
    require_ext()
    detail, base = torch.randn(2, 8, 3, 8, device=device), torch.randn(2, 4, 3, 8, device=device)
    grad = make((2, 4, 3, 8), torch.float32, device, layout)
    d_detail, d_base = torch.ops.davae_ext.detail_align_loss_backward(grad, detail, base, 0)
    d_proj = 2 * grad * (detail.view(2, 4, 2, 3, 8).mean(2) - base)
    torch.testing.assert_close(d_base, -d_proj)
    torch.testing.assert_close(d_detail, d_proj.repeat_interleave(2, dim=1) / 2)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_ext()
    for code in (0, 1, 2):
        for requires_grad in (False, True):
            detail = torch.randn(2, 12, 3, 5, device=device, requires_grad=requires_grad)
            base = torch.randn(2, 4, 3, 5, device=device, requires_grad=requires_grad)
            torch.library.opcheck(torch.ops.davae_ext.detail_align_loss.default, (detail, base, code))
    grad = torch.randn((), device=device)
    torch.library.opcheck(
        torch.ops.davae_ext.detail_align_loss_backward.default,
        (grad, torch.randn(2, 12, 3, 5, device=device), torch.randn(2, 4, 3, 5, device=device), 1),
    )
