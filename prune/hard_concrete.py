"""Hard-concrete gates (Louizos, Welling and Kingma 2018), as Edge Pruning uses them.

A gate with location ``log_alpha`` samples ``s = sigmoid((log u - log(1-u) +
log_alpha) / beta)``, stretches it to ``(LEFT, RIGHT)`` and clips to [0, 1], so it
is exactly 0 or 1 with positive probability and differentiable in between.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["LEFT", "RIGHT", "BETA", "sample", "prob_nonzero", "log_prob_ends"]

LEFT, RIGHT, BETA = -0.1, 1.1, 2.0 / 3.0
_EPS = 1e-6


def sample(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One gate sample per entry (shared by the whole batch, as in Edge Pruning)."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    u = u.clamp(_EPS, 1 - _EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate != 0): the expected L0 norm per gate, differentiable in log_alpha."""
    return torch.sigmoid(log_alpha - BETA * math.log(-LEFT / RIGHT))


def log_prob_ends(log_alpha: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log P(gate = z) where a sample ``z`` is exactly 0 or 1, and 0 where it is in between.

    The point masses at 0 and 1 are what pruning is about, but a pathwise
    gradient never sees them (the clip is flat there); their log-probability
    gives a score-function (REINFORCE) gradient for them.
    """
    # The stretched gate is 0 when s <= a and 1 when s >= b (a, b below), and
    # P(s <= x) = sigmoid(BETA * logit(x) - log_alpha).
    a, b = -LEFT / (RIGHT - LEFT), (1 - LEFT) / (RIGHT - LEFT)
    at_zero = BETA * math.log(a / (1 - a)) - log_alpha
    at_one = log_alpha - BETA * math.log(b / (1 - b))
    zero, one = z <= 0, z >= 1
    return torch.where(zero, F.logsigmoid(at_zero), torch.zeros_like(z)) + torch.where(
        one, F.logsigmoid(at_one), torch.zeros_like(z))
