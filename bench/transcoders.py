"""Train a transcoder for every MLP layer of every library program and score it against the compiled MLP.

For each program with an MLP (a layer whose weights are not all zero): the layer's
normed inputs and outputs at the valid positions of the artifact's evaluation set
(``examples.clean``, ``examples.valid``) train one transcoder of ``EXPANSION`` times the
layer's true width (its non-zero hidden units: Tracr pads every layer to one d_mlp).
Each is matched to the ideal transcoder (the compiled MLP, ``Transcoder.from_mlp``)
on the same inputs; the replacement model (every MLP replaced, no error terms) is
scored by decoded agreement. Writes ``transcoders.md`` and ``transcoders.json``.

``--variant KIND`` does the same on the library's variants of that kind (``compiled_variants/``,
``transcoders-KIND.md``): the true features are then the variant's own MLP units, which on a compressed
variant read and write directions that share dimensions.

    .venv/bin/python bench/transcoders.py [--programs a,b] [--variant compressed] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from groundtruth.artifacts import load_artifact  # noqa: E402
from groundtruth.registry import library  # noqa: E402
from groundtruth.transcoders import EXPANSION, RECIPE, fit_layer, true_width  # noqa: E402
from prune.transcoder import (  # noqa: E402
    Transcoder,
    fit_transcoder,
    match_features,
    replace_mlps,
    replacement_faithfulness,
)

# the load of the runs before --load-note existed: written by hand in their header
SHARED = "the 2 cores were shared with other engineers' work throughout, so the seconds are indicative only"
SUMMED = ("evaluable", "recovered", "functional", "recovered_raw", "dead", "dense", "never_fire", "constant",
          "silent", "trained", "confounded", "recovered_unconfounded")


def bench_layer(model, ex, layer: int, width: int) -> tuple[Transcoder, dict]:
    tc, x = fit_layer(model, ex, layer, width, **RECIPE)  # the recipe's one definition (groundtruth.transcoders)
    true = Transcoder.from_mlp(model.blocks[layer], layer)
    m, raw = match_features(tc, true, x), match_features(tc, true, x, span="raw")
    return tc, {"layer": layer, "width": width, "inputs": len(x), **m.summary(),
                "recovered_raw": len(raw.recovered), "nmse": tc.log.nmse, "l0": tc.log.l0,
                "resampled": tc.log.resampled, "init": tc.log.init, "best_step": tc.log.best_step,
                "recipe": tc.log.recipe, "seconds": tc.log.seconds}


def bench_program(name: str) -> dict | None:
    art = load_artifact(name)  # a program, or a variant by its name (reverse@compressed)
    model, ex = art.model, art.examples
    layers, transcoders = [], {}
    for layer, block in enumerate(model.blocks):
        if width := true_width(block):
            transcoders[layer], row = bench_layer(model, ex, layer, width)
            layers.append(row)
    if not layers:
        return None
    plain = replacement_faithfulness(model, replace_mlps(model, transcoders), ex)
    exact = replacement_faithfulness(model, replace_mlps(model, transcoders, keep_error=True), ex)
    ideal = {l: Transcoder.from_mlp(model.blocks[l], l) for l in transcoders}
    ideal = replacement_faithfulness(model, replace_mlps(model, ideal), ex)
    total = {k: sum(r[k] for r in layers) for k in SUMMED}
    return {"program": name, "layers": layers, **total, "agreement": plain.agreement, "kl": plain.kl,
            "error_term_max_diff": exact.max_abs_logit_diff, "ideal_agreement": ideal.agreement,
            "ideal_max_diff": ideal.max_abs_logit_diff, "seconds": sum(r["seconds"] for r in layers)}


def dirty_files() -> list[str]:
    """Tracked files under prune/ and bench/ that differ from the commit (the code benchmarked is the tree's)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "prune", "bench/transcoders.py"],
                         capture_output=True, text=True, cwd=ROOT).stdout
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def render(meta: dict, rows: list[dict]) -> str:
    return "\n".join(header(meta, rows) + table(rows)) + "\n"


def fit_defaults() -> dict:
    """``fit_transcoder``'s keyword defaults that shape the recipe (not ``progress``, ``log_every``)."""
    sig = inspect.signature(fit_transcoder)
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
            and k not in ("progress", "log_every", "activation", "k")}


def pct(a, b):
    return f"{100 * a / b:.0f}%" if b else "-"


def header(meta: dict, rows: list[dict]) -> list[str]:
    kind = meta.get("variant")
    ev, rec = sum(r["evaluable"] for r in rows), sum(r["recovered"] for r in rows)
    fun = sum(r["functional"] for r in rows)
    goal = 0.9 if kind else 0.95  # issue 14: 95% on the compiled library, 90% on variants
    hit_rec = sum(r["recovered"] >= goal * r["evaluable"] for r in rows)
    hit_dec = sum(r["agreement"] >= 0.99 for r in rows)
    conf, rec_u = sum(r["confounded"] for r in rows), sum(r["recovered_unconfounded"] for r in rows)
    hit_u = sum(r["recovered_unconfounded"] >= goal * (r["evaluable"] - r["confounded"]) for r in rows)
    return [
        f"# Transcoders on the library's {kind} variants (`bench/transcoders.py --variant {kind}`)" if kind else
        "# Transcoders on the compiled library (`bench/transcoders.py`)", "",
        "| | |", "|---|---|",
        f"| command | `{meta['command']}` |",
        f"| commit | `{meta['commit']}` (the code benchmarked; these results were committed after it)"
        + (f", with uncommitted changes to {', '.join(f'`{f}`' for f in meta['dirty'])}" if meta.get("dirty") else "")
        + " |",
        f"| date | {meta['date']} |", f"| threads | {meta['threads']} torch thread, one process |",
        f"| machine load | `uptime` at the start: `{meta['load']}`; "
        f"{meta.get('load_note', SHARED)} |",
        f"| machine | {meta['machine']} |", f"| wall time | {meta['wall_seconds']:.0f} s |",
        f"| recipe | expansion {EXPANSION} x the layer's true width; `fit_transcoder` defaults "
        f"`{meta['defaults']}`, given `{RECIPE}` |", "",
        f"Over {len(rows)} programs with an MLP: {rec}/{ev} evaluable true features recovered "
        f"({pct(rec, ev)}; encoder and decoder cosine >= 0.9, encoders compared in the span of the centred "
        f"inputs); {fun}/{ev} ({pct(fun, ev)}) matched functionally (decoder cosine and activation "
        f"correlation >= 0.9). Targets: >= {100 * goal:.0f}% recovered on every program, met on "
        f"{hit_rec}/{len(rows)}; "
        f"the replacement model without error terms decoding >= 99% of inputs, met on {hit_dec}/{len(rows)}.", "",
        f"Silent true features (hidden units that fire and vary but whose decoder row is zero: they write "
        f"nothing, and the ideal transcoder matched against itself does not recover them) are counted apart "
        f"since `match_features` lists them as `silent`: {sum(r['silent'] for r in rows)} of "
        f"{sum(r['silent'] + r['evaluable'] for r in rows)} that fire and vary (counting them, "
        f"{rec}/{sum(r['silent'] + r['evaluable'] for r in rows)} recovered).", "",
        f"Confounded true features (a diagnostic; the figures above count them): evaluable units that the "
        f"evaluation inputs cannot tell from another evaluable unit, because one feature computes what the two "
        f"write together exactly on every input (`match_features`: activations proportional on every input, or "
        f"one decoder direction and one ReLU of the summed pre-activations): "
        f"{conf} of {ev}. Of the other {ev - conf}, {rec_u} are recovered ({pct(rec_u, ev - conf)}); "
        f">= {100 * goal:.0f}% of those on {hit_u}/{len(rows)} programs.", "",
        "Columns: *true* = evaluable true features (hidden units that fire, vary and write on the evaluation "
        "set; never-firing, constant and silent ones are counted apart), *rec* = recovered by cosines (data span), "
        "*raw* = "
        "recovered with raw encoder cosines, *func* = functional match, *conf* = confounded true features, "
        "*rec, unconf* = recovered of the unconfounded ones, *dead*/*dense* = trained features "
        "never active / active on > 50% of inputs, *agree* = replacement model (no error terms) decoding "
        "alike, *KL* = mean KL(original || replacement) at answer positions, *err* = max |logit difference| "
        "with error terms kept, *ideal* = agreement of the ideal transcoder (the compiled MLP itself).", "",
    ]


def table(rows: list[dict]) -> list[str]:
    lines = ["| program | MLP layers | true | never / constant / silent | rec | raw | func | conf | rec, unconf | dead "
             "| dense | agree | KL | err | ideal | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kl = "-" if r["kl"] is None else f"{r['kl']:.2g}"
        lines.append(
            f"| {r['program']} | {len(r['layers'])} | {r['evaluable']} | {r['never_fire']} / {r['constant']} / "
            f"{r['silent']} | "
            f"{r['recovered']} ({pct(r['recovered'], r['evaluable'])}) | {r['recovered_raw']} | "
            f"{r['functional']} ({pct(r['functional'], r['evaluable'])}) | {r['confounded']} | "
            f"{r['recovered_unconfounded']}/{r['evaluable'] - r['confounded']} | {r['dead']} | {r['dense']} | "
            f"{100 * r['agreement']:.1f}% | {kl} | {r['error_term_max_diff']:.1g} | "
            f"{100 * r['ideal_agreement']:.0f}% | {r['seconds']:.1f} |")
    lines += ["", "Per layer (true width, inputs, final normalised MSE, mean active features L0, resampled, the "
              "initialisation kept by `init=\"best\"` and the step its weights are from, -1 the last):", "",
              "| program | layer | width | inputs | true | rec | func | conf | nmse | L0 | resampled | init | step |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for q in r["layers"]:
            lines.append(f"| {r['program']} | {q['layer']} | {q['width']} | {q['inputs']} | {q['evaluable']} | "
                         f"{q['recovered']} | {q['functional']} | {q['confounded']} | {q['nmse']:.1e} | "
                         f"{q['l0']:.2f} | "
                         f"{q['resampled']} | {q['init']} | {q['best_step']} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", default=None, help="comma-separated library names (default: all)")
    p.add_argument("--variant", choices=("compressed", "perturbed", "compressed+perturbed"), default=None,
                   help="train on the library's variants of this kind instead (compiled_variants/)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--load-note", default="nothing noted", help="what else ran on the machine, beside the figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lib = list(library())
    names = args.programs.split(",") if args.programs else lib
    unknown = [n for n in names if n not in lib]
    if unknown:
        p.error(f"--programs: no library program {unknown[0]!r}; choose from {', '.join(lib)}")
    if args.variant:
        names = [f"{n}@{args.variant}" for n in names]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {"command": ".venv/bin/python bench/transcoders.py" + (f" --programs {args.programs}" if args.programs
                                                                   else "")
                       + (f" --variant {args.variant}" if args.variant else ""), "variant": args.variant,
            "load_note": args.load_note,
            "commit": commit.stdout.strip(), "dirty": dirty_files(), "date": datetime.date.today().isoformat(),
            "threads": torch.get_num_threads(), "machine": f"{os.cpu_count()} cores ({platform.machine()})",
            "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "recipe": RECIPE, "expansion": EXPANSION, "defaults": fit_defaults()}
    t0, rows = time.perf_counter(), []
    for name in names:
        row = bench_program(name)
        if row is None:
            print(f"{name}: no MLP", flush=True)
            continue
        rows.append(row)
        print(f"{name}: {row['recovered']}/{row['evaluable']} recovered, {row['functional']} functional, "
              f"agreement {row['agreement']:.4f}, {row['seconds']:.1f} s", flush=True)
    meta["wall_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"transcoders-{args.variant.replace('+', '-')}" if args.variant else "transcoders"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render(meta, rows))


if __name__ == "__main__":
    main()
