"""``groundtruth`` command line.

  groundtruth build [PROGRAM ...] [--out DIR]   compile the library (or some of it) into artifacts
  groundtruth check SPEC [SPEC ...]             compile, convert, derive and verify, write nothing
  groundtruth table [--root DIR]                the library table (markdown) from the artifacts
  groundtruth recover [SPEC ...] [--ablations zero,resample] [--seeds 0,1] [--pruner MOD:FN] [--report FILE]
                                                does a pruner recover the ground truth exactly?
  groundtruth demo                              recover the whole library (zero and resample ablation)

SPEC is a library name, ``FILE.py`` (every program in it) or ``FILE.py:NAME``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

__all__ = ["main"]


def _case_row(case) -> dict:
    cfg = case.model.cfg
    row = {
        "program": case.name,
        "out": case.examples.kind[:3],
        "causal": "yes" if case.program.causal else "no",
        "layers": cfg.n_layers,
        "heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "edges": case.model.graph.n_edges,
        "inputs": len(case.examples),
    }
    for variant, edges in case.circuits.items():
        row[variant.replace("functional:", "f:")] = len(edges)
    row["verified"] = "yes" if all(v.ok for v in case.verifications.values()) else "NO"
    row["s"] = f"{case.seconds:.1f}"
    return row


def _print_table(rows: list[dict], out=sys.stdout) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |", file=out)
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|", file=out)
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) + " |", file=out)


def _cases(specs, quiet):
    from groundtruth.case import build_case
    from groundtruth.registry import library, resolve

    programs = [p for s in specs for p in resolve(s)] if specs else list(library().values())
    for prog in tqdm(programs, desc="programs", disable=quiet, file=sys.stderr):
        yield prog, build_case(prog)


def cmd_build(args) -> int:
    from groundtruth.artifacts import save_case
    from groundtruth.compiler import ProgramError

    rows = []
    try:
        for prog, case in _cases(args.programs, args.quiet):
            save_case(case, args.out)
            rows.append(_case_row(case))
    except (ProgramError, FileNotFoundError, KeyError, ValueError) as err:
        _print_table(rows)
        print(f"error: {err}; nothing was written for that program", file=sys.stderr)
        return 2
    _print_table(rows)
    return 0 if all(r["verified"] == "yes" for r in rows) else 1


def cmd_check(args) -> int:
    from groundtruth.compiler import ProgramError

    rows, failed = [], False
    try:
        for prog, case in _cases(args.specs, args.quiet):
            rows.append(_case_row(case))
            for variant, edges in case.circuits.items():
                print(f"{prog.name} {variant} ({len(edges)} edges): {', '.join(edges) or '-'}")
            for ablation, v in case.verifications.items():
                if not v.ok:
                    failed = True
                    print(f"{prog.name} functional:{ablation} NOT verified: reproduces "
                          f"{v.n_reproduced}/{v.n_examples}, inert {v.inert}")
    except (ProgramError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_table(rows)
    return 1 if failed else 0


def cmd_table(args) -> int:
    import json

    from groundtruth.artifacts import load_all
    from groundtruth.case import VARIANTS
    from groundtruth.registry import library

    arts = load_all(args.root)
    order = [n for n in library() if n in arts] + sorted(set(arts) - set(library()))
    rows = []
    for name in order:
        art = arts[name]
        cfg = art.model.cfg
        row = {"program": name, "out": art.examples.kind[:3], "causal": "yes" if art.config["causal"] else "no",
               "layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model,
               "edges": art.model.graph.n_edges, "inputs": len(art.examples)}
        for variant in VARIANTS:
            row[variant.replace("functional:", "f:")] = len(art.circuits[variant])
        checks = json.loads((art.path / "circuits.json").read_text())["verification"].values()
        row["verified"] = "yes" if all(v["sufficient"] and not v["inert"] for v in checks) else "NO"
        rows.append(row)
    _print_table(rows)
    return 0


def _targets(specs):
    """(name, model, examples, circuits) for library artifacts (torch only) or program files."""
    from groundtruth.artifacts import DEFAULT_ROOT, load_artifact
    from groundtruth.registry import library

    names = list(library()) if not specs else []
    for spec in specs:
        if spec.endswith(".py") or ".py:" in spec:
            from groundtruth.case import build_case
            from groundtruth.registry import resolve

            for prog in resolve(spec):
                case = build_case(prog)
                yield prog.name, case.model, case.examples, case.circuits
        else:
            names.append(spec)
    for name in names:
        art = load_artifact(DEFAULT_ROOT / name)
        yield name, art.model, art.examples, art.circuits


def cmd_recover(args) -> int:
    import json
    import os
    import tempfile

    import torch

    from groundtruth.recovery import load_pruner, recover

    torch.set_num_threads(args.threads)
    pruner = load_pruner(args.pruner)
    ablations = [a for a in args.ablations.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results, skipped, rows = [], [], []
    try:
        targets = list(_targets(args.specs))
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = [(t, a, s) for t in targets for a in ablations for s in seeds]
    for (name, model, examples, circuits), ablation, seed in tqdm(runs, desc="recovery", disable=args.quiet,
                                                                 file=sys.stderr):
        gt = circuits.get(f"functional:{ablation}")
        if gt is None:
            print(f"error: {name} has no functional:{ablation} ground truth", file=sys.stderr)
            return 2
        if not gt:
            if seed == seeds[0]:
                skipped.append(f"{name} ({ablation}: the ground truth is empty, nothing to recover)")
            continue
        result = recover(name, model, examples, gt, ablation=ablation, seed=seed, pruner=pruner)
        results.append(result)
        rows.append(result.row())
    _print_table(rows)
    for s in skipped:
        print(f"skipped: {s}")
    exact = sum(r.exact for r in results)
    print(f"exact recovery: {exact}/{len(results)} runs; pruner {args.pruner}")
    for r in results:
        if not r.exact:
            print(f"  {r.program} {r.ablation} seed {r.seed}: extra {list(r.only_found)}, "
                  f"missed {list(r.only_ground_truth)}, reproduces {r.reproduces:.3f}")
    if args.report:
        report = {"pruner": args.pruner, "ablations": ablations, "seeds": seeds, "exact": exact,
                  "runs": len(results), "skipped": skipped, "results": [r.to_dict() for r in results]}
        args.report.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.report.parent, prefix=f".{args.report.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.report)
        print(f"report: {args.report}")
    return 0 if exact == len(results) else 1


def main(argv=None) -> int:
    from groundtruth.artifacts import DEFAULT_ROOT

    parser = argparse.ArgumentParser(prog="groundtruth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="compile programs into compiled_models/")
    p.add_argument("programs", nargs="*", help="library names or FILE.py[:NAME] (default: the whole library)")
    p.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("check", help="compile, convert, derive and verify the ground truth; write nothing")
    p.add_argument("specs", nargs="+", help="library names or FILE.py[:NAME]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("table", help="print the library table from the artifacts")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.set_defaults(func=cmd_table)
    for name, help_ in (("recover", "does a pruner recover the functional ground truth exactly?"),
                        ("demo", "recover the whole library, zero and resample ablation, seed 0")):
        p = sub.add_parser(name, help=help_)
        if name == "recover":
            p.add_argument("specs", nargs="*", help="library names or FILE.py[:NAME] (default: the library)")
        p.add_argument("--ablations", default="zero,resample")
        p.add_argument("--seeds", default="0", help="comma-separated seeds")
        p.add_argument("--pruner", default="prune.edge_pruning:edge_pruning", help="module:callable")
        p.add_argument("--report", type=Path, default=Path("out/recovery.json") if name == "demo" else None)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=cmd_recover, specs=[])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    code = args.func(args)
    if getattr(args, "quiet", False) is False:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
