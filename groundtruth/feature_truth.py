"""Feature-level ground truth: a compiled program's functional circuit on its transcoder feature graph.

A compiled Tracr MLP is a ReLU transcoder whose hidden units are known features
(:meth:`prune.transcoder.Transcoder.from_mlp`), so the ideal transcoders of a
program put every hidden unit in the graph as its own writer ``m{l}.f{i}``
(:func:`prune.transcoder.feature_model`; docs/transcoders.md). The functional
ground truth on that feature graph is derived and verified by the same functions
as the edge-level one (:func:`groundtruth.circuits.functional_edges` from the
structural edges, then :func:`groundtruth.circuits.verify`), under each ablation::

    artifact -> ideal transcoders -> feature model -> functional_edges -> verify

``groundtruth build`` stores it with each program's artifact (``circuits.json``,
under ``"features"``), and :func:`feature_truth` reads it back from there; where
it is not stored (variants, a user's folder built before) it is derived on demand
(0.1 s for ``shift_by`` to 18 minutes for ``shuffle_dyck2``; docs/transcoders.md). No edge-level
ground truth changes.

A circuit found on a *trained* transcoder's feature graph is scored against it
through the features' matching (:func:`prune.transcoder.match_features`, one
:class:`~prune.transcoder.FeatureMatch` per layer): :func:`score_feature_circuit`
renames each ground-truth edge out of true feature ``m{l}.f{i}`` to the trained
feature that recovers it, ``m{l}.f{recovered_by[i]}`` (the other writers and every
reader keep their names), and compares.
"""

from __future__ import annotations

import dataclasses
import re
import time

from groundtruth.circuits import Verification, functional_edges, verify
from prune.ablation import ABLATIONS, check_ablation
from prune.circuit import Circuit
from prune.data import Examples
from prune.graph import Graph
from prune.model import Transformer
from prune.transcoder import FeatureMatch, Transcoder, feature_model

__all__ = ["FeatureTruth", "feature_truth", "ideal_transcoders", "FeatureCircuitScore", "score_feature_circuit"]

_FEATURE = re.compile(r"^m(\d+)\.f(\d+)$")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a model has no truth value
class FeatureTruth:
    """A program's feature model and its verified functional ground truth per ablation."""

    name: str
    model: Transformer  # the feature model (its graph: the feature graph)
    examples: Examples
    circuits: dict  # ablation -> edge names of the feature graph (graph order)
    verifications: dict  # ablation -> Verification of circuits[ablation]
    seconds: float
    stored: bool = False  # read from the artifact (derived and verified when it was built), not derived now

    def functional(self, ablation: str) -> list[str]:
        return self.circuits[ablation]

    @property
    def ok(self) -> bool:
        """Every ablation's circuit reproduces every output and each of its edges is necessary."""
        return all(v.ok for v in self.verifications.values())


def ideal_transcoders(model: Transformer) -> dict[int, Transcoder]:
    """Every layer's ideal transcoder (its own ReLU MLP, one feature per hidden unit), by layer."""
    return {l: Transcoder.from_mlp(block, l) for l, block in enumerate(model.blocks)}


def feature_truth(artifact, *, ablations=ABLATIONS, keep_error: bool = True, derive: bool = False
                  ) -> FeatureTruth:
    """The functional ground truth of ``artifact`` (a loaded :class:`groundtruth.artifacts.Artifact`, or
    anything with ``name``, ``model`` and ``examples``) on the feature graph of its ideal transcoders, under
    each of ``ablations``: read from the artifact where it is stored there for each of them (and
    ``keep_error``, the default it was derived with), otherwise (or with ``derive``) derived and verified now.

    ``keep_error``: as :func:`prune.transcoder.feature_model`; with the ideal transcoders the error term is 0
    either way. Raises ``ValueError`` when a derived circuit does not verify (not sufficient, or an edge not
    needed), quoting the ablation and what failed.
    """
    start = time.perf_counter()
    ablations = tuple(check_ablation(a) for a in ablations)
    model = feature_model(artifact.model, ideal_transcoders(artifact.model), keep_error=keep_error)
    examples = artifact.examples
    stored = getattr(artifact, "features", None)  # an Artifact's dict (a Case's is a FeatureTruth or None)
    if (not derive and keep_error and isinstance(stored, dict)
            and all(f"functional:{a}" in stored["variants"] for a in ablations)):
        circuits = {a: list(stored["variants"][f"functional:{a}"]) for a in ablations}
        verifications = {a: _stored_verification(a, circuits[a], stored["verification"][a]) for a in ablations}
        return FeatureTruth(name=artifact.name, model=model, examples=examples, circuits=circuits,
                            verifications=verifications, seconds=time.perf_counter() - start, stored=True)
    circuits: dict[str, list[str]] = {}
    verifications: dict[str, Verification] = {}
    for ablation in ablations:
        edges = functional_edges(model, examples, ablation)
        v = verify(model, examples, edges, ablation)
        if not v.ok:
            raise ValueError(f"{artifact.name}: the feature-level ground truth under {ablation} ablation does not "
                             f"verify (reproduces {v.n_reproduced} of {v.n_examples} examples, inert edges "
                             f"{v.inert})")
        circuits[ablation], verifications[ablation] = edges, v
    return FeatureTruth(name=artifact.name, model=model, examples=examples, circuits=circuits,
                        verifications=verifications, seconds=time.perf_counter() - start)


def _stored_verification(ablation: str, edges: list[str], v: dict) -> Verification:
    """The :class:`~groundtruth.circuits.Verification` circuits.json records (counts and inert edges)."""
    inert = set(v["inert"])
    return Verification(ablation=ablation, n_examples=v["n_examples"], n_reproduced=v["n_reproduced"],
                        necessary={e: e not in inert for e in edges}, first_failure=None)


@dataclasses.dataclass(frozen=True)
class FeatureCircuitScore:
    """A circuit on a trained transcoder's feature graph against the feature-level ground truth.

    ``recall`` is over the ground truth's edges: the share whose image (the edge renamed through the
    matching) the circuit has; an edge out of a true feature that no trained feature recovers has no
    image and is never recalled (``unmatched``). ``precision`` is the share of the circuit's edges that
    are the image of some ground-truth edge. ``exact``: every ground-truth edge has an image, no two
    share one (no trained feature stands for two true ones in the same edge), and the circuit is
    exactly the images.
    """

    precision: float
    recall: float
    exact: bool
    n_found: int
    n_truth: int
    image: tuple[str, ...]  # the ground truth in the trained graph's names (edges with an image), graph order
    unmatched: tuple[str, ...]  # ground-truth edges out of a true feature that no trained one recovers
    only_found: tuple[str, ...]  # the circuit's edges that are no ground-truth edge's image
    missed: tuple[str, ...]  # ground-truth edges whose image the circuit lacks (unmatched ones included)


def _renamed(edge: str, matches: dict[int, FeatureMatch], truth_graph: Graph) -> str | None:
    """``edge`` of the true feature graph in the trained one's names; None when its feature is unmatched."""
    writer, reader = edge.split("->")
    m = _FEATURE.match(writer)
    if m is None:
        return edge  # input, a head, a plain MLP or an error term: the same writer in both graphs
    layer, feature = int(m.group(1)), int(m.group(2))
    if layer not in matches:
        raise ValueError(f"the ground truth has edges out of layer {layer}'s features ({edge!r}) but no "
                         f"FeatureMatch was given for layer {layer}; match every transcoded layer "
                         f"{[l for l in range(truth_graph.n_layers) if truth_graph.n_features(l)]}")
    j = matches[layer].recovered_by[feature]
    return None if j < 0 else f"m{layer}.f{j}->{reader}"


def score_feature_circuit(circuit: Circuit, truth: FeatureTruth, ablation: str,
                          matches: dict[int, FeatureMatch]) -> FeatureCircuitScore:
    """Score ``circuit`` (found on a trained transcoder's feature graph) against ``truth``'s circuit under
    ``ablation``, through ``matches`` (per transcoded layer, the trained features matched to the true ones:
    ``match_features(trained[l], ideal[l], x)``)."""
    truth_graph = truth.model.graph
    g = circuit.graph
    if (g.n_layers, g.n_heads, g.conventions) != (truth_graph.n_layers, truth_graph.n_heads, truth_graph.conventions):
        raise ValueError(f"the circuit's graph ({g.n_layers} layers, {g.n_heads} heads, {g.conventions!r}) is not "
                         f"of the ground truth's model ({truth_graph.n_layers}, {truth_graph.n_heads}, "
                         f"{truth_graph.conventions!r})")
    for layer, m in matches.items():
        if m.n_true != truth_graph.n_features(layer) or m.n_trained != g.n_features(layer):
            raise ValueError(f"matches[{layer}] pairs {m.n_trained} trained with {m.n_true} true features, but the "
                             f"circuit's graph has {g.n_features(layer)} and the ground truth's "
                             f"{truth_graph.n_features(layer)} at layer {layer}")
    images = {e: _renamed(e, matches, truth_graph) for e in truth.functional(ablation)}
    found = set(circuit.edges)
    image_set = {i for i in images.values() if i is not None}
    unknown = sorted(image_set - set(g.edge_names))
    if unknown:
        raise ValueError(f"ground-truth edges renamed through the matching are not edges of the circuit's graph: "
                         f"{unknown[:3]}")
    order = {n: k for k, n in enumerate(g.edge_names)}
    recalled = [e for e, i in images.items() if i is not None and i in found]
    unmatched = tuple(e for e, i in images.items() if i is None)
    injective = len(image_set) == len(images) - len(unmatched)
    return FeatureCircuitScore(
        precision=len(found & image_set) / len(found) if found else (1.0 if not images else 0.0),
        recall=len(recalled) / len(images) if images else 1.0,
        exact=not unmatched and injective and found == image_set,
        n_found=len(found), n_truth=len(images),
        image=tuple(sorted(image_set, key=order.get)), unmatched=unmatched,
        only_found=tuple(sorted(found - image_set, key=order.get)),
        missed=tuple(e for e, i in images.items() if i is None or i not in found))
