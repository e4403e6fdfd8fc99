"""Hard-concrete gates: the closed forms against Monte Carlo frequencies of ``sample``.

Tolerance: with ``N`` independent samples, an empirical frequency of an event of
probability ``p`` has binomial standard error ``sqrt(p (1 - p) / N)``; we accept
``SIGMAS`` = 5 of them. A correct formula fails that with probability ~6e-7 per
check (the seed is fixed, so the outcome is reproducible anyway); a wrong one is
caught when its error exceeds 5 standard errors: at ``N`` = 200,000 and p ~ 0.5
that is 0.0056, i.e. a ``log_alpha`` off by about 0.02 (dp/dlog_alpha = p(1-p));
at the probabilities checked here, shifting ``log_alpha`` by 0.05 inside the
closed forms fails these tests for log_alpha = -3, 0 and 2 (checked by hand).
The smallest probability checked (P(gate = 0) at log_alpha = 5, ~1.4e-3, about
270 samples) still has enough counts for the normal approximation.
"""

import math

import pytest
import torch

from prune import hard_concrete as hc

N = 200_000
SIGMAS = 5.0
LOG_ALPHAS = (-3.0, 0.0, 2.0, 5.0)


def _samples(log_alpha: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return hc.sample(torch.full((N,), log_alpha, dtype=torch.float64), generator=gen)


def _assert_frequency(hits: torch.Tensor, p: float, what: str):
    freq = hits.double().mean().item()
    tol = SIGMAS * math.sqrt(p * (1 - p) / N)
    assert abs(freq - p) <= tol, f"{what}: empirical {freq:.5f}, closed form {p:.5f}, tolerance {tol:.5f}"


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_samples_lie_in_the_unit_interval(log_alpha):
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(1)
        z = hc.sample(torch.full((N,), log_alpha, dtype=dtype), generator=gen)
        assert z.dtype == dtype and z.shape == (N,)
        assert bool(((z >= 0) & (z <= 1)).all())


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_prob_nonzero_matches_monte_carlo(log_alpha):
    z = _samples(log_alpha)
    p = hc.prob_nonzero(torch.tensor(log_alpha, dtype=torch.float64)).item()
    _assert_frequency(z != 0, p, f"P(gate != 0) at log_alpha={log_alpha}")


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_log_prob_ends_matches_monte_carlo(log_alpha):
    z = _samples(log_alpha, seed=2)
    la = torch.tensor(log_alpha, dtype=torch.float64)
    p0 = hc.log_prob_ends(la, torch.tensor(0.0, dtype=torch.float64)).exp().item()
    p1 = hc.log_prob_ends(la, torch.tensor(1.0, dtype=torch.float64)).exp().item()
    assert 0 < p0 and 0 < p1 and p0 + p1 < 1
    _assert_frequency(z == 0, p0, f"P(gate = 0) at log_alpha={log_alpha}")
    _assert_frequency(z == 1, p1, f"P(gate = 1) at log_alpha={log_alpha}")
    # The same, read off the samples themselves: the end masses where z is 0 or 1,
    # and exactly 0 (no contribution to the score-function gradient) in between.
    lp = hc.log_prob_ends(torch.full_like(z, log_alpha), z)
    middle = (z > 0) & (z < 1)
    assert bool(middle.any())
    assert bool((lp[middle] == 0).all())
    torch.testing.assert_close(lp[z == 0], torch.full_like(lp[z == 0], math.log(p0)), rtol=0, atol=1e-12)
    torch.testing.assert_close(lp[z == 1], torch.full_like(lp[z == 1], math.log(p1)), rtol=0, atol=1e-12)


def test_prob_nonzero_is_one_minus_the_mass_at_zero():
    # Two closed forms of the same quantity; float64, so agreement is to rounding (1e-12).
    la = torch.linspace(-8, 8, 33, dtype=torch.float64)
    p0 = hc.log_prob_ends(la, torch.zeros_like(la)).exp()
    torch.testing.assert_close(hc.prob_nonzero(la), 1 - p0, rtol=0, atol=1e-12)
