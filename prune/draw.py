"""Pictures of circuits: a layered drawing of a circuit, alone or against a reference (the ground truth).

::

    from prune.draw import draw_circuit

    draw_circuit(found, "out/reverse-zero", truth=truth, labels={"a3.h0": "reverse = Aggregate(...)"})
    # -> [Path("out/reverse-zero.png"), Path("out/reverse-zero.svg")]

The layout follows the forward pass from the bottom up: ``input`` at the bottom, then per layer a row of
heads (``a{l}.h0`` ... left to right) with the layer's MLP (``m{l}``) in a row of its own above them, and
``logits`` at the top. Every node of the graph is placed, but only the nodes the drawing is about (the
circuit's, and with ``truth=`` the reference's too) are drawn as labelled boxes; the others are faint
grey outlines, unlabelled, so the picture keeps the model's shape without drowning the circuit in it.

A head has three input ports on its lower edge, marked ``q``, ``k`` and ``v`` from left to right in
three colours (the legend names them); an edge into a head ends at the port it feeds. An MLP and
``logits`` have one port, at the middle. Edges leave a writer at the middle of its upper edge; an edge
that skips rows bows sideways, so that it passes beside the boxes between its ends rather than through
them.

Without ``truth=`` an edge's colour is the port it feeds. With ``truth=`` (a circuit of the same graph)
the drawing is of the union, and an edge's colour *and* line style say which it is: a true positive
(solid, dark), a false positive (in the circuit only: dashed, orange) or a miss (in the reference only:
dotted, purple); the legend gives their counts. A node's outline says the same of the node (solid: in
both; dashed orange: in the circuit only; dotted purple: in the reference only).

Both files are written atomically (:mod:`prune.files`): each is rendered to a temporary name beside its
target, and both are renamed into place only once both are complete, so a failure leaves neither a
partial file nor one of the pair without the other. matplotlib (the ``plot`` extra) is imported here
only when a drawing is made, so ``import prune`` does not need it; the figure is rendered by Agg (PNG)
and matplotlib's SVG writer, no display and no system binary. Edges are drawn as one
``LineCollection`` per style, not one artist per edge, so a drawing of thousands of edges takes about
a second (``bench/draw.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

from prune.files import atomic_path

__all__ = ["draw_circuit", "save_circuit_files", "EXTENSIONS"]

EXTENSIONS = (".png", ".svg")

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_PORTS = {"q": -0.3, "k": 0.0, "v": 0.3}  # offsets of a head's input ports, in box widths
_PORT_COLOURS = {"q": "#1f77b4", "k": "#e69f00", "v": "#009e73", "mlp": "#555555", "logits": "#555555"}
# Status of an edge or node against the reference: colour, matplotlib line style, legend text.
_STATUS = {
    "tp": ("#222222", "solid", "true positive (in both)"),
    "fp": ("#e66100", (0, (5, 2.5)), "false positive (circuit only)"),
    "miss": ("#5d3a9b", (0, (1, 1.6)), "missed (reference only)"),
}
_BOX_W, _BOX_H = 0.8, 0.46  # a head's box, in data units (1 unit = 1 inch at the drawing's size)
_LEGEND_W = 2.4  # inches kept right of the graph for the legend
_MAX_PIXELS = 16e6  # a PNG larger than this is drawn at a lower dpi


def _graph_words(circuit) -> str:
    g = circuit.graph
    conventions = getattr(g, "conventions", "ours")
    extra = f", {conventions} conventions" if conventions != "ours" else ""
    return f"model {circuit.model!r} (a {g.n_layers}-layer, {g.n_heads}-head graph{extra})"


def _check(circuit, truth, labels, title) -> None:
    """Refuse what cannot be drawn, before matplotlib is imported or anything is written."""
    from prune.circuit import Circuit

    if not isinstance(circuit, Circuit):
        also = f"; truth= is a {type(truth).__name__}" if truth is not None else ""
        raise ValueError(f"draw_circuit draws a prune.circuit.Circuit, got a {type(circuit).__name__} "
                         f"({str(circuit)[:60]!r}){also}; build one with Circuit(graph=..., edges=...) or "
                         f"Circuit.load(path)")
    if truth is not None:
        if not isinstance(truth, Circuit):
            raise ValueError(f"truth= must be a prune.circuit.Circuit of the same graph as the circuit "
                             f"({_graph_words(circuit)}), got a {type(truth).__name__} ({str(truth)[:60]!r})")
        if truth.graph != circuit.graph:
            raise ValueError(f"truth= is a circuit of {_graph_words(truth)}, but the circuit is of "
                             f"{_graph_words(circuit)}; draw a circuit against the reference of its own model")
        if truth.model and circuit.model and truth.model != circuit.model:
            raise ValueError(f"truth= is a circuit of model {truth.model!r}, but the circuit is of model "
                             f"{circuit.model!r} (both {circuit.graph.n_layers}-layer, {circuit.graph.n_heads}-head "
                             f"graphs); draw a circuit against the reference of its own model")
        if truth.ablation and circuit.ablation and truth.ablation != circuit.ablation:
            raise ValueError(f"truth= was found under {truth.ablation!r} ablation, the circuit under "
                             f"{circuit.ablation!r}; the ground truth depends on the ablation: draw the circuit "
                             f"against the reference of its own ablation")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise ValueError(f"labels= must map node names to text, e.g. {{'a0.h0': 'x = Aggregate(...)'}}, got a "
                             f"{type(labels).__name__}")
        nodes = {*circuit.graph.writer_names, "logits"}
        for node, text in labels.items():
            if node not in nodes:
                raise ValueError(f"labels= names {node!r}, which is no node of {_graph_words(circuit)}; nodes are "
                                 f"'input', 'a{{l}}.h{{h}}', 'm{{l}}' and 'logits'")
            if not isinstance(text, str):
                raise ValueError(f"labels[{node!r}] is a {type(text).__name__} ({text!r}); give text")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title= must be text, got a {type(title).__name__} ({title!r})")


class _Layout:
    """Where every node and port of a graph sits (data units; y grows upwards)."""

    def __init__(self, graph, *, spacing: float):
        self.graph, self.spacing = graph, spacing
        L, H = graph.n_layers, graph.n_heads
        self.half_width = max((H - 1) / 2 * spacing + _BOX_W / 2, 1.0)
        self.top = 2 * L + 1
        self.pos = {"input": (0.0, 0.0), "logits": (0.0, float(self.top))}
        for layer in range(L):
            for h in range(H):
                self.pos[f"a{layer}.h{h}"] = ((h - (H - 1) / 2) * spacing, 2.0 * layer + 1)
            self.pos[f"m{layer}"] = (0.0, 2.0 * layer + 2)

    @staticmethod
    def box_width(node: str) -> float:
        return _BOX_W if _HEAD.match(node) else 1.3 * _BOX_W

    def out_point(self, writer: str) -> tuple[float, float]:
        x, y = self.pos[writer]
        return x, y + _BOX_H / 2

    def in_point(self, reader: str) -> tuple[float, float, str]:
        """Where an edge into ``reader`` (``a0.h0<q>``, ``m0``, ``logits``) ends, and the port's kind."""
        if reader.endswith(">"):
            node, port = reader[:-3], reader[-2]
            x, y = self.pos[node]
            return x + _PORTS[port] * _BOX_W, y - _BOX_H / 2, port
        x, y = self.pos[reader]
        return x, y - _BOX_H / 2, "logits" if reader == "logits" else "mlp"


def _curves(layout: _Layout, edges, n_points: int = 14):
    """One polyline per edge (``[n_edges, n_points, 2]``): a quadratic Bezier that bows sideways by more the
    more rows it skips (an edge to the next row is straight)."""
    import numpy as np

    if not edges:
        return np.zeros((0, n_points, 2))
    starts, ends, bows = [], [], []
    for e in edges:
        writer, reader = e.split("->")
        x0, y0 = layout.out_point(writer)
        x1, y1, _ = layout.in_point(reader)
        starts.append((x0, y0))
        ends.append((x1, y1))
        skipped = max(round(y1 + _BOX_H / 2 - (y0 - _BOX_H / 2)) - 1, 0)  # rows strictly between the two ends
        if skipped == 0:
            bows.append(0.0)
            continue
        # Bow away from the centre column (where input, the MLPs and logits sit) on the side of the writer or
        # the reader; edges between centre nodes bow right for q/k/mlp/logits ports and left for v ports,
        # so that the backbone's skip edges do not all lie on one arc.
        side = x0 + x1
        direction = (1.0 if side > 0 else -1.0) if abs(side) > 1e-9 else (-1.0 if reader.endswith("<v>") else 1.0)
        bows.append(direction * (0.55 * _BOX_W + 0.18 * (skipped - 1) ** 0.8 * layout.spacing))
    p0, p2 = np.array(starts), np.array(ends)
    p1 = (p0 + p2) / 2
    p1[:, 0] += np.array(bows) * 2  # a quadratic Bezier reaches half its control point's offset
    t = np.linspace(0.0, 1.0, n_points)[None, :, None]
    return (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * p1[:, None] + t**2 * p2[:, None]


def _wrap(text: str, width: int, max_lines: int) -> str:
    lines = []
    for para in text.splitlines():
        lines += textwrap.wrap(para, width, subsequent_indent="  ", break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more lines)"]
    return "\n".join(lines)


def draw_circuit(circuit, path_stem, *, truth=None, labels: Mapping[str, str] | None = None,
                 title: str | None = None, dpi: int = 110) -> list[Path]:
    """Draw ``circuit`` (a :class:`prune.circuit.Circuit`) to ``path_stem.png`` and ``path_stem.svg``.

    Args:
      circuit: the circuit to draw.
      path_stem: where, without the extension; missing folders are created.
      truth: a reference circuit of the same graph (model, ablation): the drawing is then of the union,
        true positives, false positives and misses told apart by colour and line style, with counts.
      labels: extra text per node name (``{"a0.h0": "length = SelectorWidth(...)"}``), printed beside
        the node, e.g. the RASP expression it computes; nodes not drawn as boxes get theirs too.
      title: the drawing's title; default: model, ablation, method and edge counts.
      dpi: the PNG's resolution.

    Returns the two paths written. Raises ``ValueError`` for a circuit that is not a ``Circuit``, a
    ``truth`` of another graph, model or ablation, or bad ``labels``/``title``, before writing anything.
    """
    _check(circuit, truth, labels, title)
    if not isinstance(dpi, int) or isinstance(dpi, bool) or not 20 <= dpi <= 600:
        raise ValueError(f"dpi= must be a whole number from 20 to 600, got {dpi!r}")
    stem = Path(path_stem)
    paths = [stem.parent / f"{stem.name}{ext}" for ext in EXTENSIONS]
    import matplotlib as mpl

    # Text stays text in the SVG (smaller, faster, searchable); fixed ids and no date make it reproducible.
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "prune.draw", "font.size": 8}), \
            contextlib.ExitStack() as stack:
        fig = _figure(circuit, truth, dict(labels or {}), title)
        width, height = fig.get_size_inches()
        # One data unit is one inch, so a big model makes a big figure: the PNG's resolution drops to keep
        # it within _MAX_PIXELS (the SVG, a vector drawing, is the one to zoom into).
        dpi = min(dpi, int((_MAX_PIXELS / (width * height)) ** 0.5))
        # Both files render to temporary names first; leaving the stack renames both (or, on an error,
        # removes both), so the pair is written whole or not at all.
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        fig.savefig(tmps[0], format="png", dpi=dpi, metadata={"Software": None})
        fig.savefig(tmps[1], format="svg", metadata={"Date": None})
    return paths


def save_circuit_files(circuit, json_path, drawing_stem=None, *, truth=None, labels: Mapping[str, str] | None = None,
                       relative_to=None) -> dict[str, str]:
    """Save ``circuit`` as EAP-IG JSON at ``json_path`` and, with ``drawing_stem``, draw it there (against
    ``truth``, with ``labels``); the paths written, as a table row records them (``{"circuit": ..., "drawing":
    ...png}``), relative to the folder ``relative_to`` where given (a table JSON's folder, so that the folder
    can move as a whole). The drawing is made first: whatever it refuses, nothing is written."""
    drawing = draw_circuit(circuit, drawing_stem, truth=truth, labels=labels)[0] if drawing_stem is not None else None
    files = {"circuit": circuit.save(json_path)}
    if drawing is not None:
        files["drawing"] = drawing
    if relative_to is None:
        return {k: str(v) for k, v in files.items()}
    return {k: os.path.relpath(v, relative_to) for k, v in files.items()}


def _figure(circuit, truth, labels: dict, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch

    graph = circuit.graph
    found = set(circuit.edges)
    ref = set(truth.edges) if truth is not None else set()
    drawn_edges = [e for e in graph.edge_names if e in found or e in ref]  # graph order
    circuit_nodes, ref_nodes = set(graph.nodes_of(found)), set(graph.nodes_of(ref))
    shown = circuit_nodes | ref_nodes | {"input", "logits"}
    # Wider head columns where heads carry text beside them.
    spacing = 3.3 if any(_HEAD.match(n) for n in labels) else 1.0
    layout = _Layout(graph, spacing=spacing)
    text_right = 2.6 if labels else 0.0  # room for the text beside the centre column's nodes
    curves = _curves(layout, drawn_edges)
    # The axes span the nodes, the text beside them and the edges' bows; one data unit is one inch both ways.
    left, right = -layout.half_width, layout.half_width
    if len(curves):
        left, right = min(left, curves[..., 0].min() - 0.1), max(right, curves[..., 0].max() + 0.1)
    right += text_right
    width_in = right - left + 0.6 + _LEGEND_W
    if title is None:
        title = _default_title(circuit, truth)
    title = _wrap(title, max(int((width_in - 0.5) / 0.075), 30), 4)  # ~0.075 inch per character at 9 pt
    title_in = 0.3 + 0.16 * title.count("\n")
    height_in = layout.top + 1.3 + title_in
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.3 / width_in, 0.35 / height_in, (right - left) / width_in, (layout.top + 0.6) / height_in))
    ax.set_xlim(left, right)
    ax.set_ylim(-0.45, layout.top + 0.15)
    ax.set_axis_off()
    fig.suptitle(title, x=0.3 / width_in, ha="left", y=1 - 0.12 / height_in, va="top", fontsize=9)

    # Faint outlines for the nodes the drawing is not about: one collection.
    faint = [FancyBboxPatch((x - layout.box_width(n) / 2, y - _BOX_H / 2), layout.box_width(n), _BOX_H,
                            boxstyle="round,pad=0,rounding_size=0.06")
             for n, (x, y) in layout.pos.items() if n not in shown]
    if faint:
        ax.add_collection(PatchCollection(faint, facecolor="none", edgecolor="#d0d0d0", linewidth=0.6,
                                          zorder=1))

    # Edges: one LineCollection per style.
    handles = []
    index = {e: i for i, e in enumerate(drawn_edges)}
    if truth is None:
        for kind in ("q", "k", "v", "mlp", "logits"):
            chosen = [index[e] for e in drawn_edges if layout.in_point(e.split("->")[1])[2] == kind]
            if chosen:
                ax.add_collection(LineCollection(curves[chosen], colors=_PORT_COLOURS[kind], linewidths=1.1,
                                                 alpha=0.85, zorder=2))
            what = f"into {kind}" if kind in _PORTS else f"into {'an MLP' if kind == 'mlp' else 'logits'}"
            handles.append(Line2D([], [], color=_PORT_COLOURS[kind], lw=1.5, label=f"{what}: {len(chosen)}"))
    else:
        status = {e: "tp" if e in found and e in ref else "fp" if e in found else "miss" for e in drawn_edges}
        for key in ("tp", "fp", "miss"):
            colour, style, what = _STATUS[key]
            chosen = [index[e] for e in drawn_edges if status[e] == key]
            if chosen:
                ax.add_collection(LineCollection(curves[chosen], colors=colour, linestyles=[style],
                                                 linewidths=1.6 if key == "miss" else 1.2, alpha=0.9,
                                                 zorder=3 if key != "tp" else 2))
            handles.append(Line2D([], [], color=colour, ls=style, lw=1.6, label=f"{what}: {len(chosen)}"))

    # The nodes drawn: boxes by outline style (one collection each), names and labels as text.
    groups: dict[str, list] = {"tp": [], "fp": [], "miss": []}
    for n in shown:
        key = "tp" if truth is None or n in ("input", "logits") or (n in circuit_nodes and n in ref_nodes) \
            else "fp" if n in circuit_nodes else "miss"
        x, y = layout.pos[n]
        w = layout.box_width(n)
        groups[key].append(FancyBboxPatch((x - w / 2, y - _BOX_H / 2), w, _BOX_H,
                                          boxstyle="round,pad=0,rounding_size=0.06"))
        face = "#dbe9f6" if _HEAD.match(n) else "#e3f1df" if _MLP.match(n) else "#eeeeee"
        groups[key][-1].set_facecolor(face)
    for key, patches in groups.items():
        if patches:
            colour, style, _ = _STATUS[key]
            ax.add_collection(PatchCollection(patches, match_original=False,
                                              facecolor=[p.get_facecolor() for p in patches],
                                              edgecolor=colour, linestyle=style, linewidth=1.1, zorder=4))
    for n in shown:
        x, y = layout.pos[n]
        ax.text(x, y, n, ha="center", va="center", fontsize=7.5, zorder=5, family="DejaVu Sans Mono")
    port_x, port_y, port_c = [], [], []
    for n in shown:
        if _HEAD.match(n):
            x, y = layout.pos[n]
            for port, off in _PORTS.items():
                port_x.append(x + off * _BOX_W)
                port_y.append(y - _BOX_H / 2)
                port_c.append(_PORT_COLOURS[port])
    if port_x:
        ax.scatter(port_x, port_y, s=9, c=port_c, marker="s", zorder=6, linewidths=0)
    for n, text in labels.items():
        x, y = layout.pos[n]
        right = x + layout.box_width(n) / 2 + 0.08
        # A head's text stops at the next head's column; the rightmost head's, and the centre column's
        # (whose rows hold nothing else), run to the right margin.
        beside_head = _HEAD.match(n) and int(n.split(".h")[1]) < graph.n_heads - 1
        width = spacing - _BOX_W - 0.15 if beside_head else layout.half_width + text_right - right
        chars = max(int(width / 0.052), 12)  # ~0.052 inch per character at 5.5 pt
        ax.text(right, y, _wrap(text, chars, 5), ha="left", va="center", fontsize=5.5, color="#333333",
                zorder=5, family="DejaVu Sans Mono", linespacing=1.1)

    # Legend: edge styles with counts, then the ports of a head.
    handles += [Line2D([], [], color=_PORT_COLOURS[p], marker="s", lw=0, ms=4, label=f"{p} port")
                for p in _PORTS]
    faint_handle = Line2D([], [], color="#d0d0d0", marker="s", lw=0, ms=6, mfc="none",
                          label="node not drawn on (faint)")
    handles.append(faint_handle)
    fig.legend(handles=handles, loc="upper left",
               bbox_to_anchor=(1 - (_LEGEND_W - 0.1) / width_in, 1 - (title_in + 0.1) / height_in),
               fontsize=7, frameon=False, title="edges", title_fontsize=7.5, alignment="left")
    return fig


def _default_title(circuit, truth) -> str:
    what = " ".join(filter(None, [circuit.model or "circuit", f"{circuit.ablation} ablation" if circuit.ablation
                                  else "", circuit.method]))
    if truth is None:
        return f"{what}: {len(circuit)} of {circuit.graph.n_edges} edges"
    cmp = circuit.compare(truth)
    exact = "exact" if cmp.exact else "not exact"
    return (f"{what}: {len(circuit)} edges against a reference of {len(truth)} ({exact}; precision "
            f"{cmp.precision:.2f}, recall {cmp.recall:.2f})")
