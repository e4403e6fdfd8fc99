"""A program as a test case: compiled, converted, with its ground truth verified.

This is the short module that chains the passes::

    compile_program -> to_torch -> examples -> ground truth -> verify
"""

from __future__ import annotations

import dataclasses
import time

import torch

from groundtruth.circuits import Verification, functional_edges, semantic_edges, structural_edges, verify
from groundtruth.compiler import COMPILER_PAD, Compiled, compile_program
from groundtruth.convert import to_torch
from groundtruth.program import Program
from prune.ablation import ABLATIONS
from prune.data import Examples
from prune.model import Transformer

__all__ = ["Case", "build_case", "make_examples", "VARIANTS"]

VARIANTS = ("semantic", "structural") + tuple(f"functional:{a}" for a in ABLATIONS)


@dataclasses.dataclass(frozen=True)
class Case:
    """Everything a pruner needs, and everything a report shows, for one program."""

    program: Program
    compiled: Compiled
    model: Transformer
    examples: Examples
    circuits: dict  # variant -> edge names (graph order)
    verifications: dict  # ablation -> Verification of circuits[f"functional:{ablation}"]
    seconds: float
    features: object = None  # groundtruth.feature_truth.FeatureTruth, derived when asked (build_case)

    @property
    def name(self) -> str:
        return self.program.name

    def functional(self, ablation: str) -> list[str]:
        return self.circuits[f"functional:{ablation}"]


def make_examples(compiled: Compiled, inputs=None) -> Examples:
    """Clean ids, corrupted ids, non-padding and answer positions for the program's inputs."""
    prog = compiled.program
    inputs = prog.inputs() if inputs is None else inputs
    corrupted = prog.corruptions(inputs)
    clean = torch.from_numpy(compiled.encode(inputs))
    pad = compiled.input_encoding[COMPILER_PAD]
    valid = clean != pad
    answer = valid.clone()
    answer[:, 0] = False  # the BOS position has no output
    return Examples(
        clean=clean,
        corrupted=torch.from_numpy(compiled.encode(corrupted)),
        valid=valid,
        answer=answer,
        kind="numerical" if compiled.numerical else "categorical",
        atol=prog.atol,
    )


def build_case(prog: Program, *, ablations=ABLATIONS, features: bool = False) -> Case:
    """Compile, convert, check the conversion, derive and verify the ground truth; with ``features``, the
    feature-level ground truth as well (:func:`groundtruth.feature_truth.feature_truth`, stored by
    ``groundtruth build``)."""
    start = time.perf_counter()
    compiled = compile_program(prog)
    model = to_torch(compiled)
    inputs = prog.inputs()
    examples = make_examples(compiled, inputs)
    check_conversion(compiled, model, examples, inputs)
    circuits = {
        "semantic": semantic_edges(model, compiled.residual_labels),
        "structural": structural_edges(model),
    }
    verifications: dict[str, Verification] = {}
    for ablation in ablations:
        edges = functional_edges(model, examples, ablation)
        circuits[f"functional:{ablation}"] = edges
        verifications[ablation] = verify(model, examples, edges, ablation)
    case = Case(prog, compiled, model, examples, circuits, verifications, time.perf_counter() - start)
    if features:
        from groundtruth.feature_truth import feature_truth

        case = dataclasses.replace(case, features=feature_truth(case, ablations=ablations, derive=True),
                                   seconds=time.perf_counter() - start)
    return case


def check_conversion(compiled: Compiled, model: Transformer, examples: Examples, inputs) -> None:
    """The torch model (padding masked) decodes what Tracr decodes on each unpadded input."""
    want = compiled.tracr_outputs(inputs)
    with torch.no_grad():
        decoded = examples.decode(model(examples.clean, attention_mask=examples.valid))
    for i, (seq, expected) in enumerate(zip(inputs, want, strict=True)):
        got = decoded[i, 1 : len(seq) + 1].tolist()
        if compiled.numerical:
            ok = all(abs(a - b) <= compiled.program.atol for a, b in zip(got, expected, strict=True))
        else:
            ok = [compiled.output_values[int(v)] for v in got] == expected
        if not ok:
            raise RuntimeError(
                f"program {compiled.program.name!r}: on input {list(seq)!r} the PyTorch conversion "
                f"decodes {got} but Tracr decodes {expected}"
            )
