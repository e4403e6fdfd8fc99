"""What stands in for a pruned edge: zero, mean or resample ablation.

Every circuit, report and test names its ablation, because the ground truth
depends on it:

- ``zero``: a pruned edge carries nothing.
- ``mean``: it carries the writer's mean output over a reference dataset, per
  position, averaged over the non-padding examples at that position.
- ``resample``: it carries the writer's output on the paired corrupted prompt.
"""

from __future__ import annotations

from typing import Literal

import torch

from prune.data import Examples
from prune.model import Transformer

__all__ = ["ABLATIONS", "Ablation", "ablated_writers", "check_ablation", "mean_writers"]

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {ABLATIONS}")
    return ablation


def ablated_writers(
    model: Transformer,
    examples: Examples,
    ablation: str,
    *,
    reference: Examples | None = None,
    batch_size: int = 2048,
) -> torch.Tensor | None:
    """Stand-in writer outputs for ``examples``: None (zero), ``[W, 1, S, D]`` (mean), ``[W, N, S, D]`` (resample).

    ``reference`` is the dataset the mean is taken over (default: ``examples``).
    """
    check_ablation(ablation)
    if ablation == "zero":
        return None
    if ablation == "resample":
        parts = [slice(b, b + batch_size) for b in range(0, len(examples), batch_size)]
        return torch.cat([model.writers(examples.corrupted[p], attention_mask=examples.valid[p]) for p in parts], dim=1)
    mean = mean_writers(model, reference if reference is not None else examples, batch_size=batch_size)
    S = examples.clean.shape[1]
    if mean.shape[2] != S:
        raise ValueError(
            f"mean ablation: the reference prompts have length {mean.shape[2]} but these have "
            f"length {S}; pad both to one length"
        )
    return mean


@torch.no_grad()
def mean_writers(model: Transformer, examples: Examples, *, batch_size: int = 2048) -> torch.Tensor:
    """Per-position mean writer outputs ``[W, 1, S, D]`` over the non-padding prompts."""
    total, count = None, None
    for start in range(0, len(examples), batch_size):
        b = slice(start, start + batch_size)
        w = model.writers(examples.clean[b], attention_mask=examples.valid[b])
        weight = examples.valid[b].to(w.dtype)[None, :, :, None]
        s, c = (w * weight).sum(1, keepdim=True), weight.sum(1, keepdim=True)
        total = s if total is None else total + s
        count = c if count is None else count + c
    return total / count.clamp_min(1)
