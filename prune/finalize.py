"""The shared finalizer: the minimal faithful circuit along a method's ranking.

Every method ends with a circuit of its own (Edge Pruning: ``log_alpha > 0``;
EAP and EAP-IG: a top-k of their scores; ACDC: its greedy pass). With
``finalize="exact"`` that circuit then goes through one procedure, the same for
every method, so that methods are compared on their rankings and not on their
stopping rules:

1. Repair. While the circuit does not reproduce every decoded output on the
   evaluation set, find by bisection the shortest prefix of the ranking
   (highest first) whose union with the circuit does (the full graph always
   does), and add that prefix's last edge: without it the prefix fails, so the
   circuit needs it. One bisection per edge added.
2. Removal. Drop kept edges, lowest-ranked first, whenever the circuit still
   reproduces every output without them, in passes until every remaining edge
   has been found necessary given all the others. Low-ranked kept edges tend
   to come in removable runs, so they are tried in blocks that double after a
   removal and halve after a failure: a run of r removable edges costs about
   2 log2(r) evaluations, not r.

The result is faithful (it reproduces every output) and minimal (removing any
one edge breaks an output): the criterion that defines the functional ground
truth. The ranking decides which minimal circuit it is and what it costs; the
number of evaluations (``metadata["finalize"]["evaluations"]``) therefore
measures the quality of a ranking like for like: a ranking whose top edges are
exactly the ground truth, with the method's own circuit equal to it, costs one
evaluation per kept edge plus one.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from prune.circuit import Circuit
from prune.evaluate import Evaluator

__all__ = ["FINALIZE", "check_finalize", "finalize", "minimal_faithful_mask"]

FINALIZE: tuple[str, ...] = ("exact", "own")


def check_finalize(finalize: str) -> str:
    if finalize not in FINALIZE:
        raise ValueError(f"finalize must be one of {FINALIZE} ('exact': the shared exact finalizer; "
                         f"'own': the method's own rule), got {finalize!r}")
    return finalize


def minimal_faithful_mask(evaluator: Evaluator, ranking: torch.Tensor, start: torch.Tensor
                          ) -> tuple[torch.Tensor, dict]:
    """The minimal faithful circuit reached from ``start`` along ``ranking`` (module doc).

    ``ranking``: ``[n_edges]`` importance, higher first (ties in graph order);
    ``start``: ``[n_edges]`` bool, the method's own circuit. Returns the bool
    mask and ``{"added", "removed", "evaluations"}``.
    """
    n = evaluator.model.graph.n_edges
    ranking, start = torch.as_tensor(ranking).flatten(), torch.as_tensor(start).flatten().bool()
    if ranking.shape != (n,) or start.shape != (n,):
        raise ValueError(f"ranking and start must be [{n}] for this graph, got {tuple(ranking.shape)} "
                         f"and {tuple(start.shape)}")
    if not bool(torch.isfinite(ranking.double()).all()):
        raise ValueError("the ranking has NaN or infinite scores; fix the method's scores before finalizing")
    before = evaluator.evaluations
    order = torch.argsort(ranking.double().cpu(), descending=True, stable=True)
    keep = start.cpu().clone()
    added = 0
    hi = n  # keep | order[:hi] is faithful (the full graph is, checked once below)
    full_checked = False
    while not evaluator.reproduces(keep):
        if not full_checked:
            if not evaluator.reproduces(torch.ones(n, dtype=torch.bool)):
                raise ValueError("the full graph does not reproduce the model's own outputs; the model is not "
                                 "deterministic on these examples, so no circuit can be faithful")
            full_checked = True
        lo = 0  # keep | order[:lo] (= keep) is not faithful

        def prefix(k: int) -> torch.Tensor:
            m = keep.clone()
            m[order[:k]] = True
            return m

        while hi - lo > 1:
            mid = (lo + hi) // 2
            if evaluator.reproduces(prefix(mid)):
                hi = mid
            else:
                lo = mid
        keep[int(order[hi - 1])] = True
        added += 1
        hi -= 1  # keep | order[:hi] is the faithful prefix just found
    grown = int(keep.sum())
    necessary: set[int] = set()
    while todo := [i for i in reversed(order.tolist()) if keep[i] and i not in necessary]:
        at, size = 0, 1
        while at < len(todo):
            block = todo[at : at + size]
            keep[block] = False
            if evaluator.reproduces(keep):
                necessary.clear()  # an edge found necessary before this removal is tried again
                at, size = at + len(block), 2 * size
            else:
                keep[block] = True
                if len(block) == 1:
                    necessary.add(block[0])
                    at += 1
                else:
                    size = len(block) // 2
    return keep, {"added": added, "removed": grown - int(keep.sum()),
                  "evaluations": evaluator.evaluations - before}


def finalize(circuit: Circuit, evaluator: Evaluator, ranking: torch.Tensor) -> Circuit:
    """``circuit`` (a method's own) through the shared exact finalizer.

    The result keeps the method, scores and metadata, adds ``own_edges`` (the
    method's own circuit) and ``finalize`` (what the finalizer did, and its
    seconds), and has no dead ends.
    """
    if circuit.graph != evaluator.model.graph:
        raise ValueError(f"the circuit is for {circuit.graph}, the evaluator's model has {evaluator.model.graph}")
    if circuit.ablation != evaluator.ablation:
        raise ValueError(f"the circuit was found under {circuit.ablation!r} ablation, the evaluator "
                         f"evaluates under {evaluator.ablation!r}")
    start = time.perf_counter()
    mask, info = minimal_faithful_mask(evaluator, ranking, circuit.mask().bool())
    info["seconds"] = round(time.perf_counter() - start, 3)
    metadata = {**circuit.metadata, "own_edges": list(circuit.edges), "finalize": info}
    edges = tuple(circuit.graph.names_of(mask))
    found = dataclasses.replace(circuit, edges=edges, metadata=metadata).without_dead_ends()
    # Under EAP-IG's conventions the evaluator evaluates a circuit after EAP-IG's prune: say so in the edges.
    return found.connected() if circuit.graph.conventions == "eap-ig" else found
