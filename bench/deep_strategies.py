"""One deep run over random RASP programs: generated, accepted, verified, recovered exactly.

    .venv/bin/python bench/deep_strategies.py                  # 200 programs, seeds "0-0" .. "0-199"
    .venv/bin/python bench/deep_strategies.py --n 40 --time-limit 540

Program ``i`` is ``random_program(random.Random(f"{seed}-{i}"))`` (groundtruth.strategies).
Each is compiled and checked against RASP (accepted), converted and its
zero-ablation functional ground truth verified (verified), then Edge Pruning
(default configuration, zero ablation, seed 0) runs on it (recovered exactly).
Every failing program is written to ``--out`` as a standalone file, reproducible
with ``groundtruth recover FILE.py --ablations zero``; ``--out/report.json`` holds
one row per program. A markdown summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_one(prog, pruner) -> dict:
    from groundtruth.case import build_case
    from groundtruth.compiler import ProgramError
    from groundtruth.recovery import recover
    from groundtruth.strategies import rejection_reason, spec_of

    spec = spec_of(prog)
    row = {"program": prog.name, "numerical": spec.numerical, "causal": prog.causal,
           "vocab": len(prog.vocab), "max_seq_len": prog.max_seq_len, "accepted": False, "verified": False,
           "recovery": None, "reason": ""}
    start = time.perf_counter()
    try:
        case = build_case(prog, ablations=("zero",))
    except ProgramError as err:
        row["reason"] = f"rejected: {rejection_reason(err)}"
        return row
    except RuntimeError as err:  # the conversion disagrees with Tracr
        row["accepted"] = True
        row["reason"] = f"conversion: {str(err)[:200]}"
        return row
    finally:
        row["build_s"] = round(time.perf_counter() - start, 2)
    row["accepted"] = True
    row["layers"] = case.model.cfg.n_layers
    row["edges"] = case.model.graph.n_edges
    v = case.verifications["zero"]
    row["verified"] = v.ok
    gt = case.functional("zero")
    row["gt_edges"] = len(gt)
    if not v.ok:
        row["reason"] = f"not verified: reproduces {v.n_reproduced}/{v.n_examples}, inert {v.inert}"
        return row
    if not gt:
        row["recovery"] = "empty"
        return row
    r = recover(prog.name, case.model, case.examples, gt, ablation="zero", seed=0, pruner=pruner)
    row.update(recovery="exact" if r.exact else "inexact", found=len(r.found), precision=round(r.precision, 3),
               recall=round(r.recall, 3), reproduces=round(r.reproduces, 4), prune_s=round(r.seconds, 2),
               own_exact=r.own_exact)
    if not r.exact:
        row["reason"] = (f"not exact: extra {list(r.only_found)}, missed {list(r.only_ground_truth)}, "
                         f"reproduces {r.reproduces:.3f}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="programs to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--max-vocab", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "deep_strategies")
    parser.add_argument("--pruner", default="prune.edge_pruning:edge_pruning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop starting new programs after this many seconds (the summary says how many ran)")
    args = parser.parse_args(argv)

    import torch

    from groundtruth.recovery import load_pruner
    from groundtruth.strategies import _forget_jitted_forwards, random_program, write_program

    torch.set_num_threads(args.threads)
    pruner = load_pruner(args.pruner)
    args.out.mkdir(parents=True, exist_ok=True)
    kw = dict(max_depth=args.max_depth, max_vocab=args.max_vocab, max_seq_len=args.max_seq_len)
    rows, start = [], time.perf_counter()
    for i in range(args.n):
        if args.time_limit is not None and time.perf_counter() - start > args.time_limit:
            break
        prog = random_program(random.Random(f"{args.seed}-{i}"), **kw)
        row = {"index": i, "rng": f"{args.seed}-{i}", **run_one(prog, pruner)}
        if row["reason"]:
            row["file"] = str(write_program(prog, args.out))
        rows.append(row)
        _forget_jitted_forwards()
        print(f"[{i}] {row['program']}: {row['recovery'] or row['reason'] or 'ok'} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    generated = len(rows)
    accepted = sum(r["accepted"] for r in rows)
    verified = sum(r["verified"] for r in rows)
    exact = sum(r["recovery"] == "exact" for r in rows)
    empty = sum(r["recovery"] == "empty" for r in rows)
    ran = sum(r["recovery"] in ("exact", "inexact") for r in rows)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": round(seconds, 1),
              "generated": generated, "accepted": accepted, "verified": verified, "recovery_runs": ran,
              "recovered_exactly": exact, "empty_ground_truth": empty, "rows": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))

    def pct(a, b):
        return f"{a}/{b} ({100 * a / b:.0f} %)" if b else f"{a}/0"

    print("## Random RASP programs: deep run\n")
    print(f"`bench/deep_strategies.py --n {args.n} --seed {args.seed}` (depth <= {args.max_depth}, "
          f"vocab <= {args.max_vocab}, length <= {args.max_seq_len}), pruner `{args.pruner}`, zero ablation, "
          f"seed 0; {seconds:.0f} s\n")
    print("| stage | programs |\n|---|---|")
    print(f"| generated | {generated}{'' if generated == args.n else f' (of {args.n}; time limit)'} |")
    print(f"| accepted (compiles, agrees with RASP) | {pct(accepted, generated)} |")
    print(f"| verified (zero-ablation ground truth sufficient, no inert edge) | {pct(verified, accepted)} |")
    print(f"| empty ground truth (nothing to recover) | {empty} |")
    print(f"| recovered exactly by Edge Pruning | {pct(exact, ran)} |")
    numerical = [r for r in rows if r["recovery"] in ("exact", "inexact") and r["numerical"]]
    categorical = [r for r in rows if r["recovery"] in ("exact", "inexact") and not r["numerical"]]
    for label, group in (("numerical output", numerical), ("categorical output", categorical)):
        print(f"| recovered exactly, {label} | {pct(sum(r['recovery'] == 'exact' for r in group), len(group))} |")
    if any(r.get("own_exact") is not None for r in rows):
        threshold = sum(bool(r.get("own_exact")) for r in rows if r["recovery"] in ("exact", "inexact"))
        print(f"| thresholded circuit (before the exact finalizer) already exact | {pct(threshold, ran)} |")
    failures = [r for r in rows if r["reason"]]
    if failures:
        print(f"\n### Failures ({len(failures)})\n")
        for r in failures:
            print(f"- `{r['file']}`: {r['reason']}")
    print(f"\nreport: {args.out / 'report.json'}; reproduce one: `groundtruth recover FILE.py --ablations zero`")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
