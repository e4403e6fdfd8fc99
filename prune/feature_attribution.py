"""Transcoder attribution (Dunefsky, Chlenski and Nanda 2024) as a circuit-discovery method.

The paper traces circuits through transcoder features with linear attributions:
the attribution of an upstream feature ``i`` to a downstream feature ``j``'s
pre-activation is ``f_i(x) * (W_dec[i] . W_enc[:, j])`` along the residual stream,
and ``f_i(x_src) * A[dst, src] * (W_dec[i] W_OV W_enc[:, j])`` through a head,
with the attention pattern ``A`` (and every norm's scale) held at its value on the
input. Each attribution splits into an *input-dependent* factor, the upstream
activation ``f_i(x)``, and an *input-invariant* one, the weights between the two
features. Attention patterns are frozen, so query and key paths carry no
attribution: the paper's own limitation (it explains what moves through a head,
not where the head looks).

Here the same attributions score every edge of a graph (a feature graph of
:func:`prune.transcoder.feature_model`, or any other: a plain MLP is then one
node, linearised as it stands). In the linearised model (attention patterns and
norm scales frozen at the clean run; a ReLU feature's gate is its own local
derivative) the sum over every path from a writer ``w`` into a reader ``r`` and on
to the metric of :mod:`prune.evaluate` is ``delta_w . g_r``, with ``g_r`` the
metric's gradient at ``r``'s input through that linearised model, summed over
positions and averaged over examples:

- ``part="input_dependent"`` (:func:`feature_attribution`): ``delta_w`` is the
  writer's clean output minus its ablated one, so for a feature ``(f_i - f_i') W_dec[i]``;
  under zero ablation ``f_i(x) W_dec[i] . g_r``, the paper's attribution summed
  over the downstream paths. It is EAP (:func:`prune.baselines.eap`) in the
  linearised model: the two differ by the query/key paths and the norms' scales.
- ``part="input_invariant"`` (:func:`feature_attribution_invariant`): a feature's
  activation is factored out. ``delta_w`` becomes ``sign(f_i - f_i') W_dec[i]`` at
  the positions where the feature's activation differs from its ablated value and
  0 elsewhere, so an edge out of a feature scores the weights-only connection
  ``W_dec[i] . g_r`` (for a direct edge into a transcoded MLP, ``W_dec[i] . W_enc[:, j]``
  weighted by how much each downstream feature ``j`` matters), summed over the
  positions where the feature is at work. Writers with no activation to factor out
  (the input, heads, plain MLPs, error terms) keep their input-dependent score.

Own circuit: the smallest reproducing top-k by ``|score|``, the rule of EAP and
EAP-IG (:mod:`prune.baselines`), so that a comparison isolates the scores; the
paper's recursive top-k path search from one target feature is not reproduced
(it answers "why does this feature fire", not "which edges reproduce the task").
Query and key edges score exactly 0, so the own circuit lacks them wherever the
task needs them, and the shared exact finalizer (the default) adds them back along
the ranking (ties in graph order).
"""

from __future__ import annotations

import contextlib
import time

import torch

from prune.baselines import _BATCH, _check_batch_size, _check_common, _finish, _score_circuit
from prune.circuit import Circuit
from prune.data import Examples
from prune.evaluate import Evaluator, _batches, metric_sum
from prune.model import Transformer

__all__ = ["PARTS", "attribution_scores", "feature_attribution", "feature_attribution_invariant", "linearised"]

PARTS: tuple[str, ...] = ("input_dependent", "input_invariant")


def _frozen_norm(module, x):  # x [.., D]: the norm with its scale held constant (no gradient through it)
    kind = module.kind
    if kind == "none":
        return x
    wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if kind == "layernorm":
        centred = wide - wide.mean(-1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps).detach()
        return (centred * scale).to(x.dtype) * module.weight + module.bias
    scale = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + module.eps).detach()  # RMSNorm
    return module.weight * (wide * scale).to(x.dtype)


def _attention_norm_hook(module, args, output):
    x = args[0]
    out = _frozen_norm(module, x)
    if out.ndim == 4:  # masked: [3n, B, S, D], the query, key and value readers of n heads
        n = out.shape[0] // 3
        out = torch.cat([out[:2 * n].detach(), out[2 * n:]])  # frozen patterns: nothing flows back from q, k
    return out


def _norm_hook(module, args, output):
    return _frozen_norm(module, args[0])


@contextlib.contextmanager
def linearised(model: Transformer):
    """Within the block, ``model``'s gradients are those of the paper's linearisation: attention patterns
    and norm scales frozen at their values on the input (forward values are unchanged, up to rounding in
    the norms). Masked runs only: a plain run's heads share one input, whose query and key paths cannot
    be told apart there."""
    hooks = [model.ln_f.register_forward_hook(_norm_hook)]
    try:
        for block in model.blocks:
            hooks.append(block.ln1.register_forward_hook(_attention_norm_hook))
            hooks.append(block.ln2.register_forward_hook(_norm_hook))
        yield model
    finally:
        for h in hooks:
            h.remove()


def _decoders(model: Transformer) -> dict[int, tuple[range, torch.Tensor]]:
    """Per transcoded layer: its feature writers' indices and their decoder rows ``[T, D]``."""
    g, out = model.graph, {}
    for layer in range(g.n_layers):
        if g.n_features(layer):
            writers = g.mlp_writers(layer)
            out[layer] = (range(writers.start, writers.stop - 1), model.blocks[layer].transcoder.W_dec.detach())
    return out


def _invariant_delta(clean: torch.Tensor, ablated: torch.Tensor | None, decoders) -> torch.Tensor:
    """``[W, B, S, D]`` writer differences with each feature's activation difference replaced by its sign."""
    delta = clean - (0.0 if ablated is None else ablated)
    for features, W_dec in decoders.values():
        d = delta[features.start:features.stop]  # [T, B, S, D]: (f_i - f_i') W_dec[i]
        along = torch.einsum("tbsd,td->tbs", d, W_dec)  # (f_i - f_i') ||W_dec[i]||^2
        delta[features.start:features.stop] = torch.sign(along)[..., None] * W_dec[:, None, None, :]
    return delta


def attribution_scores(model: Transformer, examples: Examples, *, ablation: str, part: str = "input_dependent",
                       batch_size: int = _BATCH, evaluator: Evaluator | None = None) -> torch.Tensor:
    """``[n_edges]`` (float64) scores ``delta_w . g_r`` in the linearised model (module doc), averaged over
    the examples."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {PARTS}")
    _check_batch_size(batch_size)
    ev = evaluator if evaluator is not None else Evaluator(model, examples, ablation)
    g = model.graph
    decoders = _decoders(model) if part == "input_invariant" else {}
    total = torch.zeros(g.n_edges, dtype=torch.float64)
    with linearised(model):
        for b in _batches(len(examples), batch_size):
            ablated = ev._ablated_part(b)
            if decoders:  # at z = 1 the run reads only clean outputs, so a stand-in of clean - u scores u . g_r
                clean = model.writers(examples.clean[b], attention_mask=examples.valid[b])
                full = None if ablated is None else ablated.expand(-1, clean.shape[1], -1, -1)
                ablated = clean - _invariant_delta(clean, full, decoders)
            z = torch.ones(g.n_edges, dtype=model.W_E.dtype, requires_grad=True)
            logits = model(examples.clean[b], attention_mask=examples.valid[b], edge_mask=z, ablated=ablated)
            m = metric_sum(logits, examples.kind, None if ev.labels is None else ev.labels[b], examples.answer[b],
                           None if examples.answer_tokens is None else examples.answer_tokens[b])
            (grad,) = torch.autograd.grad(m, z)
            total += grad.double()
    return total / len(examples)


def _method(part: str, name: str):
    def method(model: Transformer, examples: Examples, *, ablation: str, seed: int = 0, top_k: int | None = None,
               threshold: float | None = None, batch_size: int = _BATCH, finalize: str = "exact",
               model_name: str = "") -> Circuit:
        _check_common(model, examples, ablation, finalize, name)
        _check_batch_size(batch_size)
        start = time.perf_counter()
        evaluator = Evaluator(model, examples, ablation)
        scores = attribution_scores(model, examples, ablation=ablation, part=part, batch_size=batch_size,
                                    evaluator=evaluator)
        mask, rule = _score_circuit(evaluator, scores, top_k=top_k, threshold=threshold)
        return _finish(evaluator, scores, mask, method=name, model_name=model_name, start=start, finalize=finalize,
                       metadata={"seed": seed, "part": part, "top_k": top_k, "threshold": threshold, **rule})

    method.__name__ = method.__qualname__ = name
    return method


feature_attribution = _method("input_dependent", "feature_attribution")
feature_attribution.__doc__ = """The paper's input-dependent attribution per edge (module doc), as a pruner."""
feature_attribution_invariant = _method("input_invariant", "feature_attribution_invariant")
feature_attribution_invariant.__doc__ = """The paper's input-invariant attribution per edge (module doc)."""
