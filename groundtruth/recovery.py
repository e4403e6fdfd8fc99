"""Does a pruner recover the ground truth? The check behind ``make demo`` and the tests.

A pruner is any callable with Edge Pruning's signature::

    pruner(model: prune.Transformer, examples: prune.data.Examples, *,
           ablation: str, seed: int) -> prune.circuit.Circuit

It recovers a program when its circuit equals the verified functional ground
truth for that ablation edge for edge, and the circuit alone reproduces the
model's decoded outputs on the whole evaluation set. Precision, recall and the
edge differences are reported either way. Needs torch only for artifacts.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Callable

from prune.circuit import Circuit
from prune.evaluate import circuit_agreement

__all__ = ["Recovery", "load_pruner", "recover", "DEFAULT_PRUNER"]

DEFAULT_PRUNER = "prune.edge_pruning:edge_pruning"


@dataclasses.dataclass(frozen=True)
class Recovery:
    """One pruner run on one program under one ablation."""

    program: str
    ablation: str
    seed: int
    ground_truth: tuple[str, ...]
    found: tuple[str, ...]
    precision: float
    recall: float
    reproduces: float  # fraction of examples whose decoded outputs the circuit reproduces
    seconds: float
    only_found: tuple[str, ...]
    only_ground_truth: tuple[str, ...]
    # Edge Pruning only: did its thresholded circuit (log_alpha > 0, before the exact
    # binarisation repairs it) already equal the ground truth? None for other pruners.
    threshold_exact: bool | None = None

    @property
    def exact(self) -> bool:
        return not self.only_found and not self.only_ground_truth and self.reproduces == 1.0

    def row(self) -> dict:
        return {
            "program": self.program, "ablation": self.ablation, "seed": self.seed,
            "gt edges": len(self.ground_truth), "found": len(self.found),
            "precision": f"{self.precision:.2f}", "recall": f"{self.recall:.2f}",
            "exact": "yes" if self.exact else "NO",
            "threshold exact": {True: "yes", False: "no", None: "-"}[self.threshold_exact],
            "seconds": f"{self.seconds:.1f}",
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exact"] = self.exact
        return d


def load_pruner(spec: str) -> Callable:
    """``module:callable`` -> the callable, with a clear error for a bad spec."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"pruner {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import the pruner's module {module_name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {attr!r}")
    return fn


def recover(name: str, model, examples, ground_truth, *, ablation: str, seed: int = 0,
            pruner: Callable | None = None) -> Recovery:
    """Run ``pruner`` on one program and compare with its ground truth."""
    pruner = pruner or load_pruner(DEFAULT_PRUNER)
    start = time.perf_counter()
    circuit = pruner(model, examples, ablation=ablation, seed=seed)
    seconds = time.perf_counter() - start
    if not isinstance(circuit, Circuit):
        raise TypeError(f"the pruner returned {type(circuit).__name__}, not a prune.circuit.Circuit")
    if circuit.graph != model.graph:
        raise ValueError(f"the pruner returned a circuit for {circuit.graph}, not the model's {model.graph}")
    cmp = circuit.compare(ground_truth)
    reproduces = circuit_agreement(model, examples, circuit.mask(), ablation).float().mean().item()
    threshold = (circuit.metadata or {}).get("threshold_edges")
    return Recovery(
        program=name, ablation=ablation, seed=seed, ground_truth=tuple(ground_truth), found=circuit.edges,
        precision=cmp.precision, recall=cmp.recall, reproduces=reproduces, seconds=seconds,
        only_found=cmp.only_found, only_ground_truth=cmp.only_reference,
        threshold_exact=None if threshold is None else set(threshold) == set(ground_truth),
    )
