"""Ground-truth circuits of a compiled program, derived and verified automatically.

Three variants (docs/ground-truth.md):

- ``structural``: every edge with a nonzero weight path: the directions a
  writer writes (nonzero output weights) meet the directions a reader reads
  (nonzero input weights; for a query, the rows of ``W_Q W_K^T``, for a key its
  columns, for a value the rows of ``W_V W_O``).
- ``semantic``: the same with Tracr's bookkeeping directions (``one`` and
  ``tokens:compiler_bos``) left out: only edges that carry RASP variables.
- ``functional(ablation)``: the edges whose removal changes the decoded output
  on the evaluation set under that ablation. Found by removing structural edges
  one at a time, from the logits backwards, while the outputs stay exact, until
  no edge can go; then verified independently (:func:`verify`).
"""

from __future__ import annotations

import dataclasses

import torch

from prune.data import Examples
from prune.evaluate import Evaluator
from prune.model import Transformer

__all__ = [
    "INFRASTRUCTURE",
    "Verification",
    "functional_edges",
    "read_write_directions",
    "structural_edges",
    "verify",
]

INFRASTRUCTURE = ("one", "tokens:compiler_bos")


def _nonzero_rows(m: torch.Tensor) -> set[int]:
    return set(torch.nonzero(m.abs().sum(1) > 0).flatten().tolist())


def read_write_directions(model: Transformer) -> tuple[list[set[int]], list[set[int]]]:
    """Residual directions each writer writes and each reader reads (from the weights)."""
    g, cfg = model.graph, model.cfg
    group = cfg.n_heads // cfg.kv_heads
    writes: list[set[int]] = [set() for _ in range(g.n_writers)]
    reads: list[set[int]] = [set() for _ in range(g.n_readers)]
    with torch.no_grad():
        writes[0] = _nonzero_rows(model.W_E.T)
        if model.W_pos is not None:
            writes[0] |= _nonzero_rows(model.W_pos.T)
        for l, b in enumerate(model.blocks):
            for h in range(cfg.n_heads):
                kv = h // group
                qk = b.W_Q[h] @ b.W_K[kv].T  # [D, D] bilinear form (biases aside)
                ov = b.W_V[kv] @ b.W_O[h]  # [D, D]
                reads[g.head_reader(l, h, "q")] = _nonzero_rows(qk) | (
                    _nonzero_rows(b.W_Q[h]) if b.b_K is not None and b.b_K[kv].abs().sum() > 0 else set()
                )
                reads[g.head_reader(l, h, "k")] = _nonzero_rows(qk.T) | (
                    _nonzero_rows(b.W_K[kv]) if b.b_Q is not None and b.b_Q[h].abs().sum() > 0 else set()
                )
                reads[g.head_reader(l, h, "v")] = _nonzero_rows(ov)
                out = _nonzero_rows(ov.T)
                if b.b_V is not None:
                    out |= _nonzero_rows((b.b_V[kv] @ b.W_O[h])[:, None])
                if b.b_O is not None:
                    out |= _nonzero_rows(b.b_O[:, None])
                writes[g.head_writer(l, h)] = out
            w_in = b.W_in if b.W_gate is None else torch.cat([b.W_in, b.W_gate], 1)
            reads[g.mlp_reader(l)] = _nonzero_rows(w_in)
            out = _nonzero_rows(b.W_out.T)
            if b.b_out is not None:
                out |= _nonzero_rows(b.b_out[:, None])
            tc = getattr(b, "transcoder", None)  # a transcoded MLP (prune.transcoder): its encoder reads too
            if tc is not None:
                reads[g.mlp_reader(l)] |= _nonzero_rows(tc.W_enc)
                out |= _nonzero_rows(tc.W_dec.T) | _nonzero_rows(tc.b_dec[:, None])
            if g.n_features(l):  # feature i writes its decoder row; m{l}.err the rest (MLP, decoder and b_dec)
                for i in range(g.n_features(l)):
                    writes[g.feature_writer(l, i)] = _nonzero_rows(tc.W_dec[i][:, None])
                writes[g.error_writer(l)] = out
            else:
                writes[g.mlp_writer(l)] = out
        reads[g.logits_reader] = _nonzero_rows(model.W_U)
    return writes, reads


def structural_edges(model: Transformer, *, ignore: set[int] = frozenset()) -> list[str]:
    """Edges whose writer writes a direction its reader reads (``ignore`` left out)."""
    writes, reads = read_write_directions(model)
    g = model.graph
    return [
        g.edge_names[i]
        for i, (w, r) in enumerate(g.edges)
        if (writes[w] - ignore) & (reads[r] - ignore)
    ]


def semantic_edges(model: Transformer, residual_labels: list[str]) -> list[str]:
    ignore = {i for i, label in enumerate(residual_labels) if label in INFRASTRUCTURE}
    return structural_edges(model, ignore=ignore)


def functional_edges(
    model: Transformer,
    examples: Examples,
    ablation: str,
    *,
    start: list[str] | None = None,
    evaluator: Evaluator | None = None,
) -> list[str]:
    """Remove edges from ``start`` (default: structural) while every output stays exact.

    Edges are tried from the logits backwards (readers last to first, then
    writers last to first), repeatedly until a full pass removes nothing, so
    every remaining edge is necessary given the others.
    """
    g = model.graph
    ev = evaluator or Evaluator(model, examples, ablation)
    keep = g.edge_mask(structural_edges(model) if start is None else start)
    if not ev.reproduces(keep):
        raise RuntimeError(
            f"the starting circuit ({int(keep.sum())} edges) does not reproduce the model under "
            f"{ablation} ablation; the structural ground truth is wrong for this model"
        )
    order = sorted(
        torch.nonzero(keep).flatten().tolist(),
        key=lambda i: (g.edges[i][1], g.edges[i][0]),
        reverse=True,
    )
    changed = True
    while changed:
        changed = False
        for i in order:
            if keep[i] == 0:
                continue
            keep[i] = 0
            if ev.reproduces(keep):
                changed = True
            else:
                keep[i] = 1
    return g.names_of(keep)


@dataclasses.dataclass(frozen=True)
class Verification:
    """Result of checking a circuit on a dataset under one ablation."""

    ablation: str
    n_examples: int
    n_reproduced: int  # examples whose decoded outputs the circuit reproduces
    necessary: dict  # edge name -> True if removing it changes some output
    first_failure: int | None  # index of an example the circuit gets wrong

    @property
    def sufficient(self) -> bool:
        return self.n_reproduced == self.n_examples

    @property
    def inert(self) -> list[str]:
        return [e for e, needed in self.necessary.items() if not needed]

    @property
    def ok(self) -> bool:
        return self.sufficient and not self.inert


def verify(model: Transformer, examples: Examples, edges: list[str], ablation: str, *,
           evaluator: Evaluator | None = None) -> Verification:
    """(i) the circuit alone reproduces every output; (ii) each edge is needed on some input."""
    g = model.graph
    ev = evaluator or Evaluator(model, examples, ablation)
    mask = g.edge_mask(edges)
    agree = ev.agreement(mask)
    failures = torch.nonzero(~agree).flatten().tolist()
    necessary = {}
    for name in edges:
        without = mask.clone()
        without[g.edge_position(name)] = 0
        necessary[name] = not bool(ev.agreement(without).all())
    return Verification(
        ablation=ablation,
        n_examples=len(examples),
        n_reproduced=int(agree.sum()),
        necessary=necessary,
        first_failure=failures[0] if failures else None,
    )
