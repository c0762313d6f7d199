"""Summarise a GPU check: test counts and failures from JUnit XML, and for each CUDA benchmark
its median, GB/s, TFLOP/s and % of the copy bandwidth measured in the same run (launch-loop and
CUDA-graph device times, bench/common.py), plus the fused provider's speed-up over each other
provider in its group, and the top kernels of each fused op (bench/gpu_kernels.py). Writes one
JSON and prints a table."""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET


def tests_summary(path: str) -> dict:
    if not os.path.exists(path):
        return {"error": f"{path} missing"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "message": (node.get("message") or "")[:500]})
    total["failed"] = failed[:50]
    return total


def load_benchmarks(path: str) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON, or of the JSON lines bench/conftest.py appends
    (DAVAE_BENCH_JSONL), which survive a time limit that interrupts the session."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        if not path.endswith(".jsonl"):
            return json.load(f).get("benchmarks", [])
        rows = []
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                pass
        return rows


def bench_summary(paths: list[str]) -> tuple[list[dict], dict]:
    rows = []
    for path in paths:
        for b in load_benchmarks(path):
            info = b.get("extra_info", {})
            rows.append({
                "group": b.get("group"),
                "name": b.get("name"),
                "provider": b.get("params", {}).get("provider"),
                "median_ms": info.get("median_ms"),
                "gbs": info.get("gbs"),
                "tflops": info.get("tflops"),
                "pct_copy_bw": info.get("pct_copy_bw"),
                "gpu_ms": info.get("gpu_ms"),
                "gpu_pct_copy_bw": info.get("gpu_pct_copy_bw"),
                "copy_bw_gbs": info.get("copy_bw_gbs"),
                "peak_bytes": info.get("peak_bytes"),
                "device": info.get("device"),
                "extra_info": info,
            })
    groups: dict[str, dict] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["provider"]] = r
    ratios = {}
    for group, providers in sorted(groups.items()):
        fused = providers.get("fused")
        if not fused or not fused["median_ms"]:
            continue
        ratios[group] = {
            f"fused_vs_{name}": (p["median_ms"] / fused["median_ms"]) if p["median_ms"] else None
            for name, p in providers.items() if name != "fused"
        }
        ratios[group]["fused_pct_copy_bw"] = fused["pct_copy_bw"]
        if fused.get("gpu_ms"):  # device time (CUDA graph replay): the host out of the loop
            ratios[group].update({
                f"gpu_fused_vs_{name}": (p["gpu_ms"] / fused["gpu_ms"]) if p.get("gpu_ms") else None
                for name, p in providers.items() if name != "fused"
            })
            ratios[group]["gpu_fused_pct_copy_bw"] = fused["gpu_pct_copy_bw"]
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="summary JSON to write")
    parser.add_argument("--junit", required=True, help="pytest JUnit XML")
    parser.add_argument("--bench", nargs="*", default=[],
                        help="pytest-benchmark JSON files, or .jsonl files of bench/conftest.py's rows")
    parser.add_argument("--rc", nargs="*", default=[], help="step=exit-code pairs")
    parser.add_argument("--seconds", type=int, default=None, help="wall time of the whole check")
    parser.add_argument("--kernels", default=None, help="per-kernel times (bench/gpu_kernels.py's kernels.json)")
    args = parser.parse_args()

    rows, ratios = bench_summary(args.bench)
    try:
        import torch

        import davae_ext

        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "build_info": davae_ext.build_info()}
    except Exception as exc:  # the summary must still be written
        env = {"error": repr(exc)}
    summary = {
        "environment": env,
        "exit_codes": dict(kv.split("=", 1) for kv in args.rc),
        "seconds": args.seconds,
        "tests": tests_summary(args.junit),
        "ratios": ratios,
        "benchmarks": rows,
    }
    if args.kernels and os.path.exists(args.kernels):
        with open(args.kernels) as f:
            kernels = json.load(f)
        summary["kernels"] = {case: {"total_us": k["total_us"], "top": k["kernels"][:6]}
                              for case, k in kernels.get("cases", {}).items()}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    t = summary["tests"]
    print(f"tests: {t.get('tests')} run, {t.get('failures')} failures, {t.get('errors')} errors, {t.get('skipped')} skipped")
    for f_ in t.get("failed", [])[:20]:
        print("  FAILED", f_["test"], "-", f_["message"][:200])
    for r in rows:
        if r["median_ms"] is None:
            continue
        gpu = (f" | graph {r['gpu_ms']:9.4f} ms {r['gpu_pct_copy_bw'] or 0:6.1f}% copy" if r.get("gpu_ms")
               else "")
        print(f"{r['name']:<70} {r['median_ms']:9.4f} ms {r['gbs'] or 0:8.1f} GB/s {r['tflops'] or 0:7.2f} TF/s "
              f"{(r['pct_copy_bw'] or 0):6.1f}% copy{gpu}")
    for group, rr in ratios.items():
        print(group, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in rr.items()})


if __name__ == "__main__":
    main()
