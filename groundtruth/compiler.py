"""Compile a :class:`Program` with Tracr, stage by stage, and check it against RASP.

Tracr's ``compile_rasp_to_model`` runs these passes in one call. We run them
ourselves to check the program between stages (static validation names the
unsupported expression; a program that never reads ``rasp.tokens`` is refused)
and to name the program in every error:

  static validation -> RASP graph -> basis inference -> craft blocks
  -> craft model -> assembled (Haiku) model

RASP's global label counter is reset before the program is built, so labels,
and with them the residual-stream layout, are the same on every build.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from groundtruth.program import Program

__all__ = ["COMPILER_BOS", "COMPILER_PAD", "Compiled", "ProgramError", "compile_program", "describe_expr",
           "rasp_outputs"]

COMPILER_BOS = "compiler_bos"
COMPILER_PAD = "compiler_pad"
# Numerical outputs agree when within this. Tracr's own numerical error against
# RASP is below 1e-6 on the library; the smallest meaningful difference between
# two outputs of a library program is 1/max_seq_len**2 > 0.01.
NUMERICAL_ATOL = 1e-3


class ProgramError(ValueError):
    """A program that cannot be a test case (does not compile, or compiles wrong)."""


@dataclasses.dataclass(frozen=True)
class Compiled:
    """Everything the compiler produced for one program."""

    program: Program
    sop: Any  # rasp.SOp, the output
    assembled: Any  # tracr AssembledTransformerModel
    # Which RASP expressions each compiled module computes: ((node, ((label, expression), ...)), ...), node
    # in prune's names ("a0.h1", "m0"). Tracr keeps no such map once the model is assembled (an MLP layer is
    # its Maps combined in parallel), so compile_program records it from the craft model (see
    # _module_expressions). A tuple, so that Compiled stays hashable.
    modules: tuple = ()

    def node_labels(self) -> dict[str, str]:
        """Per graph node, the RASP it computes, one ``label = expression`` line each (for drawings):
        ``input`` the token and position embeddings, ``logits`` the output SOp, every head and MLP that
        computes something its expressions."""
        labels = {"input": "tokens, indices (embedding)", "logits": f"reads {self.sop.label}"}
        for node, exprs in self.modules:
            labels[node] = "\n".join(f"{label} = {expr}" for label, expr in exprs)
        return labels

    @property
    def residual_labels(self) -> list[str]:
        return list(self.assembled.residual_labels)

    @property
    def numerical(self) -> bool:
        from tracr.rasp import rasp

        return rasp.is_numerical(self.sop)

    @property
    def input_encoding(self) -> dict:
        return dict(self.assembled.input_encoder.encoding_map)

    @property
    def output_values(self) -> list | None:
        """Output values in unembedding order (categorical), or None (numerical)."""
        if self.numerical:
            return None
        enc = self.assembled.output_encoder.encoding_map
        return sorted(enc, key=enc.get)

    def encode(self, seqs: Sequence[Sequence], *, width: int | None = None) -> np.ndarray:
        """``[N, width]`` ids (default width max_seq_len + 1): BOS, the tokens, then PAD."""
        enc = self.input_encoding
        T = self.program.max_seq_len + 1 if width is None else width
        out = np.full((len(seqs), T), enc[COMPILER_PAD], dtype=np.int64)
        for i, seq in enumerate(seqs):
            if len(seq) > self.program.max_seq_len:
                raise ValueError(
                    f"input {tuple(seq)!r} has {len(seq)} tokens; program {self.program.name!r} "
                    f"takes at most max_seq_len={self.program.max_seq_len}"
                )
            bad = [t for t in seq if t not in self.program.vocab]
            if bad:
                raise ValueError(
                    f"token {bad[0]!r} in input {tuple(seq)!r} is not in the vocabulary of "
                    f"program {self.program.name!r}: {self.program.sorted_vocab!r}"
                )
            out[i, 0] = enc[COMPILER_BOS]
            out[i, 1 : len(seq) + 1] = [enc[t] for t in seq]
        return out

    def run_tracr(self, ids: np.ndarray):
        """Tracr's own forward pass on ``ids`` (jitted; one call for the batch)."""
        import jax

        fwd = _jitted_forward(self.assembled)
        return fwd(self.assembled.params, jax.numpy.asarray(ids))

    def tracr_outputs(self, seqs: Sequence[Sequence]) -> list[list]:
        """Decoded outputs of the compiled model at the real positions of each input.

        Inputs run without padding, one batch per length: Tracr's model has no
        padding mask, and for some programs (a selector over a computed SOp)
        padding positions would be attended.
        """
        results: list = [None] * len(seqs)
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_length.setdefault(len(s), []).append(i)
        for n, idx in by_length.items():
            ids = self.encode([seqs[i] for i in idx], width=n + 1)
            out = np.asarray(self.run_tracr(ids).unembedded_output)
            for row, i in zip(out, idx, strict=True):
                results[i] = _decode(self, row[1:])
        return results


# Jitted forwards of the most recently used models. Bounded: a long run over many
# generated programs would otherwise keep every compiled model alive. The model
# is kept with its forward so an id is never reused while its entry exists.
_FORWARDS: dict[int, tuple[Any, Any]] = {}
_MAX_FORWARDS = 8


def _jitted_forward(assembled):
    import jax

    key = id(assembled)
    if key not in _FORWARDS:
        while len(_FORWARDS) >= _MAX_FORWARDS:
            _FORWARDS.pop(next(iter(_FORWARDS)))
        _FORWARDS[key] = (assembled, jax.jit(assembled.forward))
    return _FORWARDS[key][1]


def _decode(compiled: Compiled, row) -> list:
    if compiled.numerical:
        return [float(v) for v in row]
    values = compiled.output_values
    return [values[int(v)] for v in row]


def build_sop(prog: Program):
    """Reset RASP's label counter and build the program's output SOp."""
    from tracr.rasp import rasp

    rasp.RASPExpr._ids = itertools.count(1)
    sop = prog.build()
    if not isinstance(sop, rasp.SOp):
        raise ProgramError(
            f"program {prog.name!r}: build() must return a RASP SOp, got {type(sop).__name__}"
        )
    return sop


def rasp_outputs(sop, seqs: Sequence[Sequence]) -> list[list]:
    from tracr.rasp import rasp

    return [list(rasp.evaluate(sop, list(s))) for s in seqs]


def compile_program(prog: Program, *, validate: bool = True, mlp_exactness: int = 100) -> Compiled:
    """Compile ``prog`` stage by stage; with ``validate``, check it against RASP on its inputs.

    Raises :class:`ProgramError` naming the expression Tracr refuses, or showing
    an input on which the compiled model and RASP disagree.
    """
    from tracr.compiler import (
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        rasp_to_graph,
        validating,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp

    for special in (COMPILER_BOS, COMPILER_PAD):
        if special in prog.vocab:
            raise ProgramError(
                f"program {prog.name!r}: the vocabulary contains the reserved token {special!r} "
                f"(Tracr adds BOS and PAD itself); rename that token"
            )
    sop = build_sop(prog)
    unsupported = validating.static_validate(sop)
    if unsupported:
        lines = "; ".join(f"{u.expr.label} ({type(u.expr).__name__}): {u.reason}" for u in unsupported)
        raise ProgramError(f"program {prog.name!r}: Tracr cannot compile {lines}")
    try:
        extracted = rasp_to_graph.extract_rasp_graph(sop)
        graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
        if rasp.tokens.label not in graph.nodes:
            raise ProgramError(
                f"program {prog.name!r} does not read rasp.tokens; a Tracr program must use "
                f"the input tokens"
            )
        basis_inference.infer_bases(graph, sink, set(prog.vocab), prog.max_seq_len)
        expr_to_craft_graph.add_craft_components_to_rasp_graph(
            graph,
            bos_dir=bases.BasisDirection(rasp.tokens.label, COMPILER_BOS),
            mlp_exactness=mlp_exactness,
        )
        craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
        assembled = craft_model_to_transformer.craft_model_to_transformer(
            craft_model=craft_model,
            graph=graph,
            sink=sink,
            max_seq_len=prog.max_seq_len,
            causal=prog.causal,
            compiler_bos=COMPILER_BOS,
            compiler_pad=COMPILER_PAD,
        )
    except ProgramError:
        raise
    except Exception as err:  # Tracr raises many types; name the program and the cause.
        raise ProgramError(f"program {prog.name!r}: Tracr failed to compile it: {type(err).__name__}: {err}") from err
    compiled = Compiled(prog, sop, assembled, _module_expressions(graph, craft_model))
    if validate:
        check_against_rasp(compiled)
    return compiled


def describe_expr(expr) -> str:
    """A RASP expression in one line, its children by label: ``numerical Aggregate(Select(indices, length,
    EQ), tokens)``. A predicate that is a function, not a :class:`rasp.Comparison`, shows as ``fn``."""
    from tracr.rasp import rasp

    def select(sel) -> str:
        if isinstance(sel, rasp.Select):
            pred = sel.predicate.name if isinstance(sel.predicate, rasp.Comparison) else "fn"
            return f"Select({sel.keys.label}, {sel.queries.label}, {pred})"
        return f"{type(sel).__name__}({', '.join(select(c) for c in sel.children)})"

    if isinstance(expr, rasp.Selector):
        body = select(expr)
    elif isinstance(expr, rasp.Aggregate):
        body = f"Aggregate({select(expr.selector)}, {expr.sop.label})"
    elif isinstance(expr, rasp.SelectorWidth):
        body = f"SelectorWidth({select(expr.selector)})"
    elif isinstance(expr, rasp.LinearSequenceMap):
        body = f"LinearSequenceMap({expr.fst.label}, {expr.snd.label}, {expr.fst_fac:g}, {expr.snd_fac:g})"
    else:  # Map, SequenceMap, Full, ...: the type and the children's labels
        body = f"{type(expr).__name__}({', '.join(c.label for c in expr.children)})"
    if not isinstance(expr, rasp.SOp):  # a selector
        return select(expr)
    return f"numerical {body}" if rasp.is_numerical(expr) else body


def _module_expressions(graph, craft_model) -> tuple:
    """What each head and MLP of the assembled model computes (see :attr:`Compiled.modules`).

    Heads are matched by identity: the assembled attention layers hold the very head objects of the RASP
    graph's blocks. MLPs are combined in parallel into new objects, so an MLP is matched by what it writes:
    the RASP labels among its output directions. Layers are numbered as Tracr's assembler numbers them (each
    block takes the next layer with a free slot of its kind, attention then MLP).
    """
    from tracr.compiler import nodes
    from tracr.craft import transformers

    head_label, exprs, halves = {}, {}, {}
    for label, node in graph.nodes.items():
        block = node.get(nodes.MODEL_BLOCK)
        if block is None:  # tokens, indices, selectors: no module of their own
            continue
        exprs[label] = describe_expr(node[nodes.EXPR])
        if isinstance(block, transformers.SeriesWithResiduals):  # SelectorWidth: an attention layer, then an MLP
            halves[label] = True
        parts = block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]
        for part in parts:
            if isinstance(part, (transformers.AttentionHead, transformers.MultiAttentionHead)):
                for head in part.as_multi().heads():
                    head_label[id(head)] = label
    # Tracr's assembler (assemble._get_model_config_and_module_names): each block takes the next slot of its
    # kind in attn0, mlp0, attn1, mlp1, ...; the slots it skips stay empty (zero weights).
    slots = iter([(layer, kind) for layer in range(len(craft_model.blocks)) for kind in ("attn", "mlp")])
    out = []
    for block in craft_model.blocks:
        want = "mlp" if isinstance(block, transformers.MLP) else "attn"
        layer, kind = next(slots)
        while kind != want:
            layer, kind = next(slots)
        if want == "mlp":
            labels = sorted({d.name for d in block.snd.output_space.basis if d.name in exprs})
            out.append((f"m{layer}", tuple((lab, exprs[lab] + (" (its MLP)" if lab in halves else ""))
                                           for lab in labels)))
            continue
        for h, head in enumerate(block.as_multi().heads()):
            if id(head) in head_label:
                label = head_label[id(head)]
                expr = exprs[label] + (" (its attention)" if label in halves else "")
                out.append((f"a{layer}.h{h}", ((label, expr),)))
    return tuple(out)


def outputs_agree(a: Sequence, b: Sequence, numerical: bool, atol: float = NUMERICAL_ATOL) -> bool:
    if len(a) != len(b):
        return False
    if numerical:
        return all(x is not None and y is not None and abs(x - y) <= atol for x, y in zip(a, b, strict=True))
    return all(x == y for x, y in zip(a, b, strict=True))


def _differences(want: Sequence, have: Sequence, numerical: bool, atol: float, most: int = 4) -> str:
    """The first few positions where two outputs differ, ``pos: want vs have``; the worst error if numerical."""
    bad = [i for i, (x, y) in enumerate(zip(want, have, strict=True))
           if (x is None or y is None or abs(x - y) > atol if numerical else x != y)]
    text = ", ".join(f"position {i}: RASP {want[i]!r}, compiled {have[i]!r}" for i in bad[:most])
    if len(bad) > most:
        text += f", and {len(bad) - most} more"
    if numerical:
        worst = max(abs(x - y) for x, y in zip(want, have, strict=True) if x is not None and y is not None)
        text += f" (largest error {worst:.3g}, tolerance atol={atol:g}: set @program(atol=...) if Tracr's "
        text += "numerical approximation is the cause)"
    return text


def check_against_rasp(compiled: Compiled, seqs: Sequence[Sequence] | None = None) -> int:
    """Raise :class:`ProgramError` at the first input where model and RASP disagree."""
    prog = compiled.program
    seqs = prog.inputs() if seqs is None else seqs
    if not seqs:
        raise ProgramError(f"program {prog.name!r} has an empty evaluation set")
    try:
        expected = rasp_outputs(compiled.sop, seqs)
    except Exception as err:  # the RASP evaluator's own refusal, e.g. averaging strings
        raise ProgramError(f"program {prog.name!r}: RASP cannot evaluate it: {type(err).__name__}: {err}") from err
    got = compiled.tracr_outputs(seqs)
    for seq, want, have in zip(seqs, expected, got, strict=True):
        if any(v is None for v in want):
            raise ProgramError(
                f"program {prog.name!r}: RASP gives None on input {list(seq)!r} ({want!r}); Tracr "
                f"compiles None as a default value, so the program is not a valid test case"
            )
        if not outputs_agree(want, have, compiled.numerical, prog.atol):
            if len(want) != len(have):
                raise ProgramError(f"program {prog.name!r}: the compiled model gives {len(have)} outputs on an "
                                   f"input of length {len(want)}")
            shown = list(seq) if len(seq) <= 12 else f"{list(seq)[:12]!r}... (length {len(seq)})"
            raise ProgramError(
                f"program {prog.name!r}: the compiled model disagrees with RASP on input {shown}: "
                f"{_differences(want, have, compiled.numerical, prog.atol)}"
            )
    return len(seqs)
