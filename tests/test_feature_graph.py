"""The transcoder feature graph (prune.graph ``features``), the feature model (prune.transcoder.feature_model),
every method on it, and the feature-level ground truth (groundtruth.feature_truth)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import artifact, random_model
from groundtruth.circuits import verify
from groundtruth.feature_truth import feature_truth, ideal_transcoders
from prune.ablation import ABLATIONS, ablated_writers
from prune.baselines import acdc, eap, eap_ig
from prune.circuit import Circuit, CircuitFileError
from prune.edge_pruning import EdgePruningConfig, edge_pruning
from prune.evaluate import Evaluator
from prune.graph import Graph
from prune.model import TransformerConfig
from prune.transcoder import Transcoder, TranscoderConfig, feature_model, replace_mlps

pytestmark = pytest.mark.usefixtures("one_thread")


def collapse(name: str) -> str:
    """An edge or writer of the feature graph with each transcoded layer's writers merged back into ``m{l}``."""
    return re.sub(r"\bm(\d+)\.(f\d+|err)\b", r"m\1", name)


layer_counts = st.integers(1, 3).flatmap(
    lambda L: st.tuples(st.just(L), st.integers(1, 3), st.lists(st.integers(0, 3), min_size=L, max_size=L)))


# ------------------------------------------------------------------ the graph
@given(layer_counts, st.data())
def test_names_and_order_round_trip(shape, data):
    L, H, features = shape
    g, plain = Graph(n_layers=L, n_heads=H, features=features), Graph(n_layers=L, n_heads=H)
    assert g.reader_names == plain.reader_names  # readers are unchanged
    assert len(set(g.writer_names)) == g.n_writers and len(set(g.edge_names)) == g.n_edges
    for name in g.writer_names:
        assert g.writer_names[g.writer_index(name)] == name
    # Merging a transcoded layer's writers back into m{l} gives the ordinary graph, in its order.
    merged = [collapse(w) for w in g.writer_names]
    assert list(dict.fromkeys(merged)) == list(plain.writer_names)
    assert list(dict.fromkeys(collapse(e) for e in g.edge_names)) == list(plain.edge_names)
    # Each plain edge out of a transcoded m{l} appears once per feature and once for m{l}.err.
    per_writer = [features[int(w[1:])] + 1 if re.fullmatch(r"m\d+", w) else 1 for w in plain.writer_names]
    assert g.n_edges == sum(per_writer[w] for w, _ in plain.edges) == int(g.valid.sum())
    for l, n in enumerate(features):
        ws = g.mlp_writers(l)
        if n:
            assert [g.writer_names[w] for w in ws] == [*(f"m{l}.f{i}" for i in range(n)), f"m{l}.err"]
            assert (g.feature_writer(l, n - 1), g.error_writer(l)) == (ws[-2], ws[-1])
        else:
            assert list(ws) == [g.mlp_writer(l)] and g.writer_names[g.mlp_writer(l)] == f"m{l}"
    i = data.draw(st.integers(0, g.n_edges - 1))
    w, r = g.edges[i]
    assert g.edge_position(g.edge_names[i]) == i
    assert g.edge_names[i] == f"{g.writer_names[w]}->{g.reader_names[r]}"
    assert w < g.n_visible_writers(r)  # a reader reads a prefix of the writer order


def test_the_ordinary_graph_is_unchanged():
    g = Graph(n_layers=2, n_heads=2)
    assert g.features is None
    assert g.writer_names == ("input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")
    assert g.node_names == (*g.writer_names, "logits")
    assert (g.mlp_writer(0), g.mlp_writer(1), g.head_writer(1, 1)) == (3, 6, 5)
    assert [g.writers_of_reader(r) for r in (g.mlp_reader(1), g.head_reader(1, 1, "v"))] == [range(6, 7),
                                                                                           range(5, 6)]
    # All-zero counts are the ordinary graph itself (equal, so its circuits compare).
    assert Graph(n_layers=2, n_heads=2, features=[0, 0]) == g


def test_a_feature_graph_names_its_writers_and_edges():
    g = Graph(n_layers=2, n_heads=1, features=(2, 0))
    assert g.writer_names == ("input", "a0.h0", "m0.f0", "m0.f1", "m0.err", "a1.h0", "m1")
    assert g.node_names == ("input", "a0.h0", "m0", "m0.f0", "m0.f1", "m0.err", "a1.h0", "m1", "logits")
    assert g.edge_names[3:5] == ("input->m0", "a0.h0->m0")
    assert "m0.f1->a1.h0<q>" in g.edge_names and "m0.err->logits" in g.edge_names
    assert g.writers_of_reader(g.mlp_reader(0)) == range(2, 5)
    assert Graph.nodes_of(["a0.h0->m0", "m0.f1->m1", "m0.err->logits"]) == ["a0.h0", "m0", "m0.f1", "m0.err",
                                                                            "m1", "logits"]


@pytest.mark.parametrize("features,match", [
    ((1,), "must be 2 non-negative ints"), ((1, -1), "must be 2 non-negative ints"),
    ((True, 1), "must be 2 non-negative ints"), ("12", "one feature count per layer"),
])
def test_bad_feature_counts_are_refused(features, match):
    with pytest.raises(ValueError, match=match):
        Graph(n_layers=2, n_heads=1, features=features)


def test_index_helpers_refuse_the_wrong_kind_of_layer():
    g = Graph(n_layers=2, n_heads=1, features=(3, 0))
    with pytest.raises(ValueError, match=r"layer 0's MLP is transcoded into 3 features.*mlp_writers\(0\)"):
        g.mlp_writer(0)
    with pytest.raises(ValueError, match="layer 0 has 3 transcoder features, so no feature 3"):
        g.feature_writer(0, 3)
    with pytest.raises(ValueError, match="layer 1's MLP is not transcoded"):
        g.error_writer(1)
    with pytest.raises(KeyError, match=r"'m0'.*'m\{l\}.f\{i\}'"):
        g.writer_index("m0")


def eap_ig_prune_merged(g: Graph, in_graph: set[str]) -> set[str]:
    """EAP-IG's ``Graph.prune`` node by node (as tests/test_graph.py's reference), with each transcoded MLP
    one node: its reader ``m{l}`` and all its writers."""
    edges = set(in_graph)
    while True:
        has_out = {collapse(e.split("->")[0]) for e in edges}
        has_in = {"input"} | {e.split("->")[1].split("<")[0] for e in edges}
        nodes = (has_out & has_in) | {"logits"}
        kept = {e for e in edges
                if collapse(e.split("->")[0]) in nodes and e.split("->")[1].split("<")[0] in nodes}
        if kept == edges:
            return edges
        edges = kept


@given(layer_counts, st.data())
def test_connected_treats_a_transcoded_mlp_as_one_node(shape, data):
    L, H, features = shape
    g = Graph(n_layers=L, n_heads=H, features=features)
    chosen = data.draw(st.sets(st.sampled_from(g.edge_names)))
    kept = g.connected(g.edge_mask(chosen))
    assert set(g.names_of(kept)) == eap_ig_prune_merged(g, chosen)


def test_dead_ends_of_a_feature_graph():
    g = Graph(n_layers=2, n_heads=1, features=(2, 0))
    c = Circuit(graph=g, edges=("input->m0", "a0.h0->m0", "m0.f1->logits", "input->a1.h0<q>"), ablation="zero",
                model="", d_model=0)
    # m0's input feeds m0.f1, which reaches the logits; a1.h0 reaches nothing.
    assert c.without_dead_ends().edges == ("input->m0", "a0.h0->m0", "m0.f1->logits")


# ------------------------------------------------------------------ the model
def small_model(seed=0, norm="layernorm"):
    cfg = TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=6, n_positions=5,
                            norm=norm)
    return random_model(cfg, seed)  # float64


def random_transcoder(layer, T=5, seed=0, D=8):
    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_model=D, d_transcoder=T, layer=layer)).double()
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_(0, 0.5)
    return tc.requires_grad_(False)


TOKENS = torch.tensor([[1, 4, 2, 9, 3], [0, 7, 7, 5, 10]])


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
def test_the_feature_model_with_error_terms_is_the_original(norm):
    model = small_model(norm=norm)
    fm = feature_model(model, {0: random_transcoder(0, T=5), 1: random_transcoder(1, T=3, seed=1)})
    assert fm.graph.features == (5, 3) and model.graph.features is None  # the original is untouched
    with torch.no_grad():
        want = model(TOKENS)
        logits, cache = fm.run_with_cache(TOKENS)
    # float64 throughout; |a + (b - a) - b| rounding only: 1e-10 of the largest logit is ~1e6 ulps of slack.
    scale = want.abs().max().item()
    assert (logits - want).abs().max().item() <= 1e-10 * scale
    assert list(cache) == list(fm.graph.writer_names) and "m1.f2" in cache and "m0.err" in cache
    # Under our conventions the writers sum to the residual stream: the logits follow from the cache alone.
    resid = torch.stack(list(cache.values())).sum(0)
    assert (fm.unembed(fm.ln_f(resid)) - want).abs().max().item() <= 1e-10 * scale
    # Each feature writes its activation times its decoder row.
    tc = fm.blocks[1].transcoder
    _, plain_cache = model.run_with_cache(TOKENS)
    x = fm.blocks[1].ln2(sum(v for k, v in plain_cache.items() if k != "m1"))  # the residual m1 reads
    f = tc.encode(x)
    assert torch.allclose(cache["m1.f2"], f[..., 2:3] * tc.W_dec[2], rtol=0, atol=1e-12 * scale)


def test_without_error_terms_the_error_writer_is_b_dec_and_the_model_is_the_replacement():
    model = small_model()
    tcs = {1: random_transcoder(1, T=4)}
    fm = feature_model(model, tcs, keep_error=False)
    assert fm.graph.features == (0, 4)  # layer 0 keeps its plain MLP writer m0
    with torch.no_grad():
        logits, cache = fm.run_with_cache(TOKENS)
        want = replace_mlps(model, tcs)(TOKENS)
    assert (logits - want).abs().max().item() <= 1e-10 * want.abs().max().item()
    assert torch.equal(cache["m1.err"], tcs[1].b_dec.expand_as(cache["m1.err"]))
    assert "m0" in cache and "m1" not in cache


def test_the_ideal_transcoders_of_a_compiled_program_decode_it_exactly():
    art = artifact("sort")
    ex = art.examples
    with torch.no_grad():
        want = art.model(ex.clean, attention_mask=ex.valid)
        _, cache = feature_model(art.model, ideal_transcoders(art.model)).run_with_cache(ex.clean,
                                                                                         attention_mask=ex.valid)
        bare = feature_model(art.model, ideal_transcoders(art.model), keep_error=False)
        got = bare(ex.clean, attention_mask=ex.valid)
    # The ideal transcoder is the compiled MLP, computed by the same operations, and Tracr's b_out is 0:
    # the error term is exactly 0, and the model without it decodes every example as compiled.
    assert all(bool(cache[f"m{l}.err"].eq(0).all()) for l in range(art.model.cfg.n_layers))
    assert bool(ex.agree(got, want).all())
    # Only the order of the sum over features differs from the compiled MLP's matmul (float32).
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_masked_with_every_mask_one_equals_plain(ablation):
    art = copy.deepcopy(artifact("sort"))
    fm = feature_model(art.model, ideal_transcoders(art.model))
    ex, g = art.examples, fm.graph
    ablated = ablated_writers(fm, ex, ablation)
    with torch.no_grad():
        plain = fm(ex.clean, attention_mask=ex.valid)
        masked = fm(ex.clean, attention_mask=ex.valid, edge_mask=torch.ones(g.n_edges), ablated=ablated,
                    node_mask=torch.ones(g.n_writers))
    # float32; a masked read sums the writers' outputs in another order: 1e-5 of the largest logit.
    assert (masked - plain).abs().max().item() <= 1e-5 * plain.abs().max().item()


def test_sparse_and_dense_masked_reads_agree_on_a_feature_graph():
    # Without gradients and with one mask, masked mode skips the MLPs whose writers reach nothing
    # (_live_writers); with a gradient it runs all of them. A random circuit must read the same both ways.
    model = small_model()
    fm = feature_model(model, {0: random_transcoder(0, T=5), 1: random_transcoder(1, T=3, seed=1)})
    g = fm.graph
    gen = torch.Generator().manual_seed(0)
    ablated = fm.writers(TOKENS[[1, 0]])  # resample: the other example's writers
    skipped = 0
    for _ in range(10):
        mask = (torch.rand(g.n_edges, generator=gen) < 0.3).double()
        live = fm._live_writers(g.dense(mask))
        skipped += sum(not live[g.mlp_writers(l).start] for l in range(g.n_layers))
        with torch.no_grad():
            sparse = fm(TOKENS, edge_mask=mask, ablated=ablated)
        dense = fm(TOKENS, edge_mask=mask.clone().requires_grad_(True), ablated=ablated)
        assert (sparse - dense.detach()).abs().max().item() <= 1e-10 * dense.abs().max().item()
    assert skipped > 0  # some draw left a transcoded MLP reaching nothing: the skipping path ran


def test_other_conventions_and_a_second_replacement_keep_the_graph_consistent():
    model = small_model()
    fm = feature_model(model, {0: random_transcoder(0, T=5)})
    other = fm.with_conventions("eap-ig")
    assert other.graph.features == (5, 0) and other.graph.conventions == "eap-ig"
    with torch.no_grad():
        plain = other(TOKENS)
        masked = other(TOKENS, edge_mask=torch.ones(other.graph.n_edges))
        assert (plain - model(TOKENS)).abs().max().item() <= 1e-10 * plain.abs().max().item()
        assert (masked - plain).abs().max().item() <= 1e-10 * plain.abs().max().item()
    # Replacing layer 1 without features keeps layer 0's features; the graph follows the blocks.
    both = replace_mlps(fm, {1: random_transcoder(1, T=3)})
    assert both.graph.features == (5, 0)
    assert replace_mlps(fm, {0: random_transcoder(0, T=3)}).graph.features is None


# ------------------------------------------------------------------ methods and files
@pytest.fixture(scope="module")
def sort_features():
    art = copy.deepcopy(artifact("sort"))
    return feature_model(art.model, ideal_transcoders(art.model)), art.examples


@pytest.mark.parametrize("method", ["edge_pruning", "eap", "eap_ig", "acdc"])
def test_every_method_returns_a_faithful_circuit_on_the_feature_graph(sort_features, method):
    fm, ex = sort_features
    run = {"edge_pruning": lambda: edge_pruning(fm, ex, ablation="zero", seed=0,
                                                config=EdgePruningConfig(steps=100)),
           "eap": lambda: eap(fm, ex, ablation="zero"), "eap_ig": lambda: eap_ig(fm, ex, ablation="zero"),
           "acdc": lambda: acdc(fm, ex, ablation="zero")}[method]
    circuit = run()
    assert circuit.graph == fm.graph
    assert any(".f" in e for e in circuit.edges)  # it names feature writers
    assert "finalize" in circuit.metadata  # through prune.finalize.finalize, on the feature graph
    # The shared exact finalizer's guarantee, checked independently: faithful, and every edge necessary.
    v = verify(fm, ex, list(circuit.edges), "zero", evaluator=Evaluator(fm, ex, "zero"))
    assert v.sufficient and not v.inert


def test_a_circuit_of_a_feature_graph_round_trips_through_json(tmp_path, sort_features):
    fm, _ = sort_features
    truth = feature_truth(artifact("sort"), ablations=("zero",))
    assert truth.model.graph == fm.graph
    circuit = Circuit(graph=fm.graph, edges=tuple(truth.functional("zero")), ablation="zero", model="sort",
                      d_model=fm.cfg.d_model, method="truth")
    path = circuit.save(tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert d["cfg"]["features"] == [15, 15, 15]
    assert d["nodes"]["m0"]["in_graph"] and "m0.err" in d["nodes"]
    back = Circuit.load(path, graph=fm.graph, model="sort")
    assert back.graph == fm.graph and back.edges == circuit.edges
    with pytest.raises(CircuitFileError, match=r"transcoder features \(15, 15, 15\) per layer, not this one's None"):
        Circuit.load(path, graph=artifact("sort").model.graph)


# ------------------------------------------------------------------ feature-level ground truth
@pytest.mark.parametrize("name", ["count", "frac_prevs", "sort"])
def test_feature_ground_truth_verifies_and_merges_into_the_edge_level_one(name):
    art = artifact(name)
    truth = feature_truth(art)
    assert truth.model.graph.features == (art.model.cfg.d_mlp,) * art.model.cfg.n_layers
    for ablation in ABLATIONS:
        v = truth.verifications[ablation]
        assert v.sufficient and not v.inert and v.n_examples == len(art.examples)
        edges = truth.functional(ablation)
        # Not implied by the derivation (minimal per feature need not merge into minimal per MLP); it holds here.
        assert sorted({collapse(e) for e in edges}) == sorted(art.functional(ablation))
    assert truth.ok
    # The MLP layers that take part are read by their features: an edge out of m{l} becomes the features'.
    if name == "sort":
        assert "m0->a1.h0<q>" in art.functional("zero")
        assert {e for e in truth.functional("zero") if e.endswith("->a1.h0<q>") and e.startswith("m0.")} == {
            f"m0.f{i}->a1.h0<q>" for i in range(1, 15)}


def test_feature_ground_truth_refuses_an_unknown_ablation():
    with pytest.raises(ValueError, match="unknown ablation 'average'"):
        feature_truth(artifact("count"), ablations=("average",))


# ------------------------------------------------------------------ scoring through a matching
def _shuffled(ideal: dict[int, Transcoder], seed: int) -> tuple[dict[int, Transcoder], dict[int, list[int]]]:
    """Each ideal transcoder with its features permuted and each rescaled by a factor in [0.5, 1.5): the
    same features (a ReLU feature is defined up to a positive scale) under other indices, as training
    could find them. Returns the transcoders and, per layer, where each true feature went."""
    g = torch.Generator().manual_seed(seed)
    out, where = {}, {}
    for layer, tc in ideal.items():
        T = tc.cfg.d_transcoder
        perm = torch.randperm(T, generator=g)  # trained feature j is true feature perm[j]
        scale = torch.rand(T, generator=g, dtype=tc.W_enc.dtype) + 0.5
        t = copy.deepcopy(tc)
        with torch.no_grad():
            t.W_enc.copy_(tc.W_enc[:, perm] * scale)
            t.b_enc.copy_(tc.b_enc[perm] * scale)
            t.W_dec.copy_(tc.W_dec[perm] / scale[:, None])
        out[layer] = t
        where[layer] = torch.argsort(perm).tolist()  # true feature i is trained feature where[i]
    return out, where


@pytest.fixture(scope="module")
def shuffled_sort():
    from groundtruth.feature_truth import feature_truth
    from prune.transcoder import match_features, mlp_activations

    art = artifact("sort")
    truth = feature_truth(art, ablations=("zero",))
    ideal = ideal_transcoders(art.model)
    trained, where = _shuffled(ideal, seed=0)
    matches = {}
    for layer in ideal:
        x, _ = mlp_activations(art.model, layer, art.examples.clean, art.examples.valid)
        matches[layer] = match_features(trained[layer], ideal[layer], x)
    return art, truth, trained, where, matches


def _renamed_truth(truth, where, graph) -> Circuit:
    def rename(edge):
        m = re.match(r"^m(\d+)\.f(\d+)->(.*)$", edge)
        return edge if m is None else f"m{m.group(1)}.f{where[int(m.group(1))][int(m.group(2))]}->{m.group(3)}"

    edges = {rename(e) for e in truth.functional("zero")}
    return Circuit(graph=graph, edges=tuple(e for e in graph.edge_names if e in edges), ablation="zero",
                   model="sort", d_model=truth.model.cfg.d_model, method="renamed truth")


def test_a_circuit_through_a_matching_is_scored_against_the_feature_ground_truth(shuffled_sort):
    from groundtruth.feature_truth import score_feature_circuit

    art, truth, trained, where, matches = shuffled_sort
    graph = feature_model(art.model, trained).graph
    n = len(truth.functional("zero"))
    # The matching finds every true feature of the ground truth under its new index.
    assert all(m.recovered_by[i] == where[l][i] for l, m in matches.items() for i in m.recovered)
    exact = _renamed_truth(truth, where, graph)
    score = score_feature_circuit(exact, truth, "zero", matches)
    assert (score.precision, score.recall, score.exact, score.n_truth, score.unmatched) == (1.0, 1.0, True, n, ())
    assert score.image == exact.edges
    # One edge missing, one extra: each is counted where it belongs.
    dropped = exact.edges[0]
    extra = next(e for e in graph.edge_names if e not in exact.edges)
    other = dataclasses.replace(exact, edges=tuple(e for e in graph.edge_names if e in (set(exact.edges) - {dropped}) | {extra}))
    score = score_feature_circuit(other, truth, "zero", matches)
    assert not score.exact and score.recall == (n - 1) / n and score.precision == (n - 1) / n
    assert score.only_found == (extra,) and len(score.missed) == 1


def test_a_true_feature_no_trained_one_recovers_cannot_be_recalled(shuffled_sort):
    from groundtruth.feature_truth import score_feature_circuit
    from prune.transcoder import match_features, mlp_activations

    art, truth, trained, where, matches = shuffled_sort
    i = next(int(e.split("->")[0][len("m0.f"):]) for e in truth.functional("zero") if e.startswith("m0.f"))
    broken = copy.deepcopy(trained[0])
    with torch.no_grad():  # the trained feature standing for true feature i never fires
        broken.b_enc[where[0][i]] = -1e6
        broken.W_enc[:, where[0][i]] = 0
    x, _ = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    matches = {**matches, 0: match_features(broken, ideal_transcoders(art.model)[0], x)}
    assert matches[0].recovered_by[i] == -1
    circuit = _renamed_truth(truth, where, feature_model(art.model, {**trained, 0: broken}).graph)
    score = score_feature_circuit(circuit, truth, "zero", matches)
    lost = [e for e in truth.functional("zero") if e.startswith(f"m0.f{i}->")]
    assert lost and score.unmatched == tuple(lost) and not score.exact
    assert score.recall == (score.n_truth - len(lost)) / score.n_truth
    assert score.precision < 1  # the circuit still has the edges of the feature no one matched


def test_edge_pruning_on_a_trained_graph_is_scored_like_any_circuit(shuffled_sort):
    from groundtruth.feature_truth import score_feature_circuit

    art, truth, trained, where, matches = shuffled_sort
    fm = feature_model(art.model, trained)
    found = edge_pruning(fm, art.examples, ablation="zero", seed=0)
    score = score_feature_circuit(found, truth, "zero", matches)
    compared = found.compare(score.image)  # every true feature is matched here, so the image is the truth
    assert (score.precision, score.recall) == (compared.precision, compared.recall)
    assert verify(fm, art.examples, list(found.edges), "zero").sufficient


def test_scoring_refuses_a_matching_that_does_not_fit(shuffled_sort):
    from groundtruth.feature_truth import score_feature_circuit

    art, truth, trained, where, matches = shuffled_sort
    circuit = _renamed_truth(truth, where, feature_model(art.model, trained).graph)
    with pytest.raises(ValueError, match="no FeatureMatch was given for layer 0"):
        score_feature_circuit(circuit, truth, "zero", {l: m for l, m in matches.items() if l != 0})
    plain = Circuit(graph=art.model.graph, edges=(), ablation="zero", model="sort", d_model=art.model.cfg.d_model)
    with pytest.raises(ValueError, match="the circuit's graph has 0 and the ground truth's 15 at layer 0"):
        score_feature_circuit(plain, truth, "zero", matches)


def test_a_checkpoint_of_a_feature_model_is_refused_by_the_model_without_error_terms(tmp_path):
    from prune.edge_pruning import CheckpointError, EdgePruner

    art = artifact("frac_prevs")
    cfg = EdgePruningConfig(steps=2)
    with_error = feature_model(art.model, ideal_transcoders(art.model), keep_error=True)
    without = feature_model(art.model, ideal_transcoders(art.model), keep_error=False)
    assert with_error.graph == without.graph  # same graph, same weights: only the error term differs
    path = EdgePruner(with_error, art.examples, ablation="zero", config=cfg).save(tmp_path / "c.safetensors")
    EdgePruner(with_error, art.examples, ablation="zero", config=cfg).load(path)
    with pytest.raises(CheckpointError, match="fingerprint"):
        EdgePruner(without, art.examples, ablation="zero", config=cfg).load(path)
