import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prune.graph import Graph


def closed_form_edges(L: int, H: int) -> int:
    # Heads of layer l read 1 + l(H+1) writers with 3 ports each; the MLP also
    # reads its own layer's H heads; logits read all 1 + L(H+1) writers.
    per_layer = sum(3 * H * (1 + l * (H + 1)) + (1 + l * (H + 1) + H) for l in range(L))
    return per_layer + 1 + L * (H + 1)


def test_gpt2_small_has_32491_edges_and_158_nodes():
    g = Graph(n_layers=12, n_heads=12)
    assert g.n_edges == 32_491
    assert g.n_writers + 1 == 158  # writers plus the logits node


def test_eapig_names_and_order():
    g = Graph(n_layers=2, n_heads=2)
    assert g.edge_names[:6] == (
        "input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>",
        "input->a0.h1<q>", "input->a0.h1<k>", "input->a0.h1<v>",
    )
    assert g.edge_names[6:9] == ("input->m0", "a0.h0->m0", "a0.h1->m0")
    assert g.edge_names[-1] == "m1->logits"
    assert g.reader_names[:7] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0")
    assert g.writer_names == ("input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")


@given(st.integers(1, 6), st.integers(1, 6))
def test_edge_count_matches_closed_form(L, H):
    g = Graph(n_layers=L, n_heads=H)
    assert g.n_edges == closed_form_edges(L, H) == int(g.valid.sum())


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_edge_names_round_trip(L, H, data):
    g = Graph(n_layers=L, n_heads=H)
    i = data.draw(st.integers(0, g.n_edges - 1))
    assert g.edge_position(g.edge_names[i]) == i
    w, r = g.edges[i]
    assert g.edge_names[i] == f"{g.writer_names[w]}->{g.reader_names[r]}"
    assert w < g.n_visible_writers(r)  # a reader only reads earlier writers


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_mask_and_names_round_trip(L, H, data):
    g = Graph(n_layers=L, n_heads=H)
    chosen = data.draw(st.sets(st.sampled_from(g.edge_names)))
    mask = g.edge_mask(chosen)
    assert set(g.names_of(mask)) == chosen
    dense = g.dense(mask)
    assert int(dense.sum()) == len(chosen) and not bool((dense.bool() & ~g.valid).any())


@pytest.mark.parametrize("bad", ["a0.h0->m0<q>", "m1->m0", "a0.h0->a0.h1<q>", "input->logit", "x->y"])
def test_unknown_edges_are_named_in_the_error(bad):
    g = Graph(n_layers=2, n_heads=2)
    with pytest.raises(KeyError, match="is not in the"):
        g.edge_position(bad)


@pytest.mark.parametrize("L,H", [(0, 1), (1, 0), (-1, 2), (1.5, 2)])
def test_bad_shapes_are_refused(L, H):
    with pytest.raises(ValueError, match="positive int"):
        Graph(n_layers=L, n_heads=H)


def test_nodes_of_merges_ports():
    assert Graph.nodes_of(["input->a0.h0<q>", "a0.h0->m0", "m0->logits"]) == ["input", "a0.h0", "m0", "logits"]


def test_dense_refuses_wrong_length():
    g = Graph(n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="one value per edge"):
        g.dense(torch.ones(g.n_edges + 1))


def eap_ig_prune(g: Graph, in_graph: set[str]) -> set[str]:
    """EAP-IG's ``Graph.prune`` (its commit 795f560), node by node as it is written there: until nothing
    changes, a node is in the graph when it has an outgoing and an incoming edge (``input`` always has
    incoming ones), and an edge when both its ends are (``logits`` always is)."""
    edges = set(in_graph)
    while True:
        has_out = {e.split("->")[0] for e in edges}
        has_in = {"input"} | {e.split("->")[1].split("<")[0] for e in edges}
        nodes = (has_out & has_in) | {"logits"}
        kept = {e for e in edges if e.split("->")[0] in nodes and e.split("->")[1].split("<")[0] in nodes}
        if kept == edges:
            return edges
        edges = kept


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_connected_is_eap_ig_s_prune(L, H, data):
    g = Graph(n_layers=L, n_heads=H, conventions=data.draw(st.sampled_from(["ours", "eap-ig"])))
    chosen = data.draw(st.sets(st.sampled_from(g.edge_names)))
    kept = g.connected(g.edge_mask(chosen))
    assert set(g.names_of(kept)) == eap_ig_prune(g, chosen)
    assert torch.equal(g.connected(kept.float()), kept)  # idempotent


def test_conventions_are_part_of_the_graph():
    assert Graph(n_layers=1, n_heads=1) == Graph(n_layers=1, n_heads=1, conventions="ours")
    assert Graph(n_layers=1, n_heads=1) != Graph(n_layers=1, n_heads=1, conventions="eap-ig")
    with pytest.raises(ValueError, match="unknown writer conventions 'EAP-IG'"):
        Graph(n_layers=1, n_heads=1, conventions="EAP-IG")
