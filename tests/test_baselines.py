"""Baselines (EAP, EAP-IG, ACDC) and the method comparison: forms, exactness, AUROC, files."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import artifact
from prune.baselines import METHODS, acdc, acdc_sweep, eap, eap_ig, edge_auroc, ranking, top_k_mask
from prune.circuit import Circuit
from prune.data import Examples
from prune.evaluate import Evaluator
from prune.model import Transformer, TransformerConfig


def faithfulness(model, examples, mask, ablation) -> float:
    return Evaluator(model, examples, ablation).faithfulness(mask)


def metric(model, examples, mask, ablation) -> float:
    return Evaluator(model, examples, ablation).metric(mask)

FAST = ("acdc", "eap", "eap_ig")  # edge_pruning runs only in the compare test (it trains for 150 steps)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ toy models
def _examples(cfg, *, n=8, seq=5, kind="numerical", seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.vocab_size, (n, seq), generator=gen)
    corrupted = torch.randint(0, cfg.vocab_size, (n, seq), generator=gen)
    valid = torch.ones(n, seq, dtype=torch.bool)
    valid[0, -1] = False  # one padded position, so the attention mask matters
    answer = valid.clone()
    answer[:, 0] = False
    return Examples(clean=clean, corrupted=corrupted, valid=valid, answer=answer, kind=kind)


def _random(model, seed, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


def linear_toy(seed=0) -> Transformer:
    """A 2-layer model whose output is multilinear in the edge masks.

    No norm; zero query/key weights (uniform causal attention, independent of the
    inputs); MLP pre-activations pushed far positive by a large bias so the ReLU is
    the identity. Every reader's input is affine in its own masks and every path
    crosses an edge at most once, so the metric is affine in each mask alone and
    ``metric(1) - metric(1 - e_i)`` equals ``d metric / d z_i`` exactly.
    """
    cfg = TransformerConfig(vocab_size=5, d_model=4, n_layers=2, n_heads=2, d_head=3, d_mlp=4,
                            n_positions=8, d_out=1, norm="none", activation="relu")
    model = _random(Transformer(cfg), seed).double()
    with torch.no_grad():
        for block in model.blocks:
            for name in ("W_Q", "W_K", "b_Q", "b_K"):
                getattr(block, name).zero_()
            block.b_in.fill_(1e3)
    return model.requires_grad_(False)


def smooth_model(seed=0) -> Transformer:
    """A random 2-layer model with layer norm and GELU: nothing linear about it."""
    cfg = TransformerConfig(vocab_size=5, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=8,
                            n_positions=8, norm="layernorm", activation="gelu")
    model = _random(Transformer(cfg), seed).double()
    with torch.no_grad():
        for block in model.blocks:
            block.ln1.weight.fill_(1.0)
            block.ln2.weight.fill_(1.0)
        model.ln_f.weight.fill_(1.0)
    return model.requires_grad_(False)


# ------------------------------------------------------------- circuits' form
@pytest.mark.parametrize("name", ["hist", "frac_prevs", "reverse"])
@pytest.mark.parametrize("method", FAST)
def test_methods_return_documented_circuits(method, name):
    art = artifact(name)
    circuit = METHODS[method](art.model, art.examples, ablation="zero", seed=0)
    assert isinstance(circuit, Circuit)
    assert circuit.graph == art.model.graph
    assert circuit.method == method and circuit.ablation == "zero"
    assert len(circuit.scores) == art.model.graph.n_edges
    assert circuit.metadata["seconds"] >= 0 and circuit.metadata["seed"] == 0
    # The default (the shared exact finalizer): the circuit reproduces every output, and so does the
    # method's own circuit (its documented rule), kept in the metadata.
    ev = Evaluator(art.model, art.examples, "zero")
    assert ev.agreement(circuit.mask()).all()
    assert ev.agreement(art.model.graph.edge_mask(circuit.metadata["own_edges"])).all()
    own = METHODS[method](art.model, art.examples, ablation="zero", seed=0, finalize="own")
    assert list(own.edges) == circuit.metadata["own_edges"] and own.scores == circuit.scores


@pytest.mark.parametrize("method", FAST)
def test_methods_recover_small_programs_exactly(method):
    from groundtruth.recovery import recover

    for name in ("hist", "frac_prevs"):
        art = artifact(name)
        result = recover(name, art.model, art.examples, art.functional("zero"), ablation="zero",
                         pruner=METHODS[method])
        assert result.exact, (name, result.only_found, result.only_ground_truth)


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_methods_run_under_other_ablations(ablation):
    art = artifact("reverse")
    for method in FAST:
        c = METHODS[method](art.model, art.examples, ablation=ablation)
        assert c.ablation == ablation and len(c.scores) == art.model.graph.n_edges
        assert faithfulness(art.model, art.examples, c.mask(), ablation) < 1e-3


# ----------------------------------------------------------------------- ACDC
@pytest.mark.parametrize("name", ["hist", "frac_prevs", "reverse", "sort"])
def test_acdc_tau_zero_keeps_the_functional_ground_truth(name):
    art = artifact(name)
    circuit = acdc(art.model, art.examples, ablation="zero", tau=0.0, finalize="own")
    assert set(art.functional("zero")) <= set(circuit.edges)
    # Every kept edge is one whose removal (from the final circuit) changes the output loss.
    base = faithfulness(art.model, art.examples, circuit.mask(), "zero")
    for e in circuit.edges:
        mask = circuit.mask()
        mask[art.model.graph.edge_position(e)] = 0
        assert faithfulness(art.model, art.examples, mask, "zero") != base


def test_acdc_sweep_scores_are_the_largest_tau_kept():
    art = artifact("hist")
    taus = [0.0, 1e-3, 1e6]
    summary, circuits = acdc_sweep(art.model, art.examples, ablation="zero", taus=taus, finalize="own")
    assert [c.metadata["tau"] for c in circuits] == taus
    assert len(circuits[-1]) == 0  # a huge tau removes everything
    for i, e in enumerate(art.model.graph.edge_names):
        kept = [t for t, c in zip(taus, circuits) if e in c.edges]
        assert summary.scores[i] == (max(kept) if kept else 0.0)
    assert summary.edges == circuits[0].edges


# ------------------------------------------------------------- EAP exactness
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_eap_equals_finite_differences_on_a_multilinear_model(ablation):
    model = linear_toy()
    examples = _examples(model.cfg)
    g = model.graph
    circuit = eap(model, examples, ablation=ablation, top_k=3, finalize="own")
    ones = torch.ones(g.n_edges, dtype=torch.float64)
    full = metric(model, examples, ones, ablation)
    diffs = []
    for i in range(g.n_edges):
        z = ones.clone()
        z[i] = 0
        diffs.append(full - metric(model, examples, z, ablation))
    diffs = torch.tensor(diffs)
    scores = torch.tensor(circuit.scores)
    assert diffs.abs().max() > 1e-2  # the edges do matter
    torch.testing.assert_close(scores, diffs, atol=1e-8, rtol=1e-8)


# Not the smooth model under zero ablation: there layer norm sees a vanishing input
# near z = 0 and jumps within ~sqrt(eps) of it, a spike no 64-point rule resolves.
@pytest.mark.parametrize("build, ablation", [(smooth_model, "mean"), (smooth_model, "resample"),
                                            (linear_toy, "zero"), (linear_toy, "resample")])
def test_eap_ig_completeness(build, ablation):
    model = build()
    kind = "numerical" if model.cfg.out_size == 1 else "categorical"
    examples = _examples(model.cfg, kind=kind)
    g = model.graph
    circuit = eap_ig(model, examples, ablation=ablation, steps=64, top_k=3, finalize="own")
    total = sum(circuit.scores)
    m1 = metric(model, examples, torch.ones(g.n_edges, dtype=torch.float64), ablation)
    m0 = metric(model, examples, torch.zeros(g.n_edges, dtype=torch.float64), ablation)
    assert abs(m1 - m0) > 1e-2
    assert total == pytest.approx(m1 - m0, rel=1e-3, abs=1e-6)


def test_score_rules_and_errors():
    art = artifact("reverse")
    m, ex = art.model, art.examples
    assert len(eap(m, ex, ablation="zero", top_k=0, finalize="own")) == 0
    c = eap(m, ex, ablation="zero", threshold=0.0, finalize="own")
    assert c.metadata["rule"] == "threshold"
    with pytest.raises(ValueError, match="'best'"):
        eap(m, ex, ablation="zero", finalize="best")
    with pytest.raises(ValueError, match="top_k=3, threshold=0.5"):
        eap(m, ex, ablation="zero", top_k=3, threshold=0.5)
    with pytest.raises(ValueError, match="-1"):
        eap(m, ex, ablation="zero", top_k=-1)
    with pytest.raises(ValueError, match="0"):
        eap_ig(m, ex, ablation="zero", steps=0)
    with pytest.raises(ValueError, match="-0.5"):
        acdc(m, ex, ablation="zero", tau=-0.5)
    with pytest.raises(ValueError, match="'ones'"):
        eap(m, ex, ablation="ones")


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_gradient_methods_scores_do_not_depend_on_the_batch_size(method, ablation):
    art = artifact("reverse")
    whole = METHODS[method](art.model, art.examples, ablation=ablation)
    small = METHODS[method](art.model, art.examples, ablation=ablation, batch_size=7)  # uneven last batch
    assert len(art.examples) > 7
    a, b = torch.tensor(small.scores), torch.tensor(whole.scores)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())  # float32 sums in another order
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            METHODS[method](art.model, art.examples, ablation=ablation, batch_size=bad)


# ---------------------------------------------------------------------- AUROC
def test_edge_auroc_by_hand():
    gt = [1, 1, 0, 0, 0]
    assert edge_auroc([5.0, 4.0, 3.0, 2.0, 1.0], gt) == 1.0
    assert edge_auroc([1.0, 2.0, 3.0, 4.0, 5.0], gt) == 0.0
    assert edge_auroc([2.0] * 5, gt) == 0.5
    assert edge_auroc([-5.0, 4.0, 3.0, -2.0, 1.0], gt) == 1.0  # |scores|
    assert edge_auroc([-5.0, 4.0, 3.0, -2.0, 1.0], gt, absolute=False) == 0.5
    # pairs (gt, other): 3 vs 3 ties (1/2), 3 vs 0 twice, 1 vs 3 loses, 1 vs 0 twice
    assert edge_auroc([3.0, 1.0, 3.0, 0.0, 0.0], gt) == pytest.approx(4.5 / 6)
    with pytest.raises(ValueError, match="0 and 5"):
        edge_auroc([1.0] * 5, [0] * 5)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        edge_auroc([1.0, 2.0, 3.0], gt)


@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_edge_auroc_is_the_pairwise_win_rate(pairs):
    scores = [float(s) for s, _ in pairs]
    labels = [y for _, y in pairs]
    pos = [abs(s) for s, y in zip(scores, labels) if y]
    neg = [abs(s) for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert edge_auroc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_top_k_mask_breaks_ties_in_graph_order():
    scores = torch.tensor([1.0, -3.0, 3.0, 0.0])
    assert top_k_mask(scores, 1).tolist() == [0, 1, 0, 0]
    assert top_k_mask(scores, 1, absolute=False).tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="5"):
        top_k_mask(scores, 5)


# -------------------------------------------------------------------- compare
def test_compare_reports_own_and_finalized_circuits(tmp_path):
    from groundtruth.compare import compare

    assert set(METHODS) == {"edge_pruning", "acdc", "eap", "eap_ig", "feature_attribution",
                            "feature_attribution_invariant"}
    four = ("edge_pruning", "acdc", "eap", "eap_ig")
    rows = compare(",".join(four), "zero", programs="hist,frac_prevs", out_dir=tmp_path, plot="hist", quiet=True)
    assert {(r["program"], r["method"]) for r in rows} == {(p, m) for p in ("hist", "frac_prevs") for m in four}
    md = (tmp_path / "compare.md").read_text()
    assert md.startswith("| program") and "auroc" in md and "eap_ig" in md and "finalizer evaluations" in md
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["ablation"] == "zero" and len(report["rows"]) == len(rows)
    assert (tmp_path / "compare_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    for r in rows:
        art = artifact(r["program"])
        gt = art.functional("zero")
        assert r["exact"] is True  # the finalized circuit: minimal and faithful, here the ground truth
        assert r["evals"] >= r["final"] + 1  # at least one evaluation per kept edge, plus the first
        if r["method"] in FAST:  # deterministic: the same own circuit and AUROC when run again
            c = METHODS[r["method"]](art.model, art.examples, ablation="zero", finalize="own")
            assert r["auroc"] == edge_auroc(ranking(c), art.model.graph.edge_mask(gt), absolute=False)
            assert r["own"] == len(c) and r["own exact"] == (set(c.edges) == set(gt))


def test_compare_cli(tmp_path, capsys):
    from groundtruth.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["compare", "--methods", "eap", "--ablation", "resample", "--programs", "length,hist", "--out",
                     str(tmp_path), "--quiet"]) == 0
        assert torch.get_num_threads() == 1  # the default: tiny models, and no spin-waiting on a busy machine
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["skipped"] == ["length"]  # its resample ground truth is empty
    assert [r["program"] for r in report["rows"]] == ["hist"]
    assert main(["compare", "--methods", "eap,nope", "--programs", "hist", "--out", str(tmp_path)]) == 2
    assert "'nope'" in capsys.readouterr().err
