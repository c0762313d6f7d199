"""Time per fine-tuning step of train/finetune_sd35.py with --fused and without, side by side in
one run (the same data, seeds and model; the quick tiny models unless BENCH_FINETUNE_MODEL /
BENCH_FINETUNE_DAVAE name others). The step time is read from the script's own log (the median
of the per-step wall times after the first 3 steps). ``extra_info`` holds ms/step and the ratio."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
from davae_ext.training import csv_column  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "finetune_sd35.py"
STEPS = int(os.environ.get("BENCH_FINETUNE_STEPS", "30"))
_MS: dict = {}


def _step_times(log: Path) -> list[float]:
    t = csv_column(log, "seconds")
    return [b - a for a, b in zip(t, t[1:])][3:]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def bench_finetune_step(benchmark, tmp_path_factory, fused):
    benchmark.group = "finetune_sd35-step-cpu"
    out = tmp_path_factory.mktemp("ft") / ("fused" if fused else "reference")
    args = [sys.executable, str(SCRIPT), "--steps", str(STEPS), "--no-sample", "--no-progress", "--output-dir", str(out),
            "--checkpoint-every", str(10 ** 6)]
    if os.environ.get("BENCH_FINETUNE_MODEL"):
        args += ["--model", os.environ["BENCH_FINETUNE_MODEL"], "--davae", os.environ["BENCH_FINETUNE_DAVAE"]]
    else:
        args += ["--quick-default", "--lora-rank", "16", "--lora-alpha", "16"]
    if fused:
        args.append("--fused")

    def run():
        subprocess.run(args, check=True, capture_output=True, timeout=1800)

    benchmark.pedantic(run, rounds=1, iterations=1)
    ms = 1000 * statistics.median(_step_times(out / "log.csv"))
    _MS[fused] = ms
    benchmark.extra_info.update({"device": "cpu", "ms_per_step": ms, "steps": STEPS})
    if True in _MS and False in _MS:
        benchmark.extra_info["reference_over_fused"] = _MS[False] / _MS[True]
    print(f"\nfinetune step ({'fused' if fused else 'reference'}): {ms:.1f} ms"
          + (f"; reference/fused = {_MS[False] / _MS[True]:.3f}" if len(_MS) == 2 else ""))
