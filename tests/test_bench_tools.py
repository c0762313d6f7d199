"""The GPU check's tooling, which otherwise runs only on a GPU machine (minutes of which are rare):
the JSON-lines record of each finished benchmark (bench/conftest.py), the summary
(bench/gpu_summary.py) and the script's shell syntax."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">
<testcase classname="tests.test_a" name="test_ok"/>
<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">trace</failure></testcase>
<testcase classname="tests.test_a" name="test_skip"><skipped message="no GPU"/></testcase>
</testsuite></testsuites>
"""


def _row(provider, median_ms, gpu_ms):
    return {"name": f"bench_x[cuda-{provider}]", "group": "op-fwd-cuda", "params": {"provider": provider},
            "extra_info": {"median_ms": median_ms, "gbs": 1.0, "tflops": 0.0, "pct_copy_bw": 10.0,
                           "gpu_ms": gpu_ms, "gpu_pct_copy_bw": 40.0 if gpu_ms else None}}


def test_gpu_summary_counts_tests_and_computes_ratios(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    lines = [_row("fused", 0.010, 0.004), _row("eager", 0.030, 0.016), _row("copy", 0.008, None)]
    # The last line is cut short, as when a time limit kills the writer mid-line: not read.
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + json.dumps(lines[0])[:40])
    kernels = {"cases": {"s/op": {"total_us": 3.0, "kernels": [{"kernel": f"k{i}", "us_per_call": 0.375,
                                                                 "launches_per_call": 1.0} for i in range(8)]}}}
    (tmp_path / "kernels.json").write_text(json.dumps(kernels))
    out = tmp_path / "summary.json"
    subprocess.run([sys.executable, os.path.join(BENCH, "gpu_summary.py"), "--out", str(out), "--junit",
                    str(tmp_path / "junit.xml"), "--bench", str(tmp_path / "b.jsonl"), str(tmp_path / "missing.jsonl"),
                    "--kernels", str(tmp_path / "kernels.json"), "--rc", "build=0", "tests=1", "--seconds", "12"],
                   check=True, capture_output=True)
    summary = json.loads(out.read_text())
    assert summary["exit_codes"] == {"build": "0", "tests": "1"}
    tests = summary["tests"]
    assert (tests["tests"], tests["failures"], tests["skipped"]) == (3, 1, 1)
    assert tests["failed"] == [{"test": "tests.test_a::test_bad", "message": "assert 1 == 2"}]
    ratios = summary["ratios"]["op-fwd-cuda"]
    assert abs(ratios["fused_vs_eager"] - 3.0) < 1e-9 and abs(ratios["fused_vs_copy"] - 0.8) < 1e-9
    assert abs(ratios["gpu_fused_vs_eager"] - 4.0) < 1e-9 and ratios["gpu_fused_vs_copy"] is None
    assert ratios["gpu_fused_pct_copy_bw"] == 40.0
    assert len(summary["benchmarks"]) == 3
    assert summary["kernels"]["s/op"]["total_us"] == 3.0 and len(summary["kernels"]["s/op"]["top"]) == 6


def test_gpu_kernels_lists_each_case(tmp_path):
    """bench/gpu_kernels.py on CPU (where it lists aten ops): every case of a shape, with times."""
    subprocess.run([sys.executable, os.path.join(BENCH, "gpu_kernels.py"), "--output-dir", str(tmp_path),
                    "--device", "cpu", "--shapes", "imagenet-512", "--calls", "1"], check=True, capture_output=True,
                   timeout=600)
    result = json.loads((tmp_path / "kernels.json").read_text())
    assert sorted(result["cases"]) == sorted(f"imagenet-512/{c}" for c in (
        "patch_embed_fwd", "patch_embed_bwd_all_inputs", "patch_embed_bwd_weight_bias", "latent_concat_fwd",
        "detail_align_loss_fwdbwd"))
    fwd = result["cases"]["imagenet-512/patch_embed_fwd"]
    assert fwd["total_us"] > 0 and any("detail_patch_embed" in k["kernel"] for k in fwd["kernels"])


def test_benchmark_rows_are_appended_as_they_finish(tmp_path):
    path = tmp_path / "rows.jsonl"
    # A pytest of its own: not an xdist worker (pytest-benchmark disables itself under xdist).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"DAVAE_BENCH_JSONL": str(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", BENCH, "--benchmark-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-k", "cpu and sd3-1024 and latent_concat and fwd and not fwdbwd and (copy or fused)"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["params"]["provider"] for r in rows) == ["copy", "fused"]
    for r in rows:
        assert r["group"] == "latent_concat-fwd-cpu-float32-sd3-1024"
        assert r["extra_info"]["median_ms"] > 0 and r["extra_info"]["bytes"] > 0


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", os.path.join(BENCH, "gpu_check.sh")], check=True)


def test_memory_model_arithmetic():
    """bench/memory_model.py's per-GPU sums: FSDP divides the blocks' weights and optimiser state by
    the GPU count and leaves the replicated rest; checkpointing keeps the block inputs and one
    block's activations twice; the largest batch fills the H200 budget and no more."""
    sys.path.insert(0, BENCH)
    try:
        import memory_model as mm
    finally:
        sys.path.remove(BENCH)
    c = {"total": 1000, "blocks": 900, "replicated": 100, "lora": 90, "embed_head": 10, "layers": 3, "hidden": 4,
         "dual_layers": 1}
    act = {"dual": 3.0 * mm.GIB, "plain": 2.0 * mm.GIB}
    ddp = mm.per_gpu(c, act, 10, "lora", "ddp", 1, False, 2, 0.0)
    assert ddp["weights_gib"] * mm.GIB == 900 * 2 + 90 * 2 + 90 * 12 + 10 * 12
    fsdp = mm.per_gpu(c, act, 10, "lora", "fsdp", 8, False, 2, 0.0)
    assert fsdp["weights_gib"] * mm.GIB == 900 * 2 / 8 + 90 * 2 + 90 * 12 / 8 + 10 * 12
    assert fsdp["gathered_gib"] * mm.GIB == 2 * 300 * 2 and ddp["gathered_gib"] == 0
    assert ddp["per_image_gib"] == 3.0 + 2 * 2.0  # no checkpointing: every block's activations
    ckpt = mm.per_gpu(c, act, 10, "full", "ddp", 1, True, 2, 0.0)
    assert ckpt["per_image_gib"] * mm.GIB == 3 * ((10 + mm.TEXT_TOKENS) * 4 * 4 + 4 * 4) + 2 * 3.0 * mm.GIB
    assert ckpt["weights_gib"] * mm.GIB == 1000 * 12
    n = mm.largest_batch(ddp, 0.1)
    budget = mm.H200_GIB * 0.9
    fixed = ddp["total_gib"] - ddp["per_image_gib"]
    assert fixed + n * ddp["per_image_gib"] <= budget < fixed + (n + 1) * ddp["per_image_gib"]
