"""The computational graph of a decoder-only transformer, in EAP-IG / MIB names.

Writers (graph sources), in forward order::

    input, a0.h0 … a0.h{H-1}, m0, a1.h0 …, m{L-1}

Readers (graph destinations), in the order of EAP-IG's dense layout::

    a0.h0<q> … a0.h{H-1}<q>, a0.h0<k> …, a0.h0<v> …, m0, a1.h0<q> …, logits

An attention head in layer ``l`` reads ``input`` and every writer of the layers
before ``l``; the MLP in layer ``l`` also reads layer ``l``'s heads; ``logits``
reads every writer. Edges are named ``"{writer}->{reader}"`` (``input->a0.h0<q>``,
``a0.h1->m0``, ``m11->logits``) and listed in the order EAP-IG's
``Graph.from_model`` creates them, so a circuit file is interchangeable with
EAP-IG and MIB. GPT-2 small (12 layers, 12 heads) has 158 nodes and 32,491 edges.

Grouped-query attention is counted *ungrouped*: every query head has its own
key and value readers (EAP-IG's ``ungroup_grouped_query_attention``), so the graph
depends only on the number of layers and of query heads.

A graph also names its writer conventions (:data:`CONVENTIONS`, docs/conventions.md):
what a writer's output is and which circuit is evaluated. ``"ours"``: a head
carries ``b_O / n_heads``, ``input`` is the token plus position embedding, and a
circuit is evaluated as it stands (edges into nodes that reach nothing, which
change nothing, are dropped by :meth:`prune.circuit.Circuit.without_dead_ends`).
``"eap-ig"`` (EAP-IG and MIB): heads exclude ``b_O``, ``input`` is the token
embedding, the position embedding and ``b_O`` are never ablated, and a circuit
is evaluated after EAP-IG's ``Graph.prune`` (:meth:`Graph.connected`). Two
graphs of one shape under different conventions are different graphs: their
circuits do not compare.

A *feature graph* (``features``, one count per layer; docs/transcoders.md) puts a
transcoder's features in place of an MLP writer: layer ``l`` with ``F > 0``
features has the writers ``m{l}.f0 … m{l}.f{F-1}, m{l}.err`` where the ordinary
graph has ``m{l}`` (in that place of the writer order), each feature writing its
activation times its decoder row, and ``m{l}.err`` the rest of the MLP's output
(the error term and the decoder bias ``b_dec``). Readers are the same: the
layer's reader ``m{l}`` is the input the encoder (and the true MLP, for the
error term) reads. Edges follow: ``m1.f17->a2.h0<q>``, ``input->m1``,
``m0.err->logits``. A count of 0 keeps the layer's plain ``m{l}``; ``features``
None (or all 0) is the ordinary graph.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import torch

__all__ = ["CONVENTIONS", "Graph", "check_conventions"]

CONVENTIONS: tuple[str, ...] = ("ours", "eap-ig")


def check_conventions(conventions: str) -> str:
    if conventions not in CONVENTIONS:
        raise ValueError(f"unknown writer conventions {conventions!r}; choose one of {CONVENTIONS} "
                         f"(docs/conventions.md)")
    return conventions

_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP_RE = re.compile(r"^m(\d+)$")
_FEATURE_RE = re.compile(r"^m(\d+)\.f(\d+)$")
_ERROR_RE = re.compile(r"^m(\d+)\.err$")


@dataclasses.dataclass(frozen=True)
class Graph:
    """Writers, readers and edges of an ``n_layers`` x ``n_heads`` transformer, under ``conventions``.

    ``features``: per layer, the number of transcoder features that replace its
    MLP writer (0: the plain ``m{l}``), or None for the ordinary graph (module doc).
    """

    n_layers: int
    n_heads: int
    conventions: str = "ours"
    features: tuple[int, ...] | None = None

    def __post_init__(self):
        for field in ("n_layers", "n_heads"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Graph.{field} must be a positive int, got {value!r}")
        check_conventions(self.conventions)
        f = self.features
        if f is not None:
            if isinstance(f, (str, bytes)) or not hasattr(f, "__len__"):
                raise ValueError(f"Graph.features must be one feature count per layer, got {f!r}")
            f = tuple(f)  # a list (as a JSON file holds it) is accepted; the graph keeps a tuple
            if len(f) != self.n_layers or any(
                    not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in f):
                raise ValueError(f"Graph.features must be {self.n_layers} non-negative ints (one per layer; "
                                 f"0 keeps the layer's plain MLP writer), got {self.features!r}")
            # All zero is the ordinary graph: one graph, one value (equal graphs, equal circuits).
            object.__setattr__(self, "features", f if any(f) else None)

    def n_features(self, layer: int) -> int:
        """Transcoder features replacing layer ``layer``'s MLP writer (0: its plain ``m{layer}``)."""
        return 0 if self.features is None else self.features[layer]

    # ----------------------------------------------------------------- writers
    @functools.cached_property
    def _layer_start(self) -> tuple[int, ...]:
        """Per layer, and once more at the end: the index of the layer's first writer (its head 0)."""
        starts, i = [], 1
        for layer in range(self.n_layers):
            starts.append(i)
            i += self.n_heads + len(self._mlp_names(layer))
        return (*starts, i)

    def _mlp_names(self, layer: int) -> list[str]:
        n = self.n_features(layer)
        return [f"m{layer}"] if n == 0 else [*(f"m{layer}.f{i}" for i in range(n)), f"m{layer}.err"]

    @property
    def n_writers(self) -> int:
        return self._layer_start[-1]

    def head_writer(self, layer: int, head: int) -> int:
        return self._layer_start[layer] + head

    def mlp_writers(self, layer: int) -> range:
        """Every writer of layer ``layer``'s MLP, in order: ``m{l}`` alone, or its features then ``m{l}.err``."""
        return range(self._layer_start[layer] + self.n_heads, self._layer_start[layer + 1])

    def mlp_writer(self, layer: int) -> int:
        """The writer ``m{layer}`` of a plain MLP layer (a transcoded one has :meth:`mlp_writers`)."""
        if self.n_features(layer):
            raise ValueError(f"layer {layer}'s MLP is transcoded into {self.n_features(layer)} features: it has no "
                             f"single writer m{layer}; use mlp_writers({layer}), feature_writer({layer}, i) "
                             f"or error_writer({layer})")
        return self._layer_start[layer] + self.n_heads

    def feature_writer(self, layer: int, feature: int) -> int:
        """The writer ``m{layer}.f{feature}`` of a transcoded layer."""
        n = self.n_features(layer)
        if not 0 <= feature < n:
            raise ValueError(f"layer {layer} has {n} transcoder features, so no feature {feature!r}"
                             + ("" if n else f" (its MLP is the plain writer m{layer})"))
        return self._layer_start[layer] + self.n_heads + feature

    def error_writer(self, layer: int) -> int:
        """The writer ``m{layer}.err`` of a transcoded layer: its error term and decoder bias."""
        if not self.n_features(layer):
            raise ValueError(f"layer {layer}'s MLP is not transcoded: it has no error writer, only m{layer}")
        return self._layer_start[layer + 1] - 1

    @functools.cached_property
    def writer_names(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            names += self._mlp_names(layer)
        return tuple(names)

    @functools.cached_property
    def node_names(self) -> tuple[str, ...]:
        """Every node, in forward order: the writers, each transcoded layer's MLP input ``m{l}`` (a reader
        only) before its features, and ``logits``. On the ordinary graph: the writers and ``logits``."""
        names = []
        for name in self.writer_names:
            m = _FEATURE_RE.match(name)
            if m and m.group(2) == "0":
                names.append(f"m{m.group(1)}")
            names.append(name)
        return (*names, "logits")

    @functools.cached_property
    def _writer_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.writer_names)}

    def writer_index(self, name: str) -> int:
        try:
            return self._writer_lookup[name]
        except KeyError:
            raise KeyError(
                f"unknown writer {name!r} for a {self.n_layers}-layer, {self.n_heads}-head "
                f"graph; writers are 'input', 'a{{l}}.h{{h}}' and 'm{{l}}'"
                + ("" if self.features is None else
                   f", or 'm{{l}}.f{{i}}' and 'm{{l}}.err' in the transcoded layers (features {self.features})")
            ) from None

    # ----------------------------------------------------------------- readers
    @property
    def n_readers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_reader(self, layer: int, head: int, port: str) -> int:
        return layer * (3 * self.n_heads + 1) + "qkv".index(port) * self.n_heads + head

    def mlp_reader(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_reader(self) -> int:
        return self.n_readers - 1

    @functools.cached_property
    def reader_names(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            for port in "qkv":
                names += [f"a{layer}.h{h}<{port}>" for h in range(self.n_heads)]
            names.append(f"m{layer}")
        names.append("logits")
        return tuple(names)

    @functools.cached_property
    def _reader_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.reader_names)}

    def reader_index(self, name: str) -> int:
        try:
            return self._reader_lookup[name]
        except KeyError:
            raise KeyError(
                f"unknown reader {name!r} for a {self.n_layers}-layer, {self.n_heads}-head "
                f"graph; readers are 'a{{l}}.h{{h}}<q|k|v>', 'm{{l}}' and 'logits'"
            ) from None

    def n_visible_writers(self, reader: int) -> int:
        """How many writers (a prefix of the writer order) ``reader`` reads."""
        if reader == self.logits_reader:
            return self.n_writers
        layer, offset = divmod(reader, 3 * self.n_heads + 1)
        return self._layer_start[layer] + (self.n_heads if offset == 3 * self.n_heads else 0)

    def writers_of_reader(self, reader: int) -> range:
        """The writers whose input ``reader`` is: its head, or every writer of its MLP; empty for ``logits``."""
        if reader == self.logits_reader:
            return range(0)
        layer, offset = divmod(reader, 3 * self.n_heads + 1)
        if offset == 3 * self.n_heads:
            return self.mlp_writers(layer)
        w = self.head_writer(layer, offset % self.n_heads)
        return range(w, w + 1)

    # ------------------------------------------------------------------- edges
    @functools.cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(writer, reader) index pairs in EAP-IG's creation order."""
        out = []
        visible = [0]
        for layer in range(self.n_layers):
            heads = [self.head_writer(layer, h) for h in range(self.n_heads)]
            for w in visible:
                for h in range(self.n_heads):
                    for port in "qkv":
                        out.append((w, self.head_reader(layer, h, port)))
            visible = visible + heads
            for w in visible:
                out.append((w, self.mlp_reader(layer)))
            visible = visible + list(self.mlp_writers(layer))
        for w in visible:
            out.append((w, self.logits_reader))
        return tuple(out)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @functools.cached_property
    def edge_names(self) -> tuple[str, ...]:
        w, r = self.writer_names, self.reader_names
        return tuple(f"{w[i]}->{r[j]}" for i, j in self.edges)

    @functools.cached_property
    def _edge_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    def edge_position(self, name: str) -> int:
        """Position of edge ``name`` in :attr:`edges`."""
        try:
            return self._edge_lookup[name]
        except KeyError:
            raise KeyError(
                f"edge {name!r} is not in the {self.n_layers}-layer, {self.n_heads}-head graph"
                f"{'' if self.features is None else f' with features {self.features}'} "
                f"(names look like 'input->a0.h0<q>', 'a0.h1->m0', 'm0->logits'; a reader "
                f"only reads writers of earlier layers, and an MLP its own layer's heads)"
            ) from None

    @functools.cached_property
    def edge_index_tensor(self) -> torch.Tensor:
        """``[2, n_edges]`` long tensor: row 0 writers, row 1 readers."""
        return torch.tensor(self.edges, dtype=torch.long).T.contiguous()

    @functools.cached_property
    def valid(self) -> torch.Tensor:
        """``[n_writers, n_readers]`` bool matrix of the edges that exist."""
        m = torch.zeros(self.n_writers, self.n_readers, dtype=torch.bool)
        idx = self.edge_index_tensor
        m[idx[0], idx[1]] = True
        return m

    # ---------------------------------------------------------- conversions
    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter per-edge ``values`` (``[..., n_edges]``) into ``[..., W, R]`` (0 elsewhere)."""
        if values.ndim < 1 or values.shape[-1] != self.n_edges:
            raise ValueError(
                f"expected one value per edge, shape (..., {self.n_edges}), got {tuple(values.shape)}"
            )
        flat = self._flat_edge_index.to(values.device)  # index_copy: ~2x faster than 2-d indexing, both ways
        out = values.new_zeros(*values.shape[:-1], self.n_writers * self.n_readers)
        return out.index_copy(-1, flat, values).view(*values.shape[:-1], self.n_writers, self.n_readers)

    @functools.cached_property
    def _flat_edge_index(self) -> torch.Tensor:
        idx = self.edge_index_tensor
        return idx[0] * self.n_readers + idx[1]

    def connected(self, present: torch.Tensor) -> torch.Tensor:
        """EAP-IG's ``Graph.prune`` on a ``[n_edges]`` mask: the edges (bool ``[n_edges]``) left after
        repeatedly dropping every head and MLP without an incoming or an outgoing edge, with its edges.

        ``input`` always counts as having incoming edges and ``logits`` as present, as in EAP-IG
        (its commit 795f560). A non-zero entry of ``present`` is an edge in the circuit. A transcoded
        layer's MLP (its reader ``m{l}`` and all its feature and error writers) is one node: it has an
        outgoing edge when any of its writers has one.
        """
        if present.shape != (self.n_edges,):
            raise ValueError(f"expected shape ({self.n_edges},), got {tuple(present.shape)}")
        dev = present.device
        writer, reader = self.edge_index_tensor.to(dev)
        of_writer = self._node_of_writer.to(dev)  # [W]: the node each writer belongs to
        owner = self._node_of_reader.to(dev)  # [R]: the node whose input each reader is; n_writers for logits
        keep = present.ne(0)
        while True:
            has_out = torch.zeros(self.n_writers + 1, dtype=torch.bool, device=dev)
            has_out[of_writer[writer[keep]]] = True
            has_in = torch.zeros(self.n_writers + 1, dtype=torch.bool, device=dev)
            has_in[owner[reader[keep]]] = True
            has_in[0] = True  # input
            node = has_out & has_in
            node[self.n_writers] = True  # logits
            new = keep & node[of_writer[writer]] & node[owner[reader]]
            if torch.equal(new, keep):
                return keep
            keep = new

    @functools.cached_property
    def _node_of_writer(self) -> torch.Tensor:
        """``[n_writers]`` long: each writer's node, named by the node's first writer (on the ordinary
        graph every writer is its own node; a transcoded layer's writers are one)."""
        out = torch.arange(self.n_writers, dtype=torch.long)
        for layer in range(self.n_layers):
            ws = self.mlp_writers(layer)
            out[ws.start : ws.stop] = ws.start
        return out

    @functools.cached_property
    def _node_of_reader(self) -> torch.Tensor:
        """``[n_readers]`` long: the node whose input each reader is (``n_writers`` for ``logits``)."""
        out = torch.full((self.n_readers,), self.n_writers, dtype=torch.long)
        for r in range(self.n_readers - 1):
            out[r] = self.writers_of_reader(r).start
        return out

    def edge_mask(self, names) -> torch.Tensor:
        """A ``[n_edges]`` float mask with 1 on the named edges."""
        mask = torch.zeros(self.n_edges)
        for name in names:
            mask[self.edge_position(name)] = 1.0
        return mask

    def names_of(self, mask: torch.Tensor) -> list[str]:
        """Edge names where a ``[n_edges]`` mask is nonzero, in graph order."""
        if mask.shape != (self.n_edges,):
            raise ValueError(f"expected shape ({self.n_edges},), got {tuple(mask.shape)}")
        return [self.edge_names[i] for i in torch.nonzero(mask).flatten().tolist()]

    @staticmethod
    def nodes_of(edge_names) -> list[str]:
        """Nodes incident to ``edge_names`` (q/k/v ports merged into their head)."""
        nodes = set()
        for name in edge_names:
            writer, reader = name.split("->")
            nodes.add(writer)
            nodes.add(reader.split("<")[0])
        return sorted(nodes, key=_node_sort_key)


def _node_sort_key(name: str):
    if name == "input":
        return (-1, 0, 0)
    if name == "logits":
        return (10**9, 0, 0)
    m = _HEAD_RE.match(name)
    if m:
        return (int(m.group(1)), 0, int(m.group(2)))
    m = _MLP_RE.match(name)  # a plain MLP, or a transcoded one's input: before its features
    if m:
        return (int(m.group(1)), 1, -1)
    m = _FEATURE_RE.match(name)
    if m:
        return (int(m.group(1)), 1, int(m.group(2)))
    m = _ERROR_RE.match(name)
    if m:
        return (int(m.group(1)), 2, 0)
    return (10**9 + 1, 0, 0)
