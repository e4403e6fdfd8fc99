"""A circuit: a set of edges of a model's graph, with scores, an ablation and a model.

Saved as EAP-IG JSON (``Graph.from_json`` reads it: the same node and edge names,
every edge with ``score`` and ``in_graph``, every node with ``in_graph``), plus
our own top-level keys (``model``, ``ablation``, ``method``, ``metadata`` and
``conventions``, the writer conventions it was found under), which EAP-IG ignores.
A file without ``conventions`` was found under EAP-IG's if it has none of our
keys (EAP-IG's own ``to_json``), else under ours (written before the key was).
A circuit of a feature graph (:mod:`prune.graph`) also records ``cfg.features``,
the per-layer feature counts that rebuild its graph, and lists each transcoded
layer's MLP input ``m{l}`` among the nodes; EAP-IG cannot read such a file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from prune.ablation import ABLATIONS
from prune.files import atomic_write_json, read_json
from prune.graph import CONVENTIONS, Graph

__all__ = ["Circuit", "Comparison", "CircuitFileError"]


class CircuitFileError(ValueError):
    """A circuit file that cannot be read, or belongs to another model."""


_OUR_KEYS = {"model", "ablation", "method", "metadata"}  # top-level keys EAP-IG's to_json does not write


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Edge-level agreement of a found circuit with a reference (e.g. the ground truth)."""

    precision: float
    recall: float
    true_positives: int
    only_found: tuple[str, ...]  # in the found circuit, not in the reference
    only_reference: tuple[str, ...]  # in the reference, missed

    @property
    def exact(self) -> bool:
        return not self.only_found and not self.only_reference

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclasses.dataclass(frozen=True)
class Circuit:
    """Edges (graph order) of a model's graph, found under one ablation.

    Attributes:
      graph: the model's graph (layers x heads, and the writer conventions the circuit was found under).
      edges: edge names in graph order.
      ablation: what stands in for pruned edges (``zero``, ``mean``, ``resample``).
      model: which model the circuit belongs to (an artifact name or a checkpoint).
      d_model: the model's width (EAP-IG's config needs it).
      scores: one score per edge of the graph (graph order), or None.
      method: which method found it.
      metadata: anything else worth keeping (seed, target, steps, ...).
    """

    graph: Graph
    edges: tuple[str, ...]
    ablation: str
    model: str
    d_model: int
    scores: tuple[float, ...] | None = None
    method: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.ablation not in ("", *ABLATIONS):
            raise ValueError(f"unknown ablation {self.ablation!r}; choose one of {ABLATIONS} "
                             f"(or '' when it is not known, as in a file from another tool)")
        order = {name: i for i, name in enumerate(self.edges)}
        positions = [self.graph.edge_position(e) for e in self.edges]  # raises on unknown edges
        if len(order) != len(self.edges):
            raise ValueError("a circuit lists an edge twice")
        object.__setattr__(self, "edges", tuple(self.graph.edge_names[i] for i in sorted(positions)))
        if self.scores is not None and len(self.scores) != self.graph.n_edges:
            raise ValueError(
                f"scores must have one value per graph edge ({self.graph.n_edges}), got {len(self.scores)}")
        if self.scores is not None:
            bad = [i for i, s in enumerate(self.scores) if not math.isfinite(s)]
            if bad:
                raise ValueError(f"the score of edge {self.graph.edge_names[bad[0]]} is {self.scores[bad[0]]!r} "
                                 f"({len(bad)} non-finite scores in all); scores must be finite numbers")

    # ------------------------------------------------------------ building
    @classmethod
    def from_mask(cls, graph: Graph, mask: torch.Tensor, **kwargs) -> Circuit:
        return cls(graph=graph, edges=tuple(graph.names_of(mask > 0.5)), **kwargs)

    def mask(self) -> torch.Tensor:
        return self.graph.edge_mask(self.edges)

    @property
    def nodes(self) -> list[str]:
        return self.graph.nodes_of(self.edges)

    def __len__(self) -> int:
        return len(self.edges)

    def without_dead_ends(self) -> Circuit:
        """Drop edges into heads and MLPs whose output reaches nothing (no effect on the output)."""
        g = self.graph
        keep = {g.edge_position(e) for e in self.edges}
        while True:
            writers_used = {g.edges[i][0] for i in keep}
            # A reader's node reaches something if any writer it feeds has an edge (a transcoded MLP's
            # input feeds every feature and the error term of its layer); logits feed none and always count.
            dead = {i for i in keep if (ws := g.writers_of_reader(g.edges[i][1]))
                    and not any(w in writers_used for w in ws)}
            if not dead:
                return dataclasses.replace(self, edges=tuple(g.edge_names[i] for i in sorted(keep)))
            keep -= dead

    def connected(self) -> Circuit:
        """EAP-IG's ``Graph.prune``: repeatedly drop heads and MLPs without an incoming or an outgoing
        edge, with their edges (:meth:`prune.graph.Graph.connected`). Under EAP-IG's conventions this
        is the circuit an evaluation evaluates."""
        keep = self.graph.connected(self.mask())
        return dataclasses.replace(self, edges=tuple(self.graph.names_of(keep)))

    # ---------------------------------------------------------- comparison
    def compare(self, reference) -> Comparison:
        """Precision and recall of this circuit's edges against ``reference`` (a Circuit or names)."""
        ref_edges = reference.edges if isinstance(reference, Circuit) else tuple(reference)
        if isinstance(reference, Circuit) and reference.graph != self.graph:
            raise ValueError(f"cannot compare circuits of different graphs: {self.graph} vs {reference.graph}")
        found, ref = set(self.edges), set(ref_edges)
        tp = len(found & ref)
        order = {n: i for i, n in enumerate(self.graph.edge_names)}
        return Comparison(
            precision=tp / len(found) if found else (1.0 if not ref else 0.0),
            recall=tp / len(ref) if ref else 1.0,
            true_positives=tp,
            only_found=tuple(sorted(found - ref, key=order.get)),
            only_reference=tuple(sorted(ref - found, key=order.get)),
        )

    # ------------------------------------------------------------- files
    def to_dict(self) -> dict:
        g, in_circuit = self.graph, set(self.edges)
        nodes = set(self.nodes) | {"logits"}
        scores = self.scores if self.scores is not None else [1.0 if e in in_circuit else 0.0 for e in g.edge_names]
        cfg = {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel_attn_mlp": False, "d_model": self.d_model}
        if g.features is not None:
            cfg["features"] = list(g.features)
        return {
            "cfg": cfg,
            "nodes": {n: {"in_graph": n in nodes} for n in g.node_names},
            "edges": {
                e: {"score": float(s), "in_graph": e in in_circuit}
                for e, s in zip(g.edge_names, scores, strict=True)
            },
            "model": self.model,
            "ablation": self.ablation,
            "method": self.method,
            "metadata": self.metadata,
            "conventions": g.conventions,
        }

    def save(self, path: str | Path) -> Path:
        """Write EAP-IG JSON atomically (temporary file, then rename)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, graph: Graph | None = None, model: str | None = None,
             conventions: str | None = None) -> Circuit:
        """Read an EAP-IG JSON circuit; with ``graph``/``model``, refuse one made for another model,
        or found under other writer conventions than ``graph``'s. ``conventions`` reads the file as
        found under those, whatever it records (to evaluate a circuit under conventions it was
        not found under, knowingly)."""
        path = Path(path)
        if path.exists() and not path.is_file():  # a FIFO would block the read forever
            raise CircuitFileError(f"{path} is not a regular file; give a circuit file written by Circuit.save or "
                                   f"EAP-IG")
        d = read_json(path, CircuitFileError, fix="give a circuit file written by Circuit.save or EAP-IG")
        if not {"cfg", "nodes", "edges"} <= set(d):
            raise CircuitFileError(f"{path} is not an EAP-IG circuit (needs 'cfg', 'nodes' and 'edges')")
        cfg = d["cfg"]
        if not isinstance(cfg, dict) or not {"n_layers", "n_heads"} <= set(cfg):
            raise CircuitFileError(f"{path}: 'cfg' needs 'n_layers' and 'n_heads'")
        if cfg.get("parallel_attn_mlp"):
            raise CircuitFileError(f"{path} is a circuit of a parallel-attention graph (parallel_attn_mlp: true); "
                                   f"this project's graph reads MLPs after attention; it cannot be evaluated here")
        nodes = d["nodes"] if isinstance(d["nodes"], dict) else {}
        if any(isinstance(v, dict) and v.get("neurons") is not None for v in nodes.values()):
            raise CircuitFileError(f"{path} is a neuron-level circuit; this project's graph has edges between "
                                   f"heads and MLPs only")
        recorded = d.get("conventions", "ours" if set(d) & _OUR_KEYS else "eap-ig")
        if recorded not in CONVENTIONS:
            raise CircuitFileError(f"{path} records unknown writer conventions {recorded!r}; "
                                   f"known are {CONVENTIONS}")
        if conventions is not None and conventions not in CONVENTIONS:
            raise ValueError(f"unknown writer conventions {conventions!r}; choose one of {CONVENTIONS}")
        try:
            file_graph = Graph(n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], conventions=conventions or recorded,
                               features=cfg.get("features"))
        except (TypeError, ValueError) as err:
            raise CircuitFileError(f"{path}: bad 'cfg': {err}") from None
        if graph is not None and (file_graph.n_layers, file_graph.n_heads) != (graph.n_layers, graph.n_heads):
            raise CircuitFileError(
                f"{path} is a circuit for a {file_graph.n_layers}-layer, {file_graph.n_heads}-head model, "
                f"not this {graph.n_layers}-layer, {graph.n_heads}-head one"
            )
        if graph is not None and file_graph.features != graph.features:
            raise CircuitFileError(
                f"{path} is a circuit of a graph with transcoder features {file_graph.features} per layer, "
                f"not this one's {graph.features} (None: no transcoded layer)")
        if graph is not None and file_graph.conventions != graph.conventions:
            raise CircuitFileError(
                f"{path} was found under {file_graph.conventions!r} writer conventions, and this model is under "
                f"{graph.conventions!r} ones, where the same edges compute something else; evaluate it on "
                f"model.with_conventions({file_graph.conventions!r}), or load it with "
                f"conventions={graph.conventions!r} to read it as {graph.conventions!r} knowingly "
                f"(docs/conventions.md)")
        if model is not None and d.get("model") not in (None, model):
            raise CircuitFileError(f"{path} is a circuit for model {d.get('model')!r}, not {model!r}")
        if not isinstance(d["edges"], dict) or set(d["edges"]) != set(file_graph.edge_names):
            listed = set(d["edges"]) if isinstance(d["edges"], dict) else set()
            missing = [e for e in file_graph.edge_names if e not in listed]
            extra = sorted(listed - set(file_graph.edge_names))
            raise CircuitFileError(
                f"{path} does not list every edge of its {file_graph.n_layers}-layer, {file_graph.n_heads}-head graph "
                f"exactly once: {len(missing)} missing (first {missing[:1]}), "
                f"{len(extra)} unknown (first {extra[:1]}); "
                f"write it with Circuit.save or EAP-IG's Graph.to_json")
        try:
            edges = tuple(e for e, v in d["edges"].items() if v["in_graph"])
            scores = [0.0] * file_graph.n_edges
            for e, v in d["edges"].items():
                scores[file_graph.edge_position(e)] = float(v["score"])
        except KeyError as err:
            raise CircuitFileError(f"{path}: {err.args[0]}") from None
        except (TypeError, ValueError) as err:
            raise CircuitFileError(
                f"{path}: an edge entry needs a numeric 'score' and a bool 'in_graph' ({err})") from None
        try:
            return cls(
                graph=file_graph, edges=edges, ablation=d.get("ablation", ""), model=d.get("model", ""),
                d_model=cfg.get("d_model", 0), scores=tuple(scores), method=d.get("method", ""),
                metadata=d.get("metadata", {}),
            )
        except ValueError as err:
            raise CircuitFileError(f"{path}: {err}") from None
