"""A short demo of the fused ops: each op on the SD3.5-M + DA-VAE 1024 px shape (latent 64x64,
C = D = 16, p = 2, hidden 1536), fused vs the pure-PyTorch reference, with timings and the max
difference. Runs on CPU (float32) and, when present, on CUDA (bfloat16).

    python bench/demo_ops.py [--batch 1] [--repeats 20] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import davae_ext
from davae_ext import ops, reference


def median_ms(fn, repeats: int, device: str) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(device: str, dtype: torch.dtype, batch: int, repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    B, C, D, H, W, p, N = batch, 16, 16, 64, 64, 2, 1536
    T = (H // p) * (W // p)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    base, detail = rnd(B, C, H, W), rnd(B, D, H, W)
    weight, bias, pos = rnd(N, C + D, p, p, scale=(C + D) ** -0.5 / p), rnd(N), rnd(1, T, N)
    cases = {
        "latent_concat": lambda m: m.latent_concat(base, detail),
        "detail_project": lambda m: m.detail_project(detail, C),
        "detail_align_loss": lambda m: m.detail_align_loss(detail, base),
        "detail_patch_embed": lambda m: m.detail_patch_embed(base, detail, weight, bias, pos, p),
    }
    rows = []
    for name, call in cases.items():
        with torch.no_grad():
            with davae_ext.use_backend("fused"):
                fused_out = call(ops)
                fused_ms = median_ms(lambda: call(ops), repeats, device)
            ref_out = call(reference)
            ref_ms = median_ms(lambda: call(reference), repeats, device)
        rows.append({
            "op": name, "device": device, "dtype": str(dtype).replace("torch.", ""),
            "fused_ms": fused_ms, "reference_ms": ref_ms, "speedup": ref_ms / fused_ms,
            "max_abs_diff": (fused_out.float() - ref_out.float()).abs().max().item(),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per op and provider (default: 20)")
    parser.add_argument("--output-dir", default=None, help="also write demo_ops.json there (default: print only)")
    args = parser.parse_args()

    info = davae_ext.build_info()
    print(f"davae_ext build: extension loaded={info['extension_loaded']}, CUDA kernels={info['cuda_kernels']}, "
          f"torch {info['torch_running']}")
    rows = run("cpu", torch.float32, args.batch, args.repeats)
    if torch.cuda.is_available():
        rows += run("cuda", torch.bfloat16, args.batch, args.repeats)
    print(f"{'op':<20} {'device':<6} {'dtype':<9} {'fused ms':>9} {'ref ms':>9} {'speedup':>8} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['op']:<20} {r['device']:<6} {r['dtype']:<9} {r['fused_ms']:>9.3f} {r['reference_ms']:>9.3f} "
              f"{r['speedup']:>7.2f}x {r['max_abs_diff']:>11.2e}")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "demo_ops.json"), "w") as f:
            json.dump({"build_info": info, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
