"""Feature-level ground truth: a compiled program's functional circuit on its transcoder feature graph.

A compiled Tracr MLP is a ReLU transcoder whose hidden units are known features
(:meth:`prune.transcoder.Transcoder.from_mlp`), so the ideal transcoders of a
program put every hidden unit in the graph as its own writer ``m{l}.f{i}``
(:func:`prune.transcoder.feature_model`; docs/transcoders.md). The functional
ground truth on that feature graph is derived and verified by the same functions
as the edge-level one (:func:`groundtruth.circuits.functional_edges` from the
structural edges, then :func:`groundtruth.circuits.verify`), under each ablation::

    artifact -> ideal transcoders -> feature model -> functional_edges -> verify

Nothing is stored: the feature ground truth is derived on demand (a few seconds
for a small program) and no existing ground truth changes.
"""

from __future__ import annotations

import dataclasses
import time

from groundtruth.circuits import Verification, functional_edges, verify
from prune.ablation import ABLATIONS, check_ablation
from prune.data import Examples
from prune.model import Transformer
from prune.transcoder import Transcoder, feature_model

__all__ = ["FeatureTruth", "feature_truth", "ideal_transcoders"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a model has no truth value
class FeatureTruth:
    """A program's feature model and its verified functional ground truth per ablation."""

    name: str
    model: Transformer  # the feature model (its graph: the feature graph)
    examples: Examples
    circuits: dict  # ablation -> edge names of the feature graph (graph order)
    verifications: dict  # ablation -> Verification of circuits[ablation]
    seconds: float

    def functional(self, ablation: str) -> list[str]:
        return self.circuits[ablation]

    @property
    def ok(self) -> bool:
        """Every ablation's circuit reproduces every output and each of its edges is necessary."""
        return all(v.ok for v in self.verifications.values())


def ideal_transcoders(model: Transformer) -> dict[int, Transcoder]:
    """Every layer's ideal transcoder (its own ReLU MLP, one feature per hidden unit), by layer."""
    return {l: Transcoder.from_mlp(block, l) for l, block in enumerate(model.blocks)}


def feature_truth(artifact, *, ablations=ABLATIONS, keep_error: bool = True) -> FeatureTruth:
    """Derive and verify the functional ground truth of ``artifact`` (a loaded
    :class:`groundtruth.artifacts.Artifact`, or anything with ``name``, ``model`` and ``examples``) on the
    feature graph of its ideal transcoders, under each of ``ablations``.

    ``keep_error``: as :func:`prune.transcoder.feature_model`; with the ideal transcoders the error term is 0
    either way. Raises ``ValueError`` when a circuit does not verify (not sufficient, or an edge not needed),
    quoting the ablation and what failed.
    """
    start = time.perf_counter()
    ablations = tuple(check_ablation(a) for a in ablations)
    model = feature_model(artifact.model, ideal_transcoders(artifact.model), keep_error=keep_error)
    examples = artifact.examples
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
