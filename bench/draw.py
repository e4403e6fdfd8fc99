"""Seconds to draw a circuit (prune.draw.draw_circuit, PNG and SVG), at the sizes the issue names.

    .venv/bin/python bench/draw.py [--repeats 5] [--out DIR]

Cases:
- ``shuffle_dyck2`` (the largest library graph, 1,997 edges): every edge of the graph drawn against its
  zero-ablation ground truth (every edge a true positive or a false positive: the worst case, 1,997 curves);
- the same program's ground truth alone, every node labelled with the RASP it computes
  (``Compiled.node_labels``, from a Tracr compile before the timing): what ``groundtruth check --draw`` draws;
- a GPT-2-small-shaped graph (12 layers x 12 heads, 32,491 edges) with 1,300 edges (a circuit at 96% edge
  sparsity, what ``prune run`` draws) chosen by a seeded generator.

Each case: one warm-up (matplotlib's font cache, imports), then the median and range of ``--repeats`` timed
draws, wall seconds of the whole ``draw_circuit`` call (layout, both renders, both atomic writes). Run it on an
otherwise idle machine, one torch thread (drawing uses none).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cases():
    from groundtruth.artifacts import load_artifact
    from prune.circuit import Circuit
    from prune.graph import Graph

    art = load_artifact("shuffle_dyck2")
    g, d = art.model.graph, art.model.cfg.d_model
    truth = Circuit(graph=g, edges=tuple(art.functional("zero")), ablation="zero", model="shuffle_dyck2", d_model=d)
    everything = Circuit(graph=g, edges=tuple(g.edge_names), ablation="zero", model="shuffle_dyck2", d_model=d,
                         method="every edge")
    from groundtruth.compiler import compile_program
    from groundtruth.registry import library

    labels = compile_program(library()["shuffle_dyck2"], validate=False).node_labels()
    big = Graph(n_layers=12, n_heads=12)
    rng = random.Random(0)
    some = Circuit(graph=big, edges=tuple(rng.sample(big.edge_names, 1300)), ablation="resample", model="gpt2-shape",
                   d_model=768, method="random")
    yield f"shuffle_dyck2: all {g.n_edges} edges against the truth ({len(truth)})", dict(circuit=everything,
                                                                                         truth=truth)
    yield f"shuffle_dyck2: the truth ({len(truth)} edges), every node labelled", dict(circuit=truth, labels=labels)
    yield f"12 x 12 graph ({big.n_edges} edges): 1,300 edges, alone", dict(circuit=some)


def main(argv=None) -> int:
    from prune.draw import draw_circuit

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="keep the drawings here (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-draw-"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    load = os.getloadavg()
    print(f"commit {commit}{' (with uncommitted changes)' if dirty else ''}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
    print()
    print("| case | median s | min s | max s | PNG KiB | SVG KiB |")
    print("|---|---|---|---|---|---|")
    for i, (name, kwargs) in enumerate(_cases()):
        stem = out / f"case{i}"
        draw_circuit(path_stem=stem, **kwargs)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            png, svg = draw_circuit(path_stem=stem, **kwargs)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
              f"{png.stat().st_size / 1024:.0f} | {svg.stat().st_size / 1024:.0f} |", flush=True)
    print()
    print(f"drawings: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
