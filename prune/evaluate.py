"""Run a circuit (everything outside it ablated) over a dataset, in batches."""

from __future__ import annotations

import torch

from prune.ablation import ablated_writers, check_ablation
from prune.data import Examples
from prune.model import Transformer

__all__ = ["full_logits", "circuit_logits", "circuit_agreement"]


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def full_logits(model: Transformer, examples: Examples, *, batch_size: int = 2048,
                answers_only: bool = False) -> torch.Tensor:
    """The unpruned model's logits ``[N, S, out]`` on the clean prompts; with ``answers_only``,
    only at the answer positions, ``[K, out]`` in row-major order (``examples.answer.nonzero()``)."""
    return torch.cat([model(examples.clean[b], attention_mask=examples.valid[b],
                            positions=examples.answer[b] if answers_only else None)
                      for b in _batches(len(examples), batch_size)])


@torch.no_grad()
def circuit_logits(
    model: Transformer,
    examples: Examples,
    edge_mask: torch.Tensor,
    ablation: str,
    *,
    node_mask: torch.Tensor | None = None,
    batch_size: int = 2048,
    ablated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``[N, S, out]`` of the masked model (``edge_mask`` ``[n_edges]``, 0/1 or soft).

    ``ablated``: the stand-in writers for the whole dataset, ``[W, N or 1, S, D]``,
    from :func:`prune.ablation.ablated_writers` (computed here when not given;
    pass it when evaluating many circuits on one dataset).
    """
    check_ablation(ablation)
    if ablated is None and ablation != "zero":
        ablated = ablated_writers(model, examples, ablation)
    outs = []
    dense = model.graph.dense(edge_mask.to(model.W_E.dtype))
    for b in _batches(len(examples), batch_size):
        part = None if ablated is None else (ablated if ablated.shape[1] == 1 else ablated[:, b])
        outs.append(model(examples.clean[b], attention_mask=examples.valid[b], edge_mask=dense, node_mask=node_mask, ablated=part))
    return torch.cat(outs)


def circuit_agreement(
    model: Transformer,
    examples: Examples,
    edge_mask: torch.Tensor,
    ablation: str,
    *,
    reference: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """``[N]`` bool: the circuit's decoded outputs equal the full model's."""
    if reference is None:
        reference = full_logits(model, examples)
    return examples.agree(circuit_logits(model, examples, edge_mask, ablation, **kwargs), reference)
