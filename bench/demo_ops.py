"""A short demo of the fused ops: each op on the SD3.5-M + DA-VAE 1024 px shape (latent 64x64,
C = D = 16, p = 2, hidden 1536), fused vs the pure-PyTorch reference, with timings and the max
difference. Runs on CPU (float32) and, when present, on CUDA (bfloat16).

    python bench/demo_ops.py [--batch 1] [--rounds 5] [--min-run-time 0.2] [--output-dir DIR]

Timing: ``torch.utils.benchmark`` (``blocked_autorange``, every CPU thread torch uses), the fused
op and its reference alternating for ``--rounds`` rounds. The ratio printed is the median of the
rounds' ratios, and only when every round's ratio lies within 25% of it; otherwise the machine
was too noisy to stand behind one and the range is printed instead. The benchmarks in ``bench/``
are the record; this is a look.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
from torch.utils import benchmark

import davae_ext
from davae_ext import ops, reference


NOISE = 0.25  # the largest spread of the rounds' ratios around their median that still gets a ratio


def seconds(fn, min_run_time: float) -> float:
    """Median seconds per call of one blocked_autorange measurement."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def compare(fused, ref, rounds: int, min_run_time: float) -> dict:
    """The two alternating for ``rounds`` rounds (after one warm-up call each)."""
    fused(), ref()
    pairs = [(seconds(fused, min_run_time), seconds(ref, min_run_time)) for _ in range(rounds)]
    ratios = sorted(r / f for f, r in pairs)
    ratio = statistics.median(ratios)
    steady = ratios[0] >= ratio * (1 - NOISE) and ratios[-1] <= ratio * (1 + NOISE)
    return {"fused_ms": statistics.median(f for f, _ in pairs) * 1e3,
            "reference_ms": statistics.median(r for _, r in pairs) * 1e3,
            "speedup": ratio if steady else None, "speedup_range": [ratios[0], ratios[-1]]}


def run(device: str, dtype: torch.dtype, batch: int, rounds: int, min_run_time: float) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    B, C, D, H, W, p, N = batch, 16, 16, 64, 64, 2, 1536
    T = (H // p) * (W // p)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    base, detail = rnd(B, C, H, W), rnd(B, D, H, W)
    latent = torch.cat((base, detail), dim=1)
    weight, bias, pos = rnd(N, C + D, p, p, scale=(C + D) ** -0.5 / p), rnd(N), rnd(1, T, N)
    cases = {
        "latent_concat": lambda m: m.latent_concat(base, detail),
        "detail_project": lambda m: m.detail_project(detail, C),
        "detail_align_loss": lambda m: m.detail_align_loss(detail, base),
        "detail_patch_embed": lambda m: m.detail_patch_embed(base, detail, weight, bias, pos, p),
        "patch_embed": lambda m: m.patch_embed(latent, weight, bias, pos, p),
    }
    rows = []
    for name, call in cases.items():
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def fused():
            with davae_ext.use_backend("fused"):
                out = call(ops)
            sync()
            return out

        def ref():
            out = call(reference)
            sync()
            return out

        with torch.no_grad():
            diff = (fused().float() - ref().float()).abs().max().item()
            timing = compare(fused, ref, rounds, min_run_time)
        rows.append({"op": name, "device": device, "dtype": str(dtype).replace("torch.", ""), **timing,
                     "max_abs_diff": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per op (default: 5)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of calls per provider and round (default: 0.2)")
    parser.add_argument("--output-dir", default=None, help="also write demo_ops.json there (default: print only)")
    args = parser.parse_args()

    info = davae_ext.build_info()
    print(f"davae_ext build: extension loaded={info['extension_loaded']}, CUDA kernels={info['cuda_kernels']}, "
          f"torch {info['torch_running']}")
    rows = run("cpu", torch.float32, args.batch, args.rounds, args.min_run_time)
    if torch.cuda.is_available():
        rows += run("cuda", torch.bfloat16, args.batch, args.rounds, args.min_run_time)
    print(f"{'op':<20} {'device':<6} {'dtype':<9} {'fused ms':>9} {'ref ms':>9} {'ref / fused':>14} {'max |diff|':>11}")
    for r in rows:
        low, high = r["speedup_range"]
        ratio = f"{r['speedup']:.2f}x" if r["speedup"] is not None else f"{low:.1f}-{high:.1f}x?"
        print(f"{r['op']:<20} {r['device']:<6} {r['dtype']:<9} {r['fused_ms']:>9.3f} {r['reference_ms']:>9.3f} "
              f"{ratio:>14} {r['max_abs_diff']:>11.2e}")
    if any(r["speedup"] is None for r in rows):
        print(f"x?: the rounds' ratios spread more than {NOISE:.0%} around their median (a busy machine); "
              "no single ratio is given")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "demo_ops.json"), "w") as f:
            json.dump({"build_info": info, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
