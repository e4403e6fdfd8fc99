"""How `make demo` degrades on busy cores, per thread count: idle, then with a second demo beside it.

    .venv/bin/python bench/threads.py [--threads 1,2] [--json FILE]

For each thread count: one `groundtruth demo --threads T` alone (idle), then two
at once (each one's cores busy with the other, the situation of a shared
machine or a parallel CI), plus the same with OMP_WAIT_POLICY=PASSIVE (OpenMP
threads sleep instead of spinning while they wait). Wall seconds of each run
and the ratio busy / idle. Run it on an otherwise idle machine: anything else
running changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _demo(threads: int, out: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "groundtruth.cli", "demo", "--threads", str(threads), "--quiet", "--report", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run(threads: int, copies: int, passive: bool) -> list[float]:
    env = dict(os.environ)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        procs = [_demo(threads, Path(tmp) / f"r{i}.json", env) for i in range(copies)]
        walls = []
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"groundtruth demo exited {p.returncode}: {err.strip()[-400:]}")
            walls.append(time.perf_counter() - start)
    return walls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    print(f"load average at start: {os.getloadavg()}; cpus: {os.cpu_count()}", flush=True)
    for t in [int(x) for x in args.threads.split(",")]:
        idle = _run(t, 1, False)[0]
        for passive in (False, True):
            busy = _run(t, 2, passive)
            row = {"threads": t, "omp_wait_policy": "PASSIVE" if passive else "default", "idle_s": round(idle, 1),
                   "busy_s": [round(b, 1) for b in busy], "busy_over_idle": round(max(busy) / idle, 2)}
            rows.append(row)
            print(f"| {t} | {row['omp_wait_policy']} | {idle:.1f} | {max(busy):.1f} | {row['busy_over_idle']:.2f}x |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
