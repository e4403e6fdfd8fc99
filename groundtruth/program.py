"""A RASP program together with what it needs to be a test case.

Authoring a program takes one decorated function::

    from tracr.rasp import rasp
    from groundtruth import program

    @program(vocab={"a", "b", "c"}, max_seq_len=5)
    def count_a():
        is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens))
        ...
        return result

The function builds the RASP expression; it is called after RASP's label
counter is reset, so labels (and with them the compiled residual layout) are the
same on every build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Program", "program"]

# Above this many sequences the evaluation set is sampled instead of enumerated.
DEFAULT_MAX_EXHAUSTIVE = 2048
DEFAULT_N_SAMPLES = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """A RASP program plus vocabulary, length, mask, inputs and corruptions.

    Attributes:
      name: registry key and artifact folder name.
      build: zero-argument function returning the output SOp.
      vocab: input tokens (BOS and PAD are added by the compiler).
      max_seq_len: longest input, BOS not counted.
      causal: compile with a causal attention mask (only for programs whose
        every position depends on earlier positions alone).
      description: one line for tables.
      min_len: shortest input in the evaluation set.
      max_exhaustive: enumerate every input when there are at most this many.
      n_samples: otherwise, how many seeded samples (every length is covered).
      seed: seed for sampling and for corruptions.
      accept: optional ``tuple -> bool``: which inputs are valid for the
        program (e.g. distinct tokens for a sort that assumes unique keys).
        Enumeration, sampling and corruption keep only accepted inputs.
      sample: optional ``(rng, length) -> tuple`` drawing one input (for
        programs whose interesting inputs are rare under uniform sampling).
      corrupt: optional ``(rng, clean) -> tuple`` giving the paired corrupted
        input for resample ablation; default: a uniformly random different
        input of the same length.
      atol: numerical outputs only: how far the compiled model may be from
        RASP, and a circuit's output from the model's, and still agree
        (Tracr's numerical MLPs are approximations whose error grows with
        ``max_seq_len``: raise it for long inputs, and say why).
    """

    name: str
    build: Callable[[], Any]
    vocab: frozenset
    max_seq_len: int
    causal: bool = False
    description: str = ""
    min_len: int = 1
    max_exhaustive: int = DEFAULT_MAX_EXHAUSTIVE
    n_samples: int = DEFAULT_N_SAMPLES
    seed: int = 0
    accept: Callable[[tuple], bool] | None = None
    sample: Callable[[np.random.Generator, int], Sequence] | None = None
    corrupt: Callable[[np.random.Generator, tuple], Sequence] | None = None
    atol: float = 1e-3

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"program name must be letters, digits and '_', got {self.name!r}")
        if not callable(self.build):
            raise TypeError(f"program {self.name!r}: build must be callable, got {self.build!r}")
        object.__setattr__(self, "vocab", frozenset(self.vocab))
        if not self.vocab:
            raise ValueError(f"program {self.name!r}: empty vocabulary")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 1:
            raise ValueError(f"program {self.name!r}: max_seq_len must be >= 1, got {self.max_seq_len!r}")
        if isinstance(self.atol, bool) or not isinstance(self.atol, (int, float)) or not 0 < self.atol < 1:
            raise ValueError(f"program {self.name!r}: atol must be a number in (0, 1), got {self.atol!r}")
        if not 1 <= self.min_len <= self.max_seq_len:
            raise ValueError(
                f"program {self.name!r}: min_len={self.min_len} must be in [1, max_seq_len={self.max_seq_len}]"
            )

    # ------------------------------------------------------------- identity
    @property
    def sorted_vocab(self) -> list:
        return sorted(self.vocab, key=lambda v: (str(type(v)), v))

    @property
    def source(self) -> str:
        """Source of the build function (and of custom samplers), for provenance."""
        parts = []
        for fn in (self.build, self.accept, self.sample, self.corrupt):
            if fn is None:
                continue
            try:
                parts.append(textwrap.dedent(inspect.getsource(fn)))
            except (OSError, TypeError):
                parts.append(repr(fn))
        return "\n".join(parts)

    @property
    def source_hash(self) -> str:
        spec = repr((sorted(map(repr, self.vocab)), self.max_seq_len, self.causal, self.min_len,
                     self.max_exhaustive, self.n_samples, self.seed))
        return hashlib.sha256((self.source + spec).encode()).hexdigest()

    # --------------------------------------------------------------- inputs
    def n_possible_inputs(self) -> int:
        V = len(self.vocab)
        return sum(V**n for n in range(self.min_len, self.max_seq_len + 1))

    @property
    def exhaustive(self) -> bool:
        return self.sample is None and self.n_possible_inputs() <= self.max_exhaustive

    def inputs(self) -> list[tuple]:
        """The evaluation set: every input if small, else seeded samples of every length."""
        vocab = self.sorted_vocab
        ok = self.accept or (lambda seq: True)
        if self.exhaustive:
            seqs = [
                tuple(seq)
                for n in range(self.min_len, self.max_seq_len + 1)
                for seq in itertools.product(vocab, repeat=n)
                if ok(tuple(seq))
            ]
            if not seqs:
                raise ValueError(f"program {self.name!r}: accept() rejects every input")
            return seqs
        rng = np.random.default_rng(self.seed)
        lengths = list(range(self.min_len, self.max_seq_len + 1))
        out = []
        for i in range(self.n_samples):
            n = lengths[i % len(lengths)]
            if self.sample is not None:
                seq = tuple(self.sample(rng, n))
                if len(seq) != n or any(t not in self.vocab for t in seq):
                    raise ValueError(
                        f"program {self.name!r}: sample(rng, {n}) returned {seq!r}; it must return "
                        f"{n} tokens from the vocabulary {vocab!r}"
                    )
            else:
                for _ in range(1000):
                    seq = tuple(vocab[j] for j in rng.integers(0, len(vocab), size=n))
                    if ok(seq):
                        break
                else:
                    raise ValueError(f"program {self.name!r}: accept() rejects 1000 random inputs of length {n}")
            out.append(seq)
        return out

    def corruptions(self, inputs: Sequence[tuple]) -> list[tuple]:
        """One corrupted input per clean input, same length, seeded."""
        rng = np.random.default_rng(self.seed + 1)
        vocab = self.sorted_vocab
        out = []
        for clean in inputs:
            if self.corrupt is not None:
                seq = tuple(self.corrupt(rng, tuple(clean)))
                if len(seq) != len(clean) or any(t not in self.vocab for t in seq):
                    raise ValueError(
                        f"program {self.name!r}: corrupt() returned {seq!r} for {clean!r}; it must "
                        f"return {len(clean)} tokens from the vocabulary"
                    )
            else:
                # Uniform over the other accepted sequences of this length (rejection
                # sampling); the clean input itself if no other is found.
                seq, ok = tuple(clean), self.accept or (lambda s: True)
                for _ in range(1000 if len(vocab) > 1 else 0):
                    candidate = tuple(vocab[j] for j in rng.integers(0, len(vocab), size=len(clean)))
                    if candidate != tuple(clean) and ok(candidate):
                        seq = candidate
                        break
            out.append(seq)
        return out


def program(*, vocab, max_seq_len: int, name: str | None = None, **kwargs) -> Callable[[Callable], Program]:
    """Decorator: turn a zero-argument RASP-building function into a :class:`Program`."""

    def wrap(build: Callable) -> Program:
        doc = (inspect.getdoc(build) or "").strip().splitlines()
        kwargs.setdefault("description", doc[0] if doc else "")
        return Program(name=name or build.__name__, build=build, vocab=vocab, max_seq_len=max_seq_len, **kwargs)

    return wrap
