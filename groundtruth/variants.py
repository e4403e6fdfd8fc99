"""Compressed variants of a compiled program: its residual stream in ``d < D`` dimensions.

Tracr's ``CompressedTransformer`` reads the residual stream through a matrix
``W`` (``d x D``, D the compiled width) and writes through ``W^T``: a layer sees
``x = h @ W`` of the compressed stream ``h`` and adds ``out @ W^T``. Folding
``W`` into the weights makes that model an ordinary
:class:`prune.model.Transformer` of width ``d``, on which the masked model, the
ablations and every method run unchanged:

- embeddings and every write (``W_O``, ``b_O``, ``W_out``, ``b_out``) are
  multiplied by ``W^T`` on the right;
- every read (``W_Q``, ``W_K``, ``W_V``, ``W_in``) and the unembedding ``W_U``
  by ``W`` on the left.

That is exact only without a norm between the stream and its readers (a norm
does not commute with ``W``): compiled Tracr models have none.

:func:`residual_basis` gives the ``W`` that loses nothing on a data set: an
orthonormal basis of the span of every residual state the model passes
through. Its width is that span's rank, so interference is none.

:func:`compress` goes narrower, where features must share dimensions: it folds
the top principal directions of the residual states and fine-tunes every
weight of the folded model until it decodes every example as the compiled
model does (the recipe is recorded). Tracr's own method keeps the compiled
weights frozen and learns only ``W``; that stage, and ground truth for the
variants, are not here yet.
"""

from __future__ import annotations

import dataclasses

import torch

from prune.data import Examples
from prune.model import Transformer

__all__ = ["fold", "residual_basis", "principal_directions", "Compression", "compress"]

_READS = ("W_Q", "W_K", "W_V", "W_in", "W_gate")
_WRITES = ("W_O", "b_O", "W_out", "b_out")


def fold(model: Transformer, W: torch.Tensor) -> Transformer:
    """The model that reads its stream through ``W`` ``[d, D]`` and writes through ``W^T``, as a
    :class:`Transformer` of width ``d`` (module doc). ``model`` is not changed."""
    cfg = model.cfg
    D = cfg.d_model
    if cfg.norm != "none":
        raise ValueError(f"cannot fold a projection into a model with {cfg.norm} (a norm does not commute with "
                         f"it); compiled Tracr models have none")
    if W.ndim != 2 or W.shape[1] != D:
        raise ValueError(f"W must be [d, {D}] for this model's width {D}, got {tuple(W.shape)}")
    d = W.shape[0]
    if not 1 <= d <= D:
        raise ValueError(f"the compressed width d={d} must be in [1, {D}] (the compiled width)")
    W = W.to(model.W_E.dtype)
    small = Transformer(dataclasses.replace(cfg, d_model=d), conventions=model.conventions).to(model.W_E.dtype)
    state = {}
    for name, value in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if name in ("W_E", "W_pos") or leaf in _WRITES:
            value = value @ W.T  # [..., D] -> [..., d]
        elif name == "W_U" or leaf in _READS:
            value = W @ value if value.ndim == 2 else torch.einsum("dD,hDe->hde", W, value)  # [D, ...] -> [d, ...]
        state[name] = value
    small.load_state_dict(state)
    return small.requires_grad_(False)


@torch.no_grad()
def _residual_states(model: Transformer, examples: Examples) -> torch.Tensor:
    """``[K, D]`` float64: the residual stream after every writer, at every valid position of every example."""
    _, writers = model(examples.clean, attention_mask=examples.valid, return_writers=True)  # [W, N, S, D]
    return writers.cumsum(0)[:, examples.valid].reshape(-1, model.cfg.d_model).double()


@torch.no_grad()
def residual_basis(model: Transformer, examples: Examples, *, rtol: float = 1e-6) -> torch.Tensor:
    """``[r, D]`` orthonormal rows spanning every residual state of ``model`` on ``examples``: at every
    valid position, after every writer. Singular values below ``rtol`` times the largest count as zero."""
    _, s, vh = torch.linalg.svd(_residual_states(model, examples), full_matrices=False)
    r = int((s > rtol * s[0]).sum())
    return vh[:r].to(model.W_E.dtype)


@torch.no_grad()
def principal_directions(model: Transformer, examples: Examples, width: int) -> torch.Tensor:
    """``[width, D]``: the top right singular vectors of every residual state on ``examples`` (uncentred),
    the best rank-``width`` linear reconstruction of the stream."""
    return torch.linalg.svd(_residual_states(model, examples), full_matrices=False)[2][:width].to(model.W_E.dtype)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a model and tensors have no truth value
class Compression:
    """A compressed variant: the folded, fine-tuned model of width ``width`` and how it was made."""

    model: Transformer
    W: torch.Tensor  # [width, D], the projection folded in before fine-tuning
    width: int
    agreement: float  # fraction of examples decoded exactly as the compiled model does
    recipe: dict


def compress(model: Transformer, examples: Examples, width: int, *, learning_rates=(1e-4, 3e-5, 1e-3),
             steps: int = 1500) -> Compression:
    """The compiled ``model`` at residual width ``width``, decoding every example exactly (module doc).

    Fine-tunes every weight of ``fold(model, principal_directions(...))`` with full-batch Adam against
    the compiled model's decoded outputs (cross-entropy; numerical outputs: squared error), trying
    each learning rate in turn until one decodes every example exactly. Deterministic: no sampling.
    Raises ``ValueError`` naming the best agreement reached when none does.
    """
    D = model.cfg.d_model
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= D:
        raise ValueError(f"width {width!r} must be a whole number in [1, {D}] (the compiled width)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive whole number, got {steps!r}")
    W = principal_directions(model, examples, width)
    with torch.no_grad():
        full = model(examples.clean, attention_mask=examples.valid)
    labels = examples.decode(full)
    best = (-1.0, None)
    for lr in learning_rates:
        small = fold(model, W).requires_grad_(True)
        opt = torch.optim.Adam(small.parameters(), lr=lr)
        for step in range(steps):
            logits = small(examples.clean, attention_mask=examples.valid)
            agreement = examples.agree(logits.detach(), full).float().mean().item()
            if agreement == 1.0:
                recipe = {"init": "principal directions of the residual states", "fine_tuned": "every weight",
                          "optimizer": "Adam, full batch", "lr": lr, "steps": step,
                          "learning_rates": list(learning_rates)}
                return Compression(model=small.requires_grad_(False), W=W, width=width, agreement=1.0,
                                   recipe=recipe)
            best = max(best, (agreement, lr), key=lambda t: t[0])
            at = examples.answer
            if examples.kind == "categorical":
                loss = torch.nn.functional.cross_entropy(logits[at], labels[at])
            else:
                loss = (logits[at][:, 0] - full[at][:, 0]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    raise ValueError(f"no compression to width {width} of {D} decodes every example: the best agreement was "
                     f"{best[0]:.3f} (learning rate {best[1]:g}, {steps} steps each); try a wider width or more steps")
