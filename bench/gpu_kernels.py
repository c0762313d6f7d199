"""Per-kernel device time of the fused ops (torch.profiler): which of an op's kernels costs what,
so that the next optimisation goes where the time is. The benchmarks give each op's total
(``gpu_ms``); this splits it, e.g. the patch embed's forward into the patch gather and the GEMM.

    python bench/gpu_kernels.py --output-dir OUT [--device cuda] [--shapes sd3-2048 imagenet-512]

Writes OUT/kernels.json: for each case, each kernel's mean time per call (µs) and the sum. L2 is
not flushed between calls (a flush would be a kernel of its own among the op's), so operands that
fit in L2 (50 MB on an H100) read faster than in a step that has just touched other data: read the
shares, and take totals from the benchmarks. On CPU (no CUDA) it lists the aten ops' self times
instead, which checks the script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))

import davae_ext  # noqa: E402
from davae_ext import ops  # noqa: E402
from bench_patch_embed import make_inputs  # noqa: E402
from common import CPU_SHAPES, CUDA_SHAPES  # noqa: E402


def cases(shape, device, dtype):
    """name -> a no-argument function that runs the op once (backward cases: forward + backward
    of a fresh graph; the forward's kernels are listed too and the names tell them apart). Inputs
    as in the benchmarks (bench_patch_embed.make_inputs)."""
    s = shape
    frozen = make_inputs(device, dtype, s, requires_grad=False)
    trained = make_inputs(device, dtype, s, requires_grad=True)
    finetune = make_inputs(device, dtype, s, requires_grad=True, only_weight_bias=True)
    base, detail = frozen[:2]
    grad_out = torch.randn(s.B, s.T, s.hidden, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def patch_fwd():
        with torch.no_grad():
            ops.detail_patch_embed(*frozen)

    def backward(inputs):
        leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        torch.autograd.grad(ops.detail_patch_embed(*inputs), leaves, grad_out)

    def concat_fwd():
        ops.latent_concat(base, detail)

    def align_fwdbwd():
        detail_g, base_g = trained[1], trained[0]
        torch.autograd.grad(ops.detail_align_loss(detail_g, base_g), [detail_g, base_g])

    return {"patch_embed_fwd": patch_fwd, "patch_embed_bwd_all_inputs": lambda: backward(trained),
            "patch_embed_bwd_weight_bias": lambda: backward(finetune), "latent_concat_fwd": concat_fwd,
            "detail_align_loss_fwdbwd": align_fwdbwd}


def kernel_times(fn, device: str, calls: int) -> dict:
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = (e.self_device_time_total if device == "cuda" else e.self_cpu_time_total) / calls
        if us > 0 and (device != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA):
            rows.append({"kernel": e.key[:160], "us_per_call": round(us, 3), "launches_per_call": e.count / calls})
    rows.sort(key=lambda r: -r["us_per_call"])
    return {"kernels": rows, "total_us": round(sum(r["us_per_call"] for r in rows), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="where kernels.json goes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when present) or cpu")
    parser.add_argument("--shapes", nargs="*", default=None,
                        help="shape names of bench/common.py (default: all); CPU uses its smaller batches")
    parser.add_argument("--calls", type=int, default=10, help="profiled calls per case (default 10)")
    args = parser.parse_args()

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    shapes = CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES
    shapes = [s for s in shapes if args.shapes is None or s.name in args.shapes]
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "dtype": str(dtype),
              "backend": davae_ext.get_backend(), "l2_flushed": False, "cases": {}}
    with davae_ext.use_backend("fused"):
        for shape in shapes:
            for name, fn in cases(shape, args.device, dtype).items():
                result["cases"][f"{shape.name}/{name}"] = kernel_times(fn, args.device, args.calls)
                top = result["cases"][f"{shape.name}/{name}"]
                print(f"{shape.name}/{name}: {top['total_us']:.1f} us; "
                      + "; ".join(f"{r['kernel'][:48]} {r['us_per_call']:.1f}" for r in top["kernels"][:4]))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "kernels.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
