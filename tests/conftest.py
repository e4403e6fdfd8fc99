"""Shared fixtures: library cases are built once per session (compiling is the slow part)."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from groundtruth.recovery import DEFAULT_PRUNER

# The models under test are tiny: one thread is as fast and never contends.
torch.set_num_threads(1)

# The default profile is derandomized so CI runs the same examples every time;
# `make test-slow` uses the deep profile, random and much larger.
settings.register_profile(
    "default", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def random_model(cfg, seed, conventions="ours"):
    """A float64 :class:`prune.model.Transformer` of ``cfg`` with every weight drawn from N(0, 0.5^2)."""
    from prune.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(cfg, conventions=conventions).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module, restored after: the models here are tiny, so a second thread only
    adds synchronisation, and on a loaded machine its spin-waits slow every forward pass many times over
    (some tests, e.g. a CLI's, set the thread count themselves)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def truth_pruner(model, examples, *, ablation, seed):
    """A pruner that answers ``count``'s functional ground truth, read from its artifact (the cheapest pruner
    that recovers it; on ``hist``, of the same shape, a wrong but valid circuit)."""
    import json

    from groundtruth.artifacts import DEFAULT_ROOT
    from prune.circuit import Circuit

    variants = json.loads((DEFAULT_ROOT / "count" / "circuits.json").read_text())["variants"]
    return Circuit(graph=model.graph, edges=tuple(variants[f"functional:{ablation}"]), ablation=ablation,
                   model="count", d_model=model.cfg.d_model)


@functools.cache
def library_case(name: str):
    """The built :class:`groundtruth.case.Case` of a library program (cached)."""
    from groundtruth.case import build_case
    from groundtruth.registry import library

    return build_case(library()[name])


def library_names() -> list[str]:
    from groundtruth.registry import library

    return list(library())


def pytest_addoption(parser):
    parser.addoption(
        "--pruner",
        default=DEFAULT_PRUNER,
        help="module:callable run by the recovery tests instead of Edge Pruning: a prune.Pruner "
        "(see prune/pruner.py); groundtruth.recovery.load_pruner checks its signature",
    )


@pytest.fixture(scope="session")
def pruner(request):
    from groundtruth.recovery import load_pruner

    return load_pruner(request.config.getoption("--pruner"))


@functools.cache
def artifact(name: str):
    from groundtruth.artifacts import DEFAULT_ROOT, load_artifact

    return load_artifact(DEFAULT_ROOT / name)


def word_level_tokenizer(text: str):
    """A word-level tokenizer over the words of ``text`` that prepends a BOS, as Llama's does
    (no real Llama tokenizer is available offline)."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
