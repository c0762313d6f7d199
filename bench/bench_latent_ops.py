"""latent_concat, detail_project and detail_align_loss: fused vs eager reference vs
torch.compile(reference). All memory-bound: GB/s and % of the measured copy bandwidth matter.
`copy` is a device copy that reads and writes the op's byte count (half each): the ceiling at
this size, where the copy bandwidth (measured on 1 GiB) is not reachable by any kernel because a
few MB leave the launch and the tail a large share of the time.
The fused backend is set once for the session (conftest.py), not per call."""

import pytest
import torch

from davae_ext import ops, reference
from common import DIRECTIONS, case_id, compiled, devices_and_shapes, time_direction

PROVIDERS = ["fused", "eager", "compile", "copy"]


OPS = {
    # name: (fused, reference, inputs(B, C, D, H, W) -> (tensors, extra args), bytes(elem, s, direction))
    "latent_concat": (
        ops.latent_concat, reference.latent_concat,
        lambda b, d, C: [b, d, "base_first"],
        lambda e, n_base, n_detail, direction: e * 2 * (n_base + n_detail) * (2 if direction == "fwdbwd" else 1),
    ),
    "detail_project": (
        ops.detail_project, reference.detail_project,
        lambda b, d, C: [d, C],
        lambda e, n_base, n_detail, direction: e * (n_detail + n_base) * (2 if direction == "fwdbwd" else 1),
    ),
    "detail_align_loss": (
        ops.detail_align_loss, reference.detail_align_loss,
        lambda b, d, C: [d, b, "mean"],
        # fwd reads both; bwd reads both and writes both gradients.
        lambda e, n_base, n_detail, direction: e * (n_detail + n_base) * {"fwd": 1, "bwd": 2, "fwdbwd": 3}[direction],
    ),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("case", devices_and_shapes(), ids=case_id)
def bench_latent_op(benchmark, case, op, direction, provider):
    device, dtype, s = case
    benchmark.group = f"{op}-{direction}-{case_id(case)}"
    fused_fn, ref_fn, make_args, count_bytes = OPS[op]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(s.B, s.C, s.H, s.W, generator=g).to(device, dtype).requires_grad_(direction != "fwd")
    detail = torch.randn(s.B, s.D, s.H, s.W, generator=g).to(device, dtype).requires_grad_(direction != "fwd")
    nbytes = count_bytes(torch.finfo(dtype).bits // 8, base.numel(), detail.numel(), direction)
    if provider == "copy":
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        time_direction(benchmark, device, lambda: dst.copy_(src), [], "fwd", nbytes, 0)
        return
    forward = {"fused": fused_fn, "eager": ref_fn, "compile": compiled(ref_fn)}[provider]
    time_direction(benchmark, device, forward, make_args(base, detail, s.C), direction, nbytes, 0)
