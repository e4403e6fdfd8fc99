"""The program library: Tracr's own example programs plus a few of our design.

Every entry is a :class:`~groundtruth.program.Program` whose build function
constructs a fresh RASP expression (so labels are deterministic) and annotates
the output encoding explicitly. ``LIBRARY`` maps names to programs in table
order.

Programs whose every position depends only on earlier positions are compiled
with a causal mask and carry a ``_causal`` suffix; programs that read the whole
sequence (length, reverse, sort, ...) are non-causal.

Tracr's compiled model and the RASP evaluator disagree wherever an Aggregate
selects no key: RASP gives ``None``, the model gives an arbitrary class. So
shifts here read a clamped position (see :func:`_shift`) rather than using
``lib.shift_by``, whose first ``offset`` positions are ``None``.
"""

from __future__ import annotations

from tracr.compiler import lib
from tracr.rasp import rasp

from groundtruth.program import Program, program

__all__ = ["LIBRARY"]


# ------------------------------------------------------------------ helpers
def _fresh_lib_length() -> None:
    """Rebind ``lib.length``, which make_reverse and make_shuffle_dyck read as a global."""
    # lib builds `length` once at import and RASP assigns ids lazily, so its label
    # would depend on which program got labelled first; a fresh SOp per build keeps
    # labels deterministic.
    lib.length = lib.make_length()


def _shift(offset: int, sop: rasp.SOp) -> rasp.SOp:
    """``lib.shift_by(offset, sop)``, but positions < offset read position 0, not None."""
    select = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == max(q - offset, 0))
    return rasp.Aggregate(select, sop).named(f"shift_by({offset})")


def _numerical_shift(offset: int, bools: rasp.SOp) -> rasp.SOp:
    """Shift a 0/1 feature right by ``offset``; positions < offset get 0 (exact in Tracr)."""
    select = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + offset)
    shifted = rasp.Aggregate(select, rasp.numerical(bools), default=0)
    return rasp.numerical(shifted).named(f"shift_by({offset})")


def _detect_pattern(sop: rasp.SOp, pattern) -> rasp.SOp:
    """``lib.detect_pattern`` with clamped shifts, so early positions are False, not None.

    Exact when the pattern's first element differs from the others (true for "abc"):
    a clamped detector then reads position 0 for two different elements at once.
    """
    detectors = []
    for i, element in enumerate(reversed(pattern)):
        detector = sop == element
        if i != 0:
            detector = _shift(i, detector)
        detectors.append(detector)
    pattern_detected = detectors.pop()
    while detectors:
        pattern_detected = pattern_detected & detectors.pop()
    return pattern_detected.named(f"detect_pattern({pattern})")


def _pair_with_index(sop: rasp.SOp) -> rasp.SOp:
    """(value, index) at each position: lets one Select test both, as SelectorAnd won't compile."""
    return rasp.categorical(rasp.SequenceMap(lambda x, i: (x, i), sop, rasp.indices)).named("with_index")


def _distinct(seq: tuple) -> bool:
    """No repeated token: sort_unique assumes unique keys."""
    return len(set(seq)) == len(seq)


# ------------------------------------------------------- Tracr's lib programs
@program(vocab={"a", "b", "c"}, max_seq_len=5)
def length():
    """Length of the sequence at every position (Tracr lib.make_length)."""
    return rasp.categorical(lib.make_length())


@program(vocab={1, 2, 3}, max_seq_len=5)
def reverse():
    """Reverse the input sequence (Tracr lib.make_reverse)."""
    _fresh_lib_length()
    return rasp.categorical(lib.make_reverse(rasp.tokens))


@program(vocab={"w", "x", "y", "z"}, max_seq_len=5)
def frac_prevs():
    """Fraction of positions so far holding "x" (Tracr lib.make_frac_prevs)."""
    return rasp.numerical(lib.make_frac_prevs(rasp.tokens == "x"))


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def hist():
    """Number of times the current token occurs in the sequence (Tracr lib.make_hist)."""
    return rasp.categorical(lib.make_hist())


@program(vocab={1, 2, 3, 4}, max_seq_len=4, accept=_distinct)
def sort_unique():
    """Sort tokens ascending, keys assumed distinct (Tracr lib.make_sort_unique)."""
    # Repeated keys collide on one target slot, so inputs are drawn without repeats.
    return rasp.categorical(lib.make_sort_unique(rasp.tokens, rasp.tokens))


@program(vocab={1, 2, 3}, max_seq_len=5)
def sort():
    """Sort tokens ascending, ties broken by position (Tracr lib.make_sort)."""
    return rasp.categorical(lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1))


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def sort_freq():
    """Sort tokens by descending frequency, stable (Tracr lib.make_sort_freq)."""
    return rasp.categorical(lib.make_sort_freq(max_seq_len=5))


@program(vocab={"(", ")", "x"}, max_seq_len=5)
def pair_balance():
    """Fraction of "(" minus fraction of ")" so far (Tracr lib.make_pair_balance)."""
    return rasp.numerical(lib.make_pair_balance(rasp.tokens, "(", ")"))


@program(vocab={"(", ")"}, max_seq_len=6)
def shuffle_dyck():
    """True if the parentheses are balanced (Tracr lib.make_shuffle_dyck, one pair)."""
    _fresh_lib_length()
    return rasp.categorical(lib.make_shuffle_dyck(pairs=["()"]))


@program(vocab={"(", ")", "{", "}"}, max_seq_len=4)
def shuffle_dyck2():
    """True if both bracket types are balanced (Tracr lib.make_shuffle_dyck2)."""
    _fresh_lib_length()
    return rasp.categorical(lib.make_shuffle_dyck2())


@program(vocab={"a", "b", "c", "d"}, max_seq_len=5)
def shift_by():
    """Previous token, position 0 reading itself (Tracr lib.shift_by(1, tokens), clamped)."""
    return rasp.categorical(_shift(1, rasp.tokens))


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def detect_pattern():
    """True where "abc" ends at this position (Tracr lib.detect_pattern, clamped shifts)."""
    return rasp.categorical(_detect_pattern(rasp.tokens, "abc"))


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def count_less_freq():
    """Number of positions whose token occurs at most twice (Tracr lib.make_count_less_freq(2))."""
    return rasp.categorical(lib.make_count_less_freq(2))


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def count():
    """Number of "a" tokens in the sequence (Tracr lib.make_count)."""
    return rasp.categorical(lib.make_count(rasp.tokens, "a"))


@program(vocab={1, 2, 3}, max_seq_len=5)
def nary_sequencemap():
    """token + token - index via a 3-ary SequenceMap (Tracr lib.make_nary_sequencemap)."""
    return rasp.categorical(
        lib.make_nary_sequencemap(lambda x, y, z: x + y - z, rasp.tokens, rasp.tokens, rasp.indices)
    )


# ----------------------------------------------------- causal lib variants
@program(vocab={"w", "x", "y", "z"}, max_seq_len=5, causal=True)
def frac_prevs_causal():
    """Fraction of positions so far holding "x", causal mask (Tracr lib.make_frac_prevs)."""
    return rasp.numerical(lib.make_frac_prevs(rasp.tokens == "x"))


@program(vocab={"a", "b", "c", "d"}, max_seq_len=5, causal=True)
def shift_by_causal():
    """Previous token, position 0 reading itself, causal mask (Tracr lib.shift_by, clamped)."""
    return rasp.categorical(_shift(1, rasp.tokens))


# --------------------------------------------------------- our own programs
@program(vocab={"a", "b", "c"}, max_seq_len=5, causal=True)
def first_token_causal():
    """Broadcast the first token to every position (one attention head)."""
    select_first = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0).named("select_first")
    return rasp.categorical(rasp.Aggregate(select_first, rasp.tokens)).named("first_token")


@program(vocab={1, 2, 3, 4}, max_seq_len=5)
def count_greater():
    """Number of tokens greater than the current token (one SelectorWidth)."""
    greater = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.GT).named("greater")
    return rasp.categorical(rasp.SelectorWidth(greater)).named("count_greater")


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def frac_a_minus_b():
    """Fraction of "a" minus fraction of "b" over the whole sequence (two numerical heads)."""
    select_all = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE).named("select_all")
    is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens)).named("is_a")
    is_b = rasp.numerical(rasp.Map(lambda t: 1 if t == "b" else 0, rasp.tokens)).named("is_b")
    frac_a = rasp.numerical(rasp.Aggregate(select_all, is_a, default=0)).named("frac_a")
    frac_b = rasp.numerical(rasp.Aggregate(select_all, is_b, default=0)).named("frac_b")
    return rasp.numerical(rasp.LinearSequenceMap(frac_a, frac_b, 1, -1)).named("frac_a_minus_b")


@program(vocab={"a", "b", "c"}, max_seq_len=5)
def is_majority():
    """True where the current token fills more than half the sequence (two heads: hist, length)."""
    counts = lib.make_hist()
    n = lib.make_length()
    return rasp.categorical(rasp.SequenceMap(lambda c, m: 2 * c > m, counts, n)).named("is_majority")


@program(vocab={0, 1}, max_seq_len=8, causal=True)
def xor_prev_causal():
    """XOR of each bit with the previous bit (position 0 compares with itself, giving 0)."""
    prev = _shift(1, rasp.tokens)
    return rasp.categorical(rasp.SequenceMap(lambda x, p: x ^ p, rasp.tokens, prev)).named("xor_prev")


@program(vocab={"a", "b", "c"}, max_seq_len=5, causal=True)
def prefix_count_a_causal():
    """Number of "a" tokens at or before each position."""
    pos = _pair_with_index(rasp.tokens)
    earlier_a = rasp.Select(pos, rasp.indices, lambda k, q: k[0] == "a" and k[1] <= q).named("earlier_a")
    return rasp.categorical(rasp.SelectorWidth(earlier_a)).named("prefix_count_a")


@program(vocab={"a", "b", "c"}, max_seq_len=5, causal=True)
def prev_token_eq_causal():
    """1 where the token equals the previous token, else 0 (0 at position 0)."""
    pos = _pair_with_index(rasp.tokens)
    same_prev = rasp.Select(pos, pos, lambda k, q: k[1] == q[1] - 1 and k[0] == q[0]).named("same_prev")
    return rasp.categorical(rasp.SelectorWidth(same_prev)).named("prev_token_eq")


@program(vocab={"a", "b", "c"}, max_seq_len=5, causal=True)
def a_in_prev_two_causal():
    """Number of "a" tokens among the two previous positions (two numerical shift heads)."""
    is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens)).named("is_a")
    prev1 = _numerical_shift(1, is_a)
    prev2 = _numerical_shift(2, is_a)
    return rasp.numerical(rasp.LinearSequenceMap(prev1, prev2, 1, 1)).named("a_in_prev_two")


LIBRARY: dict[str, Program] = {
    p.name: p
    for p in (
        length,
        reverse,
        frac_prevs,
        hist,
        sort_unique,
        sort,
        sort_freq,
        pair_balance,
        shuffle_dyck,
        shuffle_dyck2,
        shift_by,
        detect_pattern,
        count_less_freq,
        count,
        nary_sequencemap,
        frac_prevs_causal,
        shift_by_causal,
        first_token_causal,
        count_greater,
        frac_a_minus_b,
        is_majority,
        xor_prev_causal,
        prefix_count_a_causal,
        prev_token_eq_causal,
        a_in_prev_two_causal,
    )
}
