"""Benchmark plumbing: the fused backend set once, each benchmark's ratio against the fused
provider of its group (in extra_info and in a summary at the end of the run), and a JSON-lines
record of every finished benchmark."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import davae_ext  # noqa: E402

# group -> provider -> {"median_ms": ..., "gpu_ms": ...}, in the order they ran.
_RESULTS: dict[str, dict[str, dict]] = {}


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


def _note_ratios(bench, provider: str) -> None:
    """fused_speedup = this provider's time / the fused provider's in the same group (fused runs
    first), from the wall-clock median and, on CUDA, from the device time (gpu_fused_speedup)."""
    info = bench.extra_info
    group = _RESULTS.setdefault(bench.group, {})
    group[provider] = {"median_ms": info.get("median_ms"), "gpu_ms": info.get("gpu_ms")}
    fused = group.get("fused")
    if provider == "fused" or fused is None:
        return
    info["fused_speedup"] = _speedup(info.get("median_ms"), fused["median_ms"])
    if info.get("gpu_ms") is not None:
        info["gpu_fused_speedup"] = _speedup(info.get("gpu_ms"), fused["gpu_ms"])


@pytest.fixture(autouse=True)
def jsonl_record(request):
    """Ratios into extra_info; with DAVAE_BENCH_JSONL=path, each finished benchmark (name, group,
    params, extra_info) appended to that file as one JSON line. pytest-benchmark writes its
    --benchmark-json only at the end of the session, and not at all when a time limit interrupts
    it mid-benchmark: the GPU check (gpu_check.sh) reads these lines, so what finished before a
    time limit is kept."""
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is None or not bench.extra_info:
        return
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec else {}
    provider = _provider(params)
    if provider is not None:
        _note_ratios(bench, provider)
    path = os.environ.get("DAVAE_BENCH_JSONL")
    if not path:
        return
    row = {"name": request.node.name, "group": bench.group, "params": {k: str(v) for k, v in params.items()},
           "extra_info": bench.extra_info}
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def summary_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """One line per group with a fused provider: its time and every other provider's time over it."""
    lines = []
    for group, providers in results.items():
        fused = providers.get("fused")
        if not fused or not fused["median_ms"]:
            continue
        key = "gpu_ms" if fused.get("gpu_ms") else "median_ms"
        parts = [f"fused {fused[key] * 1e3:.1f} us"]
        for name, r in providers.items():
            if name != "fused" and r.get(key):
                parts.append(f"{name} {r[key] / fused[key]:.2f}x")
        lines.append(f"{group} ({'device time' if key == 'gpu_ms' else 'median'}): " + ", ".join(parts))
    return lines


def pytest_terminal_summary(terminalreporter):
    lines = summary_lines(_RESULTS)
    if lines:
        terminalreporter.section("fused speed-up: other provider's time / fused time (below 1: fused is slower)")
        for line in lines:
            terminalreporter.write_line(line)
