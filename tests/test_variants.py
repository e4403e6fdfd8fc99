"""Compressed and perturbed variants (groundtruth.variants, groundtruth.variant_case): the folded model is
the model that reads through W and writes through W^T; the residual and read bases lose nothing; compression
below the read basis decodes exactly and deterministically; noise at the bisected scale keeps every output;
a variant's ground truth is derived and verified on the variant, stored, loaded and refused when bad."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import artifact
from groundtruth.registry import library
from groundtruth.variants import fold, perturb, read_basis, read_through, residual_basis


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["reverse", "frac_prevs", "sort", "pair_balance", "shuffle_dyck"]),
       fraction=st.floats(0.2, 1.0), seed=st.integers(0, 2**32 - 1))
def test_the_folded_model_reads_through_w_and_writes_through_w_transposed(name, fraction, seed):
    art = artifact(name)
    model, ex = art.model, art.examples
    D = model.cfg.d_model
    d = max(1, round(fraction * D))
    W = torch.randn(d, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / D**0.5
    model64 = copy.deepcopy(model).double()  # artifact() is cached: .double() in place would change it for all
    folded = fold(model64, W)
    assert folded.cfg.d_model == d and folded.W_E.dtype == torch.float64
    with torch.no_grad():
        got = folded(ex.clean[:16], attention_mask=ex.valid[:16])
    with torch.no_grad():  # the compiled blocks on h @ W, their outputs through W^T: another computation
        want, _ = read_through(model64, W, ex.clean[:16], ex.valid[:16])
    # float64 both ways, the same products in another association: rounding only.
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(library()))
def test_the_residual_and_read_bases_compress_without_loss(name):
    art = artifact(name)
    model, ex = art.model, art.examples
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
    widths = []
    for W in (residual_basis(model, ex), read_basis(model, ex)):
        folded = fold(model, W)
        with torch.no_grad():
            small = folded(ex.clean, attention_mask=ex.valid)
        assert folded.cfg.d_model == W.shape[0] <= model.cfg.d_model
        assert bool(ex.agree(small, full).all())  # every decoded output, every example
        assert folded.graph.edge_names == model.graph.edge_names  # the same graph: every method runs on it
        widths.append(W.shape[0])
    assert widths[1] <= widths[0]  # the read part of the span is inside the span


def test_read_through_the_identity_is_the_compiled_model():
    art = artifact("sort")
    model, ex = art.model, art.examples
    D = model.cfg.d_model
    with torch.no_grad():
        logits, states = read_through(model, torch.eye(D), ex.clean, ex.valid)
        _, writers = model(ex.clean, attention_mask=ex.valid, return_writers=True)
        want = model(ex.clean, attention_mask=ex.valid)
    assert torch.allclose(logits, want, atol=1e-5)  # float32, summed in another order
    assert len(states) == 2 * model.cfg.n_layers + 1
    # The state before the unembedding is the sum of every writer.
    assert torch.allclose(states[-1], writers.sum(0), atol=1e-4 * float(writers.abs().max()))


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


def test_compress_decodes_exactly_below_the_read_basis_and_deterministically():
    """``length`` reads 10 of its 18 dimensions; at width 9 two of its features must share a direction."""
    from groundtruth.variants import compress

    art = artifact("length")
    model, ex = art.model, art.examples
    assert read_basis(model, ex).shape[0] == 10
    one = compress(model, ex, 9)
    assert one.width == one.model.cfg.d_model == 9 == one.W.shape[0] and one.agreement == 1.0
    with torch.no_grad():
        assert bool(ex.agree(one.model(ex.clean, attention_mask=ex.valid), model(ex.clean, attention_mask=ex.valid))
                    .all())
    assert one.recipe["stage"] in ("frozen", "fine-tuned") and one.recipe["steps"] >= 0
    if one.recipe["stage"] == "frozen":  # Tracr's method: the compiled weights, only read through W
        assert torch.allclose(one.model.W_U, one.W @ model.W_U)
    labels = art.config["residual_labels"]
    assert list(one.directions(labels)) == labels and all(v.shape == (9,) for v in one.directions(labels).values())
    two = compress(model, ex, 9)  # full-batch Adam, no sampling: the same weights again
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
    with pytest.raises(ValueError, match="patience must be"):
        compress(art.model, art.examples, 3, patience=True)
    with pytest.raises(ValueError, match=r"no compression to width 3 of 14 decodes every example: the best agreement"):
        compress(art.model, art.examples, 3, steps=5)


def test_perturbation_keeps_every_output_and_reaches_every_edge():
    from groundtruth.circuits import structural_edges

    art = artifact("sort")
    model, ex = art.model, art.examples
    p = perturb(model, ex, seed=3)
    assert p.scale == p.margin * p.critical_scale > 0 and p.margin == 0.5
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
        assert bool(ex.agree(p.model(ex.clean, attention_mask=ex.valid), full).all())
    for a, b in zip(p.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert not torch.equal(a, b)  # every weight moved
        assert bool(a[b == 0].ne(0).all())  # and every zero in it (a large entry may absorb noise below its ulp)
    assert structural_edges(p.model) == list(p.model.graph.edge_names)  # every edge carries some signal
    again = perturb(model, ex, seed=3)
    assert again.scale == p.scale and all(torch.equal(a, b) for a, b in zip(
        again.model.state_dict().values(), p.model.state_dict().values(), strict=True))
    other = perturb(model, ex, seed=4)
    assert not torch.equal(other.model.W_U, p.model.W_U)
    fixed = perturb(model, ex, seed=3, scale=p.scale)
    assert torch.equal(fixed.model.W_U, p.model.W_U)


def test_perturbation_refusals_name_the_value():
    art = artifact("sort")
    with pytest.raises(ValueError, match=r"noise scale -0.1 must be a number >= 0"):
        perturb(art.model, art.examples, scale=-0.1)
    with pytest.raises(ValueError, match=r"margin 0 must be in \(0, 1\]"):
        perturb(art.model, art.examples, margin=0)
    with pytest.raises(ValueError, match=r"at noise scale 10 \(seed 0\) only 0\.\d+ of the examples decode"):
        perturb(art.model, art.examples, scale=10.0)
