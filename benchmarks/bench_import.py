"""Benchmark: what `from commonspace import KrossFuse, CrossModelCNN` costs in a fresh process.

    python benchmarks/bench_import.py              # median of 5 fresh processes
    python benchmarks/bench_import.py --runs 9

Prints the median wall clock and CPU time (user + sys) of the import in fresh interpreters,
the load average it ran under (the shared machine's load inflates wall clock most), the
heaviest top-level imports of one `python -X importtime` run, and which heavy modules ended
up in sys.modules (torch and sklearn.model_selection must not: tests/test_import_cost.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

STATEMENT = "from commonspace import KrossFuse, CrossModelCNN"
HEAVY = ("torch", "sklearn", "sklearn.model_selection", "scipy.stats", "pandas", "faiss")


def one_run() -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STATEMENT], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    runs = [one_run() for _ in range(args.runs)]
    print(f"{STATEMENT!r}: median of {args.runs} fresh processes: wall "
          f"{statistics.median(w for w, _ in runs):.2f} s, cpu "
          f"{statistics.median(c for _, c in runs):.2f} s (load average {load:.1f})")
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", STATEMENT],
                         capture_output=True, text=True, check=True)
    top = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].startswith(" ") and not parts[2].startswith("  "):
            try:
                top.append((int(parts[1]) / 1e6, parts[2].strip()))
            except ValueError:
                continue
    print("heaviest top-level imports (cumulative s):",
          ", ".join(f"{name} {s:.2f}" for s, name in sorted(top, reverse=True)[:5]))
    code = (f"import json, sys\n{STATEMENT}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    print("heavy modules imported:", ", ".join(json.loads(out)) or "none")


if __name__ == "__main__":
    main()
