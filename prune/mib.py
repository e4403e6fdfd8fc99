"""MIB's circuit-localization metrics (CPR, CMD) and its submission layout.

Pinned to the official circuit-track code, ``hannamw/MIB-circuit-track`` at
commit ``b759df34433c9e31043ba9e02908ce0bf20e894f`` (the submodule of
``aaronmueller/MIB``), ``MIB_circuit_track/evaluation.py``,
``evaluate_area_under_curve``, with EAP-IG at its pinned ``7af394a``:

- A circuit of fraction ``p`` of a scored graph keeps the ``int(p * n_edges)``
  edges of highest score (``Graph.apply_topn``), then drops heads and MLPs with
  no incoming or no outgoing edge, with their edges (``Graph.prune``;
  :meth:`prune.graph.Graph.connected`). So it can hold fewer than
  ``int(p * n_edges)`` edges.
- ``p`` runs over :data:`PERCENTAGES` (0.1% … 100%, ten points).
- Faithfulness ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``: ``m`` the
  dataset mean of the metric (logit difference of the correct and the incorrect
  answer at the last real token, for every MIB task), the empty circuit every
  edge ablated. Never clipped.
- CPR: the trapezoid area under ``f`` against ``p`` (linear, not log; ``p`` is
  the nominal fraction, not the circuit's own size), higher is better, on
  circuits of the top edges by *signed* score. CMD: the trapezoid area under
  ``|1 - f|`` (absolute value at each point), lower is better, on circuits of
  the top edges by ``|score|``.

Before that repository's commit ``a150644`` (2025-05-10) the x axis was the
circuits' weighted edge counts on a log scale; figures computed that way are
not comparable with these.

A method without one ranking (Edge Pruning, one run per size) gives one
circuit per fraction instead, MIB's "9 circuits" submission: each at most
``int(p * n_edges)`` edges, placed at its nominal ``p``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from prune.baselines import top_k_mask
from prune.circuit import Circuit
from prune.evaluate import Evaluator
from prune.files import check_writable_folder
from prune.graph import Graph

__all__ = ["PERCENTAGES", "MIB_COMMIT", "faithfulness", "areas", "circuit_at", "Curve", "faithfulness_curve",
           "write_submission"]

PERCENTAGES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MIB_COMMIT = "hannamw/MIB-circuit-track@b759df34433c9e31043ba9e02908ce0bf20e894f"


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """MIB's normalised faithfulness ``(m(C) - m(empty)) / (m(full) - m(empty))``, unclipped."""
    gap = m_full - m_empty
    if not math.isfinite(gap) or gap == 0:
        raise ValueError(f"faithfulness is undefined: the full model's metric ({m_full!r}) equals the empty "
                         f"circuit's ({m_empty!r}); the task's corruption must change the metric")
    return (m_circuit - m_empty) / gap


def areas(faithfulnesses: Sequence[float], percentages: Sequence[float] = PERCENTAGES) -> tuple[float, float]:
    """``(area under f, area under |1 - f|)`` by the trapezoid rule over the fractions, linear x."""
    f, x = list(faithfulnesses), list(percentages)
    if len(f) != len(x) or len(x) < 2:
        raise ValueError(f"need one faithfulness per fraction (at least 2), got {len(f)} for {len(x)} fractions")
    if any(b <= a for a, b in zip(x, x[1:], strict=False)):
        raise ValueError(f"fractions must increase, got {x}")
    under = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    from_1 = sum((x[i + 1] - x[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(len(x) - 1))
    return under, from_1


def circuit_at(graph: Graph, scores: torch.Tensor, fraction: float, *, absolute: bool) -> torch.Tensor:
    """``[n_edges]`` 0/1 mask: the top ``int(fraction * n_edges)`` edges by score (``|score|`` when
    ``absolute``; ties in graph order), then EAP-IG's prune."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    k = int(fraction * graph.n_edges)
    return graph.connected(top_k_mask(scores.double(), k, absolute=absolute)).float()


@dataclasses.dataclass(frozen=True)
class Curve:
    """One method's faithfulness curve and its area (CPR when ranked signed, CMD when by ``|score|``)."""

    method: str
    absolute: bool
    percentages: tuple[float, ...]
    edges: tuple[int, ...]  # edges of each evaluated circuit (after the prune)
    faithfulness: tuple[float, ...]
    metric_full: float
    metric_empty: float

    @property
    def cpr(self) -> float:
        return areas(self.faithfulness, self.percentages)[0]

    @property
    def cmd(self) -> float:
        return areas(self.faithfulness, self.percentages)[1]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "cpr": self.cpr, "cmd": self.cmd}


@torch.no_grad()
def faithfulness_curve(evaluator: Evaluator, metric: Callable[[torch.Tensor], float], circuits, *,
                       method: str, absolute: bool, percentages: Sequence[float] = PERCENTAGES) -> Curve:
    """Evaluate ``f`` at each fraction.

    ``circuits``: a ``[n_edges]`` score tensor (MIB's importance scores: each
    fraction's circuit by :func:`circuit_at`), or a callable ``fraction ->
    [n_edges] 0/1 mask`` for methods that make one circuit per size; a mask
    with more than ``int(fraction * n_edges)`` edges is refused, as MIB asks,
    and at 100% the full model stands in (MIB's evaluator appends it so).
    ``metric(logits [N, S, V]) -> float`` is the dataset mean of the task's metric.
    """
    graph = evaluator.model.graph
    n = graph.n_edges
    m_full = metric(evaluator.reference)
    m_empty = metric(evaluator.logits(torch.zeros(n)))
    edges, f = [], []
    for p in percentages:
        if callable(circuits) and p == 1.0:
            mask = torch.ones(n)  # MIB scores a set of circuits with the full model at 100%
        elif callable(circuits):
            mask = graph.connected(circuits(p)).float()
            if int(mask.sum()) > int(p * n):
                raise ValueError(f"{method}: its circuit for {p:g} of the edges has {int(mask.sum())} edges, "
                                 f"over int({p:g} * {n}) = {int(p * n)}")
        else:
            mask = circuit_at(graph, torch.as_tensor(circuits), p, absolute=absolute)
        edges.append(int(mask.sum()))
        f.append(faithfulness(metric(evaluator.logits(mask)), m_full, m_empty))
    return Curve(method=method, absolute=absolute, percentages=tuple(percentages), edges=tuple(edges),
                 faithfulness=tuple(f), metric_full=m_full, metric_empty=m_empty)


# ------------------------------------------------------------- submission
def _mib_json(circuit: Circuit, in_graph: torch.Tensor | None = None) -> dict:
    """EAP-IG's ``Graph.to_json`` keys only (cfg, nodes, edges with score and in_graph), as MIB's loader reads."""
    d = circuit.to_dict()
    if in_graph is not None:
        names = set(circuit.graph.names_of(in_graph > 0.5))
        d["edges"] = {e: {"score": v["score"], "in_graph": e in names} for e, v in d["edges"].items()}
        nodes = set(circuit.graph.nodes_of(sorted(names, key=circuit.graph.edge_position))) | {"logits"}
        d["nodes"] = {k: {"in_graph": k in nodes} for k in d["nodes"]}
    return {k: d[k] for k in ("cfg", "nodes", "edges")}


def write_submission(out: str | Path, *, method: str, task: str, model: str,
                     scores: Circuit | None = None, circuits: Mapping[float, Circuit] | None = None) -> Path:
    """Write one method's circuits for one task and model in MIB's layout; returns the folder.

    ``OUT/<method>/<task>_<model>/``, the task with hyphens (``greater_than`` ->
    ``greater-than``) as MIB names its folders (``ioi_gpt2``, ``arc-easy_llama3``).
    Either ``scores`` (one circuit whose scores rank every edge: written as the
    folder's only file, ``importances.json``, MIB's importance-score mode) or
    ``circuits`` (fraction -> binary circuit with at most ``int(fraction *
    n_edges)`` edges, for the nine fractions below 100%: one file each,
    ``<fraction>.json``). A folder of one file is read by MIB as importance
    scores and of several as circuits, so the folder must not exist yet.
    """
    if (scores is None) == (circuits is None):
        raise ValueError("give scores (one ranked circuit) or circuits (one per fraction), not both or neither")
    for name, value in (("method", method), ("task", task), ("model", model)):
        if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
            raise ValueError(f"{name} {value!r} must be a non-empty name without '/'")
    if "_" in model:
        raise ValueError(f"model {model!r} must not contain '_': it separates task and model in MIB's folder names")
    folder = Path(out) / method / f"{task.replace('_', '-')}_{model}"
    check_writable_folder(folder, "the submission folder")
    if folder.exists():
        raise FileExistsError(f"{folder} exists; MIB reads every file in it, so write into a new folder")
    if scores is not None:
        if scores.scores is None:
            raise ValueError(f"the {scores.method or 'given'} circuit has no scores to submit as importances")
        files = {"importances.json": _mib_json(scores)}
    else:
        wanted = set(PERCENTAGES[:-1])
        if set(circuits) != wanted:
            raise ValueError(f"circuits must be given for exactly the fractions {sorted(wanted)}, "
                             f"got {sorted(circuits)}")
        files = {}
        for p, c in sorted(circuits.items()):
            limit = int(p * c.graph.n_edges)
            if len(c) > limit:
                raise ValueError(f"the circuit for {p:g} has {len(c)} edges, over int({p:g} * {c.graph.n_edges}) "
                                 f"= {limit}")
            files[f"{p:g}.json"] = _mib_json(c)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:  # all files or none: written into a temporary folder, renamed into place
        for name, d in files.items():
            (tmp / name).write_text(json.dumps(d))
        os.chmod(tmp, 0o755)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
