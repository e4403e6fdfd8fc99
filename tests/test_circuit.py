"""Circuit.without_dead_ends: examples on a small graph, and properties on random edge subsets."""

from hypothesis import given
from hypothesis import strategies as st

from prune.circuit import Circuit
from prune.graph import Graph

G = Graph(n_layers=2, n_heads=2)


def _circuit(edges, graph: Graph = G) -> Circuit:
    return Circuit(graph=graph, edges=tuple(edges), ablation="zero", model="test", d_model=4)


def _reader_node(edge: str) -> str:
    return edge.split("->")[1].split("<")[0]


def _writer(edge: str) -> str:
    return edge.split("->")[0]


def test_head_without_output_loses_its_inputs():
    c = _circuit(["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->logits"])
    assert c.without_dead_ends().edges == ("input->logits",)


def test_chain_to_logits_is_kept():
    chain = ["input->a0.h0<v>", "a0.h0->m0", "m0->a1.h1<q>", "a1.h1->logits"]
    c = _circuit(chain)
    assert c.without_dead_ends().edges == c.edges
    assert set(c.without_dead_ends().edges) == set(chain)


def test_removal_cascades():
    # a1.h0 reads nothing it passes on (no output edge), so its inputs go; then
    # m0, whose only consumer was a1.h0, is dead too, then a0.h1 that fed only m0.
    c = _circuit([
        "input->a0.h1<k>", "a0.h1->m0", "m0->a1.h0<q>",  # dead chain, dies from the end
        "input->a0.h0<q>", "a0.h0->logits",  # live
    ])
    assert c.without_dead_ends().edges == ("input->a0.h0<q>", "a0.h0->logits")


def test_partially_used_writer_keeps_only_its_live_outputs():
    # m0 feeds both a dead head (a1.h0) and the logits: only the edge into a1.h0 goes.
    c = _circuit(["input->m0", "m0->a1.h0<k>", "m0->logits"])
    assert c.without_dead_ends().edges == ("input->m0", "m0->logits")


def test_circuit_without_dead_ends_is_unchanged():
    c = _circuit(["input->a0.h0<q>", "input->a0.h0<k>", "a0.h0->m0", "input->m0", "m0->logits", "a0.h0->logits"])
    out = c.without_dead_ends()
    assert out == c


def test_empty_and_logits_only():
    assert _circuit([]).without_dead_ends().edges == ()
    only_logits = _circuit(["input->logits", "m1->logits"])
    assert only_logits.without_dead_ends().edges == only_logits.edges


def test_result_is_in_graph_order_and_keeps_the_rest():
    # Given in reverse graph order; the result lists them in graph order.
    edges = ["a1.h1->logits", "m0->a1.h1<v>", "a0.h1->m0", "input->a0.h1<q>", "input->a1.h0<q>"]
    c = _circuit(edges)
    out = c.without_dead_ends()
    order = {e: i for i, e in enumerate(G.edge_names)}
    assert list(out.edges) == sorted(out.edges, key=order.get)
    assert out.edges == ("input->a0.h1<q>", "a0.h1->m0", "m0->a1.h1<v>", "a1.h1->logits")
    assert (out.graph, out.ablation, out.model, out.d_model) == (G, "zero", "test", 4)


def _reaches_logits(edges: set[str]) -> set[str]:
    """Independent reference: the edges whose reader node reaches ``logits`` along ``edges``."""
    alive = {"logits"}
    changed = True
    while changed:  # backward reachability from logits
        changed = False
        for e in edges:
            if _reader_node(e) in alive and _writer(e) not in alive:
                alive.add(_writer(e))
                changed = True
    return {e for e in edges if _reader_node(e) in alive}


@st.composite
def graphs_and_subsets(draw):
    g = Graph(n_layers=draw(st.integers(1, 3)), n_heads=draw(st.integers(1, 3)))
    density = draw(st.integers(1, 9))  # keep an edge when its digit is below this: sparse to dense
    digits = draw(st.lists(st.integers(0, 9), min_size=g.n_edges, max_size=g.n_edges))
    return g, [e for e, d in zip(g.edge_names, digits, strict=True) if d < density]


@given(graphs_and_subsets())
def test_without_dead_ends_properties(case):
    g, edges = case
    c = _circuit(edges, g)
    out = c.without_dead_ends()
    kept = set(out.edges)
    assert kept <= set(c.edges)
    assert out.without_dead_ends() == out
    writers = {_writer(e) for e in kept}
    for e in kept:
        assert _reader_node(e) == "logits" or _reader_node(e) in writers, e
    # And it is the largest such subset: exactly the edges that lead on to the logits.
    assert kept == _reaches_logits(set(edges))
    order = {e: i for i, e in enumerate(g.edge_names)}
    assert list(out.edges) == sorted(out.edges, key=order.get)
