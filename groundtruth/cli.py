"""``groundtruth`` command line.

  groundtruth build [PROGRAM ...] [--out DIR]   compile the library (or some of it) into artifacts
  groundtruth check SPEC [SPEC ...] [--draw DIR] [--variant KIND]
                                                compile, convert, derive and verify; write nothing but the
                                                drawings asked for (each ground truth, nodes labelled by RASP);
                                                --variant: also build that variant and verify its ground truth
  groundtruth variant [PROGRAM ...] --kind KIND [--width D] [--noise X] [--seed S] [--out DIR]
                                                build compressed and/or perturbed variants of library programs
                                                into compiled_variants/<program>@<kind>/, ground truth verified
  groundtruth table [--root DIR]                the library table (markdown) from the artifacts
  groundtruth recover [SPEC ...] [--ablations zero,resample] [--seeds 0,1] [--pruner MOD:FN] [--report FILE]
                      [--draw DIR]              does a pruner recover the ground truth exactly? (--draw: each
                                                circuit found, drawn against the ground truth, and its JSON)
  groundtruth demo                              recover the whole library (zero and resample ablation)
  groundtruth compare [--methods edge_pruning,acdc,eap,eap_ig] [--ablation zero] [--programs a,b] [--out DIR]
                      [--draw DIR] [--variant KIND]
                                                every method on the library (or its built variants of KIND),
                                                its own circuit and the finalized one
  groundtruth transcoders [PROGRAM ...] [--ablation zero] [--methods M,...] [--steps N] [--seed S] [--out DIR]
                                                train transcoders on each program's MLPs, run every method on
                                                their feature graph, score against the feature-level ground truth
  groundtruth report TABLE.json [--out FILE]    one static HTML page of a compare or recovery table, sortable,
                                                each row linked to its drawing and circuit JSON

SPEC is a library name, ``FILE.py`` (every program in it) or ``FILE.py:NAME``; ``recover`` also takes
a built variant's name (``reverse@compressed``). KIND is compressed, perturbed or compressed+perturbed.
SEEDS is ``0``, ``0,1,2``, ``0-9`` or a mix (``0-3,7``).

Every bad argument or input prints one line ``error: ...`` naming the value
and what to do, and exits 2, before any work is done where it can be known
then; exit 1 means the run completed and a recovery was not exact (or a
ground truth did not verify).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from prune._cli import MAX_SEED, ArgumentParser, parse_args, parse_int, run_command

__all__ = ["main", "parse_seeds"]

# One intra-op thread by default: the library's models are tiny, so a second thread gains little
# idle, and on busy cores two threads that spin-wait on every small op collapse (docs/performance.md).
DEFAULT_THREADS = 1


MAX_THREADS = 1024  # as `prune run`: torch.set_num_threads overflows on huge numbers, and spawns what it is given
_MAX_SEEDS = 10_000  # a range like 0-99999999999 would otherwise build its list before anything is refused


class UsageError(Exception):
    """A bad argument or input: one line on stderr, exit status 2."""


def _once(values: list, flag: str, what: str) -> list:
    """``values`` if none repeats (a repeated run would be counted twice); else the argument is refused."""
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{flag} lists {what} twice")
    return values


def parse_seeds(text: str) -> list[int]:
    """``0``, ``0,1,2``, ``0-9`` or a mix such as ``0-3,7``; non-negative, each once, at least one."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            if not part:
                raise ValueError
            values = range(int(first), int(last) + 1) if dash else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--seeds {text!r}: {part!r} is not a seed; give non-negative integers like 0, 0,1,2 or 0-9"
            ) from None
        if dash and int(last) < int(first):
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: the range {part!r} is empty; write it low-high")
        if len(seeds) + (int(last) - int(first) + 1 if dash else 1) > _MAX_SEEDS:  # len(range) overflows past 2**63
            raise argparse.ArgumentTypeError(f"--seeds {text!r} asks for more than {_MAX_SEEDS} runs per program; "
                                             f"give fewer seeds")
        seeds.extend(values)
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds must be whole numbers from 0 to {MAX_SEED}")
    return _once(seeds, f"--seeds {text!r}", "a seed")


def _threads(text: str) -> int:
    return parse_int(text, "", minimum=1, maximum=MAX_THREADS)


def _ablations(text: str) -> list[str]:
    from prune.ablation import ABLATIONS

    names = [a.strip() for a in text.split(",")]
    bad = [a for a in names if a not in ABLATIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"--ablations {text!r}: unknown ablation {bad[0]!r}; "
                                         f"choose from {', '.join(ABLATIONS)}, comma-separated")
    return _once(names, f"--ablations {text!r}", "an ablation")


def _ablation(text: str) -> str:
    (name,) = _ablations(text) if "," not in text else (None,)
    if name is None:
        raise argparse.ArgumentTypeError(f"--ablation {text!r}: give one ablation (zero, mean or resample)")
    return name


def _report_path(path: Path | None) -> None:
    """Refuse a report path that cannot be written, before any work."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--report {path} is a folder; give a file name, e.g. {path / 'recovery.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--report {path}: {parent} is not a folder")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--report {path}: cannot write in {probe}; choose a writable place")


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


def _print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout  # at call time: tests and callers may have replaced sys.stdout
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |", file=out)
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|", file=out)
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) + " |", file=out)


def _programs(specs):
    """Resolve every spec before any work (an unknown name or a bad file fails here)."""
    from groundtruth.registry import library, resolve

    if not specs:
        return list(library().values())
    programs = [p for s in specs for p in resolve(s)]
    names = [p.name for p in programs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UsageError(f"program {dup!r} is named twice in {' '.join(specs)}; name each program once")
    return programs


def _cases(programs, quiet, *, features: bool = False):
    from groundtruth.case import build_case

    for prog in tqdm(programs, desc="programs", disable=quiet, file=sys.stderr, leave=False):
        yield prog, build_case(prog, features=features)


def cmd_build(args) -> int:
    from groundtruth.artifacts import save_case

    programs = _programs(args.programs)
    rows = []
    for _, case in _cases(programs, args.quiet, features=True):
        save_case(case, args.out)
        rows.append(_case_row(case))
    _print_table(rows)
    return 0 if all(r["verified"] == "yes" for r in rows) else 1


def _drawing_folder(path: Path | None) -> Path | None:
    """``--draw DIR`` checked before any work (it need not exist yet), and matplotlib with it."""
    from prune.files import check_writable_folder

    if path is None:
        return None
    check_writable_folder(path, "--draw")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--draw needs matplotlib (the plot extra): pip install -e '.[plot]'") from None
    return path


def _file_stem(*parts) -> str:
    return "-".join(str(p).replace(":", "-") for p in parts)


def cmd_check(args) -> int:
    if args.variant is None:
        options = (("--width", args.width), ("--noise", args.noise), ("--seed", args.seed))
        given = [flag for flag, value in options if value is not None]
        if given:
            raise UsageError(f"{given[0]} describes a variant; add --variant compressed, perturbed or "
                             f"compressed+perturbed")
    else:
        _variant_options(args)
    from prune.circuit import Circuit
    from prune.draw import save_circuit_files

    draw = _drawing_folder(args.draw)
    rows, failed, drawings = [], False, []
    for prog, case in _cases(_programs(args.specs), args.quiet):
        rows.append(_case_row(case))
        for variant, edges in case.circuits.items():
            print(f"{prog.name} {variant} ({len(edges)} edges): {', '.join(edges) or '-'}")
            if draw is not None:
                circuit = Circuit(graph=case.model.graph, edges=tuple(edges), ablation=variant.partition(":")[2],
                                  model=prog.name, d_model=case.model.cfg.d_model, method=f"ground truth ({variant})")
                drawings.append((circuit, draw / _file_stem(prog.name, variant), case.compiled.node_labels()))
        for ablation, v in case.verifications.items():
            if not v.ok:
                failed = True
                print(f"{prog.name} functional:{ablation} NOT verified: reproduces "
                      f"{v.n_reproduced}/{v.n_examples}, inert {v.inert}")
        if args.variant is not None:
            failed |= not _print_variant(_build_variant(case, args))
    # Drawn once every program has compiled and verified: a program refused on the way leaves no drawing behind.
    for circuit, stem, labels in drawings:
        files = save_circuit_files(circuit, f"{stem}.json", stem, labels=labels)
        print(f"drawn: {files['drawing']} (and .svg), circuit {files['circuit']}")
    _print_table(rows)
    return 1 if failed else 0


def _variant_options(args) -> dict:
    kind = args.kind if hasattr(args, "kind") else args.variant
    if args.width is not None and kind == "perturbed":
        raise UsageError("--width applies to a compressed variant; --kind perturbed keeps the compiled width")
    if args.noise is not None and kind == "compressed":
        raise UsageError("--noise applies to a perturbed variant; --kind compressed adds no noise")
    return {"width": args.width, "noise": args.noise, "seed": 0 if args.seed is None else args.seed}


def _build_variant(parent, args, base=None):
    from groundtruth.variant_case import build_variant

    kind = args.kind if hasattr(args, "kind") else args.variant
    return build_variant(parent, kind, base=base, **_variant_options(args))


def _print_variant(variant) -> bool:
    info = variant.info
    print(f"{variant.name}: width {info['width']} of {info['compiled_width']}"
          + (f" ({info['recipe']['stage']} weights)" if "recipe" in info else "")
          + (f", noise scale {info['noise_scale']:.3g}" if "noise_scale" in info else "")
          + f", structural {info['structural_size']} edges, {variant.seconds:.1f} s")
    for ablation, d in variant.differences.items():
        print(f"  functional:{ablation} ({len(variant.functional(ablation))} edges): "
              f"{', '.join(variant.functional(ablation)) or '-'}")
        print(f"    against the program's: +{len(d.added)} -{len(d.removed)}; {d.why}")
    return all(v.ok for v in variant.verifications.values())


def cmd_variant(args) -> int:
    from groundtruth.artifacts import load_artifact, save_variant
    from groundtruth.registry import library

    lib = library()
    names = args.programs or list(lib)
    unknown = [n for n in names if n not in lib]
    if unknown:
        raise UsageError(f"no library program {unknown[0]!r}; choose from {', '.join(lib)}")
    if len(set(names)) != len(names):
        raise UsageError(f"a program is named twice in {' '.join(names)}; name each program once")
    _variant_options(args)
    if args.width is not None and len(names) > 1:
        raise UsageError(f"--width {args.width} names one width for {len(names)} programs of different widths; "
                         f"give one program, or no --width to search each program's smallest")
    import torch

    torch.set_num_threads(args.threads)
    parents = [load_artifact(n) for n in names]
    for parent in tqdm(parents, desc="variants", disable=args.quiet, file=sys.stderr, leave=False):
        base = None
        compressed = Path(args.out) / f"{parent.name}@compressed"
        if args.kind == "compressed+perturbed" and args.width is None and compressed.is_dir():
            base = load_artifact(compressed)  # its width was searched once: perturb that model, not a new one
            if base.provenance.get("parent_files_sha256") != parent.provenance["files_sha256"]:
                raise UsageError(f"{compressed} was built from another version of {parent.name}; rebuild it "
                                 f"with `groundtruth variant {parent.name} --kind compressed`")
        variant = _build_variant(parent, args, base)
        _print_variant(variant)
        print(f"written: {save_variant(variant, parent, args.out)}")
    return 0


def cmd_table(args) -> int:
    import json

    from groundtruth.artifacts import ArtifactError, load_all
    from groundtruth.case import VARIANTS
    from groundtruth.registry import library

    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a folder of compiled programs")
    arts = load_all(args.root)
    if not arts:
        raise UsageError(f"--root {args.root} holds no compiled program; build some with `groundtruth build`")
    order = [n for n in library() if n in arts] + sorted(set(arts) - set(library()))
    rows = []
    for name in order:
        art = arts[name]
        cfg = art.model.cfg
        # What the row shows and load_artifact does not need: refused, naming the file, if it is not there.
        fix = f"rebuild with `groundtruth build {name}`"
        missing = [v for v in VARIANTS if v not in art.circuits]
        if missing:
            raise ArtifactError(f"{art.path / 'circuits.json'} has no {missing[0]} circuit; {fix}")
        if not isinstance(art.config.get("causal"), bool):
            raise ArtifactError(f"{art.path / 'config.json'}: 'causal' is {art.config.get('causal')!r}, not true or "
                                f"false; {fix}")
        checks = json.loads((art.path / "circuits.json").read_text()).get("verification")
        if not isinstance(checks, dict) or not checks or not all(
                isinstance(v, dict) and isinstance(v.get("sufficient"), bool) and isinstance(v.get("inert"), list)
                for v in checks.values()):
            raise ArtifactError(f"{art.path / 'circuits.json'}: 'verification' is not one "
                                f"{{'sufficient': true or false, 'inert': [edges]}} per ablation; {fix}")
        row = {"program": name, "out": art.examples.kind[:3], "causal": "yes" if art.config["causal"] else "no",
               "layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model,
               "edges": art.model.graph.n_edges, "inputs": len(art.examples)}
        for variant in VARIANTS:
            row[variant.replace("functional:", "f:")] = len(art.circuits[variant])
        row["verified"] = "yes" if all(v["sufficient"] and not v["inert"] for v in checks.values()) else "NO"
        rows.append(row)
    _print_table(rows)
    return 0


def _targets(specs):
    """(name, model, examples, circuits) for library artifacts (torch only) or program files.

    Library names are checked and their artifacts loaded before any work; program files are
    resolved first too (their compilation comes later, one at a time).
    """
    from groundtruth.artifacts import load_artifact
    from groundtruth.registry import library, resolve

    names = list(library()) if not specs else []
    files = []
    for spec in specs:
        if spec.endswith(".py") or ".py:" in spec:
            files.extend(resolve(spec))
        else:
            names.append(spec)
    lib = library()
    unknown = [n for n in names if n not in lib and "@" not in n]  # name@kind: a variant, loaded below
    if unknown:
        raise UsageError(f"no library program {unknown[0]!r}; choose from {', '.join(lib)}, a built variant "
                         f"(PROGRAM@KIND) or give FILE.py[:NAME]")
    arts = [load_artifact(n) for n in names]
    dup = {n for n in [*names, *(p.name for p in files)] if [*names, *(p.name for p in files)].count(n) > 1}
    if dup:
        raise UsageError(f"program {sorted(dup)[0]!r} is named twice; name each program once")

    def generate():
        from groundtruth.case import build_case

        for prog in files:
            case = build_case(prog)
            yield prog.name, case.model, case.examples, case.circuits
        for art in arts:
            yield art.name, art.model, art.examples, art.circuits

    return generate()


def cmd_recover(args) -> int:
    import json

    import torch

    from groundtruth.recovery import load_pruner, recover
    from prune.files import atomic_write_text

    _report_path(args.report)
    draw = _drawing_folder(args.draw)
    pruner = load_pruner(args.pruner)
    torch.set_num_threads(args.threads)
    ablations, seeds = args.ablations, args.seeds
    targets = _targets(args.specs)
    results, skipped, rows, models = [], [], [], []
    runs = [(t, a, s) for t in targets for a in ablations for s in seeds]
    # leave=False: the bar clears itself, so a refusal mid-run leaves only its one error line on stderr
    bar = tqdm(runs, desc="recovery", disable=args.quiet, leave=False, file=sys.stderr)
    for (name, model, examples, circuits), ablation, seed in bar:
        gt = circuits.get(f"functional:{ablation}")
        if gt is None:
            raise UsageError(f"{name} has no functional:{ablation} ground truth; it has {sorted(circuits)}")
        if not gt:
            if seed == seeds[0]:
                skipped.append(f"{name} ({ablation}: the ground truth is empty, nothing to recover)")
            continue
        result = recover(name, model, examples, gt, ablation=ablation, seed=seed, pruner=pruner)
        results.append(result)
        models.append(model)
        rows.append(result.row())
    if not results:
        raise UsageError(f"nothing to recover: every ground truth asked for is empty ({'; '.join(skipped)}); "
                         f"choose other programs or ablations")
    # Drawn once every run is done: a refusal on the way (a pruner that raises) leaves no drawing behind.
    files = [_draw_recovery(r, m, draw, args.report) for r, m in zip(results, models, strict=True)] if draw else []
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
                  "runs": len(results), "skipped": skipped,
                  "results": [{**r.to_dict(), **({"files": files[i]} if files else {})}
                              for i, r in enumerate(results)]}
        atomic_write_text(args.report, json.dumps(report, indent=1) + "\n")
        print(f"report: {args.report}")
    return 0 if exact == len(results) else 1


def _draw_recovery(result, model, draw: Path, report: Path | None) -> dict:
    """Save a recovery's circuit and draw it against the ground truth, as ``DIR/<program>-<ablation>-seed<s>``;
    the paths, relative to the report's folder."""
    import dataclasses

    from prune.circuit import Circuit
    from prune.draw import save_circuit_files

    circuit = result.circuit
    if not circuit.model:
        circuit = dataclasses.replace(circuit, model=result.program)
    truth = Circuit(graph=model.graph, edges=result.ground_truth, ablation=result.ablation, model=circuit.model,
                    d_model=model.cfg.d_model, method="ground truth")
    stem = draw / _file_stem(result.program, result.ablation, f"seed{result.seed}")
    return save_circuit_files(circuit, f"{stem}.json", stem, truth=truth,
                              relative_to=report.parent if report is not None else None)


def cmd_compare(args) -> int:
    import torch

    from groundtruth.compare import compare

    programs, root = args.programs, None
    if args.variant is not None:  # the same table over the built variants of the library
        from groundtruth.artifacts import VARIANT_ROOT
        from groundtruth.registry import library

        root = VARIANT_ROOT
        chosen = [p.strip() for p in programs.split(",")] if programs else list(library())
        unknown = [p for p in chosen if p not in library()]
        if unknown:
            raise UsageError(f"--programs: no library program {unknown[0]!r}; variants exist of the library only")
        programs = [f"{p}@{args.variant}" for p in chosen]
        missing = [n for n in programs if not (root / n).is_dir()]
        if missing:
            raise UsageError(f"no variant {missing[0]} in {root}; build it with `groundtruth variant "
                             f"{missing[0].partition('@')[0]} --kind {args.variant}`")
        if args.plot is not None:
            args.plot = f"{args.plot}@{args.variant}"
    torch.set_num_threads(args.threads)
    compare(args.methods, args.ablation, programs=programs, seed=args.seed, out_dir=args.out,
            plot=args.plot, quiet=args.quiet, draw=_drawing_folder(args.draw), root=root,
            features=args.graph == "features")
    if not args.quiet:
        print(f"written: {args.out / 'compare.md'}, {args.out / 'compare.json'}"
              + (f", {args.out / f'compare_{args.plot}.png'}" if args.plot else ""), file=sys.stderr)
    return 0


def cmd_transcoders(args) -> int:
    import torch

    from groundtruth.compare import _resolve_methods
    from groundtruth.transcoders import OUT_STEM, resolve_programs, transcoder_circuits
    from prune.files import check_writable_folder

    _resolve_methods(args.methods)
    if args.out is not None:
        check_writable_folder(args.out, "--out")
    names, skipped = resolve_programs(args.programs)
    torch.set_num_threads(args.threads)
    transcoder_circuits(names, args.ablation, args.methods, steps=args.steps, seed=args.seed, out_dir=args.out,
                        quiet=args.quiet, skipped=skipped)
    if args.out is not None and not args.quiet:
        print(f"written: {args.out / f'{OUT_STEM}.md'}, {args.out / f'{OUT_STEM}.json'}", file=sys.stderr)
    return 0


def _steps(text: str) -> int:
    return parse_int(text, "", minimum=1, maximum=1_000_000)


def _width(text: str) -> int:
    return parse_int(text, "", minimum=1)


def _noise(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a scale >= 0") from None
    if not value >= 0 or value == float("inf"):  # NaN fails >= too
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite scale >= 0")
    return value


def _variant_arguments(p) -> None:
    p.add_argument("--width", type=_width, default=None,
                   help="compressed width (default: the smallest found, from the read basis down)")
    p.add_argument("--noise", type=_noise, default=None,
                   help="noise scale, relative to each weight's RMS (default: half the largest that decodes)")
    p.add_argument("--seed", type=_one_seed, default=None, help="the noise's seed (default 0)")


def _one_seed(text: str) -> int:
    return parse_int(text, "", minimum=0, maximum=MAX_SEED)


def _parser() -> argparse.ArgumentParser:
    from groundtruth.artifacts import DEFAULT_ROOT, VARIANT_ROOT
    from groundtruth.compare import DEFAULT_OUT
    from groundtruth.recovery import DEFAULT_PRUNER
    from groundtruth.variant_case import KINDS as VARIANT_KINDS

    parser = ArgumentParser(prog="groundtruth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    p = sub.add_parser("build", help="compile programs into compiled_models/")
    p.add_argument("programs", nargs="*", help="library names or FILE.py[:NAME] (default: the whole library)")
    p.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("check", help="compile, convert, derive and verify the ground truth; write nothing")
    p.add_argument("specs", nargs="+", help="library names or FILE.py[:NAME]")
    p.add_argument("--draw", type=Path, default=None, metavar="DIR",
                   help="draw each ground truth (nodes labelled with the RASP they compute) into DIR")
    p.add_argument("--variant", choices=VARIANT_KINDS, default=None,
                   help="also build this variant of each program and verify its ground truth")
    _variant_arguments(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("variant", help="build compressed or perturbed variants into compiled_variants/")
    p.add_argument("programs", nargs="*", help="library names (default: the whole library)")
    p.add_argument("--kind", choices=VARIANT_KINDS, required=True)
    _variant_arguments(p)
    p.add_argument("--out", type=Path, default=VARIANT_ROOT)
    p.add_argument("--threads", type=_threads, default=DEFAULT_THREADS, help=f"torch CPU threads, 1 to {MAX_THREADS}")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_variant)
    p = sub.add_parser("table", help="print the library table from the artifacts")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.set_defaults(func=cmd_table)
    for name, help_ in (("recover", "does a pruner recover the functional ground truth exactly?"),
                        ("demo", "recover the whole library, zero and resample ablation, seed 0")):
        p = sub.add_parser(name, help=help_)
        if name == "recover":
            p.add_argument("specs", nargs="*", help="library names or FILE.py[:NAME] (default: the library)")
        p.add_argument("--ablations", type=_ablations, default="zero,resample", help="comma-separated")
        p.add_argument("--seeds", type=parse_seeds, default="0", help="0, 0,1,2, 0-9 or a mix")
        p.add_argument("--pruner", default=DEFAULT_PRUNER, help="module:callable (a prune.Pruner)")
        p.add_argument("--report", type=Path, default=Path("out/recovery.json") if name == "demo" else None)
        p.add_argument("--draw", type=Path, default=None, metavar="DIR",
                       help="save each circuit found into DIR, drawn against the ground truth (PNG, SVG, JSON)")
        p.add_argument("--threads", type=_threads, default=DEFAULT_THREADS,
                       help=f"torch CPU threads, 1 to {MAX_THREADS}")
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=cmd_recover, specs=[])
    p = sub.add_parser("compare", help="every method on the library: its own circuit and the finalized one")
    p.add_argument("--methods", default="edge_pruning,acdc,eap,eap_ig", help="comma-separated method names")
    p.add_argument("--ablation", type=_ablation, default="zero", help="zero, mean or resample")
    p.add_argument("--programs", default=None, help="comma-separated library programs (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for compare.md/.json/.png")
    p.add_argument("--plot", default=None, metavar="PROGRAM", help="also plot faithfulness vs edges for it")
    p.add_argument("--draw", type=Path, default=None, metavar="DIR",
                   help="draw each method's circuit against the ground truth into DIR (PNG and SVG)")
    p.add_argument("--seed", type=parse_seeds, default="0", help="one seed")
    p.add_argument("--variant", choices=VARIANT_KINDS, default=None,
                   help="compare on the built variants of that kind (compiled_variants/) instead")
    p.add_argument("--graph", choices=("edges", "features"), default="edges",
                   help="features: on each program's transcoder feature graph (its ideal transcoders), against "
                        "the feature-level ground truth")
    p.add_argument("--threads", type=_threads, default=DEFAULT_THREADS, help=f"torch CPU threads, 1 to {MAX_THREADS}")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("transcoders", help="every method on trained transcoders' feature graphs, scored against "
                                          "the feature-level ground truth")
    p.add_argument("programs", nargs="*", help="library programs with an MLP (default: every one)")
    p.add_argument("--ablation", type=_ablation, default="zero", help="zero, mean or resample")
    p.add_argument("--methods", help="comma-separated method names (default: all six)",
                   default="edge_pruning,acdc,eap,eap_ig,feature_attribution,feature_attribution_invariant")
    p.add_argument("--steps", type=_steps, default=3000, help="training steps per transcoder start (default 3000)")
    p.add_argument("--seed", type=_one_seed, default=0, help="one seed: training and methods (default 0)")
    p.add_argument("--out", type=Path, default=None, help="folder for transcoder-circuits.md/.json (default: none)")
    p.add_argument("--threads", type=_threads, default=DEFAULT_THREADS, help=f"torch CPU threads, 1 to {MAX_THREADS}")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_transcoders)
    p = sub.add_parser("report", help="one static HTML page of a compare or recovery table, linked to drawings")
    p.add_argument("table", type=Path, help="compare.json (groundtruth compare --draw) or a recover --report file")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: report.html beside TABLE)")
    p.add_argument("--title", default=None, help="the page's title")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_report)
    return parser


def _cmd_report(args) -> int:
    from groundtruth.report import cmd_report

    return cmd_report(args)


def main(argv=None) -> int:
    from groundtruth.artifacts import ArtifactError
    from groundtruth.compiler import ProgramError
    from groundtruth.recovery import PrunerError
    from prune.circuit import CircuitFileError

    args = parse_args(_parser(), argv)
    if isinstance(args, int):
        return args
    if args.command == "compare":
        if len(args.seed) != 1:
            print(f"error: --seed takes one seed, got {args.seed}", file=sys.stderr)
            return 2
        args.seed = args.seed[0]
    start = time.perf_counter()
    code = run_command(args.func, args, refused=(UsageError, ValueError, KeyError, OSError, ArtifactError,
                                                  ProgramError, PrunerError, CircuitFileError),
                       interrupted="interrupted; nothing was written for the run in progress")
    if code in (0, 1) and getattr(args, "quiet", False) is False:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
