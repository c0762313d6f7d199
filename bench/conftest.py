import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import davae_ext  # noqa: E402


@pytest.fixture(autouse=True)
def fused_backend():
    """Every benchmark runs with the fused backend set once, outside the timed calls (a context
    manager entered per call would add its own microseconds to the fused providers)."""
    with davae_ext.use_backend("fused"):
        yield


@pytest.fixture(autouse=True)
def jsonl_record(request):
    """With DAVAE_BENCH_JSONL=path, append each finished benchmark (name, group, params,
    extra_info) to that file as one JSON line. pytest-benchmark writes its --benchmark-json only at
    the end of the session, and not at all when a time limit interrupts it mid-benchmark: the
    GPU check (gpu_check.sh) reads these lines, so what finished before a time limit is kept."""
    yield
    path = os.environ.get("DAVAE_BENCH_JSONL")
    bench = request.node.funcargs.get("benchmark")
    if not path or bench is None or not bench.extra_info:
        return
    callspec = getattr(request.node, "callspec", None)
    row = {"name": request.node.name, "group": bench.group,
           "params": {k: str(v) for k, v in (callspec.params if callspec else {}).items()},
           "extra_info": bench.extra_info}
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
