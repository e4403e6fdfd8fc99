"""What a circuit-discovery method is, to everything that runs one.

Recovery checks (``groundtruth recover``, the ``--pruner`` option of the test
suite), the method comparison and the baselines all take a :class:`Pruner`:
any callable with Edge Pruning's signature. :func:`check_circuit` is what they
hold its answer to.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from prune.circuit import Circuit
from prune.data import Examples
from prune.model import Transformer

__all__ = ["Pruner", "check_circuit"]


@runtime_checkable
class Pruner(Protocol):
    """``pruner(model, examples, *, ablation, seed) -> Circuit``.

    It must return a :class:`prune.circuit.Circuit` of ``model.graph`` found
    under ``ablation`` (``circuit.ablation == ablation``), and the same circuit
    for the same seed. Extra keyword options must have defaults.
    """

    def __call__(self, model: Transformer, examples: Examples, *, ablation: str, seed: int) -> Circuit: ...


def check_circuit(circuit: object, model: Transformer, ablation: str, *, who: str = "the pruner") -> Circuit:
    """``circuit`` if it is a Circuit of ``model``'s graph found under ``ablation``; else a TypeError or
    ValueError that says what is wrong."""
    if not isinstance(circuit, Circuit):
        raise TypeError(f"{who} returned {type(circuit).__name__}, not a prune.circuit.Circuit")
    if circuit.graph != model.graph:
        raise ValueError(f"{who} returned a circuit for {circuit.graph}, not the model's {model.graph}")
    if circuit.ablation != ablation:
        raise ValueError(f"{who} returned a circuit labelled with {circuit.ablation!r} ablation, but was "
                         f"asked for {ablation!r}; set Circuit.ablation to the ablation it was found under")
    return circuit
