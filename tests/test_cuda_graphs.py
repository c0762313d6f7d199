"""CUDA: every op's forward and backward run on the caller's current stream, with no host
synchronisation, checked two ways:

- captured in a CUDA graph and replayed on new input values, every output and gradient matches
  the eager call on those values. A capture fails on a host synchronisation or on a launch onto
  the legacy default stream, and work launched on any other stream is left out of the graph (its
  output would keep stale values);
- under ``torch.cuda.set_sync_debug_mode("error")`` the eager calls raise on a synchronisation
  through c10's CUDA wrappers.

Skipped without a GPU and the CUDA kernels.
"""

import pytest
import torch

from davae_ext import ops
from conftest import CUDA, make

pytestmark = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")

B, C, D, H, W, P, N = 2, 4, 8, 8, 12, 2, 64
T = (H // P) * (W // P)
SHAPES = {"base": (B, C, H, W), "detail": (B, D, H, W), "weight": (N, C + D, P, P), "bias": (N,), "pos": (1, T, N)}


def _patch_embed(x):
    return ops.detail_patch_embed(x["base"], x["detail"], x["weight"], x["bias"], x["pos"], P)


def _latent_patch_embed(x):  # the one-latent op on a concatenation made in the same step
    latent = torch.cat((x["base"], x["detail"]), 1)
    return ops.patch_embed(latent, x["weight"], x["bias"], x["pos"], P)


# name -> (the call, the inputs it differentiates)
CASES = {
    "latent_concat": (lambda x: ops.latent_concat(x["base"], x["detail"], "detail_first"), ("base", "detail")),
    "detail_project": (lambda x: ops.detail_project(x["detail"], C), ("detail",)),
    "detail_align_loss": (lambda x: ops.detail_align_loss(x["detail"], x["base"]), ("detail", "base")),
    "patch_embed": (_patch_embed, ("base", "detail", "weight", "bias", "pos")),
    # fine-tuning's mask: d_weight with d_bias from the same GEMM's epilogue (cuBLASLt BGRADB)
    "patch_embed_weight_bias": (_patch_embed, ("weight", "bias")),
    "patch_embed_latent": (_latent_patch_embed, ("base", "detail", "weight", "bias", "pos")),
}
DTYPES = [torch.float32, torch.bfloat16]


def _stepper(case, dtype):
    """Tensors whose values can be replaced in place (the inputs and the output's gradient) and a
    forward + backward on them."""
    fn, grad_names = CASES[case]
    x = {k: make(s, dtype, "cuda", seed=i, requires_grad=k in grad_names) for i, (k, s) in enumerate(SHAPES.items())}
    x["grad_out"] = make(fn(x).shape, dtype, "cuda", seed=50)

    def step():
        out = fn(x)
        return (out, *torch.autograd.grad(out, [x[n] for n in grad_names], x["grad_out"]))

    return x, step


# float32's patch embed runs ATen's GEMMs, 16-bit's cuBLASLt's (with the BGRADB epilogue for
# fine-tuning's weight + bias): both dtypes cover both paths.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_cuda_graph_replay_matches_eager(case, dtype):
    x, step = _stepper(case, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS(Lt) handles, workspaces
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():  # new values for every input and for the output's gradient
        for i, t in enumerate(x.values()):
            t.copy_(make(t.shape, dtype, "cuda", seed=100 + i))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    assert len(captured) == len(expected)
    for i, (got, want) in enumerate(zip(captured, expected)):
        torch.testing.assert_close(got, want, msg=lambda m: f"{case}, result #{i}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_cuda_forward_and_backward_do_not_synchronise(case, dtype):
    _, step = _stepper(case, dtype)
    step()  # first calls: handles and workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
