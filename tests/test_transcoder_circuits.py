"""``groundtruth transcoders``: circuits on trained transcoders' feature graphs, scored through the matching."""

from __future__ import annotations

import json

import pytest

import groundtruth.transcoders as tcs
from groundtruth.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def ideal_fit(model, examples, layer, width, **_):
    """Stands in for training: the layer's ideal transcoder (the compiled MLP itself)."""
    from prune.transcoder import Transcoder, mlp_activations

    x, _ = mlp_activations(model, layer, examples.clean, examples.valid)
    return Transcoder.from_mlp(model.blocks[layer], layer), x


def run(tmp_path, *argv):
    code = main(["transcoders", *argv, "--out", str(tmp_path), "--quiet"])
    assert code == 0
    return json.loads((tmp_path / "transcoder-circuits.json").read_text())


def test_trained_transcoder_recovering_every_feature_gives_exact_circuits(tmp_path, capsys):
    """frac_prevs: its one evaluable feature is recovered, so every method's finalized circuit scores exact through
    the matching (recall 1: each ground-truth edge out of the true feature is found out of the trained one)."""
    report = run(tmp_path, "frac_prevs")
    (rec,) = report["programs"]
    assert (rec["recovered"], rec["evaluable"], rec["unmatched"]) == (1, 1, [])
    assert rec["agreement"] == 1.0
    for name, s in rec["methods"].items():
        assert s["final"]["recall"] == 1.0 and s["final"]["precision"] == 1.0, name
        assert s["final"]["exact"] and s["reproduces"] and not s["err_edges"], name
    assert set(rec["methods"]) == {"edge_pruning", "acdc", "eap", "eap_ig", "feature_attribution",
                                   "feature_attribution_invariant"}
    md = (tmp_path / "transcoder-circuits.md").read_text()
    assert "| edge_pruning " in md and "1/1" in md
    assert capsys.readouterr().out == ""  # --quiet


def test_ideal_transcoders_substituted(tmp_path, monkeypatch):
    """With the ideal transcoders in place of trained ones, Edge Pruning finds the ground truth edge for edge. It
    scores exact on frac_prevs; on hist the ground truth uses a constant feature (m0.f11, one value on every input),
    which match_features does not match, so that one edge is unmatched and the score not exact."""
    monkeypatch.setattr(tcs, "fit_layer", ideal_fit)
    from groundtruth.artifacts import load_artifact
    from groundtruth.feature_truth import feature_truth

    report = run(tmp_path, "frac_prevs", "hist", "--methods", "edge_pruning")
    frac, hist = report["programs"]
    ep = frac["methods"]["edge_pruning"]["final"]
    assert ep["exact"] and ep["recall"] == 1.0 and ep["precision"] == 1.0
    assert hist["unmatched"] == ["m0.f11->logits"]
    s = hist["methods"]["edge_pruning"]
    truth = feature_truth(load_artifact("hist"), ablations=("zero",)).functional("zero")
    assert s["only_found"] == ["m0.f11->logits"] and s["missed"] == ["m0.f11->logits"]
    assert s["final"]["found"] == len(truth) and not s["final"]["exact"]
    assert s["final"]["recall"] == pytest.approx((len(truth) - 1) / len(truth))


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "no library program 'nosuch'"),
    (["shift_by"], "shift_by has no MLP"),
    (["frac_prevs", "--steps", "0"], "--steps"),
    (["frac_prevs", "--steps", "nan"], "--steps"),
    (["frac_prevs", "--seed", "-1"], "--seed"),
    (["frac_prevs", "--methods", "edge_pruning,nope"], "unknown method"),
    (["frac_prevs", "--ablation", "zero,mean"], "one ablation"),
    (["frac_prevs", "frac_prevs"], "named twice"),
])
def test_refusals(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["transcoders", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(["transcoders", "frac_prevs", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == ""
