"""The paper's transcoder attribution as a method (prune.feature_attribution): its scores against closed forms."""

from __future__ import annotations

import copy

import pytest
import torch
from test_feature_graph import random_transcoder

from conftest import artifact, random_model
from groundtruth.feature_truth import feature_truth, ideal_transcoders
from prune.baselines import METHODS
from prune.data import Examples
from prune.evaluate import Evaluator
from prune.feature_attribution import (
    attribution_scores,
    feature_attribution,
    feature_attribution_invariant,
    linearised,
)
from prune.model import TransformerConfig
from prune.transcoder import feature_model

pytestmark = pytest.mark.usefixtures("one_thread")


def two_layer_feature_model(*, norm="none", frozen_attention=False, d_out=None, seed=0):
    cfg = TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=6, n_positions=5,
                            norm=norm, d_out=d_out)
    model = random_model(cfg, seed)
    if frozen_attention:  # W_Q = W_K = 0: uniform patterns whose gradient is 0, as in the linearisation
        with torch.no_grad():
            for block in model.blocks:
                for name in ("W_Q", "W_K", "b_Q", "b_K"):
                    getattr(block, name).zero_()
    # No error terms: m{l}.err is b_dec alone, so every path into a layer's reader runs through its features.
    tcs = {0: random_transcoder(0, T=5, seed=1), 1: random_transcoder(1, T=4, seed=2)}
    return feature_model(model, tcs, keep_error=False)


def examples(kind="categorical", n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 11, (n, 5), generator=gen)
    corrupted = torch.randint(0, 11, (n, 5), generator=gen)
    valid = torch.ones(n, 5, dtype=torch.bool)
    answer = torch.zeros(n, 5, dtype=torch.bool)
    answer[:, 2:] = True
    return Examples(clean=clean, corrupted=corrupted, valid=valid, answer=answer, kind=kind)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_where_attention_cannot_move_the_attribution_is_eap(ablation):
    # With W_Q = W_K = 0 and no norm the linearisation changes nothing, so the paper's attribution summed over
    # paths is EAP's gradient exactly (float64; different summation order only).
    model, ex = two_layer_feature_model(frozen_attention=True), examples()
    want = Evaluator(model, ex, ablation).metric_gradient(1.0)
    got = attribution_scores(model, ex, ablation=ablation)
    assert want.abs().max() > 1e-3
    assert (got - want).abs().max().item() <= 1e-12 * want.abs().max().item()


def test_query_and_key_edges_score_exactly_zero_and_others_do_not():
    model, ex = two_layer_feature_model(norm="layernorm"), examples()
    scores = attribution_scores(model, ex, ablation="resample")
    names = model.graph.edge_names
    qk = torch.tensor([n.endswith(("<q>", "<k>")) for n in names])
    assert bool((scores[qk] == 0).all())
    assert bool((scores[~qk] != 0).any())
    # and they do matter here: EAP's own gradient on them is not 0
    assert Evaluator(model, ex, "resample").metric_gradient(1.0)[qk].abs().max() > 1e-3


def test_direct_feature_to_feature_edges_are_the_papers_formula():
    # Numerical output, no norm, zero ablation: layer 1's MLP writes straight to the output, so the score of
    # m0.f{i} -> m1 is mean_x sum_p f_i(x_p) sum_j (W_dec0[i] . W_enc1[:, j]) 1[pre1_j(x_p) > 0] (W_dec1[j] . u),
    # u the unembedding; the input-invariant part replaces f_i(x_p) by 1[f_i(x_p) > 0].
    model, ex = two_layer_feature_model(d_out=1), examples("numerical")
    tc0, tc1 = model.blocks[0].transcoder, model.blocks[1].transcoder
    _, cache = model.run_with_cache(ex.clean, attention_mask=ex.valid)
    g = model.graph
    into_m1 = sum(cache[w] for w in g.writer_names if not w.startswith("m1."))  # what m1 reads
    f0 = tc0.encode(sum(cache[w] for w in g.writer_names if w in ("input", "a0.h0", "a0.h1")))  # [N, S, T0]
    active1 = (tc1.pre_activations(into_m1) > 0).double()  # [N, S, T1]
    u = model.W_U[:, 0]
    downstream = (tc0.W_dec @ tc1.W_enc)[None, None] * (active1 * (tc1.W_dec @ u))[:, :, None, :]  # [N, S, T0, T1]
    per_position = downstream.sum(-1)  # [N, S, T0]
    answer = ex.answer[..., None].double()
    dependent = (f0 * per_position * answer).sum((0, 1)) / len(ex)
    invariant = ((f0 > 0).double() * per_position * answer).sum((0, 1)) / len(ex)
    edges = [g.edge_names.index(f"m0.f{i}->m1") for i in range(5)]
    for part, want in (("input_dependent", dependent), ("input_invariant", invariant)):
        got = attribution_scores(model, ex, ablation="zero", part=part)[edges]
        assert want.abs().max() > 1e-3
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (part, got, want)


def test_frozen_norm_keeps_the_forward_and_drops_the_scale_from_the_gradient():
    model, ex = two_layer_feature_model(norm="layernorm"), examples()
    z = torch.ones(model.graph.n_edges, dtype=torch.float64)
    with torch.no_grad():
        plain = model(ex.clean, attention_mask=ex.valid, edge_mask=z)
        with linearised(model):
            frozen = model(ex.clean, attention_mask=ex.valid, edge_mask=z)
    assert (frozen - plain).abs().max().item() <= 1e-12 * plain.abs().max().item()
    # The linearised norm's Jacobian is its weight over the (constant) scale times the centring projection.
    ln, x = model.blocks[1].ln2, torch.randn(8, dtype=torch.float64)
    with linearised(model):
        jac = torch.autograd.functional.jacobian(ln, x)
    sigma = torch.sqrt(x.var(unbiased=False) + ln.eps)
    want = torch.diag(ln.weight) @ (torch.eye(8) - torch.full((8, 8), 1 / 8)).double() / sigma
    assert torch.allclose(jac, want, atol=1e-12)
    assert not torch.allclose(torch.autograd.functional.jacobian(ln, x), want, atol=1e-3)  # hooks are removed


def test_binary_features_have_equal_dependent_and_invariant_scores():
    # A categorical Tracr MLP's hidden units fire at 1 or 0 (a lookup table): factoring the activation out
    # changes nothing under zero ablation. Selector width's discretising MLP (in count) has graded ones.
    sort = feature_truth(copy.deepcopy(artifact("sort")), ablations=("zero",))
    a = attribution_scores(sort.model, sort.examples, ablation="zero")
    b = attribution_scores(sort.model, sort.examples, ablation="zero", part="input_invariant")
    assert torch.equal(a, b)
    art = copy.deepcopy(artifact("count"))
    fm = feature_model(art.model, ideal_transcoders(art.model))
    a = attribution_scores(fm, art.examples, ablation="zero")
    b = attribution_scores(fm, art.examples, ablation="zero", part="input_invariant")
    assert not torch.equal(a, b)


@pytest.mark.parametrize("method", [feature_attribution, feature_attribution_invariant])
def test_the_methods_are_pruners_that_recover_small_programs(method):
    from groundtruth.recovery import recover

    assert METHODS[method.__name__] is method
    for name in ("hist", "frac_prevs"):
        art = artifact(name)
        result = recover(name, art.model, art.examples, art.functional("zero"), ablation="zero", pruner=method)
        assert result.exact, (name, result.only_found, result.only_ground_truth)
    c = method(art.model, art.examples, ablation="resample", finalize="own", top_k=3)
    assert c.method == method.__name__ and len(c.scores) == art.model.graph.n_edges
    assert c.metadata["part"] in ("input_dependent", "input_invariant") and c.metadata["rule"] == "top_k"


def test_bad_part_is_refused():
    art = artifact("hist")
    with pytest.raises(ValueError, match="'both'"):
        attribution_scores(art.model, art.examples, ablation="zero", part="both")


def test_compare_on_feature_graphs(tmp_path, capsys):
    import json

    from groundtruth.cli import main
    from prune.circuit import Circuit

    threads = torch.get_num_threads()
    try:
        code = main(["compare", "--graph", "features", "--methods", "eap,feature_attribution", "--programs",
                     "hist,count", "--out", str(tmp_path), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["graph"] == "features" and len(report["rows"]) == 4
    for r in report["rows"]:
        truth = feature_truth(artifact(r["program"]), ablations=("zero",))
        assert r["gt edges"] == len(truth.functional("zero")) and r["exact"] is True
        c = Circuit.load(tmp_path / r["files"]["circuit"])
        assert c.graph == truth.model.graph and c.graph.features is not None
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compare", "--graph", "features", "--methods", "eap", "--programs", "hist", "--out",
                 str(tmp_path), "--draw", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--draw" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_compare_on_the_feature_graphs_of_compressed_variants(tmp_path, capsys):
    import json

    from groundtruth.artifacts import VARIANT_ROOT, load_artifact
    from groundtruth.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["compare", "--graph", "features", "--variant", "compressed", "--methods", "eap", "--programs",
                     "count", "--out", str(tmp_path), "--quiet"]) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads((tmp_path / "compare.json").read_text())["rows"]
    truth = feature_truth(load_artifact(VARIANT_ROOT / "count@compressed"), ablations=("zero",))
    assert row["program"] == "count@compressed" and row["gt edges"] == len(truth.functional("zero"))
