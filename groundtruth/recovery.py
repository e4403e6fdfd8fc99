"""Does a pruner recover the ground truth? The check behind ``make demo`` and the tests.

A pruner is a :class:`prune.Pruner`: any callable with Edge Pruning's
signature, ``pruner(model, examples, *, ablation, seed) -> Circuit``.

It recovers a program when its circuit equals the verified functional ground
truth for that ablation edge for edge, and the circuit alone reproduces the
model's decoded outputs on the whole evaluation set. Precision, recall and the
edge differences are reported either way. Needs torch only for artifacts.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import time
from pathlib import Path

from prune.evaluate import Evaluator
from prune.pruner import Pruner, check_circuit

__all__ = ["Recovery", "PrunerError", "load_pruner", "recover", "DEFAULT_PRUNER"]

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
    # Did the method's own circuit (``metadata["own_edges"]``: Edge Pruning's log_alpha > 0,
    # before the shared exact finalizer) already equal the ground truth? The circuit itself
    # when it was not finalized.
    own_exact: bool | None = None
    # The pruner's circuit itself (scores, metadata), for saving and drawing; not part of the record.
    circuit: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def exact(self) -> bool:
        return not self.only_found and not self.only_ground_truth and self.reproduces == 1.0

    def row(self) -> dict:
        return {
            "program": self.program, "ablation": self.ablation, "seed": self.seed,
            "gt edges": len(self.ground_truth), "found": len(self.found),
            "precision": f"{self.precision:.2f}", "recall": f"{self.recall:.2f}",
            "exact": "yes" if self.exact else "NO",
            "own exact": {True: "yes", False: "no", None: "-"}[self.own_exact],
            "seconds": f"{self.seconds:.1f}",
        }

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "circuit"}
        d["exact"] = self.exact
        return d


def load_pruner(spec: str) -> Pruner:
    """``module:callable`` -> the callable, with a clear error for a bad spec.

    The module is imported as ``python -m`` would: the working directory comes
    first on the path, so ``mypruner:fn`` finds ``./mypruner.py``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"pruner {spec!r} must look like 'package.module:function'")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 (an import error, or anything the module raises on import)
        raise ValueError(f"cannot import the pruner's module {module_name!r}: {type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {attr!r}; the pruner must be a function "
                         f"(model, examples, *, ablation, seed) -> prune.circuit.Circuit")
    try:
        inspect.signature(fn).bind(None, None, ablation="zero", seed=0)
    except TypeError as err:
        raise ValueError(f"pruner {spec!r} cannot be called as pruner(model, examples, *, ablation, seed): "
                         f"{err}") from None
    except ValueError:  # no signature to inspect (a builtin): the call will tell
        pass
    return fn


class PrunerError(RuntimeError):
    """The pruner raised, exited, or returned something that is not a circuit of the model."""


def recover(name: str, model, examples, ground_truth, *, ablation: str, seed: int = 0,
            pruner: Pruner | None = None, evaluator: Evaluator | None = None) -> Recovery:
    """Run ``pruner`` on one program and compare with its ground truth.

    A pruner that raises (or calls ``sys.exit``) or returns something other than
    a circuit of ``model`` under ``ablation`` raises :class:`PrunerError`. ``evaluator``: one already
    built for (model, examples, ablation), to check the circuit's outputs with (built here when not given).
    """
    pruner = pruner or load_pruner(DEFAULT_PRUNER)
    start = time.perf_counter()
    try:
        circuit = pruner(model, examples, ablation=ablation, seed=seed)
    except (Exception, SystemExit) as err:  # noqa: BLE001 (the pruner is the user's code)
        raise PrunerError(f"the pruner raised {type(err).__name__}: {err} (on {name}, {ablation} ablation, "
                          f"seed {seed})") from err
    seconds = time.perf_counter() - start
    try:
        check_circuit(circuit, model, ablation)
    except (TypeError, ValueError) as err:
        raise PrunerError(f"{err} (on {name})") from None
    cmp = circuit.compare(ground_truth)
    evaluator = evaluator or Evaluator(model, examples, ablation)
    reproduces = evaluator.agreement(circuit.mask()).float().mean().item()
    own = (circuit.metadata or {}).get("own_edges", circuit.edges)
    return Recovery(
        program=name, ablation=ablation, seed=seed, ground_truth=tuple(ground_truth), found=circuit.edges,
        precision=cmp.precision, recall=cmp.recall, reproduces=reproduces, seconds=seconds,
        only_found=cmp.only_found, only_ground_truth=cmp.only_reference,
        own_exact=set(own) == set(ground_truth), circuit=circuit,
    )
