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
through. Its width is that span's rank, so interference is none. This module
is the first step of the compressed and perturbed variants; learning a
narrower ``W``, where features must share dimensions, is not here yet.
"""

from __future__ import annotations

import dataclasses

import torch

from prune.data import Examples
from prune.model import Transformer

__all__ = ["fold", "residual_basis"]

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
def residual_basis(model: Transformer, examples: Examples, *, rtol: float = 1e-6) -> torch.Tensor:
    """``[r, D]`` orthonormal rows spanning every residual state of ``model`` on ``examples``: at every
    valid position, after every writer. Singular values below ``rtol`` times the largest count as zero."""
    _, writers = model(examples.clean, attention_mask=examples.valid, return_writers=True)  # [W, N, S, D]
    states = writers.cumsum(0)[:, examples.valid].reshape(-1, model.cfg.d_model).double()
    _, s, vh = torch.linalg.svd(states, full_matrices=False)
    r = int((s > rtol * s[0]).sum())
    return vh[:r].to(model.W_E.dtype)
