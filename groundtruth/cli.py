"""``groundtruth`` command line.

  groundtruth build [PROGRAM ...] [--out DIR]   compile the library (or some of it) into artifacts
  groundtruth check SPEC [SPEC ...]             compile, convert, derive and verify, write nothing
  groundtruth table [--root DIR]                the library table (markdown) from the artifacts

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
    from groundtruth.artifacts import load_all

    rows = []
    for name, art in load_all(args.root).items():
        cfg = art.model.cfg
        row = {"program": name, "out": art.examples.kind[:3], "causal": "yes" if art.config["causal"] else "no",
               "layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model,
               "edges": art.model.graph.n_edges, "inputs": len(art.examples)}
        for variant, edges in art.circuits.items():
            row[variant.replace("functional:", "f:")] = len(edges)
        rows.append(row)
    _print_table(rows)
    return 0


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
    args = parser.parse_args(argv)
    start = time.perf_counter()
    code = args.func(args)
    if getattr(args, "quiet", False) is False:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
