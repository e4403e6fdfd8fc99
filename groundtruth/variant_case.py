"""A variant of a compiled program as a test case: its ground truth re-derived and verified.

The short module that chains the passes::

    parent artifact -> compress and/or perturb (groundtruth.variants) -> ground truth -> verify -> compare

A variant is named ``<program>@<kind>`` (``reverse@compressed``). Its functional
ground truth is derived from scratch on the variant, by the same removal and
the same verification as a compiled program's (groundtruth.circuits), starting
from every edge of the graph: on a variant almost every weight path is nonzero,
so the structural ground truth is dense and only its size is reported. Where
the variant's circuit differs from the parent's, :class:`Difference` says
whether the parent's circuit still suffices on the variant (then the removal
found another minimal circuit, or edges the variant no longer needs) or not
(then interference made more edges necessary).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from groundtruth.circuits import Verification, functional_edges, structural_edges, verify
from groundtruth.variants import Compression, Perturbation, compress, perturb, read_basis
from prune.ablation import ABLATIONS
from prune.data import Examples
from prune.model import Transformer

__all__ = ["KINDS", "Difference", "VariantCase", "build_variant", "parse_variant_name", "smallest_width"]

KINDS = ("compressed", "perturbed", "compressed+perturbed")
# Widths tried below the read basis, as fractions of the compiled width, widest first (smallest_width).
WIDTH_FRACTIONS = (0.75, 0.625, 0.5, 0.375, 0.25)


def parse_variant_name(name: str) -> tuple[str, str]:
    """``"reverse@compressed"`` -> ``("reverse", "compressed")``; a clear error for anything else."""
    program, at, kind = name.partition("@")
    if not at or not program or kind not in KINDS:
        raise ValueError(f"{name!r} is not a variant name; write <program>@<kind> with kind one of {', '.join(KINDS)}")
    return program, kind


@dataclasses.dataclass(frozen=True)
class Difference:
    """How a variant's functional circuit under one ablation differs from its parent's."""

    added: list[str]  # in the variant's circuit, not in the parent's
    removed: list[str]  # in the parent's, not in the variant's
    parent_suffices: bool  # the parent's circuit alone reproduces every output of the variant
    parent_inert: list[str]  # edges of the parent's circuit that the variant does not need on their own

    @property
    def why(self) -> str:
        if not self.added and not self.removed:
            return "the same circuit"
        if not self.parent_suffices:
            return "interference: the parent's circuit no longer reproduces the variant, more edges are needed"
        if self.parent_inert:
            return "the parent's circuit still suffices; some of its edges are not needed on the variant"
        return "the parent's circuit still suffices and is minimal there: the removal found another minimal circuit"

    def to_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "parent_suffices": self.parent_suffices,
                "parent_inert": self.parent_inert, "why": self.why}


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a model has no truth value
class VariantCase:
    """A variant with its verified ground truth, and everything its artifact records."""

    name: str
    program: str
    kind: str
    model: Transformer
    examples: Examples
    W: torch.Tensor | None  # [width, D] for a compressed variant: the image of each labelled direction
    circuits: dict  # "structural" and "functional:<ablation>" -> edge names
    verifications: dict  # ablation -> Verification
    differences: dict  # ablation -> Difference from the parent's functional circuit
    info: dict  # width, compiled width, recipe, noise, seed, agreement
    seconds: float

    def functional(self, ablation: str) -> list[str]:
        return self.circuits[f"functional:{ablation}"]


def smallest_width(model: Transformer, examples: Examples, **compress_options) -> Compression:
    """The narrowest compression found: the read basis first (exact, no interference), then each of
    :data:`WIDTH_FRACTIONS` of the compiled width that is narrower than it (so every one tried
    interferes), widest first, stopping at the first width that decodes at no stage and rate."""
    D = model.cfg.d_model
    t = read_basis(model, examples).shape[0]
    best = compress(model, examples, t, **compress_options)
    for width in sorted({int(f * D) for f in WIDTH_FRACTIONS if 1 <= int(f * D) < t}, reverse=True):
        try:
            best = compress(model, examples, width, **compress_options)
        except ValueError:
            break
    return best


def build_variant(parent, kind: str, *, width: int | None = None, seed: int = 0, noise: float | None = None,
                  ablations=ABLATIONS, compress_options: dict | None = None, base=None) -> VariantCase:
    """Build ``parent`` (a loaded :class:`groundtruth.artifacts.Artifact`) as a ``kind`` variant and derive
    and verify its ground truth under each of ``ablations``.

    ``width``: the compressed width (default: :func:`smallest_width`); ``noise``: the noise scale (default:
    half the largest that keeps every output, by bisection); ``seed``: the noise's. ``base``: for
    ``compressed+perturbed``, an already built compressed variant of ``parent`` (a loaded artifact) to
    perturb instead of compressing again. Raises ``ValueError``
    when the variant cannot be built or its ground truth does not verify: nothing is returned to store.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown variant kind {kind!r}; choose one of {', '.join(KINDS)}")
    if width is not None and kind == "perturbed":
        raise ValueError("a width applies to a compressed variant; kind 'perturbed' keeps the compiled width")
    if noise is not None and kind == "compressed":
        raise ValueError("a noise scale applies to a perturbed variant; kind 'compressed' adds no noise")
    start = time.perf_counter()
    model, examples, D = parent.model, parent.examples, parent.model.cfg.d_model
    with torch.no_grad():
        compiled = parent.model(examples.clean, attention_mask=examples.valid)  # [N, S, out]
    info: dict = {"parent": parent.name, "kind": kind, "compiled_width": D, "width": D}
    W = None
    if base is not None:
        if kind != "compressed+perturbed" or base.config.get("variant", {}).get("kind") != "compressed":
            raise ValueError(f"a base variant ({base.name}) is perturbed into compressed+perturbed only")
        model, W = base.model, base.W
        info.update({k: base.config["variant"][k] for k in ("width", "ratio", "read_basis_width", "recipe",
                                                             "width_searched")}, base=base.name)
    elif "compressed" in kind:
        options = compress_options or {}
        c = smallest_width(model, examples, **options) if width is None else compress(model, examples, width,
                                                                                       **options)
        model, W = c.model, c.W
        info.update(width=c.width, ratio=round(c.width / D, 4), read_basis_width=read_basis(parent.model,
                                                                                            examples).shape[0],
                    recipe=c.recipe, width_searched=width is None)
    if "perturbed" in kind:
        p: Perturbation = perturb(model, examples, seed=seed, scale=noise, reference=compiled)
        model = p.model
        info.update(noise_scale=p.scale, critical_noise_scale=None if math.isnan(p.critical_scale)
                    else p.critical_scale, noise_margin=p.margin, seed=seed)
    with torch.no_grad():
        agree = examples.agree(model(examples.clean, attention_mask=examples.valid), compiled)
    if not bool(agree.all()):
        raise ValueError(f"the {kind} variant of {parent.name} decodes {float(agree.float().mean()):.3f} of the "
                         f"examples as compiled, not all; it is not stored")
    info["agreement"] = 1.0
    every_edge = model.graph.edge_names
    circuits = {"structural": structural_edges(model)}
    info["structural_size"] = len(circuits["structural"])
    verifications: dict[str, Verification] = {}
    differences: dict[str, Difference] = {}
    for ablation in ablations:
        try:
            edges = functional_edges(model, examples, ablation, start=every_edge)
        except RuntimeError as err:  # the whole graph does not reproduce the variant in masked mode
            raise ValueError(f"the {kind} variant of {parent.name}: under {ablation} ablation {err}; it is not "
                             f"stored") from None
        v = verify(model, examples, edges, ablation)
        if not v.ok:
            raise ValueError(f"the {kind} variant of {parent.name}: its functional ground truth under {ablation} "
                             f"ablation does not verify (reproduces {v.n_reproduced} of {v.n_examples} examples, "
                             f"inert edges {v.inert}); it is not stored")
        circuits[f"functional:{ablation}"] = edges
        verifications[ablation] = v
        theirs = parent.functional(ablation)
        on_variant = verify(model, examples, theirs, ablation)
        ours, parents = set(edges), set(theirs)
        differences[ablation] = Difference(added=[e for e in edges if e not in parents],
                                           removed=[e for e in theirs if e not in ours],
                                           parent_suffices=on_variant.sufficient, parent_inert=on_variant.inert)
    return VariantCase(name=f"{parent.name}@{kind}", program=parent.name, kind=kind, model=model,
                       examples=examples, W=W, circuits=circuits, verifications=verifications,
                       differences=differences, info=info, seconds=time.perf_counter() - start)
