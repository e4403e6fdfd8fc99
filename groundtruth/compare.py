"""Compare circuit-discovery methods against the library's functional ground truth.

::

    groundtruth compare --methods edge_pruning,acdc,eap,eap_ig --ablation zero \\
        [--programs a,b] [--out DIR] [--draw DIR] [--plot PROGRAM] [--seed 0] [--threads 1]

Every method of :data:`prune.baselines.METHODS` named in ``--methods`` runs
with its defaults and ``finalize="own"`` on every library artifact (or those in
``--programs``); programs whose ground truth for the ablation is empty are
skipped. Its own circuit then goes through the shared exact finalizer
(:mod:`prune.finalize`) along the method's ranking, so each method is reported
both ways, like for like. One row per (program, method):

- ``own``, ``own exact``: the size of the method's own circuit (Edge Pruning:
  ``log_alpha > 0``; EAP, EAP-IG: the smallest reproducing top-k; ACDC: its
  greedy pass) and whether it equals the ground truth and reproduces every
  output;
- ``final``, ``exact``: the same after the shared finalizer;
- ``evals``: the evaluations of the whole evaluation set the finalizer needed
  (the quality of the ranking: one per kept edge plus one when the own circuit
  is already the ground truth); ``own evals``: those the method's own rule
  spent on the same criterion (EAP's top-k scan, ACDC's tries; Edge Pruning
  spends none, it trains);
- ``precision``, ``recall``: of the own circuit against the ground truth;
- ``auroc``: edge AUROC of the method's scores against ground-truth membership
  (:func:`prune.baselines.edge_auroc` of :func:`prune.baselines.ranking`);
- ``faithfulness``: mean KL(full || circuit) (categorical) or squared error
  (numerical) of the own circuit;
- ``seconds``: wall time of the method; ``final s``: of the finalizer.

The table is printed (markdown) and written to ``DIR/compare.md`` and
``DIR/compare.json`` (default ``out/compare``), each atomically; each method's own
circuit goes to ``DIR/circuits/<program>-<method>.json`` (EAP-IG JSON), and with
``--draw DRAWDIR`` its drawing against the ground truth (:mod:`prune.draw`) to
``DRAWDIR/<program>-<method>.png`` and ``.svg``; every row of ``compare.json``
names its files (``files``), which ``groundtruth report`` links to. ``--plot
PROGRAM`` also writes ``DIR/compare_<PROGRAM>.png``: faithfulness against edge
count per method; score-based methods give their top-k circuits by
:func:`prune.baselines.ranking` over a range of k, ACDC the circuits of
:func:`prune.baselines.acdc_sweep`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

from tqdm import tqdm

from prune.files import atomic_write_text, check_writable_folder, save_figure

__all__ = ["compare", "DEFAULT_OUT"]

DEFAULT_OUT = Path("out/compare")


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

    from prune.baselines import acdc_sweep, ranking, top_k_mask
    from prune.evaluate import Evaluator

    model, examples = art.model, art.examples
    evaluator = Evaluator(model, examples, ablation)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, circuit in circuits.items():
        if name == "acdc":
            _, swept = acdc_sweep(model, examples, ablation=ablation, finalize="own")
            pts = sorted((len(c), evaluator.faithfulness(c.mask()), c.metadata["tau"]) for c in swept)
            ax.plot([p[0] for p in pts], [max(p[1], 0.0) for p in pts], "o--", label="acdc (tau sweep)")
            continue
        scores = ranking(circuit)
        ks = _curve_ks(len(scores))
        ys = [max(evaluator.faithfulness(top_k_mask(scores, k, absolute=False)), 0.0) for k in ks]
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


def _file_stems(names: list[str]) -> dict[str, str]:
    """A file name per program: ``--programs`` may name artifact folders by path (``/x/count``), whose
    files must land in the output folders, not beside the artifact; the folder's name, numbered where
    two folders share one."""
    base = {n: Path(n).name for n in names}
    shared = {b for b in base.values() if list(base.values()).count(b) > 1}
    return {n: f"{b}.{i}" if b in shared else b for i, (n, b) in enumerate(base.items())}


def _own_circuit(method, found: dict, model, examples, **kw):
    """``method`` with its own rule (``finalize="own"``), keeping the circuit in ``found``."""
    found["circuit"] = method(model, examples, finalize="own", **kw)
    return found["circuit"]


@dataclasses.dataclass(frozen=True, eq=False)
class _FeatureRow:
    """A program's feature model and feature-level ground truth, read by :func:`compare` as an artifact."""

    truth: object  # groundtruth.feature_truth.FeatureTruth

    @property
    def model(self):
        return self.truth.model

    @property
    def examples(self):
        return self.truth.examples

    def functional(self, ablation: str) -> list[str]:
        return self.truth.functional(ablation)


def compare(methods, ablation: str, *, programs=None, seed: int = 0, out_dir=DEFAULT_OUT,
            plot: str | None = None, quiet: bool = False, root=None, draw=None, features: bool = False) -> list[dict]:
    """Run ``methods`` (names or a comma list) on the library; write the table; return its rows.

    ``features``: on each program's feature graph (its ideal transcoders, every compiled MLP hidden unit
    a writer) against the feature-level ground truth of :func:`groundtruth.feature_truth.feature_truth`,
    derived and verified for the row's ablation before any method runs; circuits are saved, not drawn
    (``draw`` and ``plot`` are refused: drawings of feature graphs are not made yet).

    Rows hold raw numbers (``auroc`` is None where the ground truth covers every
    edge); ``details`` lists the extra and missed edges of both circuits; ``files``
    where the method's own circuit was saved (``out_dir/circuits/<program>-<method>.json``)
    and, with ``draw`` (a folder), its drawing against the ground truth
    (``<draw>/<program>-<method>.png`` and ``.svg``), relative to ``out_dir``.
    """
    from groundtruth.artifacts import DEFAULT_ROOT, load_artifact
    from groundtruth.recovery import recover
    from groundtruth.registry import library
    from prune.ablation import check_ablation
    from prune.baselines import edge_auroc, ranking
    from prune.circuit import Circuit
    from prune.draw import save_circuit_files
    from prune.evaluate import Evaluator
    from prune.finalize import finalize

    check_ablation(ablation)
    fns = _resolve_methods(methods)
    if features and (draw is not None or plot is not None):
        raise ValueError("--graph features: circuits on feature graphs are not drawn or plotted yet; "
                         "leave out --draw and --plot")
    root = Path(root) if root is not None else DEFAULT_ROOT
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder")
    check_writable_folder(out_dir, "--out")
    if draw is not None:
        draw = check_writable_folder(draw, "--draw")
        import matplotlib  # noqa: F401  (the plot extra: refused now, not after the first method ran)
    if programs is None:
        available = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        names = [n for n in library() if n in available] + sorted(available - set(library()))
    else:
        names = [p.strip() for p in programs.split(",")] if isinstance(programs, str) else list(programs)
        if not names or any(not n for n in names):
            raise ValueError(f"--programs {programs!r}: give program names, comma-separated")
        if len(set(names)) != len(names):
            raise ValueError(f"--programs {programs!r} lists a program twice")
    if plot is not None and plot not in names:
        raise ValueError(f"--plot {plot!r} is not among the programs compared ({', '.join(names)})")
    arts = {n: load_artifact(root / n) for n in names}  # fail early on a bad name
    if features:  # each program as its feature model and feature-level ground truth (stored, or derived)
        from groundtruth.feature_truth import feature_truth

        arts = {n: _FeatureRow(feature_truth(a, ablations=(ablation,)))
                for n, a in tqdm(arts.items(), desc="feature truth", disable=quiet, file=sys.stderr, leave=False)}
    stems = _file_stems(names)
    if all(not arts[n].functional(ablation) for n in names):
        raise ValueError(f"every {ablation} ground truth of {', '.join(names)} is empty: nothing to compare")

    rows, skipped, plot_circuits, to_save = [], [], {}, []
    runs = [(n, m) for n in names for m in fns]
    for name, method in tqdm(runs, desc="compare", disable=quiet, file=sys.stderr, leave=False):
        art = arts[name]
        gt = art.functional(ablation)
        if not gt:
            if method == next(iter(fns)):
                skipped.append(name)
            continue
        found: dict = {}
        own = functools.partial(_own_circuit, fns[method], found)
        evaluator = Evaluator(art.model, art.examples, ablation)  # one per row: recover's check and the finalizer
        result = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed, pruner=own,
                         evaluator=evaluator)
        circuit = found["circuit"]
        final = finalize(circuit, evaluator, ranking(circuit))
        final_cmp = final.compare(gt)
        final_exact = final_cmp.exact and bool(evaluator.agreement(final.mask()).all())
        gt_mask = art.model.graph.edge_mask(gt)
        auroc = None
        if 0 < len(gt) < art.model.graph.n_edges:
            auroc = edge_auroc(ranking(circuit), gt_mask, absolute=False)
        info = final.metadata["finalize"]
        rows.append({
            "program": name, "method": method, "gt edges": len(gt),
            "own": len(circuit.edges), "own exact": result.exact,
            "final": len(final.edges), "exact": final_exact,
            "evals": info["evaluations"], "own evals": circuit.metadata.get("own_evaluations", 0),
            "precision": result.precision, "recall": result.recall, "auroc": auroc,
            "faithfulness": evaluator.faithfulness(circuit.mask()),
            "seconds": round(result.seconds, 3), "final s": info["seconds"],
            "details": {"own_only_found": list(result.only_found),
                        "own_only_ground_truth": list(result.only_ground_truth),
                        "final_only_found": list(final_cmp.only_found),
                        "final_only_ground_truth": list(final_cmp.only_reference),
                        "reproduces": result.reproduces, "finalize": info,
                        "metadata": {k: v for k, v in circuit.metadata.items() if k != "history"}},
        })
        if not circuit.model:
            circuit = dataclasses.replace(circuit, model=name)
        truth = Circuit(graph=art.model.graph, edges=tuple(gt), ablation=ablation, model=name,
                        d_model=art.model.cfg.d_model, method="ground truth")
        to_save.append((rows[-1], circuit, truth, f"{stems[name]}-{method}"))
        if name == plot:
            plot_circuits[method] = circuit

    # Saved once every method has run: a refusal on the way leaves no circuit or drawing behind.
    for row, circuit, truth, stem in to_save:
        row["files"] = save_circuit_files(circuit, out_dir / "circuits" / f"{stem}.json",
                                          draw / stem if draw is not None else None, truth=truth, relative_to=out_dir)
    md = _markdown(rows)
    if skipped:
        md += f"\nskipped ({ablation} ground truth empty): {', '.join(skipped)}\n"
    md += _summary(rows)
    atomic_write_text(out_dir / "compare.md", md)
    report = {"ablation": ablation, "seed": seed, "methods": list(fns), "graph": "features" if features else "edges",
              "skipped": skipped, "rows": rows}
    atomic_write_text(out_dir / "compare.json", json.dumps(report, indent=1, default=str) + "\n")
    if plot is not None and plot_circuits:
        _plot(out_dir / f"compare_{plot}.png", plot, arts[plot], ablation, plot_circuits,
              len(arts[plot].functional(ablation)))
    if not quiet:
        print(md, end="")
    return rows


def _summary(rows: list[dict]) -> str:
    """Per method: exact own / finalized circuits and the finalizer's evaluations in all."""
    lines = ["", "| method | own exact | finalized exact | finalizer evaluations | own-rule evaluations | seconds |",
             "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        own, final = sum(r["own exact"] for r in rs), sum(r["exact"] for r in rs)
        lines.append(f"| {method} | {own}/{len(rs)} | {final}/{len(rs)} "
                     f"| {sum(r['evals'] for r in rs)} | {sum(r['own evals'] for r in rs)} "
                     f"| {sum(r['seconds'] + r['final s'] for r in rs):.1f} |")
    return "\n".join(lines) + "\n"
