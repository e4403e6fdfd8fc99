"""Mean and resample ablation against per-example references computed one prompt at a time."""

import pytest
import torch

from conftest import random_model
from prune.ablation import ablated_writers, mean_writers
from prune.data import Examples
from prune.model import Transformer, TransformerConfig

# float64 throughout. The references run each prompt alone and sum in another
# order, so agreement is to rounding (observed < 1e-14); 1e-9 leaves margin and
# is far below the differences padding makes (order 0.1 with N(0, 0.5) weights).
ATOL = 1e-9

S = 6
# Right padding, left padding, a gap, full, and one valid position only. The
# last position is valid in no example.
VALID = torch.tensor([
    [1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 0],
    [1, 0, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 0],
    [1, 0, 0, 0, 0, 0],
], dtype=torch.bool)


def _model(causal: bool, seed: int = 0) -> Transformer:
    cfg = TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=16, n_positions=S,
                            causal=causal)
    return random_model(cfg, seed)


def _examples(seed: int = 1, valid: torch.Tensor = VALID) -> Examples:
    # Padding positions hold random (not constant) ids, so a mean that counted
    # them would differ from the reference.
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 7, valid.shape, generator=gen)
    corrupted = torch.randint(0, 7, valid.shape, generator=gen)
    return Examples(clean=clean, corrupted=corrupted, valid=valid, answer=valid.clone())


def _reference_mean(model: Transformer, ex: Examples) -> torch.Tensor:
    """Per position, the mean of the writers over the examples valid there (0 where none is)."""
    W, D = model.graph.n_writers, model.cfg.d_model
    total = torch.zeros(W, 1, S, D, dtype=torch.float64)
    count = [0] * S
    for i in range(len(ex)):
        w = model.writers(ex.clean[i : i + 1], attention_mask=ex.valid[i : i + 1])  # [W, 1, S, D], alone
        for s in range(S):
            if ex.valid[i, s]:
                total[:, :, s] += w[:, :, s]
                count[s] += 1
    for s in range(S):
        if count[s]:
            total[:, :, s] /= count[s]
    return total


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 2048])
def test_mean_writers_averages_only_valid_positions(causal, batch_size):
    model, ex = _model(causal), _examples()
    got = mean_writers(model, ex, batch_size=batch_size)
    want = _reference_mean(model, ex)
    assert got.shape == (model.graph.n_writers, 1, S, model.cfg.d_model)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # Valid in no example: 0 (the count is clamped to 1, the total is 0).
    assert bool((got[:, :, -1] == 0).all())
    # The test has teeth: counting padding positions gives another mean.
    naive = model.writers(ex.clean, attention_mask=ex.valid).mean(1, keepdim=True)
    assert (naive[:, :, :-1] - want[:, :, :-1]).abs().max() > 1e-3


def test_ablated_writers_zero_is_none():
    model, ex = _model(True), _examples()
    assert ablated_writers(model, ex, "zero") is None


def test_ablated_writers_mean_over_the_examples_or_a_reference():
    model, ex, ref = _model(True), _examples(seed=1), _examples(seed=2)
    W, D = model.graph.n_writers, model.cfg.d_model
    own = ablated_writers(model, ex, "mean", batch_size=2)
    assert own.shape == (W, 1, S, D)
    torch.testing.assert_close(own, _reference_mean(model, ex), atol=ATOL, rtol=0)
    other = ablated_writers(model, ex, "mean", reference=ref)
    assert other.shape == (W, 1, S, D)
    torch.testing.assert_close(other, _reference_mean(model, ref), atol=ATOL, rtol=0)
    assert (other - own).abs().max() > 1e-3


def test_ablated_writers_mean_refuses_a_reference_of_another_length():
    model, ex = _model(True), _examples()
    short = _examples(valid=VALID[:, : S - 1])
    with pytest.raises(ValueError, match="pad both to one length"):
        ablated_writers(model, ex, "mean", reference=short)


@pytest.mark.parametrize("batch_size", [2, 2048])
def test_ablated_writers_resample_is_the_corrupted_run(batch_size):
    model, ex = _model(True), _examples()
    W, D = model.graph.n_writers, model.cfg.d_model
    got = ablated_writers(model, ex, "resample", batch_size=batch_size)
    assert got.shape == (W, len(ex), S, D)
    want = torch.cat([model.writers(ex.corrupted[i : i + 1], attention_mask=ex.valid[i : i + 1])
                      for i in range(len(ex))], dim=1)
    # Compared at valid positions only: a padding position's output is not part of the contract.
    v = ex.valid[None, :, :, None].expand_as(got)
    torch.testing.assert_close(got[v], want[v], atol=ATOL, rtol=0)
    # Not the clean run.
    clean = model.writers(ex.clean, attention_mask=ex.valid)
    assert (got[v] - clean[v]).abs().max() > 1e-3


def test_ablated_writers_unknown_ablation():
    model, ex = _model(True), _examples()
    with pytest.raises(ValueError, match="unknown ablation"):
        ablated_writers(model, ex, "average")
