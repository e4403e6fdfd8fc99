"""Circuit-discovery baselines on the project's graph and ablations: EAP, EAP-IG, ACDC.

Every method is a :class:`prune.Pruner`, so each works as a ``--pruner``::

    method(model, examples, *, ablation, seed=0, finalize="exact", **options) -> prune.circuit.Circuit

The circuit has one score per graph edge (graph order), ``method`` set to the
method's name, and ``metadata`` holding the options and the seconds taken.
The methods are deterministic; ``seed`` is accepted (and recorded) only so
they share the pruner interface.

``finalize``: ``"own"`` returns the method's own circuit (below);
``"exact"`` (the default, as for Edge Pruning) puts it through the shared exact
finalizer (:mod:`prune.finalize`) along the method's ranking
(:func:`ranking`), so every method is held to the same criterion and the
finalizer's evaluation count compares rankings like for like.

The gradient methods differentiate the metric of :mod:`prune.evaluate`: the
log-probability of the full model's decoded label (categorical) or the output
value (numerical), at the answer positions. In masked mode a reader's input is
``z * clean + (1 - z) * ablated`` per edge, so at ``z = 1`` the gradient of the
metric w.r.t. an edge's mask is ``(clean_w - ablated_w) . dMetric/dx_r``:
exactly EAP's score (Syed et al. 2023).

- :func:`eap`: that gradient, one forward and backward (in batches) at ``z = 1``.
- :func:`eap_ig`: integrated gradients over the edge masks: all masks move
  together from 0 (everything ablated) to 1 (clean); the score is the mean of the
  gradients at ``steps`` midpoints ``(i + 1/2) / steps`` (default 5), times the
  path length 1. This is the "activations" flavour of IG (interpolating every
  edge's input between ablated and clean), not Hanna et al.'s interpolation of the
  input embeddings. Completeness holds up to the quadrature error:
  ``sum(scores) ~= metric(z=1) - metric(z=0)``. Under zero ablation a model
  with layer norm or RMSNorm has a sharp integrand near ``z = 0`` (the norm of a
  vanishing input), so few steps miss part of the difference there.
- :func:`acdc`: Conmy et al.'s greedy removal. Readers are visited from the
  output backwards (logits, then the last layer's MLP, its heads' v, k, q ports,
  and so on), and each reader's writers from the last to the first. An edge is
  removed when removing it raises the faithfulness loss (mean KL(full || circuit)
  at the answer positions, or the mean squared error for numerical outputs; see
  :mod:`prune.evaluate`) by at most ``tau`` over the current circuit. A reader
  whose node no longer reaches the output loses its edges without a forward pass
  (they cannot change anything). Default ``tau=1e-6``: remove what changes
  nothing, up to float noise. Its scores are the loss increases measured when
  each edge was tried (0 for edges removed unseen). :func:`acdc_sweep` runs
  several taus and scores each edge by the largest tau at which it is kept.

Own circuit of the score-based methods (EAP, EAP-IG). By default, the smallest k
such that the top-k edges by ``|score|`` (ties in graph order) reproduce the
full model's decoded outputs on every example, found by scanning k = 1, 2, ...
(each k is first checked on the examples that broke an earlier k, then on all;
``metadata["own_evaluations"]`` counts the k tried). ``top_k=`` keeps the k best
edges, ``threshold=`` the edges with ``|score| >= threshold``. In every case
edges into heads and MLPs whose output reaches nothing are then dropped
(:meth:`Circuit.without_dead_ends`): they cannot change the output.
"""

from __future__ import annotations

import time

import torch

from prune.circuit import Circuit
from prune.data import Examples
from prune.edge_pruning import edge_pruning
from prune.evaluate import Evaluator
from prune.finalize import check_finalize
from prune.finalize import finalize as finalize_circuit
from prune.model import Transformer
from prune.pruner import Pruner

__all__ = [
    "METHODS", "DEFAULT_TAU", "DEFAULT_SWEEP_TAUS",
    "eap", "eap_ig", "acdc", "acdc_sweep",
    "edge_auroc", "ranking", "top_k_mask",
]

DEFAULT_TAU = 1e-6
DEFAULT_SWEEP_TAUS: tuple[float, ...] = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_BATCH = 512  # examples per forward pass in the gradient methods


# Methods whose scores mean "higher = more surely in the circuit" (Edge Pruning's
# log-alphas, a sweep's largest kept tau): ranked by the signed score, since a
# very negative log-alpha is a confidently pruned edge. The attribution methods
# (EAP, EAP-IG, ACDC's loss increases) are ranked by |score|.
_SIGNED = frozenset({"edge_pruning", "acdc_sweep"})


def ranking(circuit: Circuit) -> torch.Tensor:
    """``[n_edges]`` importance of each edge (higher = more important) from a circuit's scores."""
    if circuit.scores is None:
        raise ValueError(f"the {circuit.method or 'unnamed'} circuit has no scores to rank edges by")
    s = torch.tensor(circuit.scores, dtype=torch.float64)
    return s if circuit.method in _SIGNED else s.abs()


def edge_auroc(scores, ground_truth_mask, *, absolute: bool = True) -> float:
    """ROC AUC of ``|scores|`` (``absolute=False``: of ``scores`` as given) as a detector of
    ground-truth edges (Mann-Whitney U, ties averaged).

    1.0: every ground-truth edge scores above every other edge; 0.5: no better
    than chance (or all tied); 0.0: reversed. Raises ValueError when either class
    is empty (the AUC is undefined).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if absolute:
        s = s.abs()
    y = torch.as_tensor(ground_truth_mask).flatten().bool()
    if s.shape != y.shape:
        raise ValueError(f"scores ({tuple(s.shape)}) and ground_truth_mask ({tuple(y.shape)}) differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"edge AUROC needs ground-truth and other edges; got {n_pos} and {n_neg}")
    # Average ranks (1-based) over ties.
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2  # mean of ranks end-count+1 .. end
    ranks[order] = avg[inverse]
    u = ranks[y].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def top_k_mask(scores: torch.Tensor, k: int, *, absolute: bool = True) -> torch.Tensor:
    """``[n_edges]`` 0/1 mask of the ``k`` largest ``|scores|`` (or ``scores``; ties in graph order)."""
    if not 0 <= k <= len(scores):
        raise ValueError(f"k must be in [0, {len(scores)}], got {k!r}")
    order = torch.sort(-(scores.abs() if absolute else scores), stable=True).indices
    mask = torch.zeros(len(scores))
    mask[order[:k]] = 1.0
    return mask


def _score_circuit(evaluator: Evaluator, scores, *, top_k, threshold) -> tuple[torch.Tensor, dict]:
    """The own circuit mask of a score-based method (module doc) and how it was chosen."""
    n = evaluator.model.graph.n_edges
    if top_k is not None and threshold is not None:
        raise ValueError(f"give top_k or threshold, not both (got top_k={top_k!r}, threshold={threshold!r})")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= n:
            raise ValueError(f"top_k must be an int in [0, {n}], got {top_k!r}")
        return top_k_mask(scores, top_k), {"rule": "top_k", "k": top_k}
    if threshold is not None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        mask = (scores.abs() >= threshold).float()
        return mask, {"rule": "threshold", "k": int(mask.sum())}
    before = evaluator.evaluations
    rule = "smallest reproducing top-k"
    for k in range(1, n + 1):
        mask = top_k_mask(scores, k)
        if evaluator.reproduces(mask):
            return mask, {"rule": rule, "k": k, "own_evaluations": evaluator.evaluations - before}
    # Unreachable unless the full graph fails to reproduce the model (float noise): keep everything.
    return torch.ones(n), {"rule": rule, "k": n, "own_evaluations": evaluator.evaluations - before}


def _finish(evaluator: Evaluator, scores, mask, *, method, model_name, metadata, start, finalize,
            rank: torch.Tensor | None = None) -> Circuit:
    model = evaluator.model
    circuit = Circuit.from_mask(
        model.graph, mask, ablation=evaluator.ablation, model=model_name, d_model=model.cfg.d_model,
        scores=tuple(float(s) for s in scores), method=method, metadata=metadata,
    ).without_dead_ends()
    if finalize == "exact":
        circuit = finalize_circuit(circuit, evaluator, ranking(circuit) if rank is None else rank)
    circuit.metadata["seconds"] = round(time.perf_counter() - start, 3)
    return circuit


def _check_common(model, examples, ablation, finalize, name) -> None:
    check_finalize(finalize)
    if len(examples) == 0:
        raise ValueError(f"empty dataset: {name} needs at least one example")
    model.requires_grad_(False)


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


# --------------------------------------------------------------------- methods
def eap(model: Transformer, examples: Examples, *, ablation: str, seed: int = 0, top_k: int | None = None,
        threshold: float | None = None, batch_size: int = _BATCH, finalize: str = "exact",
        model_name: str = "") -> Circuit:
    """Edge Attribution Patching: score = dMetric/dz_e at z = 1 (module doc).

    ``batch_size``: examples per forward and backward pass (peak memory grows with it;
    the scores do not depend on it, up to float rounding).
    """
    _check_common(model, examples, ablation, finalize, "EAP")
    _check_batch_size(batch_size)
    start = time.perf_counter()
    evaluator = Evaluator(model, examples, ablation)
    scores = evaluator.metric_gradient(1.0, batch_size=batch_size)
    mask, rule = _score_circuit(evaluator, scores, top_k=top_k, threshold=threshold)
    return _finish(evaluator, scores, mask, method="eap", model_name=model_name, start=start, finalize=finalize,
                   metadata={"seed": seed, "top_k": top_k, "threshold": threshold, **rule})


def eap_ig(model: Transformer, examples: Examples, *, ablation: str, seed: int = 0, steps: int = 5,
           top_k: int | None = None, threshold: float | None = None, batch_size: int = _BATCH,
           finalize: str = "exact", model_name: str = "") -> Circuit:
    """EAP with integrated gradients over the edge masks, 0 -> 1, midpoint rule (module doc).

    ``batch_size`` as for :func:`eap`.
    """
    _check_common(model, examples, ablation, finalize, "EAP-IG")
    _check_batch_size(batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    start = time.perf_counter()
    evaluator = Evaluator(model, examples, ablation)
    scores = sum(evaluator.metric_gradient((i + 0.5) / steps, batch_size=batch_size) for i in range(steps)) / steps
    mask, rule = _score_circuit(evaluator, scores, top_k=top_k, threshold=threshold)
    return _finish(evaluator, scores, mask, method="eap_ig", model_name=model_name, start=start, finalize=finalize,
                   metadata={"seed": seed, "steps": steps, "top_k": top_k, "threshold": threshold, **rule})


def _acdc_run(evaluator: Evaluator, tau: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = evaluator.model.graph
    mask = torch.ones(g.n_edges)
    increases = torch.zeros(g.n_edges, dtype=torch.float64)
    by_reader: dict[int, list[int]] = {}
    for pos, (_, r) in enumerate(g.edges):
        by_reader.setdefault(r, []).append(pos)
    writer_of = g.edge_index_tensor[0]
    current = evaluator.faithfulness(mask)
    tried = skipped = 0
    for r in range(g.n_readers - 1, -1, -1):
        edges = sorted(by_reader.get(r, []), key=lambda p: -g.edges[p][0])  # writers last to first
        node = g.writers_of_reader(r)  # the reader's node's writers: its head, or every writer of its MLP
        if len(node) and not bool(mask[(writer_of >= node.start) & (writer_of < node.stop)].any()):
            # This node reaches nothing any more: its inputs cannot change the output.
            mask[edges] = 0.0
            skipped += len(edges)
            continue
        for pos in edges:
            mask[pos] = 0.0
            new = evaluator.faithfulness(mask)
            tried += 1
            increases[pos] = new - current
            if new - current <= tau:
                current = new
            else:
                mask[pos] = 1.0
    return mask, increases, {"tried": tried, "skipped": skipped, "faithfulness": current, "own_evaluations": tried}


def acdc(model: Transformer, examples: Examples, *, ablation: str, seed: int = 0, tau: float = DEFAULT_TAU,
         finalize: str = "exact", model_name: str = "") -> Circuit:
    """ACDC: greedy edge removal from the output backwards with threshold ``tau`` (module doc).

    With ``finalize="exact"`` the ranking is ``|loss increase|`` (:func:`ranking`).
    """
    _check_common(model, examples, ablation, finalize, "ACDC")
    if isinstance(tau, bool) or not (isinstance(tau, (int, float)) and tau >= 0):
        raise ValueError(f"tau must be a number >= 0, got {tau!r}")
    start = time.perf_counter()
    evaluator = Evaluator(model, examples, ablation)
    mask, increases, info = _acdc_run(evaluator, float(tau))
    return _finish(evaluator, increases, mask, method="acdc", model_name=model_name, start=start, finalize=finalize,
                   metadata={"seed": seed, "tau": tau, **info})


def acdc_sweep(model: Transformer, examples: Examples, *, ablation: str, taus=DEFAULT_SWEEP_TAUS,
               finalize: str = "exact", model_name: str = "") -> tuple[Circuit, list[Circuit]]:
    """ACDC at every tau: (a summary circuit, each tau's own circuit in the order given).

    The summary's scores are, per edge, the largest tau at which ACDC keeps it
    (0 if it is never kept); its own edges are those of the smallest tau, and
    ``finalize`` applies to it (ranked by those scores).
    """
    check_finalize(finalize)
    taus = [float(t) for t in taus]
    if not taus or any(not t >= 0 for t in taus):
        raise ValueError(f"taus must be a non-empty list of numbers >= 0, got {taus!r}")
    start = time.perf_counter()
    circuits = [acdc(model, examples, ablation=ablation, tau=t, finalize="own", model_name=model_name) for t in taus]
    scores = torch.zeros(model.graph.n_edges, dtype=torch.float64)
    for t, c in zip(taus, circuits, strict=True):
        scores = torch.where(c.mask() > 0, torch.clamp(scores, min=t), scores)
    smallest = circuits[min(range(len(taus)), key=taus.__getitem__)]
    evaluator = Evaluator(model, examples, ablation)
    summary = _finish(evaluator, scores, smallest.mask(), method="acdc_sweep", model_name=model_name, start=start,
                      finalize=finalize, metadata={"taus": taus, "edges_per_tau": [len(c) for c in circuits]})
    return summary, circuits


# Imported last: prune.feature_attribution builds on this module's helpers.
from prune.feature_attribution import feature_attribution, feature_attribution_invariant  # noqa: E402

METHODS: dict[str, Pruner] = {
    "edge_pruning": edge_pruning,
    "acdc": acdc,
    "eap": eap,
    "eap_ig": eap_ig,
    "feature_attribution": feature_attribution,
    "feature_attribution_invariant": feature_attribution_invariant,
}
