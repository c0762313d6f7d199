"""Benchmark plumbing: the fused backend set once, each benchmark's ratio against the fused
provider of its group (in extra_info and in a summary at the end of the run), and a JSON-lines
record of every finished benchmark.

On the CPU, when a group's last provider has run, its providers are timed again interleaved
(bench/common.py: interleaved_medians) and the ratios come from those times: on a small shared
machine, providers timed one after another differ by more than the effects measured. On CUDA the
ratios come from the device times (CUDA graphs), else the launch-loop medians."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import davae_ext  # noqa: E402
from common import interleaved_medians  # noqa: E402

# group -> provider -> {"median_ms": ..., "gpu_ms": ..., "interleaved_ms": ...}, in the order they ran.
_RESULTS: dict[str, dict[str, dict]] = {}
# The group being run: its (provider, benchmark) entries, finished when the next group starts or
# the session ends.
_OPEN: dict = {"group": None, "entries": []}


@pytest.fixture(autouse=True)
def fused_backend():
    """Every benchmark runs with the fused backend set once, outside the timed calls (a context
    manager entered per call would add its own microseconds to the fused providers)."""
    with davae_ext.use_backend("fused"):
        yield


def _provider(params: dict) -> str | None:
    if "provider" in params:
        return str(params["provider"])
    if "fused" in params:
        return "fused" if params["fused"] else "unfused"
    return None


def _speedup(other, fused):
    return other / fused if other and fused else None


def _finish_group() -> None:
    """Ratios of the open group against its fused provider (re-timed interleaved on the CPU) into
    each benchmark's extra_info (pytest-benchmark's JSON) and the summary."""
    entries, _OPEN["entries"] = _OPEN["entries"], []
    fns = {p: getattr(b, "davae_timed_fn", None) for p, b in entries}
    fns = {p: fn for p, fn in fns.items() if fn is not None}
    interleaved = interleaved_medians(fns) if "fused" in fns and len(fns) > 1 else {}
    group = {}
    for provider, bench in entries:
        info = bench.extra_info
        if provider in interleaved:
            info["interleaved_ms"] = interleaved[provider]
        group[provider] = {k: info.get(k) for k in ("median_ms", "gpu_ms", "interleaved_ms")}
    fused = group.get("fused")
    for provider, bench in entries:
        info = bench.extra_info
        if fused and provider != "fused":
            key = "interleaved_ms" if interleaved else ("gpu_ms" if info.get("gpu_ms") else "median_ms")
            info["fused_speedup"] = _speedup(info.get(key), fused.get(key))
            info["fused_speedup_from"] = key
        if hasattr(bench, "davae_timed_fn"):
            del bench.davae_timed_fn  # frees the provider's tensors
    if entries:
        _RESULTS[entries[0][1].group] = group


@pytest.fixture(autouse=True)
def jsonl_record(request):
    """Joins each finished benchmark to its group's ratios; with DAVAE_BENCH_JSONL=path, appends
    it (name, group, params, extra_info) to that file as one JSON line. pytest-benchmark writes its
    --benchmark-json only at the end of the session, and not at all when a time limit interrupts it
    mid-benchmark: the GPU check (gpu_check.sh) reads these lines, so what finished before a time
    limit is kept (its summary, bench/gpu_summary.py, computes the ratios from them)."""
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is None or not bench.extra_info:
        return
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec else {}
    if _OPEN["group"] != bench.group:
        _finish_group()
        _OPEN["group"] = bench.group
    _OPEN["entries"].append((_provider(params) or request.node.name, bench))
    if request.node is request.session.items[-1]:
        _finish_group()  # the session's last group, before pytest-benchmark writes its JSON
    path = os.environ.get("DAVAE_BENCH_JSONL")
    if path:
        row = {"name": request.node.name, "group": bench.group, "params": {k: str(v) for k, v in params.items()},
               "extra_info": {k: v for k, v in bench.extra_info.items()}}
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def summary_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """One line per group with a fused provider: its time and every other provider's time over it."""
    lines = []
    for group, providers in results.items():
        fused = providers.get("fused")
        if not fused:
            continue
        key = next((k for k in ("interleaved_ms", "gpu_ms", "median_ms") if fused.get(k)), None)
        if key is None:
            continue
        parts = [f"fused {fused[key] * 1e3:.1f} us"]
        for name, r in providers.items():
            if name != "fused" and r.get(key):
                parts.append(f"{name} {r[key] / fused[key]:.2f}x")
        how = {"interleaved_ms": "interleaved medians", "gpu_ms": "device time", "median_ms": "medians"}[key]
        lines.append(f"{group} ({how}): " + ", ".join(parts))
    return lines


def pytest_terminal_summary(terminalreporter):
    _finish_group()
    lines = summary_lines(_RESULTS)
    if lines:
        terminalreporter.section("fused speed-up: other provider's time / fused time (below 1: fused is slower)")
        for line in lines:
            terminalreporter.write_line(line)
