"""Circuits written and evaluated by EAP-IG itself (../shared/interop/, its README says how they were
made): they load with identical edges and scores, and evaluate to EAP-IG's recorded values under EAP-IG's
writer conventions, under every ablation."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prune import Circuit, CircuitFileError, Evaluator, Examples, acdc, eap, eap_ig, edge_pruning
from prune.edge_pruning import language_model_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "interop"
CIRCUITS = ("eap_top40_unpruned.json", "eap_top40_pruned.json")
# EAP-IG's interventions by our names: "patching" is our resample, "mean-positional" our mean.
ABLATIONS = ("resample", "mean", "zero")
# The fixtures were computed in float64 and so is this evaluation; the sums are ordered differently
# (observed differences are below 4e-15), so 1e-6 (the bound) holds with nine orders to spare.
TOLERANCE = 1e-6


def _shared_fixtures_present():
    if not SHARED.is_dir():  # CI clones main with ../shared beside it; a bare checkout has no fixtures
        pytest.fail(f"{SHARED} is missing: the interop fixtures live in ../shared/interop beside the checkout")


@pytest.fixture(scope="module")
def fixture():
    import transformers

    from prune.loaders import from_hf

    _shared_fixtures_present()
    transformers.logging.set_verbosity_error()
    model = from_hf(SHARED / "tiny-gpt2", dtype=torch.float64)
    batch = load_file(SHARED / "batch.safetensors")
    n, s = batch["clean"].shape
    answer = torch.zeros(n, s, dtype=torch.bool)
    answer[:, -1] = True  # EAP-IG's metric reads the last position
    examples = Examples(clean=batch["clean"], corrupted=batch["corrupted"],
                        valid=torch.ones(n, s, dtype=torch.bool), answer=answer)
    values = json.loads((SHARED / "eap_ig_values.json").read_text())
    return model, examples, batch["label"], values


def _log_prob_of_label(evaluator, circuit, label):  # [N]: EAP-IG's metric of the fixtures
    logits = evaluator.logits(circuit.mask())[:, -1]
    return torch.log_softmax(logits, -1).gather(-1, label[:, None])[:, 0]


@pytest.mark.parametrize("name", CIRCUITS)
def test_eap_ig_files_load_with_identical_edges_scores_and_order(name):
    _shared_fixtures_present()
    raw = json.loads((SHARED / name).read_text())
    circuit = Circuit.load(SHARED / name)
    g = circuit.graph
    assert (g.n_layers, g.n_heads, g.conventions) == (2, 4, "eap-ig")  # no `conventions` key: EAP-IG's own file
    assert list(raw["edges"]) == list(g.edge_names)  # EAP-IG's edge order is ours
    assert list(raw["nodes"]) == [*g.writer_names, "logits"]
    assert circuit.edges == tuple(e for e, v in raw["edges"].items() if v["in_graph"])
    assert circuit.scores == tuple(float(v["score"]) for v in raw["edges"].values())
    # and back: the file we write holds the same edges, scores and in_graph flags, and says its conventions
    again = circuit.to_dict()
    assert again["edges"] == raw["edges"] and again["conventions"] == "eap-ig"


def test_our_prune_rule_is_eap_ig_s():
    unpruned, pruned = (Circuit.load(SHARED / name) for name in CIRCUITS)
    values = json.loads((SHARED / "eap_ig_values.json").read_text())
    assert unpruned.connected().edges == pruned.edges
    assert pruned.connected().edges == pruned.edges
    for name in CIRCUITS:
        for ablation in ABLATIONS:
            assert len(pruned) == values[name][ablation]["edges_in_graph_after_eap_ig_prune"]


@pytest.mark.parametrize("name", CIRCUITS)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_eap_ig_circuits_evaluate_to_eap_ig_s_values(fixture, name, ablation):
    model, examples, label, values = fixture
    eap_ig_model = model.with_conventions("eap-ig")
    circuit = Circuit.load(SHARED / name, graph=eap_ig_model.graph)
    got = _log_prob_of_label(Evaluator(eap_ig_model, examples, ablation), circuit, label)
    want = torch.tensor(values[name][ablation]["per_example"], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)
    assert abs(got.mean().item() - values[name][ablation]["mean"]) <= TOLERANCE


def test_under_our_conventions_the_same_files_evaluate_differently(fixture):
    # The reason conventions are explicit. Ours share b_O among the heads and put the position embedding in
    # `input`, so zero ablation removes them with the edges (mean and resample replace them by themselves:
    # they do not depend on the prompt); and ours evaluates a circuit as it stands, without EAP-IG's prune,
    # so on the unpruned file the heads without incoming edges still write what they compute from ablated
    # inputs (under resample that is their corrupted output, which EAP-IG's prune puts there too).
    model, examples, label, values = fixture
    gaps = {}
    for name in CIRCUITS:
        circuit = Circuit.load(SHARED / name, conventions="ours")
        for ablation in ABLATIONS:
            got = _log_prob_of_label(Evaluator(model, examples, ablation), circuit, label)
            want = torch.tensor(values[name][ablation]["per_example"], dtype=torch.float64)
            gaps[name, ablation] = (got - want).abs().max().item()
    pruned, unpruned = "eap_top40_pruned.json", "eap_top40_unpruned.json"
    assert max(gaps[name, "resample"] for name in CIRCUITS) <= TOLERANCE, gaps
    assert gaps[pruned, "mean"] <= TOLERANCE, gaps
    assert gaps[pruned, "zero"] > 0.1 and gaps[unpruned, "zero"] > 0.1 and gaps[unpruned, "mean"] > 0.01, gaps


def test_a_file_found_under_other_conventions_says_so(fixture, tmp_path):
    model, *_ = fixture
    with pytest.raises(CircuitFileError, match=r"found under 'eap-ig' writer conventions.*with_conventions"):
        Circuit.load(SHARED / "eap_top40_pruned.json", graph=model.graph)
    ours = Circuit.load(SHARED / "eap_top40_pruned.json", graph=model.graph, conventions="ours")
    assert ours.graph == model.graph
    ours.save(tmp_path / "ours.json")  # written by us: records "ours"
    assert json.loads((tmp_path / "ours.json").read_text())["conventions"] == "ours"
    with pytest.raises(CircuitFileError, match=r"found under 'ours' writer conventions"):
        Circuit.load(tmp_path / "ours.json", graph=model.with_conventions("eap-ig").graph)
    with pytest.raises(ValueError, match="cannot compare circuits of different graphs"):
        ours.compare(Circuit.load(SHARED / "eap_top40_pruned.json"))
    with pytest.raises(ValueError, match="unknown writer conventions 'tl'"):
        model.with_conventions("tl")
    raw = json.loads((tmp_path / "ours.json").read_text())
    raw["conventions"] = "transformer-lens"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(CircuitFileError, match="unknown writer conventions 'transformer-lens'"):
        Circuit.load(tmp_path / "bad.json")


@pytest.mark.parametrize("method", ["edge_pruning", "eap", "eap_ig", "acdc"])
def test_every_method_runs_under_eap_ig_conventions_and_records_them(fixture, method, tmp_path):
    model, examples, *_ = fixture
    eap_ig_model = model.with_conventions("eap-ig")
    examples = examples.subset(torch.arange(8))
    run = {"edge_pruning": lambda: edge_pruning(eap_ig_model, examples, ablation="resample", seed=0,
                                                config=language_model_config(0.5, steps=10)),
           "eap": lambda: eap(eap_ig_model, examples, ablation="resample"),
           "eap_ig": lambda: eap_ig(eap_ig_model, examples, ablation="resample"),
           "acdc": lambda: acdc(eap_ig_model, examples, ablation="resample")}[method]
    circuit = run()
    assert circuit.graph == eap_ig_model.graph
    assert circuit.connected().edges == circuit.edges  # the finalizer returns what EAP-IG would evaluate
    evaluator = Evaluator(eap_ig_model, examples, "resample")
    assert evaluator.reproduces(circuit.mask())  # the shared finalizer's criterion, under these conventions
    circuit.save(tmp_path / "c.json")
    again = Circuit.load(tmp_path / "c.json", graph=eap_ig_model.graph)
    assert again.edges == circuit.edges


def test_with_conventions_shares_the_weights_and_keeps_the_outputs(fixture):
    model, examples, *_ = fixture
    other = model.with_conventions("eap-ig")
    assert other.W_E is model.W_E and other.blocks[0].W_Q is model.blocks[0].W_Q
    assert (model.conventions, other.conventions) == ("ours", "eap-ig")
    torch.testing.assert_close(other(examples.clean), model(examples.clean), atol=1e-12, rtol=0)
    # the writers differ by what EAP-IG never ablates: the position embedding and b_O
    S = examples.clean.shape[1]
    fixed = other.W_pos[:S] + sum(b.b_O for b in other.blocks)
    torch.testing.assert_close(other.writers(examples.clean).sum(0) + fixed, model.writers(examples.clean).sum(0),
                               atol=1e-12, rtol=0)


def test_prune_run_finds_and_records_circuits_under_eap_ig_conventions(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from prune.cli import main
    from prune.graph import Graph

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2)).save_pretrained(
        tmp_path / "gpt2")
    args = ["run", "--model", str(tmp_path / "gpt2"), "--task", "ioi", "--target-edge-sparsity", "0.9",
            "--out", str(tmp_path / "out"), "--n", "8", "--batch-size", "4", "--steps", "4", "--threads", "1",
            "--quiet"]
    assert main([*args, "--conventions", "eap-ig"]) == 0
    written = json.loads((tmp_path / "out" / "target-0.9" / "circuit.json").read_text())
    assert written["conventions"] == "eap-ig"
    assert json.loads((tmp_path / "out" / "target-0.9" / "metrics.json").read_text())["conventions"] == "eap-ig"
    circuit = Circuit.load(tmp_path / "out" / "target-0.9" / "circuit.json",
                           graph=Graph(n_layers=2, n_heads=2, conventions="eap-ig"))
    assert circuit.connected().edges == circuit.edges
    capsys.readouterr()
    # resuming (or adding targets) under the other conventions is refused, before anything is written
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert main([*args, "--resume", "--conventions", "ours"]) == 2
    assert "conventions = 'eap-ig'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before
