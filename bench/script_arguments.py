"""Times how long each bad-argument case of tests/test_script_arguments.py takes to fail, one
process at a time (so the times do not include another process's load).

    python bench/script_arguments.py [--scripts-dir train] [--python CMD] [--timeout 60] [--output-dir DIR]

--scripts-dir points at another checkout's train/ (and --python at an interpreter, or a wrapper,
that imports that checkout's package) to time its scripts on the same cases; a case
still running at --timeout is stopped and reported as such. Writes script_arguments.json and
prints a table (script, arguments, seconds, exit code, the error's last line).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_script_arguments import CASES, make_fixtures, run_case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts-dir", default=str(ROOT / "train"), help="folder of the scripts (default: train/)")
    parser.add_argument("--python", default=sys.executable,
                        help="command that runs a script, split on spaces (default: this interpreter)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case is stopped (default: 60)")
    parser.add_argument("--output-dir", default="outputs/script_arguments",
                        help="where script_arguments.json goes (default: outputs/script_arguments)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_fixtures(Path(tmp))
        for script, argv, flag in CASES:
            start = time.perf_counter()
            try:
                p = run_case(script, argv, root, Path(args.scripts_dir), args.timeout, tuple(args.python.split()))
                code, last = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
            except subprocess.TimeoutExpired:
                code, last = None, f"still running after {args.timeout:.0f} s"
            rows.append({"script": script, "args": " ".join(argv).replace(str(root), "{root}"), "flag": flag,
                         "seconds": round(time.perf_counter() - start, 2), "exit_code": code, "last_line": last})
            print(f"{script:<20} {rows[-1]['args']:<48} {rows[-1]['seconds']:>7.2f} s  rc={code}  {last[:90]}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "script_arguments.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
