"""Compare circuit-discovery methods against the library's functional ground truth.

::

    python -m groundtruth.compare --methods edge_pruning,acdc,eap,eap_ig --ablation zero \\
        [--programs a,b] [--out DIR] [--plot PROGRAM] [--seed 0] [--threads 1]

Every method of :data:`prune.baselines.METHODS` named in ``--methods`` runs with
its defaults on every library artifact (or those in ``--programs``); programs
whose ground truth for the ablation is empty are skipped. One row per
(program, method):

- ``exact``: the circuit's edges equal the functional ground truth and the
  circuit reproduces the decoded outputs on every example (as ``recover``);
- ``threshold exact``: Edge Pruning only (``-`` for the others): whether its
  thresholded circuit (``log_alpha > 0``), before the exact binarisation
  (``EdgePruningConfig.finalize = "exact"``) adds or drops edges on the
  training set, already equals the ground truth; ``exact`` is after it;
- ``precision``, ``recall``: of the method's own circuit against the ground truth;
- ``auroc``: edge AUROC of the method's scores against ground-truth membership
  (:func:`prune.baselines.edge_auroc` of :func:`prune.baselines.ranking`:
  ``|score|`` for EAP, EAP-IG and ACDC, the signed log-alpha for Edge Pruning);
- ``faithfulness``: mean KL(full || circuit) (categorical) or squared error
  (numerical) of the method's circuit;
- ``seconds``: wall time of the method.

The table is printed (markdown) and written to ``DIR/compare.md`` and
``DIR/compare.json`` (default ``out/compare``), each atomically. ``--plot
PROGRAM`` also writes ``DIR/compare_<PROGRAM>.png``: faithfulness against edge
count per method; score-based methods give their top-k circuits by
:func:`prune.baselines.ranking` over a range of k, ACDC the circuits of :func:`prune.baselines.acdc_sweep`.
``--threads`` (default 1) sets torch's intra-op threads. Exit code 0 on
success, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from prune.files import save_figure

__all__ = ["compare", "main", "DEFAULT_OUT"]

DEFAULT_OUT = Path("out/compare")


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _markdown(rows: list[dict]) -> str:
    import io

    from groundtruth.cli import _print_table

    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, float):
            return "-" if v != v else f"{v:.3g}"
        return "-" if v is None else str(v)

    buf = io.StringIO()
    _print_table([{k: fmt(v) for k, v in r.items() if k != "details"} for r in rows], out=buf)
    return buf.getvalue()


def _resolve_methods(methods) -> dict:
    from prune.baselines import METHODS

    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m]
    if not methods:
        raise ValueError(f"no methods given; choose from {sorted(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return {m: METHODS[m] for m in methods}


def _curve_ks(n_edges: int) -> list[int]:
    """Edge counts for the top-k curves: every k for small graphs, ~40 log-spaced otherwise."""
    if n_edges <= 60:
        return list(range(1, n_edges + 1))
    ks = {round(n_edges ** (i / 39)) for i in range(40)} | set(range(1, 21))
    return sorted(k for k in ks if 1 <= k <= n_edges)


def _plot(path: Path, program: str, art, ablation: str, circuits: dict, gt_size: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prune.ablation import ablated_writers
    from prune.baselines import acdc_sweep, faithfulness, ranking, top_k_mask
    from prune.evaluate import full_logits

    model, examples = art.model, art.examples
    reference = full_logits(model, examples)
    ablated = ablated_writers(model, examples, ablation)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, circuit in circuits.items():
        if name == "acdc":
            _, swept = acdc_sweep(model, examples, ablation=ablation)
            pts = sorted((len(c), faithfulness(model, examples, c.mask(), ablation, ablated=ablated,
                                               reference=reference), c.metadata["tau"]) for c in swept)
            ax.plot([p[0] for p in pts], [max(p[1], 0.0) for p in pts], "o--", label="acdc (tau sweep)")
            continue
        scores = ranking(circuit)
        ks = _curve_ks(len(scores))
        ys = [max(faithfulness(model, examples, top_k_mask(scores, k, absolute=False), ablation, ablated=ablated,
                               reference=reference), 0.0) for k in ks]
        ax.plot(ks, ys, "-", label=f"{name} (top-k)")
    ax.axvline(gt_size, color="grey", linestyle=":", label=f"ground truth ({gt_size} edges)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-6)  # exact circuits have loss 0 (up to float noise)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("edges in circuit")
    metric = "mean KL(full || circuit)" if examples.kind == "categorical" else "mean squared error"
    ax.set_ylabel(f"faithfulness loss ({metric})")
    ax.set_title(f"{program}, {ablation} ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def compare(methods, ablation: str, *, programs=None, seed: int = 0, out_dir=DEFAULT_OUT,
            plot: str | None = None, quiet: bool = False, root=None) -> list[dict]:
    """Run ``methods`` (names or a comma list) on the library; write the table; return its rows.

    Rows hold raw numbers (``auroc`` is None where the ground truth covers every
    edge); ``details`` lists the extra and missed edges.
    """
    from groundtruth.artifacts import DEFAULT_ROOT, load_artifact
    from groundtruth.recovery import recover
    from groundtruth.registry import library
    from prune.ablation import check_ablation
    from prune.baselines import edge_auroc, faithfulness, ranking

    check_ablation(ablation)
    fns = _resolve_methods(methods)
    root = Path(root) if root is not None else DEFAULT_ROOT
    out_dir = Path(out_dir)
    if programs is None:
        available = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        names = [n for n in library() if n in available] + sorted(available - set(library()))
    else:
        names = [p for p in programs.split(",") if p] if isinstance(programs, str) else list(programs)
        if not names:
            raise ValueError(f"no programs given (got {programs!r})")
    if plot is not None and plot not in names:
        raise ValueError(f"--plot {plot!r} is not among the programs compared ({', '.join(names)})")
    arts = {n: load_artifact(root / n) for n in names}  # fail early on a bad name

    rows, skipped, plot_circuits = [], [], {}
    runs = [(n, m) for n in names for m in fns]
    for name, method in tqdm(runs, desc="compare", disable=quiet, file=sys.stderr):
        art = arts[name]
        gt = art.functional(ablation)
        if not gt:
            if method == next(iter(fns)):
                skipped.append(name)
            continue
        found = {}

        def capture(model, examples, **kw):
            found["circuit"] = fns[method](model, examples, **kw)
            return found["circuit"]

        result = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed, pruner=capture)
        circuit = found["circuit"]
        gt_mask = art.model.graph.edge_mask(gt)
        auroc = None
        if circuit.scores is not None and 0 < len(gt) < art.model.graph.n_edges:
            auroc = edge_auroc(ranking(circuit), gt_mask, absolute=False)
        rows.append({
            "program": name, "method": method, "gt edges": len(gt), "found": len(circuit.edges),
            "exact": result.exact, "threshold exact": result.threshold_exact,
            "precision": result.precision, "recall": result.recall, "auroc": auroc,
            "faithfulness": faithfulness(art.model, art.examples, circuit.mask(), ablation),
            "seconds": round(result.seconds, 3),
            "details": {"only_found": list(result.only_found), "only_ground_truth": list(result.only_ground_truth),
                        "reproduces": result.reproduces, "metadata": circuit.metadata},
        })
        if name == plot:
            plot_circuits[method] = circuit

    md = _markdown(rows)
    if skipped:
        md += f"\nskipped ({ablation} ground truth empty): {', '.join(skipped)}\n"
    _atomic_write(out_dir / "compare.md", md.encode())
    report = {"ablation": ablation, "seed": seed, "methods": list(fns), "skipped": skipped, "rows": rows}
    _atomic_write(out_dir / "compare.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    if plot is not None and plot_circuits:
        _plot(out_dir / f"compare_{plot}.png", plot, arts[plot], ablation, plot_circuits,
              len(arts[plot].functional(ablation)))
    if not quiet:
        print(md, end="")
    return rows


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m groundtruth.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="edge_pruning,acdc,eap,eap_ig", help="comma-separated method names")
    parser.add_argument("--ablation", default="zero", help="zero, mean or resample")
    parser.add_argument("--programs", default=None, help="comma-separated library programs (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for compare.md/.json/.png")
    parser.add_argument("--plot", default=None, metavar="PROGRAM", help="also plot faithfulness vs edges for it")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: the library's models are tiny, so a second thread gains little, and on a busy
    # machine two threads spin-wait on every small op (ACDC on `sort`: 0.18 s with one thread,
    # 8-22 s with two, measured with another job running).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        compare(args.methods, args.ablation, programs=args.programs, seed=args.seed, out_dir=args.out,
                plot=args.plot, quiet=args.quiet)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"written: {args.out / 'compare.md'}, {args.out / 'compare.json'}"
              + (f", {args.out / f'compare_{args.plot}.png'}" if args.plot else ""), file=sys.stderr)
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
