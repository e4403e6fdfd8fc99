"""MIB's CPR and CMD (prune.mib), checked on a toy model whose faithfulness curve is known by hand,
and MIB's submission layout."""

from __future__ import annotations

import json

import pytest
import torch

from prune import mib
from prune.circuit import Circuit
from prune.data import Examples
from prune.evaluate import Evaluator
from prune.model import Transformer, TransformerConfig

# The toy: one layer, two heads with uniform attention (W_Q = W_K = 0), no biases, no MLP weights.
# Prompt "0 1", read at position 1; the metric is logit[2] - logit[3].
#   input -> logits: token 1's embedding e1 reaches logit 2 with weight D.
#   head 0 reads e0 through v and writes A to logit 2: 0.5 * A at position 1 (mean over "0", "1").
#   head 1 reads e1 through v and writes B: 0.5 * B.
# Under zero ablation m(C) is additive: D [input->logits] + 0.5 A [h0 v and h0->logits] + 0.5 B [h1 v and h1->logits],
# m(empty) = 0 and m(full) = D + A/2 + B/2 = 4.
A, B, D = 2.0, 4.0, 1.0


@pytest.fixture(scope="module")
def toy():
    cfg = TransformerConfig(vocab_size=4, d_model=4, n_layers=1, n_heads=2, d_head=1, d_mlp=1, n_positions=2,
                            attn_bias=False, attn_out_bias=False, mlp_bias=False)
    model = Transformer(cfg)
    with torch.no_grad():
        model.W_E[0, 0] = model.W_E[1, 1] = 1.0
        block = model.blocks[0]
        block.W_V[0, 0, 0] = block.W_V[1, 1, 0] = 1.0
        block.W_O[0, 0, 2], block.W_O[1, 0, 3] = A, B
        model.W_U[1, 2] = D
        model.W_U[2, 2] = model.W_U[3, 2] = 1.0
    ids = torch.tensor([[0, 1]])
    ex = Examples(clean=ids, corrupted=ids, valid=torch.ones(1, 2, dtype=torch.bool),
                  answer=torch.tensor([[False, True]]))
    evaluator = Evaluator(model, ex, "zero")

    def metric(logits):
        return (logits[:, 1, 2] - logits[:, 1, 3]).mean().item()

    return model, evaluator, metric


def _scores(graph) -> torch.Tensor:
    named = {"input->logits": 5.0, "a0.h0->logits": 4.0, "input->a0.h0<v>": 3.0, "input->a0.h1<v>": 1.0,
             "a0.h1->logits": -10.0}
    others = [e for e in graph.edge_names if e not in named]
    named.update({e: -0.1 * (j + 1) for j, e in enumerate(others)})  # the other 8 edges: below, distinct
    return torch.tensor([named[e] for e in graph.edge_names])


def test_the_toy_model_is_additive_in_its_edges(toy):
    model, evaluator, metric = toy
    assert metric(evaluator.reference) == pytest.approx(D + A / 2 + B / 2, abs=1e-6)
    assert metric(evaluator.logits(model.graph.edge_mask(["input->a0.h0<v>", "a0.h0->logits"]))) \
        == pytest.approx(A / 2, abs=1e-6)


def test_cpr_and_cmd_on_the_toy_curve_match_the_hand_computation(toy):
    model, evaluator, metric = toy
    n = model.graph.n_edges
    assert n == 13  # int(p * 13): 0 edges up to 5%, then 1, 2, 6, 13
    scores = _scores(model.graph)
    signed = mib.faithfulness_curve(evaluator, metric, scores, method="toy", absolute=False)
    # Signed ranking: k=1 {input->logits}: 1/4; k=2 adds h0->logits, pruned (h0 has no input edge): 1/4;
    # k=6 adds h0's v (and h1's v, pruned: h1 reaches nothing) and two q/k edges: (1 + 1)/4; all: 1.
    assert signed.faithfulness == pytest.approx((0,) * 6 + (0.25, 0.25, 0.5, 1.0), abs=1e-6)
    assert signed.edges[6:] == (1, 1, 5, 13)
    # Trapezoids: .05 * .125 + .1 * .25 + .3 * .375 + .5 * .75 = 0.51875.
    assert signed.cpr == pytest.approx(0.51875, abs=1e-6)
    absolute = mib.faithfulness_curve(evaluator, metric, scores, method="toy", absolute=True)
    # |score| ranking: k=1 {h1->logits}, pruned: 0; k=2 adds input->logits: 1/4; k=6 has both heads whole: 1.
    assert absolute.faithfulness == pytest.approx((0,) * 6 + (0.0, 0.25, 1.0, 1.0), abs=1e-6)
    # |1 - f|: 1 over [.001, .1], then (1 + .75)/2 * .1 + .75/2 * .3 = .049 + .05 + .0875 + .1125 = 0.299.
    assert absolute.cmd == pytest.approx(0.299, abs=1e-6)
    assert absolute.metric_empty == 0.0 and absolute.metric_full == pytest.approx(4.0, abs=1e-6)


def test_one_circuit_per_fraction_is_placed_at_its_nominal_fraction(toy):
    model, evaluator, metric = toy
    g = model.graph
    both = g.edge_mask(["input->logits", "input->a0.h1<v>", "a0.h1->logits"])
    curve = mib.faithfulness_curve(evaluator, metric, lambda p: both if p >= 0.5 else torch.zeros(g.n_edges),
                                   method="toy", absolute=False)
    # At 50%: input->logits and head 1 whole, (1 + 2)/4; at 100% the full model, as MIB's evaluator does.
    assert curve.faithfulness[-2:] == pytest.approx((0.75, 1.0), abs=1e-6)
    assert curve.edges[-2:] == (3, 13)
    with pytest.raises(ValueError, match=r"has 3 edges, over int\(0.001 \* 13\) = 0"):
        mib.faithfulness_curve(evaluator, metric, lambda p: both, method="toy", absolute=False)


def test_areas_and_faithfulness_definitions():
    # A straight line f = x over the fractions: area = (1 - .001^2) / 2 exactly for the trapezoid rule.
    under, from_1 = mib.areas(mib.PERCENTAGES, mib.PERCENTAGES)
    assert under == pytest.approx((1 - 0.001**2) / 2, abs=1e-12)
    assert from_1 == pytest.approx(0.999 - under, abs=1e-12)
    # |1 - f| point by point, not |integral|: f = 2 everywhere gives CMD = width, CPR = 2 * width.
    assert mib.areas([2.0] * 10) == pytest.approx((2 * 0.999, 0.999), abs=1e-12)
    assert mib.faithfulness(3.0, 5.0, 1.0) == 0.5 and mib.faithfulness(7.0, 5.0, 1.0) == 1.5  # unclipped
    with pytest.raises(ValueError, match="undefined"):
        mib.faithfulness(1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="increase"):
        mib.areas([0, 1], [1.0, 0.5])


def _circuit(model, edges=(), scores=None):
    return Circuit(graph=model.graph, edges=tuple(edges), ablation="zero", model="toy",
                   d_model=model.cfg.d_model, scores=scores, method="toy")


def test_a_submission_is_written_in_mib_s_layout(toy, tmp_path):
    model, *_ = toy
    scores = tuple(_scores(model.graph).tolist())
    folder = mib.write_submission(tmp_path, method="eap-ig", task="greater_than", model="tiny",
                                  scores=_circuit(model, scores=scores))
    assert folder == tmp_path / "eap-ig" / "greater-than_tiny"
    assert [f.name for f in folder.iterdir()] == ["importances.json"]
    d = json.loads((folder / "importances.json").read_text())
    assert set(d) == {"cfg", "nodes", "edges"}
    assert d["cfg"] == {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 4}
    assert [v["score"] for v in d["edges"].values()] == pytest.approx(scores)
    assert list(d["edges"]) == list(model.graph.edge_names)

    circuits = {p: _circuit(model, ["input->logits"] if int(p * 13) >= 1 else []) for p in mib.PERCENTAGES[:-1]}
    folder = mib.write_submission(tmp_path, method="edge-pruning", task="ioi", model="tiny", circuits=circuits)
    assert sorted(f.name for f in folder.iterdir()) == sorted(f"{p:g}.json" for p in mib.PERCENTAGES[:-1])
    d = json.loads((folder / "0.1.json").read_text())
    assert [e for e, v in d["edges"].items() if v["in_graph"]] == ["input->logits"]
    assert all("score" in v for v in d["edges"].values())  # MIB's loader reads a score for every edge


def test_a_submission_is_refused_before_anything_is_written(toy, tmp_path):
    model, *_ = toy
    good = _circuit(model, scores=(0.0,) * 13)
    with pytest.raises(ValueError, match="must not contain '_'"):
        mib.write_submission(tmp_path, method="eap", task="ioi", model="my_model", scores=good)
    with pytest.raises(ValueError, match="no scores"):
        mib.write_submission(tmp_path, method="eap", task="ioi", model="tiny", scores=_circuit(model))
    too_big = {p: _circuit(model, ["input->logits", "m0->logits"]) for p in mib.PERCENTAGES[:-1]}
    with pytest.raises(ValueError, match=r"has 2 edges, over int\(0.001 \* 13\) = 0"):
        mib.write_submission(tmp_path, method="ep", task="ioi", model="tiny", circuits=too_big)
    with pytest.raises(ValueError, match="exactly the fractions"):
        mib.write_submission(tmp_path, method="ep", task="ioi", model="tiny", circuits={0.5: good})
    assert list(tmp_path.iterdir()) == []
    mib.write_submission(tmp_path, method="eap", task="ioi", model="tiny", scores=good)
    with pytest.raises(FileExistsError, match="MIB reads every file"):
        mib.write_submission(tmp_path, method="eap", task="ioi", model="tiny", scores=good)


# ------------------------------------------------------------ prune mib-export
def _saved(tmp_path, name, edges, conventions="eap-ig", scores=None):
    from prune.graph import Graph

    g = Graph(n_layers=1, n_heads=2, conventions=conventions)
    return Circuit(graph=g, edges=tuple(edges), ablation="resample", model="toy", d_model=4, scores=scores,
                   method="edge_pruning").save(tmp_path / f"{name}.json")


def _export(capsys, *argv):
    from prune.cli import main

    code = main(["mib-export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_mib_export_writes_importances_from_one_file(tmp_path, capsys):
    scores = tuple(float(i) for i in range(13))
    f = _saved(tmp_path, "scored", ["m0->logits"], scores=scores)
    code, out, _ = _export(capsys, f, "--task", "ioi", "--model-name", "toy", "--method", "ep", "--out", tmp_path / "o")
    assert code == 0 and "importances.json" in out
    d = json.loads((tmp_path / "o" / "ep" / "ioi_toy" / "importances.json").read_text())
    assert [v["score"] for v in d["edges"].values()] == list(scores)


def test_mib_export_places_the_largest_circuit_within_each_fraction(tmp_path, capsys):
    one = _saved(tmp_path, "one", ["input->logits"])
    three = _saved(tmp_path, "three", ["input->logits", "input->a0.h1<v>", "a0.h1->logits"])
    code, out, _ = _export(capsys, one, three, "--task", "greater_than", "--model-name", "toy", "--method", "ep",
                           "--out", tmp_path / "o")
    assert code == 0
    folder = tmp_path / "o" / "ep" / "greater-than_toy"
    # int(p * 13): 0 up to 5% (empty), 1 at 10% and 2 at 20% (the one-edge circuit), 6 at 50% (the three-edge one).
    sizes = {f.name: sum(v["in_graph"] for v in json.loads(f.read_text())["edges"].values()) for f in folder.iterdir()}
    assert sizes == {"0.001.json": 0, "0.002.json": 0, "0.005.json": 0, "0.01.json": 0, "0.02.json": 0,
                     "0.05.json": 0, "0.1.json": 1, "0.2.json": 1, "0.5.json": 3}
    assert "0.5.json: at most 6 of 13 edges: " + str(three) in out


def test_mib_export_refusals_write_nothing(tmp_path, capsys):
    ours = _saved(tmp_path, "ours", ["input->logits"], conventions="ours")
    good = _saved(tmp_path, "good", ["input->logits"])
    from prune.graph import Graph

    other = Circuit(graph=Graph(n_layers=2, n_heads=2, conventions="eap-ig"), edges=(), ablation="resample",
                    model="toy", d_model=4).save(tmp_path / "other.json")
    out = tmp_path / "o"
    common = ["--model-name", "toy", "--method", "ep", "--out", out]
    cases = [
        ([good, "--task", "nope", *common], "unknown; choose one of"),
        ([ours, "--task", "ioi", *common], "found under 'ours' writer conventions"),
        ([good, other, "--task", "ioi", *common], "different graphs"),
        ([good, good, "--task", "ioi", *common], "given twice"),
        ([tmp_path / "missing.json", "--task", "ioi", *common], "missing.json"),
        ([good, "--task", "ioi", "--model-name", "my_model", "--method", "ep", "--out", out], "must not contain '_'"),
        ([good, other, "--mode", "scores", "--task", "ioi", *common], "different graphs"),
    ]
    for argv, message in cases:
        code, _, err = _export(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not out.exists()
    assert _export(capsys, ours, "--any-conventions", "--task", "ioi", *common)[0] == 0
    code, _, err = _export(capsys, ours, "--any-conventions", "--task", "ioi", *common)
    assert code == 2 and "exists" in err
