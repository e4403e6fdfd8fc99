"""The one evaluator: a circuit of a model on a dataset, under one ablation.

:class:`Evaluator` is built once per (model, examples, ablation). It holds the
full model's logits (the reference) and the ablated writers, and answers for
any edge mask: the masked model's logits, per-example agreement of the decoded
outputs, faithfulness (the loss ACDC and Edge Pruning minimise) and the
gradient methods' metric. Ground-truth derivation and verification, the shared
finalizer, every method and every report use it, so "evaluate a circuit" means
the same thing everywhere.

Faithfulness, per example: KL(full || circuit) over the output classes at the
answer positions (categorical outputs) or the squared error of the output
(numerical), averaged over the example's answer positions.

Metric of the gradient methods (EAP, EAP-IG), per example: the log-probability
of the full model's decoded label (categorical) or the output value
(numerical), summed over the answer positions. KL cannot serve: it is 0 at the
full model and so is its gradient. Examples with ``answer_tokens`` (the
language-model tasks) use the logit difference of the correct and the
incorrect answer instead, as EAP-IG and MIB do.

Under EAP-IG's conventions (the model's graph says which) a circuit is evaluated
as EAP-IG's ``evaluate_graph`` does: after its ``Graph.prune`` (heads and MLPs
without an incoming or an outgoing edge lose their edges; :meth:`prune.graph.Graph.connected`).

Every computation keeps the model's dtype (half types are computed in float32).

Refused, rather than answered vacuously: examples with no answer position (every
circuit would "reproduce" them), and a model whose logits at the answer
positions are not finite (argmax of NaN ties, so the empty circuit would
"reproduce" it). A circuit whose own logits are not finite at an answer
position does not agree there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prune.ablation import ablated_writers, check_ablation
from prune.data import Examples
from prune.model import Transformer

__all__ = ["Evaluator", "check_examples", "faithfulness_loss", "full_logits"]


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a half type, else as it is (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_examples(model: Transformer, examples: Examples) -> None:
    """Refuse examples a model cannot be judged on: no answer position at all (every circuit would
    "reproduce" them), or an output kind that does not fit the model's outputs."""
    if not bool(examples.answer.any()):
        raise ValueError(
            f"none of the {len(examples)} examples has an answer position (answer mask all False): "
            f"every circuit would reproduce them; mark the positions whose outputs count")
    out = model.cfg.out_size
    if examples.kind == "numerical" and out != 1:
        raise ValueError(f"kind='numerical' examples need a model with one output, this one has {out} "
                         f"(a categorical model: use kind='categorical')")
    if examples.kind == "categorical" and out < 2:
        raise ValueError(f"kind='categorical' examples need a model with two or more outputs, this one has {out} "
                         f"(a numerical model: use kind='numerical')")


@torch.no_grad()
def full_logits(model: Transformer, examples: Examples, *, batch_size: int = 2048,
                answers_only: bool = False) -> torch.Tensor:
    """The unpruned model's logits ``[N, S, out]`` on the clean prompts; with ``answers_only``,
    only at the answer positions, ``[K, out]`` in row-major order (``examples.answer.nonzero()``)."""
    return torch.cat([model(examples.clean[b], attention_mask=examples.valid[b],
                            positions=examples.answer[b] if answers_only else None)
                      for b in _batches(len(examples), batch_size)])


def answer_loss(circuit: torch.Tensor, full: torch.Tensor, rows: torch.Tensor, answer: torch.Tensor, kind: str,
                logit_scale: float = 1.0) -> torch.Tensor:
    """Per example ``[B]`` faithfulness from logits at the answer positions only (``[K, out]``, of
    example ``rows``), averaged over each example's answer positions ``answer`` ``[B, S]``."""
    n = answer.sum(-1).clamp_min(1)
    if kind == "numerical":
        per_row = (_wide(circuit[:, 0]) - _wide(full[:, 0])).pow(2)
    else:
        logp = F.log_softmax(logit_scale * _wide(circuit), -1)  # [K, out]
        logq = F.log_softmax(logit_scale * _wide(full), -1)
        per_row = (logq.exp() * (logq - logp)).sum(-1)  # [K]
    return torch.zeros(answer.shape[0], dtype=per_row.dtype, device=per_row.device).index_add_(0, rows, per_row) / n


def faithfulness_loss(circuit_logits: torch.Tensor, full_logits: torch.Tensor, examples: Examples,
                      answer: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Per example ``[B]``: KL(full || circuit) over the output classes (categorical) or
    squared error (numerical), averaged over the example's answer positions (``[B, S, out]`` logits)."""
    rows, cols = answer.nonzero(as_tuple=True)
    return answer_loss(circuit_logits[rows, cols], full_logits[rows, cols], rows, answer, examples.kind, logit_scale)


def metric_sum(logits: torch.Tensor, kind: str, labels: torch.Tensor | None, answer: torch.Tensor,
               answer_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the batch of each example's gradient-method metric (module doc); ``labels`` ``[B, S]``
    are the full model's decoded labels (categorical outputs); ``answer_tokens`` ``[B, 2]``, when given,
    make it the logit difference of correct and incorrect."""
    if kind == "numerical":
        return (logits[..., 0] * answer).sum()
    if answer_tokens is not None:
        wide = _wide(logits)
        pair = answer_tokens[:, None, :].expand(-1, wide.shape[1], -1)  # [B, S, 2]
        both = wide.gather(-1, pair)
        return ((both[..., 0] - both[..., 1]) * answer).sum()
    logp = F.log_softmax(_wide(logits), -1).gather(-1, labels[..., None])[..., 0]
    return (logp * answer).sum()


class Evaluator:
    """Circuits of ``model`` on ``examples`` under ``ablation``: logits, agreement, faithfulness, metric.

    ``batch_size``: examples per forward pass (the answers do not depend on it).
    ``mean_over``: the dataset the mean ablation averages over (default: ``examples``).
    Edge masks are ``[n_edges]`` in graph order, 0/1 or soft. ``index`` (where
    accepted) restricts a question to those examples.
    """

    def __init__(self, model: Transformer, examples: Examples, ablation: str, *, batch_size: int = 2048,
                 mean_over: Examples | None = None):
        check_ablation(ablation)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        check_examples(model, examples)
        self.model, self.examples, self.ablation, self.batch_size = model, examples, ablation, batch_size
        self.reference = full_logits(model, examples, batch_size=batch_size)  # [N, S, out]
        bad = ~torch.isfinite(self.reference).all(-1) & examples.answer  # [N, S]
        if bool(bad.any()):
            raise ValueError(
                f"the full model's logits are not finite (NaN or inf) at {int(bad.sum())} answer position(s), "
                f"first in example {int(bad.any(-1).nonzero()[0])}; check the model's weights and inputs")
        self.ablated = ablated_writers(model, examples, ablation, reference=mean_over, batch_size=batch_size)
        self.labels = examples.decode(self.reference) if examples.kind == "categorical" else None
        self.evaluations = 0  # calls of reproduces(): what the finalizer's cost is counted in
        # Examples that broke a recent candidate in reproduces(): tried first, alone, since most
        # candidates that fail, fail on them, and then the rest of the set need not run.
        self._witnesses = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.examples)

    # ----------------------------------------------------------------- helpers
    def _ablated_part(self, index):
        a = self.ablated
        return a if a is None or a.shape[1] == 1 or index is None else a[:, index]

    def _check_mask(self, edge_mask: torch.Tensor) -> torch.Tensor:
        g = self.model.graph
        edge_mask = torch.as_tensor(edge_mask)
        if edge_mask.shape != (g.n_edges,):
            raise ValueError(f"edge_mask must be [{g.n_edges}] for this model's graph, got {tuple(edge_mask.shape)}")
        if edge_mask.dtype != torch.bool:
            finite = torch.isfinite(edge_mask)
            if not bool(finite.all()) or bool(((edge_mask < 0) | (edge_mask > 1)).any()):
                bad = edge_mask[~finite | (edge_mask < 0) | (edge_mask > 1)][0].item()
                raise ValueError(f"edge mask values must be in [0, 1], got {bad!r}")
        return edge_mask.to(self.model.W_E.dtype)

    # --------------------------------------------------------------- answers
    @torch.no_grad()
    def logits(self, edge_mask: torch.Tensor, *, node_mask: torch.Tensor | None = None,
               index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, S, out]`` of the circuit: every edge outside it (mask 0) ablated."""
        model = self.model
        mask = self._check_mask(edge_mask)
        if model.graph.conventions == "eap-ig":
            mask = mask * model.graph.connected(mask)
        dense = model.graph.dense(mask)
        ex = self.examples if index is None else self.examples.subset(index)
        ablated = self._ablated_part(index)
        outs = []
        for b in _batches(len(ex), self.batch_size):
            part = ablated if ablated is None or ablated.shape[1] == 1 else ablated[:, b]
            outs.append(model(ex.clean[b], attention_mask=ex.valid[b], edge_mask=dense, node_mask=node_mask,
                              ablated=part))
        return torch.cat(outs)

    def agreement(self, edge_mask: torch.Tensor, *, index: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` bool: the circuit's decoded outputs equal the full model's at every answer position."""
        logits = self.logits(edge_mask, index=index)
        ex = self.examples if index is None else self.examples.subset(index)
        reference = self.reference if index is None else self.reference[index]
        finite = torch.isfinite(logits).all(-1) | ~ex.answer  # [N, S]
        return ex.agree(logits, reference) & finite.all(-1)

    def reproduces(self, edge_mask: torch.Tensor) -> bool:
        """Does the circuit reproduce every decoded output? The criterion of the functional ground
        truth and of the shared finalizer; each call counts in ``evaluations``."""
        self.evaluations += 1
        w = self._witnesses
        if len(w) and not bool(self.agreement(edge_mask, index=w).all()):
            return False
        rest = torch.ones(len(self.examples), dtype=torch.bool)
        rest[w] = False
        rest = rest.nonzero().flatten()
        if len(rest) == 0:
            return True
        ok = self.agreement(edge_mask, index=None if len(w) == 0 else rest)
        if bool(ok.all()):
            return True
        self._witnesses = torch.cat([rest[~ok][:16], w])[:64]
        return False

    def faithfulness(self, edge_mask: torch.Tensor, *, per_example: bool = False) -> float | torch.Tensor:
        """Mean faithfulness loss of the circuit (module doc); ``per_example``: ``[N]`` instead."""
        logits = self.logits(edge_mask)
        loss = faithfulness_loss(logits, self.reference, self.examples, self.examples.answer)
        return loss if per_example else loss.mean().item()

    def metric(self, edge_mask: torch.Tensor) -> float:
        """The gradient methods' metric of the circuit (module doc), mean over examples."""
        logits = self.logits(edge_mask)
        ex = self.examples
        return metric_sum(logits, ex.kind, self.labels, ex.answer, ex.answer_tokens).item() / len(self)

    def metric_gradient(self, z_value: float, *, batch_size: int = 512) -> torch.Tensor:
        """``d mean-metric / dz`` on every edge at the uniform mask ``z = z_value``, ``[n_edges]``
        (float64): EAP's score at ``z = 1`` (``(clean_w - ablated_w) . dMetric/dx_r`` per edge)."""
        model, ex, g = self.model, self.examples, self.model.graph
        total = torch.zeros(g.n_edges, dtype=torch.float64)
        for b in _batches(len(ex), batch_size):
            z = torch.full((g.n_edges,), float(z_value), dtype=model.W_E.dtype, requires_grad=True)
            logits = model(ex.clean[b], attention_mask=ex.valid[b], edge_mask=z, ablated=self._ablated_part(b))
            m = metric_sum(logits, ex.kind, None if self.labels is None else self.labels[b], ex.answer[b],
                           None if ex.answer_tokens is None else ex.answer_tokens[b])
            (grad,) = torch.autograd.grad(m, z)
            total += grad.double()
        return total / len(ex)
