"""Feature circuits on *trained* transcoders, scored against the feature-level ground truth.

::

    groundtruth transcoders [PROGRAM ...] [--ablation zero] [--methods edge_pruning,acdc,...] [--steps 3000]
                            [--seed 0] [--threads 1] [--out DIR]

For each library program with an MLP (a layer whose weights are not all zero):

1. one transcoder per such layer is trained on that layer's normed inputs and outputs at the valid
   positions of the evaluation set (:func:`fit_layer`: ``EXPANSION`` x the layer's true width, the
   ``fit_transcoder`` defaults, seeded; the recipe of ``bench/transcoders.py``, which imports it from here);
2. each is matched to the layer's ideal transcoder (the compiled MLP) with :func:`prune.transcoder.match_features`;
3. the model is put on the trained transcoders' feature graph (:func:`prune.transcoder.feature_model`, error
   terms kept: ``m{l}.err`` is a node of that graph, so a method may keep it; the tables count how often one does);
4. each method of :data:`prune.baselines.METHODS` runs on that graph with its own rule (``finalize="own"``), and its
   circuit then goes through the shared exact finalizer along its ranking, as in ``groundtruth compare``;
5. both circuits are scored against :func:`groundtruth.feature_truth.feature_truth` through the matching
   (:func:`groundtruth.feature_truth.score_feature_circuit`: precision, recall, exact).

Per program it also reports the matching (true features, recovered) and the replacement model's decoded
agreement without error terms. Nothing here tunes a method or changes a ground truth.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

__all__ = ["EXPANSION", "RECIPE", "true_width", "mlp_layers", "fit_layer", "train_program", "score_program",
           "transcoder_circuits", "render", "OUT_STEM"]

EXPANSION = 2.0
RECIPE = dict(steps=3000, seed=0)  # the rest: fit_transcoder's defaults
OUT_STEM = "transcoder-circuits"
_ERR = re.compile(r"^m\d+\.err->")


def true_width(block) -> int:
    """The layer's non-zero hidden units (Tracr pads every layer's MLP to one d_mlp)."""
    return int(((block.W_in.abs().sum(0) > 0) | (block.W_out.abs().sum(1) > 0)).sum())


def mlp_layers(model) -> dict[int, int]:
    """``{layer: true width}`` of the layers whose MLP is not all zero."""
    return {l: w for l, b in enumerate(model.blocks) if (w := true_width(b))}


def fit_layer(model, examples, layer: int, width: int, *, steps: int = RECIPE["steps"], seed: int = RECIPE["seed"],
              progress: bool = False):
    """``(transcoder, x)``: a transcoder of ``ceil(EXPANSION * width)`` features trained on ``layer``'s activations
    over the evaluation set, and those normed inputs ``x [N, D]``."""
    from prune.transcoder import fit_transcoder, mlp_activations

    x, y = mlp_activations(model, layer, examples.clean, examples.valid)
    tc = fit_transcoder(x, y, layer=layer, d_transcoder=math.ceil(EXPANSION * width), progress=progress,
                        steps=steps, seed=seed)
    return tc, x


def train_program(art, *, steps: int = RECIPE["steps"], seed: int = RECIPE["seed"], transcoders=None):
    """``(transcoders, matches)`` by layer for every MLP layer of ``art``; ``transcoders`` given (e.g. the ideal
    ones): those are matched instead of training new ones."""
    from prune.transcoder import Transcoder, match_features, mlp_activations

    model, ex = art.model, art.examples
    trained, matches = {}, {}
    for layer, width in mlp_layers(model).items():
        if transcoders is None:
            trained[layer], x = fit_layer(model, ex, layer, width, steps=steps, seed=seed)
        else:
            trained[layer] = transcoders[layer]
            x, _ = mlp_activations(model, layer, ex.clean, ex.valid)
        matches[layer] = match_features(trained[layer], Transcoder.from_mlp(model.blocks[layer], layer), x)
    return trained, matches


def _score(score) -> dict:
    return {"exact": score.exact, "precision": score.precision, "recall": score.recall, "found": score.n_found}


def constant_as_error(circuit, score, matches) -> bool:
    """A diagnostic, not the score: would ``score``'s circuit be exact if each ground-truth edge out of a true
    feature that fires with one value on every input (``FeatureMatch.constant``: no data tells it from the decoder
    bias, which a trained transcoder's ``m{l}.err`` holds) were renamed to the same edge out of ``m{l}.err``?"""
    renamed = set(score.image)
    for edge in score.unmatched:
        writer, reader = edge.split("->")
        layer, feature = (int(v) for v in re.match(r"^m(\d+)\.f(\d+)$", writer).groups())
        if feature not in matches[layer].constant:
            return False
        renamed.add(f"m{layer}.err->{reader}")
    return len(set(score.image)) + len(score.unmatched) == score.n_truth and set(circuit.edges) == renamed


def score_program(art, ablation: str, methods, *, steps: int = RECIPE["steps"], seed: int = 0, truth=None,
                  transcoders=None, progress: bool = False) -> dict:
    """One program's record: the matching, the replacement's agreement, and per method its own and finalized
    circuits on the trained graph scored through the matching. ``methods``: ``{name: pruner}``; ``truth``: the
    program's :class:`~groundtruth.feature_truth.FeatureTruth` (derived for ``ablation`` when not given)."""
    from groundtruth.feature_truth import feature_truth, score_feature_circuit
    from prune.baselines import ranking
    from prune.evaluate import Evaluator
    from prune.finalize import finalize
    from prune.transcoder import feature_model, replace_mlps, replacement_faithfulness

    if not mlp_layers(art.model):
        raise ValueError(f"{art.name} has no MLP: there is no transcoder to train")
    truth = truth or feature_truth(art, ablations=(ablation,))
    gt = truth.functional(ablation)
    start = time.perf_counter()
    trained, matches = train_program(art, steps=steps, seed=seed, transcoders=transcoders)
    train_s = time.perf_counter() - start
    model = feature_model(art.model, trained, keep_error=True)
    agreement = replacement_faithfulness(art.model, replace_mlps(art.model, trained), art.examples).agreement
    evaluator = Evaluator(model, art.examples, ablation)
    # The ground truth's image in the trained graph, whatever the circuit: does the matching allow exact at all?
    from prune.circuit import Circuit

    empty = Circuit(graph=model.graph, edges=(), ablation=ablation, model=art.name, d_model=model.cfg.d_model)
    image = score_feature_circuit(empty, truth, ablation, matches)
    record = {
        "program": art.name, "layers": sorted(trained), "widths": {l: t.cfg.d_transcoder for l, t in trained.items()},
        "evaluable": sum(len(m.evaluable) for m in matches.values()),
        "recovered": sum(len(m.recovered) for m in matches.values()),
        "matches": {l: m.summary() for l, m in matches.items()},
        "agreement": agreement, "graph_edges": model.graph.n_edges, "gt_edges": len(gt),
        "unmatched": list(image.unmatched), "image_injective": len(set(image.image)) == len(gt) - len(image.unmatched),
        "train_seconds": round(train_s, 2), "truth_seconds": round(truth.seconds, 2), "methods": {},
    }
    for name, method in tqdm(methods.items(), desc=art.name, disable=not progress, file=sys.stderr, leave=False):
        t0 = time.perf_counter()
        own = method(model, art.examples, ablation=ablation, seed=seed, finalize="own")
        seconds = time.perf_counter() - t0
        final = finalize(own, evaluator, ranking(own))
        s_own, s_final = (score_feature_circuit(c, truth, ablation, matches) for c in (own, final))
        reproduces = bool(evaluator.agreement(final.mask()).all())
        as_error = constant_as_error(final, s_final, matches) and reproduces
        record["methods"][name] = {
            "own": _score(s_own), "final": {**_score(s_final), "exact": s_final.exact and reproduces,
                                            "constant_as_error": as_error},
            "reproduces": reproduces, "err_edges": [e for e in final.edges if _ERR.match(e)],
            "only_found": list(s_final.only_found), "missed": list(s_final.missed),
            "seconds": round(seconds, 3), "final_seconds": final.metadata["finalize"]["seconds"]}
    return record


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def rows(records: list[dict]) -> list[dict]:
    """One table row per (program, method)."""
    out = []
    for r in records:
        for m, s in r["methods"].items():
            out.append({"program": r["program"], "method": m, "gt edges": r["gt_edges"],
                        "rec": f"{r['recovered']}/{r['evaluable']}", "unmatched": len(r["unmatched"]),
                        "agree": f"{100 * r['agreement']:.1f}%", "own": s["own"]["found"],
                        "own exact": s["own"]["exact"], "final": s["final"]["found"], "exact": s["final"]["exact"],
                        "precision": s["final"]["precision"], "recall": s["final"]["recall"],
                        "err edges": len(s["err_edges"]), "exact, constant as err": s["final"]["constant_as_error"],
                        "seconds": f"{s['seconds'] + s['final_seconds']:.1f}"})
    return out


def summary(records: list[dict]) -> list[dict]:
    """Per method: exact own / finalized circuits, circuits that keep an error node, mean precision and recall."""
    out = []
    methods = dict.fromkeys(m for r in records for m in r["methods"])
    for m in methods:
        ss = [r["methods"][m] for r in records if m in r["methods"]]
        n = len(ss)
        out.append({"method": m, "programs": n, "own exact": f"{sum(s['own']['exact'] for s in ss)}/{n}",
                    "finalized exact": f"{sum(s['final']['exact'] for s in ss)}/{n}",
                    "keeps an error node": f"{sum(bool(s['err_edges']) for s in ss)}/{n}",
                    "exact, constant as err": f"{sum(s['final']['constant_as_error'] for s in ss)}/{n}",
                    "mean precision": sum(s["final"]["precision"] for s in ss) / n,
                    "mean recall": sum(s["final"]["recall"] for s in ss) / n,
                    "seconds": f"{sum(s['seconds'] + s['final_seconds'] for s in ss):.1f}"})
    return out


def render(records: list[dict], *, ablation: str, skipped=()) -> str:
    import io

    from groundtruth.cli import _print_table

    buf = io.StringIO()
    _print_table([{k: _fmt(v) for k, v in row.items()} for row in rows(records)], out=buf)
    buf.write("\n")
    _print_table([{k: _fmt(v) for k, v in row.items()} for row in summary(records)], out=buf)
    possible = sum(not r["unmatched"] and r["image_injective"] for r in records)
    buf.write(f"\n{ablation} ablation, {len(records)} programs with an MLP; the matching leaves every ground-truth "
              f"edge an image (exact possible at all) on {possible}/{len(records)}.\n")
    if skipped:
        buf.write(f"skipped (no MLP): {', '.join(skipped)}\n")
    return buf.getvalue()


def transcoder_circuits(names, ablation: str, methods, *, steps: int = RECIPE["steps"], seed: int = 0, out_dir=None,
                        quiet: bool = False, skipped=()) -> list[dict]:
    """Score every method on the trained transcoders' graph of each program in ``names`` (library names, each
    with an MLP); print the table; with ``out_dir`` write ``transcoder-circuits.md`` and ``.json`` there."""
    import json

    import torch

    from groundtruth.artifacts import load_artifact
    from groundtruth.compare import _resolve_methods
    from prune.files import atomic_write_text

    fns = _resolve_methods(methods)
    arts = [load_artifact(n) for n in names]
    records = []
    for art in tqdm(arts, desc="programs", disable=quiet, file=sys.stderr, leave=False):
        records.append(score_program(art, ablation, fns, steps=steps, seed=seed, progress=not quiet))
    md = render(records, ablation=ablation, skipped=skipped)
    if out_dir is not None:
        out_dir = Path(out_dir)
        report = {"ablation": ablation, "methods": list(fns), "steps": steps, "seed": seed, "expansion": EXPANSION,
                  "threads": torch.get_num_threads(), "skipped": list(skipped), "summary": summary(records),
                  "programs": records}
        atomic_write_text(out_dir / f"{OUT_STEM}.json", json.dumps(report, indent=1, default=str) + "\n")
        atomic_write_text(out_dir / f"{OUT_STEM}.md", md)
    if not quiet:
        print(md, end="")
    return records


def resolve_programs(names) -> tuple[list[str], list[str]]:
    """``(programs to run, library programs skipped for having no MLP)``; ``names`` empty: the whole library.
    An unknown name, a repeated one, or a named program without an MLP raises ``ValueError``."""
    from groundtruth.artifacts import load_artifact
    from groundtruth.registry import library

    lib = list(library())
    names = list(names) or lib
    unknown = [n for n in names if n not in lib]
    if unknown:
        raise ValueError(f"no library program {unknown[0]!r}; choose from {', '.join(lib)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a program is named twice in {' '.join(names)}; name each program once")
    without = [n for n in names if not mlp_layers(load_artifact(n).model)]
    if without and len(names) < len(lib):
        raise ValueError(f"{without[0]} has no MLP (every MLP weight is 0): no transcoder to train; choose programs "
                         f"with an MLP")
    return [n for n in names if n not in without], without
