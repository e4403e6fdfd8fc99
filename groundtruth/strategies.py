"""Random RASP programs that Tracr compiles: a generator, hypothesis strategies, source printing.

The generator builds typed compositions of RASP primitives over a vocabulary of
small ints ``{0, ..., V-1}``:

- ``Map`` categorical -> categorical, categorical -> numerical 0/1, numerical ->
  numerical and numerical -> categorical (numerical inputs only where Tracr
  infers their value set correctly, see below);
- ``SequenceMap`` of two *different* categorical SOps, and ``LinearSequenceMap``
  of two different numerical SOps;
- ``SelectorWidth`` and numerical ``Aggregate`` (means of 0/1 features, default
  0) over ``Select`` with ``EQ, LT, LEQ, GT, GEQ, NEQ, TRUE``;
- categorical ``Aggregate`` only where exactly one key is selected (clamped
  shift, first position, reverse) or where the value is provably copied (keys
  ``X``, queries ``X``, ``EQ``, value ``f(X)``: every selected key has the
  query's value).

Every function is data: a :class:`Fn` names an entry of a small fixed pool and
its parameters, and renders to a lambda's source. A program is generated as a
:class:`Spec` (a tree of frozen nodes), printed as a standalone program file by
:func:`program_source`, and *built by executing that very source*: the
:class:`~groundtruth.program.Program` a strategy yields is the one the printed
file defines, so a failing example reproduces with ``groundtruth recover FILE.py``.

Tracr traps avoided by construction (see :mod:`groundtruth.library`):

- Tracr infers a numerical Aggregate's value set as ``{v / n}`` for the value's
  values ``v`` and lengths ``n``, not every mean ``k / n``. A numerical Map of a
  mean is then compiled on the wrong value set, so numerical Maps (and
  numerical -> categorical Maps) only read numerical SOps whose true values lie
  within what Tracr infers ("exact": 0/1 features, one-key aggregates of them,
  numerical Maps and linear combinations of exact SOps). Means are only outputs
  or terms of a LinearSequenceMap.
- Select keys and queries are categorical; numerical Aggregates average 0/1
  values with default 0; SelectorAnd/Or are never used.
- causal programs use only selectors that select keys at or before the query
  (index comparisons ``LEQ``/``LT``, clamped shifts, first position, and
  "earlier position holding ``c``" via a (value, index) pair key); they never
  read ``length``.
- every program reads ``rasp.tokens`` (the first leaf reached is the tokens).

Draws are integers ``choose(n) -> [0, n)`` with the simplest option first
(depth 1, vocabulary 2, shortest length, non-causal, categorical, tokens as
leaves), so hypothesis shrinks towards small programs. :func:`random_program`
drives the same generator from a :class:`random.Random`.

Public API::

    programs(*, max_depth=3, max_vocab=4, max_seq_len=5, causal=None, numerical=None)
    checked_programs(...)          # only programs that compile and agree with RASP
    random_program(rng, **kw)      # the generator core, from random.Random
    program_source(prog) -> str    # standalone file for `groundtruth check/recover FILE.py`
    write_program(prog, folder) -> Path
    acceptance_rate(n, seed, **kw) -> (accepted, generated, reasons)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import linecache
import random
import re
from collections.abc import Callable
from pathlib import Path

from hypothesis import assume, event
from hypothesis import strategies as st

from groundtruth.program import Program

__all__ = [
    "ACCEPTANCE",
    "Fn",
    "Spec",
    "acceptance_rate",
    "checked_programs",
    "generate",
    "program_source",
    "programs",
    "random_program",
    "rejection_reason",
    "spec_of",
    "write_program",
]

# ------------------------------------------------------------------ function pools
# name -> lambda template; parameters are formatted in with repr().
CAT_MAPS = {  # categorical -> categorical (ints -> ints)
    "add_mod": "lambda x: (x + {0}) % {1}",
    "is_lt": "lambda x: 1 if x < {0} else 0",
    "is_eq": "lambda x: 1 if x == {0} else 0",
    "min_c": "lambda x: min(x, {0})",
    "halve": "lambda x: x // 2",
    "flip": "lambda x: {0} - x",
}
CAT_TO_NUM = {  # categorical -> numerical 0/1
    "ind_eq": "lambda x: 1 if x == {0} else 0",
    "ind_ge": "lambda x: 1 if x >= {0} else 0",
    "ind_odd": "lambda x: x % 2",
}
NUM_MAPS = {  # numerical -> numerical (exact inputs only)
    "one_minus": "lambda x: 1 - x",
    "double": "lambda x: 2 * x",
    "half": "lambda x: x / 2",
}
NUM_TO_CAT = {  # numerical -> categorical (exact inputs only)
    "positive": "lambda x: 1 if x > 0 else 0",
    "above": "lambda x: 1 if x > {0} else 0",
    "floor": "lambda x: int(x)",
}
SEQ_MAPS = {  # categorical, categorical -> categorical
    "add_mod": "lambda x, y: (x + y) % {0}",
    "sub_mod": "lambda x, y: (x - y) % {0}",
    "min": "lambda x, y: min(x, y)",
    "max": "lambda x, y: max(x, y)",
    "is_eq": "lambda x, y: 1 if x == y else 0",
    "is_lt": "lambda x, y: 1 if x < y else 0",
    # used only inside selectors:
    "pair": "lambda x, i: (x, i)",
    "opposite": "lambda n, i: n - i - 1",
}
PREDICATES = {  # Select predicates (key, query)
    **{c: f"rasp.Comparison.{c}" for c in ("EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE")},
    "shift": "lambda k, q: k == max(q - {0}, 0)",
    "first": "lambda k, q: k == 0",
    "earlier_eq": "lambda k, q: k[0] == {0} and k[1] <= q",
}
COMPARISONS = ("EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE")
CAUSAL_COMPARISONS = ("LEQ", "LT")  # keys and queries both indices: k <= q
REFLEXIVE = ("LEQ", "GEQ", "EQ", "TRUE")  # Select(X, X, c) selects the query's own position
LINEAR_FACTORS = ((1, 1), (1, -1), (0.5, 0.5))
POOLS = {"cat_map": CAT_MAPS, "cat_to_num": CAT_TO_NUM, "num_map": NUM_MAPS, "num_to_cat": NUM_TO_CAT,
         "seq_map": SEQ_MAPS, "predicate": PREDICATES}


@dataclasses.dataclass(frozen=True)
class Fn:
    """A function as data: an entry of one of the :data:`POOLS` and its parameters."""

    pool: str
    name: str
    params: tuple = ()

    @property
    def code(self) -> str:
        return POOLS[self.pool][self.name].format(*map(repr, self.params))

    def __call__(self, *args):
        return _evaluated(self.code)(*args)


_EVALUATED: dict[str, Callable] = {}


def _evaluated(code: str) -> Callable:
    if code not in _EVALUATED:
        from tracr.rasp import rasp

        _EVALUATED[code] = eval(code, {"rasp": rasp})  # noqa: S307 - code comes from the fixed pools
    return _EVALUATED[code]


# -------------------------------------------------------------------- spec nodes
@dataclasses.dataclass(frozen=True)
class Tokens:
    pass


@dataclasses.dataclass(frozen=True)
class Indices:
    pass


@dataclasses.dataclass(frozen=True)
class MapN:
    fn: Fn
    inner: Node
    numerical: bool


@dataclasses.dataclass(frozen=True)
class SeqMapN:
    fn: Fn
    fst: Node
    snd: Node


@dataclasses.dataclass(frozen=True)
class LinearN:
    fst: Node
    snd: Node
    fst_fac: float
    snd_fac: float


@dataclasses.dataclass(frozen=True)
class SelectN:
    keys: Node
    queries: Node
    predicate: Fn


@dataclasses.dataclass(frozen=True)
class AggregateN:
    select: SelectN
    sop: Node
    numerical: bool


@dataclasses.dataclass(frozen=True)
class WidthN:
    select: SelectN


Node = Tokens | Indices | MapN | SeqMapN | LinearN | AggregateN | WidthN
TOKENS, INDICES = Tokens(), Indices()


@dataclasses.dataclass(frozen=True)
class Spec:
    """A generated program: the output node plus vocabulary size, length and mask."""

    root: Node
    vocab_size: int
    max_seq_len: int
    causal: bool

    @property
    def numerical(self) -> bool:
        return isinstance(self.root, (MapN, AggregateN)) and self.root.numerical or isinstance(self.root, LinearN)

    @property
    def name(self) -> str:
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:10]
        return f"rand_{'num' if self.numerical else 'cat'}_{digest}"

    @property
    def vocab(self) -> frozenset:
        return frozenset(range(self.vocab_size))


# ---------------------------------------------------------------- value sets
@dataclasses.dataclass(frozen=True)
class Info:
    """What Tracr will infer about a node, and whether that is the truth.

    ``values``: the value set Tracr's basis inference computes. ``exact``
    (numerical only): every value the SOp takes is in ``values`` (false for
    means). ``zero_one``: every value it takes is 0 or 1 (may be averaged).
    """

    numerical: bool
    values: frozenset
    exact: bool = True
    zero_one: bool = False
    bos: object = None  # the value at the BOS position of the compiled model (see _bos)


EMPTY = "empty"  # a categorical SOp with no value direction set at BOS


# ------------------------------------------------------------------ generator
class _Generator:
    """Draws a :class:`Spec`; every choice is ``choose(n)`` with the simplest option at 0."""

    def __init__(self, choose: Callable[[int], int], *, max_depth: int, max_vocab: int, max_seq_len: int,
                 causal: bool | None, numerical: bool | None):
        if max_depth < 1 or max_vocab < 2 or max_seq_len < 2:
            raise ValueError(f"need max_depth >= 1, max_vocab >= 2, max_seq_len >= 2; got "
                             f"{max_depth}, {max_vocab}, {max_seq_len}")
        self._choose = choose
        self.depth = 1 + self.choose(max_depth)
        self.vocab_size = 2 + self.choose(max_vocab - 1)
        self.L = 2 + self.choose(max_seq_len - 1)
        self.causal = bool(self.choose(2)) if causal is None else causal
        self.numerical = bool(self.choose(2)) if numerical is None else numerical
        self.info: dict = {TOKENS: Info(False, frozenset(range(self.vocab_size)), bos=EMPTY),
                           INDICES: Info(False, frozenset(range(self.L)), bos=EMPTY)}

    def choose(self, n: int) -> int:
        if n <= 0:
            raise ValueError("nothing to choose from")
        return 0 if n == 1 else self._choose(n)

    def pick(self, options):
        options = list(options)
        return options[self.choose(len(options))]

    def spec(self) -> Spec:
        if self.numerical:
            root = self.num(self.depth, need=True)
        else:
            root = self.cat(self.depth, need=True, leaf=False)
        return Spec(root, self.vocab_size, self.L, self.causal)

    # -- bookkeeping
    def _add(self, node, info: Info):
        self.info[node] = dataclasses.replace(info, bos=self._bos(node))
        return node

    def _bos(self, node):
        """What the compiled model holds for ``node`` at the BOS position: EMPTY, a value, or None (unknown).

        Tracr assumes BOS holds only ``bos + one``. MLPs reading one-hot inputs
        keep it so (their inputs are empty at BOS), but numerical MLPs write
        ``f(0)`` there. That matters twice: a numerical Aggregate that selects
        nothing attends to BOS and reads its value there (Tracr's default 0 needs
        a 0), and a Select whose keys hold a value at BOS can match BOS, which
        then outweighs the real keys. The BOS query attends only to BOS when its
        queries are empty there, so an Aggregate passes its value's BOS on, and
        SelectorWidth cleans BOS itself.
        """
        if isinstance(node, (AggregateN, WidthN)):
            if self.info[node.select.queries].bos != EMPTY:
                return None
            return EMPTY if isinstance(node, WidthN) else self.info[node.sop].bos
        kids = [self.info[c].bos for c in _children(node)]
        if any(b is None for b in kids):
            return None
        if isinstance(node, LinearN):
            x, y = kids
            return node.fst_fac * x + node.snd_fac * y
        if isinstance(node, SeqMapN):
            return EMPTY if EMPTY in kids else node.fn(*kids)
        (b,), inner = kids, node.inner
        if b == EMPTY:
            return 0 if node.numerical else EMPTY
        if self.info[inner].numerical and b not in self.info[inner].values:
            return None  # the discretising MLP's output between breakpoints
        return node.fn(b)

    def clean_keys(self, keys, other=None):
        """``keys`` if it is empty at BOS (a Select's keys must be), else ``other`` if that is, else tokens."""
        if self.info[keys].bos == EMPTY:
            return keys
        if other is not None and self.info[other].bos == EMPTY:
            return other
        return TOKENS

    def values(self, node) -> frozenset:
        return self.info[node].values

    def _fn(self, pool: str, candidates: list[tuple[str, list[tuple]]]) -> Fn:
        """Pick an entry, then its parameters, among candidates that are all valid."""
        candidates = [(name, params) for name, params in candidates if params]
        if not candidates:
            raise AssertionError(f"generator bug: no {pool} function varies on these values")
        name, params = self.pick(candidates)
        return Fn(pool, name, self.pick(params))

    @staticmethod
    def _image(fn: Fn, *value_sets) -> frozenset:
        return frozenset(fn(*args) for args in itertools.product(*value_sets))

    def _varied(self, pool: str, templates, value_sets, params_for) -> list[tuple[str, list[tuple]]]:
        """(name, parameter tuples) whose function is not constant on ``value_sets``."""
        out = []
        for name in templates:
            ok = [p for p in params_for(name) if len(self._image(Fn(pool, name, p), *value_sets)) >= 2]
            out.append((name, ok))
        return out

    # -- categorical SOps
    def leaf(self, need: bool):
        """``rasp.tokens`` (always where the subtree must read the tokens) or ``rasp.indices``."""
        return TOKENS if need else self.pick([TOKENS, INDICES])

    def cat(self, d: int, *, need: bool, leaf: bool = True):
        """A categorical SOp with at least two values, at most ``d`` operations deep."""
        if d <= 0:
            return self.leaf(need)
        kinds = (["leaf"] if leaf else []) + ["map", "sequence_map", "selector_width", "aggregate", "num_to_cat"]
        kind = self.pick(kinds)
        if kind == "leaf":
            return self.leaf(need)
        if kind == "map":
            inner = self.cat(d - 1, need=need)
            S = sorted(self.values(inner))
            fn = self._fn("cat_map", self._varied("cat_map", CAT_MAPS, [S], lambda name: {
                "add_mod": [(c, k) for k in (2, 3, 4) for c in (1, 2) if c < k],
                "is_lt": [(c,) for c in S[1:]],
                "is_eq": [(c,) for c in S],
                "min_c": [(c,) for c in S[1:-1]],
                "halve": [()],
                "flip": [(max(S),)],
            }[name]))
            node = MapN(fn, inner, False)
            return self._add(node, Info(False, self._image(fn, S)))
        if kind == "sequence_map":
            fst = self.cat(d - 1, need=need)
            snd = self.cat(d - 1, need=False)
            if snd == fst:  # two different SOps
                snd = INDICES if fst != INDICES else TOKENS
            A, B = self.values(fst), self.values(snd)
            templates = [n for n in SEQ_MAPS if n not in ("pair", "opposite")]
            fn = self._fn("seq_map", self._varied("seq_map", templates, [A, B], lambda name: (
                [(k,) for k in (2, 3, 4)] if name in ("add_mod", "sub_mod") else [()])))
            node = SeqMapN(fn, fst, snd)
            return self._add(node, Info(False, self._image(fn, A, B)))
        if kind == "selector_width":
            select = self.select(d - 1, need=need, for_width=True)
            return self._add(WidthN(select), Info(False, frozenset(range(self.L + 1))))
        if kind == "aggregate":
            return self.one_key_aggregate(d, need=need, numerical=False)
        # num_to_cat
        inner = self.num(d - 1, need=need, exact=True)
        V = self.values(inner)
        fn = self._fn("num_to_cat", self._varied("num_to_cat", NUM_TO_CAT, [V], lambda name: (
            [(0.5,)] if name == "above" else [()])))
        node = MapN(fn, inner, False)
        return self._add(node, Info(False, self._image(fn, V)))

    def length(self):
        select = SelectN(TOKENS, TOKENS, Fn("predicate", "TRUE"))
        return self._add(WidthN(select), Info(False, frozenset(range(self.L + 1))))

    # -- selectors
    def select(self, d: int, *, need: bool, for_width: bool, never_empty: bool = False) -> SelectN:
        """A selector for SelectorWidth or a mean (any number of keys).

        ``never_empty``: every query selects at least one key (keys and queries
        the same SOp under a reflexive comparison).
        """
        kinds = []
        if not need:
            kinds.append("indices")
        if not self.causal:
            kinds.append("compare")
        if not never_empty:
            kinds.append("earlier_eq")
        kind = self.pick(kinds)
        if kind == "indices":
            comparisons = CAUSAL_COMPARISONS if self.causal else COMPARISONS
            if never_empty:
                comparisons = [c for c in comparisons if c in REFLEXIVE]
            if for_width:  # EQ on indices selects one key: a constant width
                comparisons = [c for c in comparisons if c != "EQ"]
            return SelectN(INDICES, INDICES, Fn("predicate", self.pick(comparisons)))
        if kind == "compare":
            keys = self.cat(d, need=need)
            if never_empty:
                keys = self.clean_keys(keys)
                return SelectN(keys, keys, Fn("predicate", self.pick(REFLEXIVE)))
            queries = self.cat(d, need=False)
            if self.info[keys].bos != EMPTY:
                keys, queries = self.clean_keys(keys, queries), keys
            return SelectN(keys, queries, Fn("predicate", self.pick(COMPARISONS)))
        # earlier_eq: keys (x, index) pairs, query index; selects earlier positions holding c
        x = self.cat(d, need=need)
        if x == INDICES or self.info[x].bos != EMPTY:
            x = TOKENS
        pair = SeqMapN(Fn("seq_map", "pair"), x, INDICES)
        self._add(pair, Info(False, self._image(pair.fn, self.values(x), range(self.L))))
        c = self.pick(sorted(self.values(x)))
        return SelectN(pair, INDICES, Fn("predicate", "earlier_eq", (c,)))

    def one_key_select(self, *, copy_ok: bool):
        """A selector choosing exactly one key at every query (or "copy")."""
        kinds = ["shift", "first"] + ([] if self.causal else ["reverse"]) + (["copy"] if copy_ok else [])
        kind = self.pick(kinds)
        if kind == "shift":
            return SelectN(INDICES, INDICES, Fn("predicate", "shift", (self.pick([1, 2]),)))
        if kind == "first":
            return SelectN(INDICES, INDICES, Fn("predicate", "first"))
        if kind == "reverse":
            opposite = SeqMapN(Fn("seq_map", "opposite"), self.length(), INDICES)
            self._add(opposite, Info(False, self._image(opposite.fn, range(self.L + 1), range(self.L))))
            return SelectN(INDICES, opposite, Fn("predicate", "EQ"))
        return "copy"

    def one_key_aggregate(self, d: int, *, need: bool, numerical: bool):
        select = self.one_key_select(copy_ok=not numerical)
        if select == "copy":
            # keys X, queries X, EQ: every selected key holds the query's X, so f(X) is copied
            keys = self.clean_keys(self.cat(d - 1, need=need))
            S = sorted(self.values(keys))
            fn = self._fn("cat_map", self._varied("cat_map", CAT_MAPS, [S], lambda name: {
                "add_mod": [(1, k) for k in (2, 3)], "is_lt": [(c,) for c in S[1:]], "is_eq": [(c,) for c in S],
                "min_c": [(c,) for c in S[1:-1]], "halve": [()], "flip": [(max(S),)]}[name]))
            value = self._add(MapN(fn, keys, False), Info(False, self._image(fn, S)))
            node = AggregateN(SelectN(keys, keys, Fn("predicate", "EQ")), value, False)
            return self._add(node, self.info[value])
        if numerical:
            value = self.num(d - 1, need=need, zero_one=True)
            info = self.info[value]
            # Tracr infers {v / n}; the truth (one key, 0/1 values) is within it.
            values = frozenset(v / n for v in info.values for n in range(1, self.L + 1))
            return self._add(AggregateN(select, value, True), Info(True, values, exact=True, zero_one=True))
        value = self.cat(d - 1, need=need)
        return self._add(AggregateN(select, value, False), Info(False, self.values(value)))

    # -- numerical SOps
    def num(self, d: int, *, need: bool, exact: bool = False, zero_one: bool = False):
        """A numerical SOp; ``exact``: Tracr's value set covers its values; ``zero_one``: values 0/1."""
        kinds = ["indicator"]
        if d > 1:
            kinds += ["shift"]
            if not exact and not zero_one:
                kinds += ["mean", "linear"]
            kinds += ["map"]
        if d <= 0:
            d = 1  # a numerical SOp needs one Map at least
        kind = self.pick(kinds)
        if kind == "indicator":
            inner = self.cat(d - 1, need=need)
            S = sorted(self.values(inner))
            fn = self._fn("cat_to_num", self._varied("cat_to_num", CAT_TO_NUM, [S], lambda name: {
                "ind_eq": [(c,) for c in S], "ind_ge": [(c,) for c in S[1:]], "ind_odd": [()]}[name]))
            node = MapN(fn, inner, True)
            return self._add(node, Info(True, self._image(fn, S), exact=True, zero_one=True))
        if kind == "shift":
            return self.one_key_aggregate(d, need=need, numerical=True)
        if kind == "mean":
            value = self.num(d - 1, need=need, zero_one=True)
            # Selecting nothing reads the value at BOS: only a value 0 there gives the default 0.
            select = self.select(d - 1, need=False, for_width=False,
                                 never_empty=self.info[value].bos not in (0, EMPTY))
            values = frozenset(v / n for v in self.values(value) for n in range(1, self.L + 1))
            return self._add(AggregateN(select, value, True), Info(True, values, exact=False))
        if kind == "linear":
            fst = self.num(d - 1, need=need)
            snd = self.num(d - 1, need=False)
            if snd == fst:
                snd = self.num(1, need=False)  # an indicator: never equal to a deeper SOp
                if snd == fst:
                    snd = self._add(MapN(Fn("cat_to_num", "ind_odd"), INDICES, True),
                                    Info(True, frozenset({0, 1}), exact=True, zero_one=True))
            a, b = self.pick(LINEAR_FACTORS)
            A, B = self.info[fst], self.info[snd]
            values = frozenset(a * x + b * y for x in A.values for y in B.values)
            return self._add(LinearN(fst, snd, a, b), Info(True, values, exact=A.exact and B.exact))
        # map: numerical -> numerical on an exact input
        inner = self.num(d - 1, need=need, exact=True, zero_one=zero_one)
        info = self.info[inner]
        names = ["one_minus"] if zero_one else list(NUM_MAPS)
        fn = Fn("num_map", self.pick(names))
        values = self._image(fn, info.values)
        return self._add(MapN(fn, inner, True), Info(True, values, exact=True, zero_one=zero_one))


def generate(choose: Callable[[int], int], *, max_depth: int = 3, max_vocab: int = 4, max_seq_len: int = 5,
             causal: bool | None = None, numerical: bool | None = None) -> Program:
    """The generator core: a :class:`Program` from a stream of integer choices ``choose(n) in [0, n)``."""
    gen = _Generator(choose, max_depth=max_depth, max_vocab=max_vocab, max_seq_len=max_seq_len,
                     causal=causal, numerical=numerical)
    return _program(gen.spec())


def random_program(rng: random.Random, **kw) -> Program:
    """A random program drawn from ``rng`` (keywords as :func:`programs`)."""
    return generate(rng.randrange, **kw)


# ----------------------------------------------------------------- rendering
_SPECS: dict[str, Spec] = {}


def _expression_lines(spec: Spec) -> tuple[list[str], str]:
    """Assignment lines (one per shared or compound node) and the output variable."""
    lines: list[str] = []
    names: dict = {TOKENS: "rasp.tokens", INDICES: "rasp.indices"}

    def ref(node) -> str:
        if node in names:
            return names[node]
        if isinstance(node, MapN):
            enc = "numerical" if node.numerical else "categorical"
            expr = f"rasp.{enc}(rasp.Map({node.fn.code}, {ref(node.inner)}, simplify=False))"
        elif isinstance(node, SeqMapN):
            expr = f"rasp.categorical(rasp.SequenceMap({node.fn.code}, {ref(node.fst)}, {ref(node.snd)}))"
        elif isinstance(node, LinearN):
            expr = (f"rasp.numerical(rasp.LinearSequenceMap({ref(node.fst)}, {ref(node.snd)}, "
                    f"{node.fst_fac!r}, {node.snd_fac!r}))")
        elif isinstance(node, SelectN):
            expr = f"rasp.Select({ref(node.keys)}, {ref(node.queries)}, {node.predicate.code})"
        elif isinstance(node, AggregateN):
            if node.numerical:
                expr = f"rasp.numerical(rasp.Aggregate({ref(node.select)}, {ref(node.sop)}, default=0))"
            else:
                expr = f"rasp.categorical(rasp.Aggregate({ref(node.select)}, {ref(node.sop)}))"
        elif isinstance(node, WidthN):
            expr = f"rasp.categorical(rasp.SelectorWidth({ref(node.select)}))"
        else:
            raise TypeError(f"not a spec node: {node!r}")
        prefix = "select" if isinstance(node, SelectN) else "sop"
        var = f"{prefix}{len(lines) + 1}"
        lines.append(f"{var} = {expr}")
        names[node] = var
        return var

    out = ref(spec.root)
    return lines, out


_RASP_NAMES = {MapN: "Map", SeqMapN: "SequenceMap", LinearN: "LinearSequenceMap", AggregateN: "Aggregate",
               WidthN: "SelectorWidth"}


def _summary(spec: Spec) -> str:
    counts = collections.Counter()

    def walk(node, seen):
        if node in seen or isinstance(node, (Tokens, Indices)):
            return
        seen.add(node)
        if type(node) in _RASP_NAMES:  # selects are counted through what uses them
            counts[_RASP_NAMES[type(node)]] += 1
        for child in _children(node):
            walk(child, seen)

    walk(spec.root, set())
    ops = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    kind = "numerical" if spec.numerical else "categorical"
    return f"Random {kind} RASP program ({ops})."


def _children(node) -> list:
    if isinstance(node, MapN):
        return [node.inner]
    if isinstance(node, (SeqMapN, LinearN)):
        return [node.fst, node.snd]
    if isinstance(node, SelectN):
        return [node.keys, node.queries]
    if isinstance(node, AggregateN):
        return [node.select, node.sop]
    if isinstance(node, WidthN):
        return [node.select]
    return []


def _source(spec: Spec) -> str:
    lines, out = _expression_lines(spec)
    name = spec.name
    vocab = "{" + ", ".join(map(repr, sorted(spec.vocab))) + "}"
    body = "\n".join(f"    {line}" for line in lines)
    return (
        f'"""Random RASP program {name}, generated by groundtruth.strategies.\n'
        f"\n"
        f"Reproduce: groundtruth recover {name}.py --ablations zero\n"
        f'"""\n'
        f"\n"
        f"from tracr.rasp import rasp\n"
        f"\n"
        f"from groundtruth import program\n"
        f"\n"
        f"\n"
        f"@program(vocab={vocab}, max_seq_len={spec.max_seq_len}, causal={spec.causal})\n"
        f"def {name}():\n"
        f'    """{_summary(spec)}"""\n'
        f"{body}\n"
        f"    return {out}\n"
    )


def _program(spec: Spec) -> Program:
    """The Program the spec's source file defines (built by executing that source)."""
    source = _source(spec)
    filename = f"<groundtruth.strategies {spec.name}>"
    # In the line cache, so inspect.getsource (Program.source, source_hash) sees the generated code.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {"__name__": "groundtruth_generated"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    prog = namespace[spec.name]
    prog.build.__groundtruth_spec__ = spec
    _SPECS[spec.name] = spec
    return prog


def spec_of(prog: Program) -> Spec:
    """The :class:`Spec` a generated program was built from."""
    spec = getattr(prog.build, "__groundtruth_spec__", None) or _SPECS.get(prog.name)
    if spec is None:
        raise KeyError(f"program {prog.name!r} was not generated by groundtruth.strategies")
    return spec


def program_source(prog: Program) -> str:
    """A standalone program file (for ``groundtruth check/recover FILE.py``) defining ``prog``."""
    return _source(spec_of(prog))


def write_program(prog: Program, folder: str | Path) -> Path:
    """Write :func:`program_source` to ``folder/<name>.py`` and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prog.name}.py"
    path.write_text(program_source(prog))
    return path


# ------------------------------------------------------------------ strategies
@st.composite
def programs(draw, *, max_depth: int = 3, max_vocab: int = 4, max_seq_len: int = 5,
             causal: bool | None = None, numerical: bool | None = None) -> Program:
    """Random RASP programs (as :class:`Program`) built to compile with Tracr.

    ``max_depth`` bounds the nesting of operations, ``max_vocab`` the vocabulary
    ``{0..V-1}`` (V >= 2), ``max_seq_len`` the length; ``causal`` and
    ``numerical`` (the output encoding) are drawn when None.
    """
    return generate(lambda n: draw(st.integers(0, n - 1)), max_depth=max_depth, max_vocab=max_vocab,
                    max_seq_len=max_seq_len, causal=causal, numerical=numerical)


ACCEPTANCE: collections.Counter = collections.Counter()  # "accepted" / "rejected: <reason>" over checked_programs


def rejection_reason(err: BaseException) -> str:
    """A short, program-independent reason for a compile/check failure."""
    msg = str(err)
    msg = re.sub(r"program '[^']*':? ?", "", msg)
    for marker, reason in (("disagrees with RASP", "compiled model disagrees with RASP"),
                           ("RASP gives None", "RASP gives None"),
                           ("RASP cannot evaluate", "RASP cannot evaluate it"),
                           ("Tracr cannot compile", "Tracr static validation"),
                           ("does not read rasp.tokens", "does not read tokens")):
        if marker in msg:
            return reason
    m = re.search(r"Tracr failed to compile it: (\w+): (.{0,60})", msg)
    if m:
        return f"Tracr failed: {m.group(1)}: {m.group(2)}"
    return f"{type(err).__name__}: {msg[:80]}"


@st.composite
def checked_programs(draw, **kw) -> Program:
    """Like :func:`programs`, but only programs that compile and agree with RASP on every input."""
    from groundtruth.compiler import ProgramError, compile_program

    prog = draw(programs(**kw))
    try:
        compile_program(prog)
    except ProgramError as err:
        reason = rejection_reason(err)
        ACCEPTANCE[f"rejected: {reason}"] += 1
        event(f"rejected: {reason}")
        assume(False)
    ACCEPTANCE["accepted"] += 1
    return prog


def acceptance_rate(n: int = 50, seed: int = 0, **kw) -> tuple[int, int, dict[str, int]]:
    """Generate ``n`` programs (program ``i`` from ``random.Random(f"{seed}-{i}")``) and compile each.

    Returns (accepted, generated, {reason: count}) where accepted programs
    compile and agree with RASP on every input.
    """
    from groundtruth.compiler import ProgramError, compile_program

    accepted, reasons = 0, collections.Counter()
    for i in range(n):
        prog = random_program(random.Random(f"{seed}-{i}"), **kw)
        try:
            compile_program(prog)
        except ProgramError as err:
            reasons[rejection_reason(err)] += 1
        except Exception as err:  # a crash outside Tracr's own checks is a generator bug too
            reasons[f"crash: {type(err).__name__}: {str(err)[:80]}"] += 1
        else:
            accepted += 1
        _forget_jitted_forwards()
    return accepted, n, dict(reasons)


def _forget_jitted_forwards() -> None:
    """Drop groundtruth.compiler's cache of jitted forwards (it keeps every compiled model alive)."""
    from groundtruth import compiler

    getattr(compiler, "_FORWARDS", {}).clear()
