"""Edge Pruning's contract: circuits in EAP-IG JSON, determinism, and clear errors on bad input."""

import json

import pytest
import torch

from conftest import artifact
from prune.circuit import Circuit, CircuitFileError
from prune.data import Examples
from prune.edge_pruning import EdgePruningConfig, edge_pruning


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_sparsity=1.5), "target_sparsity must be in"),
    (dict(target_sparsity=-0.1), "target_sparsity must be in"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(lr=0.0), "lr must be positive"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EdgePruningConfig(**kwargs)


def test_empty_and_mismatched_datasets_are_refused():
    ids = torch.zeros(0, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="empty dataset"):
        Examples(clean=ids, corrupted=ids, valid=ids.bool(), answer=ids.bool())
    clean = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="corrupted has shape \\(3, 5\\) but clean ids have shape \\(3, 4\\)"):
        Examples(clean=clean, corrupted=torch.zeros(3, 5, dtype=torch.long), valid=clean.bool(), answer=clean.bool())


def test_nan_in_the_loss_stops_with_a_clear_error():
    art = artifact("frac_prevs")
    model = type(art.model)(art.model.cfg)
    model.load_state_dict(art.model.state_dict())
    with torch.no_grad():
        model.blocks[1].W_O.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="faithfulness loss is nan"):
        edge_pruning(model, art.examples, ablation="zero", config=EdgePruningConfig(steps=3))


def test_unknown_ablation_is_refused():
    art = artifact("hist")
    with pytest.raises(ValueError, match="unknown ablation 'average'"):
        edge_pruning(art.model, art.examples, ablation="average")


def test_circuit_json_is_eapig_and_round_trips(tmp_path):
    art = artifact("hist")
    circuit = edge_pruning(art.model, art.examples, ablation="zero", seed=1, model_name="hist")
    path = circuit.save(tmp_path / "hist.json")
    d = json.loads(path.read_text())
    g = art.model.graph
    assert set(d) >= {"cfg", "nodes", "edges"}
    assert d["cfg"] == {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel_attn_mlp": False,
                        "d_model": art.model.cfg.d_model}
    assert list(d["edges"]) == list(g.edge_names)  # every edge, in EAP-IG order
    assert all(set(v) == {"score", "in_graph"} for v in d["edges"].values())
    assert all("in_graph" in v for v in d["nodes"].values())
    assert [e for e, v in d["edges"].items() if v["in_graph"]] == list(circuit.edges)
    again = Circuit.load(path, graph=g, model="hist")
    assert again.edges == circuit.edges and again.scores == pytest.approx(circuit.scores)
    assert again.compare(circuit).exact
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left behind


def test_circuit_file_for_another_model_is_refused(tmp_path):
    hist, reverse = artifact("hist"), artifact("reverse")
    path = Circuit(graph=hist.model.graph, edges=(), ablation="zero", model="hist", d_model=18).save(tmp_path / "c.json")
    with pytest.raises(CircuitFileError, match="1-layer, 1-head model, not this 4-layer, 1-head one"):
        Circuit.load(path, graph=reverse.model.graph)
    with pytest.raises(CircuitFileError, match="circuit for model 'hist', not 'reverse'"):
        Circuit.load(path, model="reverse")
    path.write_text("{broken")
    with pytest.raises(CircuitFileError, match="not valid JSON"):
        Circuit.load(path)


def test_compare_reports_precision_recall_and_differences():
    g = artifact("hist").model.graph
    found = Circuit(graph=g, edges=("input->m0", "a0.h0->m0"), ablation="zero", model="hist", d_model=18)
    cmp = found.compare(["a0.h0->m0", "m0->logits"])
    assert (cmp.precision, cmp.recall) == (0.5, 0.5)
    assert cmp.only_found == ("input->m0",) and cmp.only_reference == ("m0->logits",) and not cmp.exact
