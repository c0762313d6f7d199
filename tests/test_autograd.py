"""The ops' autograd (C++, csrc/autograd/): what the backward is asked for, and double backward.

Values of first-order gradients against the reference are tested per op (test_<op>.py); here:
the gradients with ``create_graph=True`` still match, a gradient of a gradient through a backward
kernel raises a clear error instead of silently dropping the term (latent_concat's backward is
views, so its second derivatives are exact), and the patch embeds' backward computes exactly
the gradients the graph needs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from davae_ext import ops, reference
from conftest import DEVICES, require_ext


def _make(device, *shape, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(requires_grad)


# name: (inputs(device) -> tensors, fused(*tensors), reference(*tensors)); every tensor requires grad.
CASES = {
    "latent_concat": (
        lambda dev: [_make(dev, 2, 2, 4, 4), _make(dev, 2, 4, 4, 4)],
        lambda b, d: ops.latent_concat(b, d),
        lambda b, d: reference.latent_concat(b, d),
    ),
    "detail_project": (
        lambda dev: [_make(dev, 2, 4, 4, 4)],
        lambda d: ops.detail_project(d, 2),
        lambda d: reference.detail_project(d, 2),
    ),
    "detail_align_loss": (
        lambda dev: [_make(dev, 2, 4, 4, 4), _make(dev, 2, 2, 4, 4)],
        lambda d, b: ops.detail_align_loss(d, b),
        lambda d, b: reference.detail_align_loss(d, b),
    ),
    "detail_patch_embed": (
        lambda dev: [_make(dev, 2, 2, 4, 4), _make(dev, 2, 4, 4, 4), _make(dev, 8, 6, 2, 2), _make(dev, 8),
                     _make(dev, 1, 4, 8)],
        lambda b, d, w, bias, pos: ops.detail_patch_embed(b, d, w, bias, pos, 2),
        lambda b, d, w, bias, pos: reference.detail_patch_embed(b, d, w, bias, pos, 2),
    ),
    "patch_embed": (
        lambda dev: [_make(dev, 2, 6, 4, 4), _make(dev, 8, 6, 2, 2), _make(dev, 8), _make(dev, 1, 4, 8)],
        lambda x, w, bias, pos: ops.patch_embed(x, w, bias, pos, 2),
        lambda x, w, bias, pos: reference.patch_embed(x, w, bias, pos, 2),
    ),
}
# Ops whose backward is ATen views, differentiable again.
DIFFERENTIABLE_BACKWARD = {"latent_concat"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(CASES))
def test_double_backward(op, device):
    """First-order gradients under create_graph=True match the reference; differentiating them
    again raises NotImplementedError naming the op (PyTorch's fallback would only warn and drop
    the term through the backward kernel), or, for a backward of views, matches the reference."""
    require_ext()
    make, fused, ref = CASES[op]
    tensors = make(device)
    weights = [torch.randn_like(t) for t in tensors]

    def first_grads(fn):
        out = fn(*tensors)
        # square: the upstream gradient depends on the inputs, so even a linear op's backward
        # kernel sits on the path of the second derivative.
        return torch.autograd.grad(out.square().sum() if out.dim() else out, tensors, create_graph=True)

    got, want = first_grads(fused), first_grads(ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    second = sum((g * w).sum() for g, w in zip(got, weights))
    assert second.requires_grad
    if op in DIFFERENTIABLE_BACKWARD:
        ref_second = sum((g * w).sum() for g, w in zip(want, weights))
        for g, r in zip(torch.autograd.grad(second, tensors), torch.autograd.grad(ref_second, tensors)):
            torch.testing.assert_close(g, r)
        return
    with pytest.raises(NotImplementedError, match=f"davae_ext::{op}: double backward"):
        torch.autograd.grad(second, tensors, allow_unused=True)


class _RecordMasks(TorchDispatchMode):
    """Records the output_mask of every detail_patch_embed_backward call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.davae_ext.detail_patch_embed_backward.default:
            self.masks.append(list(args[6]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "has_bias,has_pos,needs",
    [
        (True, True, "all"),
        (False, True, "all"),  # no bias: pos_embed is the 4th tensor input, not the 5th
        (True, False, "all"),
        (False, False, "all"),
        (False, True, "pos"),
        (True, False, "bias"),
        (True, True, "weight+bias"),  # frozen latents, the usual fine-tuning case
        (True, True, "detail"),
    ],
)
def test_patch_embed_backward_computes_what_is_needed(has_bias, has_pos, needs):
    """The output_mask sent to the backward kernel is exactly the set of inputs that require
    grad, for every combination of optional inputs, and the gradients match the reference."""
    require_ext()
    b, d, w, bias, pos = CASES["detail_patch_embed"][0]("cpu")
    wanted = {"all": {"base", "detail", "weight", "bias", "pos"}, "pos": {"pos"}, "bias": {"bias"},
              "weight+bias": {"weight", "bias"}, "detail": {"detail"}}[needs]
    named = {"base": b, "detail": d, "weight": w, "bias": bias if has_bias else None, "pos": pos if has_pos else None}
    for name, t in named.items():
        if t is not None:
            t.requires_grad_(name in wanted)
    leaves = {n: t for n, t in named.items() if t is not None and t.requires_grad}

    with _RecordMasks() as rec:
        out = ops.detail_patch_embed(b, d, w, named["bias"], named["pos"], 2)
        grads = torch.autograd.grad(out.square().sum(), list(leaves.values()))
    ref_out = reference.detail_patch_embed(b, d, w, named["bias"], named["pos"], 2)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), list(leaves.values()))
    for name, g, r in zip(leaves, grads, ref_grads):
        torch.testing.assert_close(g, r, msg=f"gradient of {name}")
    expected_mask = [
        "base" in leaves or "detail" in leaves,
        "weight" in leaves,
        "bias" in leaves,
        "pos" in leaves,
    ]
    assert rec.masks == [expected_mask]
