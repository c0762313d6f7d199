"""Time per fine-tuning step of train/finetune_sd35.py with --fused and without, side by side in
one run (the same data, seeds and model; the quick tiny models unless BENCH_FINETUNE_MODEL /
BENCH_FINETUNE_DAVAE name others). The step time is read from the script's own log (the median
of the per-step wall times after the first 3 steps). ``extra_info`` holds it as median_ms (so the
run's summary, bench/conftest.py, gives the ratio) and ms_per_step.
The models, the DA-VAE and the latent cache are built by a warm-up run before anything is timed,
so the first provider does not pay for them."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
from davae_ext.training.common import csv_column  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "finetune_sd35.py"
STEPS = int(os.environ.get("BENCH_FINETUNE_STEPS", "30"))


def _step_times(log: Path) -> list[float]:
    t = csv_column(log, "seconds")
    return [b - a for a, b in zip(t, t[1:])][3:]


def _args(out: Path, steps: int, fused: bool) -> list[str]:
    args = [sys.executable, str(SCRIPT), "--steps", str(steps), "--no-sample", "--no-progress", "--output-dir", str(out),
            "--checkpoint-every", str(10 ** 6)]
    if os.environ.get("BENCH_FINETUNE_MODEL"):
        args += ["--model", os.environ["BENCH_FINETUNE_MODEL"], "--davae", os.environ["BENCH_FINETUNE_DAVAE"]]
    else:
        args += ["--quick-default", "--lora-rank", "16", "--lora-alpha", "16"]
    return args + (["--fused"] if fused else [])


@pytest.fixture(scope="module")
def warm_caches(tmp_path_factory):
    """One short run: builds (or finds) the cached models, DA-VAE and latents both providers use."""
    subprocess.run(_args(tmp_path_factory.mktemp("ft_warmup"), 1, True), check=True, capture_output=True, timeout=3600)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def bench_finetune_step(benchmark, tmp_path_factory, warm_caches, fused):
    benchmark.group = "finetune_sd35-step-cpu"
    out = tmp_path_factory.mktemp("ft") / ("fused" if fused else "reference")

    def run():
        subprocess.run(_args(out, STEPS, fused), check=True, capture_output=True, timeout=1800)

    benchmark.pedantic(run, rounds=1, iterations=1)
    ms = 1000 * statistics.median(_step_times(out / "log.csv"))
    benchmark.extra_info.update({"device": "cpu", "median_ms": ms, "ms_per_step": ms, "steps": STEPS})
    print(f"\nfinetune step ({'fused' if fused else 'reference'}): {ms:.1f} ms")
