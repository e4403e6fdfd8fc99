"""The library's compressed and perturbed variants (compiled_variants/): widths, recipes, ground truth, and
the time to compress the whole library again.

    .venv/bin/python bench/variants.py [--out bench/results/variants.md] [--no-timing] [--jobs N]

Reads every committed variant (built by ``groundtruth variant --kind KIND``, whose width search is the
slow part: it tries widths down from the read basis and stops at the first that decodes at no stage). For
the table: per program the compiled width D, the residual rank r, the read-basis width t (lossless), the
smallest width d found, d/D, the stage that reached it (groundtruth.variants.compress), the noise scales;
per ablation the size of the functional ground truth of the program and of each variant, and why they
differ. Then, unless ``--no-timing``, it compresses every program again at its recorded width with the
recorded recipe, one torch thread per process, ``--jobs`` processes at a time (default 1; 2 uses both
cores of the project's machine), checks the weights equal the committed ones bit for bit (the build is
deterministic) and reports each program's seconds and the wall time of the whole library.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compress_again(name: str) -> tuple[float, bool]:
    """Compress library program ``name`` again at its committed compressed variant's width and recipe, in
    this process, one thread: (seconds, whether the weights equal the committed ones bit for bit)."""
    from groundtruth.artifacts import VARIANT_ROOT, load_artifact
    from groundtruth.variants import compress

    torch.set_num_threads(1)
    parent, variant = load_artifact(name), load_artifact(VARIANT_ROOT / f"{name}@compressed")
    c = variant.config["variant"]
    start = time.perf_counter()
    again = compress(parent.model, parent.examples, c["width"],
                     **{k: c["recipe"][k] for k in ("reconstruction", "learning_rates", "patience")},
                     steps=c["recipe"]["max_steps"])
    seconds = time.perf_counter() - start
    same = all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 variant.model.state_dict().values(), strict=True))
    return seconds, same


def main(argv=None) -> int:
    from groundtruth.artifacts import VARIANT_ROOT, load_artifact
    from groundtruth.registry import library
    from groundtruth.variant_case import KINDS
    from groundtruth.variants import read_basis, residual_basis

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/variants.md")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="programs compressed at once, one process and one "
                                                       "torch thread each (default 1)")
    p.add_argument("--load-note", default="", help="what else ran on the machine, written beside the figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give at least 1")
    names = list(library())
    timed, wall = {}, 0.0
    if not args.no_timing:  # first, alone on the machine: nothing else this script does runs beside it
        start = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for name, result in zip(names, pool.map(compress_again, names), strict=True):
                timed[name] = result
                print(json.dumps({"program": name, "s": round(result[0], 1), "same": result[1]}), flush=True)
        wall = time.perf_counter() - start
    rows, truth = [], []
    for name in names:
        parent = load_artifact(name)
        arts = {k: load_artifact(VARIANT_ROOT / f"{name}@{k}") for k in KINDS}
        c = arts["compressed"].config["variant"]
        D = parent.model.cfg.d_model
        row = {"program": name, "D": D, "r": residual_basis(parent.model, parent.examples).shape[0],
               "t": read_basis(parent.model, parent.examples).shape[0], "d": c["width"],
               "d/D": f"{c['width'] / D:.2f}", "stage": c["recipe"]["stage"], "lr": c["recipe"]["lr"] or "-",
               "steps": c["recipe"]["steps"], "scale": c["recipe"].get("alpha") or "-",
               "noise": f"{arts['perturbed'].config['variant']['noise_scale']:.2g}",
               "noise (compressed)": f"{arts['compressed+perturbed'].config['variant']['noise_scale']:.2g}"}
        if name in timed:
            row["s"] = round(timed[name][0], 1)
            row["same weights"] = "yes" if timed[name][1] else "NO"
        rows.append(row)
        for ablation in ("zero", "mean", "resample"):
            t = {"program": name, "ablation": ablation, "program edges": len(parent.functional(ablation))}
            for k in KINDS:
                v = arts[k]
                t[k] = len(v.functional(ablation))
                t[f"why ({k})"] = v.config["variant"]["differences"][ablation]["why"]
            truth.append(t)
        print(json.dumps(row), flush=True)
    n = len(rows)
    within = lambda f: sum(r["d"] <= f * r["D"] for r in rows)  # noqa: E731
    options = " --no-timing" if args.no_timing else f" --jobs {args.jobs}"
    lines = [
        "# Compressed and perturbed variants of the library",
        "",
        f"Command: `.venv/bin/python bench/variants.py{options}`; commit "
        f"`{commit}`; {time.strftime('%Y-%m-%d')}; torch threads 1; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; `uptime` at the start: `{load}`; "
        f"{args.jobs} process(es) at a time. {args.load_note}",
        "",
        f"Smallest width d with every example decoded exactly: d <= 0.75 D for **{within(0.75)} of {n}** programs, "
        f"d <= D/2 for **{within(0.5)} of {n}**. r is the residual rank, t the read basis (lossless: the part "
        f"of the span some reader reads); d < t means features share directions. Stage `frozen`: only W was "
        f"trained (Tracr's method); `fine-tuned`: W and every weight; `annealed`: W and every weight on a "
        f"cosine-annealed rate; `live sharing`: nothing trained, directions with disjoint live ranges share a "
        f"dimension, written `scale`^rank larger (docs/superposition.md).",
        "",
    ]
    cols = list(rows[0])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    if not args.no_timing:
        total, reproduced = sum(s for s, _ in timed.values()), sum(same for _, same in timed.values())
        lines += ["", f"Compressing the whole library again at the recorded widths: **{wall:.0f} s** wall time, "
                      f"{args.jobs} process(es) of one torch thread at a time ({total:.0f} s summed over the "
                      f"programs, column `s`); {reproduced} of {n} reproduce the committed weights bit for bit."]
    lines += ["", "## Functional ground truth: edges per ablation, program and variants", "",
              "Each variant's is derived on the variant from every edge and verified (sufficient, every edge "
              "necessary); `why` compares it with the program's (groundtruth/variant_case.py).", ""]
    cols = ["program", "ablation", "program edges", *KINDS, *(f"why ({k})" for k in KINDS)]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(t[c]) for c in cols) + " |" for t in truth]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "ground_truth": truth, "commit": commit,
                                                         "load": load, "jobs": args.jobs,
                                                         "wall_s": round(wall, 1) if timed else None},
                                                        indent=1) + "\n")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
