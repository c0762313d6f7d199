"""Which raw-op bad-input cases kill the process on this machine, and where.

Each raw dispatcher call of tests/test_bad_inputs.py runs in its own subprocess (so one crash does
not hide the next); for the first case that dies of a signal, the same call runs again under gdb
(or cuda-gdb) for the C++ backtrace. Writes a JSON report.

    python bench/gpu_crash_probe.py --out OUT/crash_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")

CALL = """
import sys, faulthandler
faulthandler.enable()
sys.path.insert(0, {tests!r})
import torch, davae_ext
if {torch_handler!r}:  # c10's fatal-signal handler prints the C++ stack of every thread
    torch._C._set_print_stack_traces_on_fatal_signal(True)
from test_bad_inputs import CASES
case = [c for c in CASES if c[0] == {name!r}][0]
try:
    case[2]()
except Exception as e:
    print("RAISED", type(e).__name__, str(e).splitlines()[0][:200])
else:
    print("NO EXCEPTION")
"""


def run_case(name: str, timeout: float = 120.0, torch_handler: bool = False) -> dict:
    code = CALL.format(tests=TESTS, name=name, torch_handler=torch_handler)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd="/tmp")
    except subprocess.TimeoutExpired:
        return {"case": name, "rc": None, "timeout": True}
    return {"case": name, "rc": p.returncode, "stdout": p.stdout[-300:], "stderr": p.stderr[-1500:]}


def backtrace(name: str) -> dict:
    dbg = shutil.which("gdb") or shutil.which("cuda-gdb")
    if dbg is None:
        for d in ("/usr/local/cuda/bin", "/usr/local/cuda-13.0/bin"):
            if os.path.exists(os.path.join(d, "cuda-gdb")):
                dbg = os.path.join(d, "cuda-gdb")
    if dbg is None:
        return {"debugger": None, "c10_handler": run_case(name, timeout=120.0, torch_handler=True)}
    code = CALL.format(tests=TESTS, name=name, torch_handler=False)
    cmd = [dbg, "-q", "-batch", "-ex", "set pagination off", "-ex", "set print thread-events off", "-ex", "run",
           "-ex", "bt 40", "-ex", "info registers rip", "-ex", "x/6i $pc",
           "--args", sys.executable, "-c", code]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/tmp")
    except subprocess.TimeoutExpired as e:
        return {"debugger": dbg, "timeout": True, "output": (e.stdout or b"")[-4000:].decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout)[-4000:]}
    out = p.stdout + p.stderr
    lines = [ln for ln in out.splitlines() if not ln.startswith("[New Thread") and "libthread_db" not in ln]
    return {"debugger": dbg, "rc": p.returncode, "output": "\n".join(lines)[-8000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON report path")
    ap.add_argument("--jobs", type=int, default=8, help="cases run in parallel (default: 8)")
    args = ap.parse_args()
    sys.path.insert(0, TESTS)
    from test_bad_inputs import CASES  # noqa: E402

    names = [c[0] for c in CASES if c[2] is not None]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_case, names))
    crashed = [r for r in results if r.get("rc") is not None and r["rc"] < 0]
    report = {"cases": len(results), "crashed": [r["case"] for r in crashed],
              "not_raised": [r["case"] for r in results if "RAISED" not in r.get("stdout", "")],
              "results": results}
    if crashed:
        report["backtrace"] = backtrace(crashed[0]["case"])
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"crash probe: {len(results)} cases, crashed: {report['crashed']}")
    if crashed:
        bt = report["backtrace"]
        print(bt.get("output") or bt.get("c10_handler", {}).get("stderr", ""))


if __name__ == "__main__":
    main()
