"""The registered ops under torch.compile(fullgraph=True) and torch.export."""

import pytest
import torch

from davae_ext import ops
from conftest import CUDA, require_ext


class AllOps(torch.nn.Module):
    """A small module using the five ops the way DA-VAE training does."""

    def __init__(self, C=4, D=12, p=2, hidden=16, T=6):
        super().__init__()
        self.C, self.p = C, p
        self.weight = torch.nn.Parameter(torch.randn(hidden, C + D, p, p) * 0.1)
        self.bias = torch.nn.Parameter(torch.randn(hidden))
        self.pos = torch.nn.Parameter(torch.randn(1, T, hidden))

    def forward(self, base, detail):
        tokens = ops.detail_patch_embed(base, detail, self.weight, self.bias, self.pos, self.p, "detail_first")
        latent = ops.latent_concat(base, detail)
        latent_tokens = ops.patch_embed(latent, self.weight, self.bias, self.pos, self.p)
        proj = ops.detail_project(detail, self.C)
        loss = ops.detail_align_loss(detail, base.detach())
        return tokens.square().mean() + latent_tokens.square().mean() + latent.mean() + proj.mean() + loss


def _inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 4, 4, 6, generator=g).to(device)
    detail = torch.randn(2, 12, 4, 6, generator=g).to(device).requires_grad_()
    return base, detail


def _run(model, fn, device):
    base, detail = _inputs(device)
    out = fn(base, detail)
    out.backward()
    grads = [detail.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
def test_compile_fullgraph_matches_eager(backend, device):
    require_ext()
    torch._dynamo.reset()
    model = AllOps().to(device)
    eager_out, eager_grads = _run(model, model, device)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out, grads = _run(model, compiled, device)
    torch.testing.assert_close(out, eager_out)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


def test_export_roundtrip():
    require_ext()
    model = AllOps().eval()
    base, detail = _inputs()
    detail = detail.detach()
    exported = torch.export.export(model, (base, detail))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("davae_ext.detail_patch_embed" in t for t in targets), targets
    assert any("davae_ext.patch_embed" in t for t in targets), targets
    torch.testing.assert_close(exported.module()(base, detail), model(base, detail))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
def test_compiled_autograd_traces_the_cpp_backward(device):
    """An eager forward whose backward runs under compiled autograd (as trainers that compile the
    backward do): the ops' C++ autograd nodes are traced, and the gradients match eager."""
    require_ext()
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    enable = getattr(compiled_autograd, "_enable", None) or getattr(compiled_autograd, "enable", None)
    if enable is None:
        pytest.skip("this torch has no compiled-autograd context manager")
    model = AllOps().to(device)
    eager_out, eager_grads = _run(model, model, device)
    base, detail = _inputs(device)
    detail.requires_grad_()
    out = model(base, detail)
    with enable(torch.compile(backend="eager", fullgraph=True)):
        out.backward()
    grads = [detail.grad] + [p.grad.clone() for p in model.parameters()]
    torch.testing.assert_close(out.detach(), eager_out)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
