"""Every method on the shipped language models, scored with MIB's CPR and CMD (prune.mib).

    .venv/bin/python bench/mib.py [--models gpt2-ioi-gt,llama-ioi-gt] [--tasks ioi,greater_than]
                                  [--steps 1500] [--n 200] [--json out/mib.json] [--plots DIR]
                                  [--submission DIR]

Per model and task:
- circuits are found on ``--n`` prompts (seed 0; IOI on the training templates) and evaluated on
  ``--n`` others (seed 1; IOI on the four held-out templates), resample ablation (each prompt's paired
  corruption: IOI's ABC names, greater-than's "01" year), EAP-IG's writer conventions
  (docs/conventions.md) so that the circuits mean in MIB's evaluator what they mean here;
- the metric is MIB's: logit difference of the correct and the incorrect answer at the last token
  (IOI: IO - S; greater-than: YY+1 - YY);
- EAP and EAP-IG (5 steps) give one score per edge: MIB's importance-score mode, signed for CPR and
  ``|score|`` for CMD;
- Edge Pruning runs once per fraction p below 100% that keeps at least one edge, at target edge
  sparsity 1 - p (``language_model_config``, ``--steps`` steps); the circuit at p is that run's top
  ``int(p * n_edges)`` edges by log-alpha (the same for CPR and CMD: a log-alpha is signed by nature).
  Its own thresholded circuit (log-alpha > 0) is reported beside;
- ACDC runs at a sweep of thresholds; the circuit at p is the largest of the sweep with at most
  ``int(p * n_edges)`` edges (MIB's one-circuit-per-size mode);
- random: seeded random scores, the mean over 5 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACDC_TAUS = tuple(10.0 ** e for e in (-5, -4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5))
RANDOM_SEEDS = (0, 1, 2, 3, 4)


def _task(tokenizer, name: str, n: int, seed: int, held_out: bool):
    from prune import tasks

    kwargs = {"templates": "test" if held_out else "train"} if name == "ioi" else {}
    return tasks.make_task(name, tokenizer, n, seed, **kwargs)


def _best_under(circuits, limit: int, n: int):
    """The largest circuit with at most ``limit`` edges (an empty mask if none is that small)."""
    fitting = [c for c in circuits if len(c) <= limit]
    return max(fitting, key=len).mask() if fitting else torch.zeros(n)


def run_one(model_name: str, task_name: str, *, steps: int, n: int, submission: Path | None) -> dict:
    from transformers import AutoTokenizer

    from prune import loaders, mib, tasks
    from prune.baselines import acdc, eap, eap_ig, top_k_mask
    from prune.edge_pruning import edge_pruning, language_model_config
    from prune.evaluate import Evaluator

    folder = ROOT / "models" / model_name
    model = loaders.from_hf(str(folder)).with_conventions("eap-ig")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    find = _task(tokenizer, task_name, n, 0, held_out=False)
    test = _task(tokenizer, task_name, n, 1, held_out=True)
    g, N = model.graph, model.graph.n_edges
    evaluator = Evaluator(model, test.examples, "resample")

    def metric(logits):
        return tasks.logit_difference(logits, test)

    row: dict = {"model": model_name, "task": task_name, "edges": N, "methods": {}}
    timing: dict = {}

    def score_method(name, fn):
        start = time.perf_counter()
        circuit = fn()
        timing[name] = time.perf_counter() - start
        scores = torch.tensor(circuit.scores)
        row["methods"][name] = {
            "cpr": mib.faithfulness_curve(evaluator, metric, scores, method=name, absolute=False).to_dict(),
            "cmd": mib.faithfulness_curve(evaluator, metric, scores, method=name, absolute=True).to_dict(),
            "seconds": round(timing[name], 2),
        }
        return circuit

    ex = find.examples
    eap_c = score_method("eap", lambda: eap(model, ex, ablation="resample", top_k=N, finalize="own"))
    ig_c = score_method("eap_ig", lambda: eap_ig(model, ex, ablation="resample", top_k=N, finalize="own"))

    # Edge Pruning: one run per fraction that keeps an edge.
    start = time.perf_counter()
    runs, own = {}, {}
    for p in mib.PERCENTAGES[:-1]:
        k = int(p * N)
        if k == 0:
            continue
        c = edge_pruning(model, ex, ablation="resample", seed=0, config=language_model_config(1 - p, steps=steps))
        runs[p] = c
        own[p] = {"edges": len(c), "faithfulness": mib.faithfulness(metric(evaluator.logits(c.mask())),
                                                                    metric(evaluator.reference),
                                                                    metric(evaluator.logits(torch.zeros(N))))}
        print(f"  {model_name} {task_name} edge pruning p={p:g}: {len(c)} edges (limit {k})", file=sys.stderr)
    timing["edge_pruning"] = time.perf_counter() - start

    def ep_at(p):
        k = int(p * N)
        if k == 0:
            return torch.zeros(N)
        return top_k_mask(torch.tensor(runs[p].scores), k, absolute=False)

    ep_curve = mib.faithfulness_curve(evaluator, metric, ep_at, method="edge_pruning", absolute=False).to_dict()
    row["methods"]["edge_pruning"] = {"cpr": ep_curve, "cmd": ep_curve, "own": own,
                                      "seconds": round(timing["edge_pruning"], 2), "steps": steps}

    start = time.perf_counter()
    sweep = [acdc(model, ex, ablation="resample", tau=t, finalize="own") for t in ACDC_TAUS]
    timing["acdc"] = time.perf_counter() - start
    acdc_curve = mib.faithfulness_curve(evaluator, metric, lambda p: _best_under(sweep, int(p * N), N),
                                        method="acdc", absolute=False).to_dict()
    row["methods"]["acdc"] = {"cpr": acdc_curve, "cmd": acdc_curve, "taus": list(ACDC_TAUS),
                              "edges_per_tau": [len(c) for c in sweep], "seconds": round(timing["acdc"], 2)}

    curves = {"cpr": [], "cmd": []}
    for seed in RANDOM_SEEDS:
        r = torch.rand(N, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        curves["cpr"].append(mib.faithfulness_curve(evaluator, metric, r, method="random", absolute=False))
        curves["cmd"].append(mib.faithfulness_curve(evaluator, metric, r, method="random", absolute=True))
    row["methods"]["random"] = {
        "cpr": {"cpr": sum(c.cpr for c in curves["cpr"]) / len(RANDOM_SEEDS),
                "faithfulness": [sum(f) / len(f) for f in zip(*(c.faithfulness for c in curves["cpr"]), strict=True)],
                "edges": [sum(e) / len(e) for e in zip(*(c.edges for c in curves["cpr"]), strict=True)],
                "percentages": list(mib.PERCENTAGES)},
        "cmd": {"cmd": sum(c.cmd for c in curves["cmd"]) / len(RANDOM_SEEDS)},
        "seeds": list(RANDOM_SEEDS),
    }

    if submission is not None:
        mname = model_name.replace("_", "-")
        mib.write_submission(submission, method="eap", task=task_name, model=mname, scores=eap_c)
        mib.write_submission(submission, method="eap-ig", task=task_name, model=mname, scores=ig_c)
        from prune.circuit import Circuit

        def as_circuit(mask, method):
            return Circuit.from_mask(g, mask, ablation="resample", model=str(folder), d_model=model.cfg.d_model,
                                     method=method)

        mib.write_submission(submission, method="edge-pruning", task=task_name, model=mname,
                             circuits={p: as_circuit(ep_at(p), "edge_pruning") for p in mib.PERCENTAGES[:-1]})
        mib.write_submission(submission, method="acdc", task=task_name, model=mname,
                             circuits={p: as_circuit(_best_under(sweep, int(p * N), N), "acdc")
                                       for p in mib.PERCENTAGES[:-1]})
    return row


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prune.files import save_figure

    paths = []
    colours = {"edge_pruning": "tab:blue", "eap_ig": "tab:green", "eap": "tab:orange", "acdc": "tab:red",
               "random": "tab:gray"}
    for model_name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model_name]
        fig, axes = plt.subplots(1, len(mine), figsize=(5.5 * len(mine), 4), squeeze=False)
        for ax, r in zip(axes[0], mine, strict=True):
            for method, d in r["methods"].items():
                curve = d["cpr"]
                xs = list(curve["edges"])
                keep = [i for i, e in enumerate(xs) if e > 0]
                ax.plot([xs[i] for i in keep], [curve["faithfulness"][i] for i in keep], marker="o", ms=3,
                        label=f"{method} (CPR {curve['cpr']:.3f})", color=colours.get(method))
            own = r["methods"]["edge_pruning"]["own"]
            ax.scatter([o["edges"] for o in own.values()], [o["faithfulness"] for o in own.values()], marker="x",
                       color=colours["edge_pruning"], label="edge_pruning, its own thresholded circuits")
            ax.axhline(1.0, color="black", lw=0.5, ls=":")
            ax.set_xscale("log")
            ax.set_xlabel(f"edges in the circuit (of {r['edges']})")
            ax.set_ylabel("faithfulness (MIB)")
            ax.set_title(f"{model_name}: {r['task']}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"mib-{model_name}.png"
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown(record: dict) -> str:
    """The CPR / CMD table and the per-fraction faithfulness of a recorded run, as markdown."""
    order = ["edge_pruning", "eap_ig", "eap", "acdc", "random"]
    lines = ["| model | task | edges | " + " | ".join(f"{m} CPR / CMD" for m in order) + " |",
             "|---|---|---|" + "---|" * len(order)]
    for r in record["rows"]:
        cells = [f"{r['methods'][m]['cpr']['cpr']:.3f} / {r['methods'][m]['cmd']['cmd']:.3f}" for m in order]
        lines.append(f"| {r['model']} | {r['task']} | {r['edges']} | " + " | ".join(cells) + " |")
    lines += ["", "Faithfulness at each fraction (signed ranking, CPR's circuits; edges in brackets):", ""]
    ps = record["percentages"]
    lines += ["| model | task | method | " + " | ".join(f"{100 * p:g}%" for p in ps) + " |",
              "|---|---|---|" + "---|" * len(ps)]
    for r in record["rows"]:
        for m in order:
            c = r["methods"][m]["cpr"]
            cells = [f"{f:.2f} ({e:g})" for f, e in zip(c["faithfulness"], c["edges"], strict=True)]
            lines.append(f"| {r['model']} | {r['task']} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "Edge Pruning's own thresholded circuits (log-alpha > 0), per target 1 - p:", "",
              "| model | task | " + " | ".join(f"{100 * p:g}%" for p in ps[2:-1]) + " |",
              "|---|---|" + "---|" * len(ps[2:-1])]
    for r in record["rows"]:
        own = r["methods"]["edge_pruning"]["own"]
        cells = [f"{own[k]['faithfulness']:.2f} ({own[k]['edges']})" if k in own else "-"
                 for k in (str(p) if isinstance(next(iter(own)), str) else p for p in ps[2:-1])]
        lines.append(f"| {r['model']} | {r['task']} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per method (finding the circuits; Edge Pruning: all its runs):", "",
              "| model | task | " + " | ".join(order[:-1]) + " |", "|---|---|" + "---|" * (len(order) - 1)]
    for r in record["rows"]:
        lines.append(f"| {r['model']} | {r['task']} | " + " | ".join(f"{r['methods'][m]['seconds']:.1f}"
                                                                   for m in order[:-1]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2-ioi-gt,llama-ioi-gt")
    p.add_argument("--tasks", default="ioi,greater_than")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=ROOT / "out" / "mib.json")
    p.add_argument("--plots", type=Path, help="folder for one figure per model")
    p.add_argument("--submission", type=Path, help="also write MIB's submission folders here (must not exist)")
    p.add_argument("--markdown", type=Path, metavar="JSON", help="only print the tables of a recorded --json file")
    args = p.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    torch.set_num_threads(args.threads)
    if args.submission is not None and args.submission.exists():
        print(f"bench/mib.py: --submission {args.submission} exists; choose a new folder", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    for m in args.models.split(","):
        for t in args.tasks.split(","):
            rows.append(run_one(m, t, steps=args.steps, n=args.n, submission=args.submission))
            r = rows[-1]["methods"]
            print(json.dumps({"model": m, "task": t, **{k: (round(v["cpr"]["cpr"], 4), round(v["cmd"]["cmd"], 4))
                                                         for k, v in r.items()}}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    record = {"command": " ".join(["bench/mib.py", *(argv if argv is not None else sys.argv[1:])]),
              "commit": commit.strip(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
              "load_average_at_start": load, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
              "seconds": round(time.perf_counter() - start, 1), "steps": args.steps, "n": args.n,
              "percentages": [x for x in __import__("prune.mib", fromlist=["PERCENTAGES"]).PERCENTAGES],
              "mib": __import__("prune.mib", fromlist=["MIB_COMMIT"]).MIB_COMMIT, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        for path in plot(rows, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    if any(math.isnan(v["cpr"]["cpr"]) for r in rows for v in r["methods"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
