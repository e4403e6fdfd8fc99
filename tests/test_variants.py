"""Folding a residual projection into a compiled model (groundtruth.variants): the folded model is the
model that reads through W and writes through W^T, and the residual stream's own basis loses nothing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import artifact
from groundtruth.registry import library
from groundtruth.variants import fold, residual_basis


@torch.no_grad()
def read_through(model, W, tokens, attention_mask):
    """The compressed model computed from the compiled weights, projecting explicitly at every read and write
    (an independent path: the original blocks on ``h @ W``, their outputs through ``W^T``)."""
    h = model.embed(tokens) @ W.T  # [B, S, d]
    for block in model.blocks:
        x = h @ W
        h = h + block.attention(x, x, x, attention_mask, None).sum(0) @ W.T
        h = h + block.mlp(h @ W) @ W.T
    return model.unembed(model.ln_f(h @ W))


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["reverse", "frac_prevs", "sort", "pair_balance", "shuffle_dyck"]),
       fraction=st.floats(0.2, 1.0), seed=st.integers(0, 2**32 - 1))
def test_the_folded_model_reads_through_w_and_writes_through_w_transposed(name, fraction, seed):
    art = artifact(name)
    model, ex = art.model, art.examples
    D = model.cfg.d_model
    d = max(1, round(fraction * D))
    W = torch.randn(d, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / D**0.5
    model64 = model.double()  # a fresh artifact each call: converting it touches nothing shared
    folded = fold(model64, W)
    assert folded.cfg.d_model == d and folded.W_E.dtype == torch.float64
    with torch.no_grad():
        got = folded(ex.clean[:16], attention_mask=ex.valid[:16])
    want = read_through(model64, W, ex.clean[:16], ex.valid[:16])
    # float64 both ways, the same products in another association: rounding only.
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(library()))
def test_the_residual_basis_compresses_without_loss(name):
    art = artifact(name)
    model, ex = art.model, art.examples
    W = residual_basis(model, ex)
    folded = fold(model, W)
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
        small = folded(ex.clean, attention_mask=ex.valid)
    assert folded.cfg.d_model == W.shape[0] <= model.cfg.d_model
    assert bool(ex.agree(small, full).all())  # every decoded output, every example
    assert folded.graph.edge_names == model.graph.edge_names  # the same graph: every method runs on it


def test_fold_refusals():
    art = artifact("reverse")
    D = art.model.cfg.d_model
    with pytest.raises(ValueError, match=rf"W must be \[d, {D}\]"):
        fold(art.model, torch.zeros(3, D + 1))
    with pytest.raises(ValueError, match=rf"must be in \[1, {D}\]"):
        fold(art.model, torch.zeros(D + 1, D))
    from prune.model import Transformer, TransformerConfig

    normed = Transformer(TransformerConfig(vocab_size=4, d_model=4, n_layers=1, n_heads=1, d_head=2, d_mlp=2,
                                           n_positions=4, norm="layernorm"))
    with pytest.raises(ValueError, match="does not commute"):
        fold(normed, torch.eye(4))


def test_compress_reaches_exact_decoding_below_the_residual_rank():
    """``reverse`` has residual rank 27 of 41: at width 20 (0.49 D) features must share dimensions."""
    from groundtruth.variants import compress

    art = artifact("reverse")
    model, ex = art.model, art.examples
    assert residual_basis(model, ex).shape[0] == 27
    one = compress(model, ex, 20)
    assert one.width == one.model.cfg.d_model == 20 and one.agreement == 1.0
    with torch.no_grad():
        assert bool(ex.agree(one.model(ex.clean, attention_mask=ex.valid), model(ex.clean, attention_mask=ex.valid))
                    .all())
    assert one.recipe["fine_tuned"] == "every weight" and one.recipe["steps"] > 0
    two = compress(model, ex, 20)  # full-batch Adam, no sampling: the same weights again
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(),
                                                 strict=True))


def test_compress_refusals_name_the_value():
    from groundtruth.variants import compress

    art = artifact("frac_prevs")
    D = art.model.cfg.d_model
    with pytest.raises(ValueError, match=rf"width {D + 1} must be a whole number in \[1, {D}\]"):
        compress(art.model, art.examples, D + 1)
    with pytest.raises(ValueError, match="steps must be"):
        compress(art.model, art.examples, 3, steps=0)
    with pytest.raises(ValueError, match=r"no compression to width 3 of 14 decodes every example: the best agreement"):
        compress(art.model, art.examples, 3, steps=5)
