"""Edge Pruning's contract: circuits in EAP-IG JSON, determinism, and clear errors on bad input."""

import dataclasses
import json
import re

import pytest
import torch

from conftest import artifact
from prune.circuit import Circuit, CircuitFileError
from prune.data import Examples
from prune.edge_pruning import EdgePruner, EdgePruningConfig, edge_pruning


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


# ------------------------------------------------------------------ binarisation
def _faithful(art, edges, ablation):
    from prune.evaluate import Evaluator

    return bool(Evaluator(art.model, art.examples, ablation).agreement(art.model.graph.edge_mask(edges)).all())


def test_own_finalize_is_edge_prunings_thresholded_circuit():
    art = artifact("sort")
    pruner = EdgePruner(art.model, art.examples, ablation="zero", config=EdgePruningConfig(finalize="own"))
    circuit = pruner.run().circuit()
    thresholded = Circuit.from_mask(art.model.graph, pruner.threshold_mask().float(), ablation="zero", model="",
                                    d_model=0).without_dead_ends()
    assert circuit.edges == thresholded.edges
    assert "finalize" not in circuit.metadata and "own_edges" not in circuit.metadata


def test_exact_binarisation_gives_a_faithful_circuit_whose_every_edge_is_necessary():
    # 40 steps leave the gates far from settled, so the thresholded circuit is wrong
    # and the repair has real work to do (both growing and dropping are exercised:
    # the assertions on the metadata fail if it has none).
    art = artifact("sort")
    short = EdgePruningConfig(steps=40)
    circuit = edge_pruning(art.model, art.examples, ablation="zero", seed=0, config=short)
    threshold = circuit.metadata["own_edges"]
    assert set(threshold) != set(circuit.edges)
    assert circuit.metadata["finalize"]["removed"] > 0
    assert _faithful(art, circuit.edges, "zero")
    for edge in circuit.edges:
        rest = [e for e in circuit.edges if e != edge]
        assert not _faithful(art, rest, "zero"), f"{edge} is not necessary"


def test_exact_binarisation_grows_a_circuit_that_misses_edges():
    # A pruner whose gates all end closed but one: the threshold circuit cannot be
    # faithful, so the repair must grow along the ranking before it drops.
    art = artifact("frac_prevs")
    pruner = EdgePruner(art.model, art.examples, ablation="zero", config=EdgePruningConfig(steps=1))
    with torch.no_grad():
        pruner.log_alpha.fill_(-1.0)
    circuit = pruner.circuit()
    assert circuit.metadata["own_edges"] == []
    assert circuit.metadata["finalize"]["added"] > 0
    assert set(circuit.edges) == set(art.functional("zero"))


# ------------------------------------------------------------------ checkpoints
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    art = artifact("frac_prevs")
    cfg = EdgePruningConfig(steps=40)
    whole = EdgePruner(art.model, art.examples, ablation="resample", seed=5, config=cfg).run()
    first = EdgePruner(art.model, art.examples, ablation="resample", seed=5, config=cfg)
    for _ in range(17):
        first.step()
    path = first.save(tmp_path / "run.safetensors")
    resumed = EdgePruner(art.model, art.examples, ablation="resample", seed=5, config=cfg).load(path)
    assert resumed.step_index == 17
    resumed.run()
    assert torch.equal(resumed.log_alpha, whole.log_alpha)  # bit for bit: RNG, Adam and multipliers restored
    assert resumed.circuit().edges == whole.circuit().edges
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


def test_checkpoint_of_another_run_or_missing_or_broken_is_refused(tmp_path):
    from prune.edge_pruning import CheckpointError, EdgePruner

    art = artifact("frac_prevs")
    cfg = EdgePruningConfig(steps=5)
    path = EdgePruner(art.model, art.examples, ablation="zero", seed=1, config=cfg).save(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="made with seed = '1', but this run has '2'"):
        EdgePruner(art.model, art.examples, ablation="zero", seed=2, config=cfg).load(path)
    with pytest.raises(CheckpointError, match="made with ablation"):
        EdgePruner(art.model, art.examples, ablation="resample", seed=1, config=cfg).load(path)
    with pytest.raises(CheckpointError, match="fingerprint"):  # other data
        EdgePruner(art.model, art.examples.subset(slice(0, 10)), ablation="zero", seed=1, config=cfg).load(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        EdgePruner(art.model, art.examples, ablation="zero", seed=1, config=cfg).load(tmp_path / "none.safetensors")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        EdgePruner(art.model, art.examples, ablation="zero", seed=1, config=cfg).load(path)


def test_a_save_that_fails_leaves_the_last_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    art = artifact("frac_prevs")
    pruner = EdgePruner(art.model, art.examples, ablation="zero", config=EdgePruningConfig(steps=5))
    path = pruner.save(tmp_path / "c.safetensors")
    before = path.read_bytes()
    pruner.step()

    def dies_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # as when the run is stopped during the write

    monkeypatch.setattr(safetensors.torch, "save_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        pruner.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    assert path.read_bytes() == before


def test_tied_key_value_gates_are_one_per_group_and_export_ungrouped():
    from conftest import random_model
    from prune.edge_pruning import language_model_config
    from prune.model import TransformerConfig

    cfg = TransformerConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_mlp=32,
                            n_positions=16, norm="rmsnorm", positional="rotary", gated_mlp=True, activation="silu",
                            attn_bias=False, attn_out_bias=False, mlp_bias=False)
    model = random_model(cfg, 0).float()
    g = torch.Generator().manual_seed(1)
    answer = torch.zeros(8, 6, dtype=torch.bool)
    answer[:, -1] = True
    examples = Examples(clean=torch.randint(0, 20, (8, 6), generator=g),
                        corrupted=torch.randint(0, 20, (8, 6), generator=g),
                        valid=torch.ones(8, 6, dtype=torch.bool), answer=answer)
    pruner = EdgePruner(model, examples, ablation="resample", seed=0,
                        config=language_model_config(0.5, steps=40, batch_size=8, tie_kv=True))
    pruner.run()
    graph = model.graph

    def kv_partners(w, r):  # an edge into a key or value reader: its name, its group's first head's, the other head's
        m = re.match(r"^a(\d+)\.h(\d+)<([kv])>$", graph.reader_names[r])
        if m is None:
            return None
        writer, (layer, h, port) = graph.writer_names[w], (int(m.group(1)), int(m.group(2)), m.group(3))
        return (f"{writer}->{graph.reader_names[r]}", f"{writer}->a{layer}.h{h - h % 2}<{port}>",
                f"{writer}->a{layer}.h{h ^ 1}<{port}>")

    la = dict(zip(graph.edge_names, pruner.edge_log_alpha().tolist(), strict=True))
    pairs = [p for w, r in graph.edges if (p := kv_partners(w, r))]
    assert all(la[name] == la[lead] for name, lead, _ in pairs)  # one gate per writer and group
    assert any(la[lead] != 3.0 for _, lead, _ in pairs)  # the tied gates trained (they start at 3)
    circuit = pruner.circuit()  # in the ungrouped graph's names: a group's heads keep or drop an edge together
    kept = set(circuit.edges)
    assert all((name in kept) == (other in kept) for name, _, other in pairs)
    assert 0 < len(circuit) < graph.n_edges
    with pytest.raises(ValueError, match="tie_kv is for grouped-query attention"):
        EdgePruner(random_model(dataclasses.replace(cfg, n_kv_heads=None), 0).float(), examples,
                   ablation="zero", config=language_model_config(0.5, steps=2, tie_kv=True))
