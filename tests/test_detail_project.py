import pytest
import torch

from davae_ext import ops, reference
from conftest import (DEVICE_DTYPES, DEVICES, LAYOUTS, check_against_reference, device_dtype_id, make,
                      require_cuda_memory, require_ext)

SHAPES = [(1, 16, 16, 6, 6), (3, 4, 12, 2, 2), (0, 16, 16, 6, 6), (3, 32, 96, 34, 66), (1, 16, 16, 66, 34)]


@pytest.mark.parametrize("device_dtype", DEVICE_DTYPES, ids=device_dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(device_dtype, shape, layout):
    require_ext()
    device, dtype = device_dtype
    B, C, D, H, W = shape
    detail = make((B, D, H, W), dtype, device, layout, seed=3, requires_grad=True)
    check_against_reference(ops.detail_project, reference.detail_project, [detail, C], dtype)


def test_contiguous_groups():
    """Channel c of Proj is the mean of detail channels [c*r, (c+1)*r), not an interleaved group."""
    require_ext()
    detail = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1).expand(1, 6, 2, 2).contiguous()
    out = ops.detail_project(detail, 2)
    assert out[0, :, 0, 0].tolist() == [1.0, 4.0]  # mean(0,1,2), mean(3,4,5)


@pytest.mark.parametrize("layout", ["contiguous", "strided", "batch_strided"])
def test_gradcheck(layout):
    require_ext()
    detail = make((2, 12, 3, 5), torch.float64, "cpu", layout, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: ops.detail_project(d, 4), (detail,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["strided", "batch_strided", "channels_last"])
def test_backward_reads_strided_gradient(device, layout):
    """The backward op reads the output gradient through its strides too."""
    require_ext()
    grad = make((2, 4, 3, 8), torch.float32, device, layout)
    expected = grad.repeat_interleave(3, dim=1) / 3
    torch.testing.assert_close(torch.ops.davae_ext.detail_project_backward(grad, 12), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_ext()
    for requires_grad in (False, True):
        detail = torch.randn(2, 12, 3, 5, device=device, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.davae_ext.detail_project.default, (detail, 4))
    grad = torch.randn(2, 4, 3, 5, device=device)
    torch.library.opcheck(torch.ops.davae_ext.detail_project_backward.default, (grad, 12))


def test_cuda_past_2_31_vectors():
    """The 64-bit divider path of the projection (divmod.h): an odd 46341 x 46341 plane, one base
    and one detail channel (r = 1: Proj is the identity, exactly), 2^31 + 4633 vectors of one element."""
    require_ext()
    require_cuda_memory(20)
    detail = torch.randn(1, 1, 46341, 46341, device="cuda", dtype=torch.bfloat16)
    out = ops.detail_project(detail, 1)
    assert out.numel() >= 2**31 and torch.equal(out, detail)
    d_detail = torch.ops.davae_ext.detail_project_backward(out, 1)
    assert torch.equal(d_detail, detail)
