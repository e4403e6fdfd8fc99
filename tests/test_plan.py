"""The memory plan (prune.plan) and ``prune plan``: what it counts, how it scales, and its refusals.

Its accuracy against measured peaks is a benchmark (bench/plan.py, bench/results/plan.md), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prune import loaders, plan
from prune.cli import main

GPT2 = loaders.transformer_config(plan.read_config("gpt2"))
CODELLAMA = loaders.transformer_config(plan.read_config("codellama/CodeLlama-13b-hf"))


def test_the_shipped_configs_are_the_published_models():
    assert loaders.estimate_params(GPT2) == 163_037_184  # 124M plus the untied unembedding copy
    assert (CODELLAMA.n_layers, CODELLAMA.n_heads, CODELLAMA.d_model, CODELLAMA.d_mlp, CODELLAMA.vocab_size) == \
        (40, 40, 5120, 13824, 32016)
    assert 13.0e9 < loaders.estimate_params(CODELLAMA) < 13.1e9


def test_the_items_are_the_step_s_tensors():
    p = plan.plan_step(GPT2, batch=8, seq=32, runtime_bytes=0)
    W, B, S, D = 1 + 12 * 13, 8, 32, 768
    assert p.items["writer stack"] == p.items["gradient buffer"] == W * B * S * D * 4
    assert p.items["ablated writers"] == W * B * S * D * 4  # resample: one row per example (8)
    assert p.items["reader inputs"] == 12 * 37 * B * S * D * 4
    assert p.items["weights"] == 163_037_184 * 4 and p.items["weight gradients and optimizer"] == 0
    assert p.total == sum(p.items.values())
    zero = plan.plan_step(GPT2, batch=8, seq=32, runtime_bytes=0, ablation="zero")
    assert zero.items["ablated writers"] == 0


def test_recomputed_reads_keep_only_the_mlp_inputs_and_remake_one_layer_s_in_backward():
    kept = plan.plan_step(GPT2, batch=8, seq=32, runtime_bytes=0)
    redone = plan.plan_step(GPT2, batch=8, seq=32, runtime_bytes=0, recompute_reads=True)
    B, S, D = 8, 32, 768
    reads = 37 * B * S * D * 4  # one layer's 3H + 1 reader inputs
    assert redone.items["reader inputs"] == 12 * 2 * B * S * D * 4  # the MLP's input and the ablated writers' sum
    assert (kept.items["backward transient"], redone.items["backward transient"]) == (2 * reads, 4 * reads)  # layer norm
    reads = (3 * 40 + 1) * 128 * 5120  # CodeLlama-13B's, one example, in values
    folded = plan.plan_step(CODELLAMA, batch=1, seq=128, device="cuda", recompute_reads=True)
    assert folded.items["backward transient"] == 3 * reads * 4  # float32: the RMS norm folds
    half = plan.plan_step(CODELLAMA, batch=1, seq=128, dtype=torch.bfloat16, device="cuda", recompute_reads=True)
    assert half.items["backward transient"] == 4 * reads * 2  # bf16: it does not
    assert {k for k in kept.items if kept.items[k] != redone.items[k]} == {"reader inputs", "backward transient"}


def test_the_plan_scales_with_batch_examples_and_ranks():
    one = plan.plan_step(GPT2, batch=8, seq=32, runtime_bytes=0)
    two = plan.plan_step(GPT2, batch=16, seq=32, runtime_bytes=0)
    for item in ("writer stack", "reader inputs", "mlp"):
        assert two.items[item] == 2 * one.items[item]
    more = plan.plan_step(GPT2, batch=8, seq=32, examples=80, runtime_bytes=0)
    assert more.items["ablated writers"] == 10 * one.items["ablated writers"]
    sharded = plan.plan_step(CODELLAMA, batch=1, seq=128, dtype=torch.bfloat16, nproc=8, device="cuda")
    alone = plan.plan_step(CODELLAMA, batch=1, seq=128, dtype=torch.bfloat16, nproc=1, device="cuda")
    assert sharded.items["weights"] < alone.items["weights"] / 4  # 1/8 of them plus one gathered block
    assert sharded.items["writer stack"] == alone.items["writer stack"]


def test_a_sharded_rank_holds_its_share_the_root_unit_and_two_blocks():
    # FSDP keeps the model's own unit gathered from the forward to the end of the backward, and the backward
    # holds the running block and the prefetched next one (measured: bench/plan.py --nproc 2).
    p = plan.plan_step(GPT2, batch=8, seq=32, nproc=2, runtime_bytes=0)
    block = 12 * 768**2 + 13 * 768  # W_Q, W_K, W_V, W_O, W_in, W_out; their biases and the two norms
    root = 2 * 50257 * 768 + 1024 * 768 + 2 * 768  # W_E, W_U, W_pos and the final norm
    assert 12 * block + root == 163_037_184
    assert p.items["weights"] == (163_037_184 // 2 + root + 2 * block) * 4
    assert p.items["FSDP forward gather"] == 0  # the backward's activations outweigh the root unit's second copy
    tiny = plan.plan_step(GPT2, batch=1, seq=16, nproc=2, runtime_bytes=0)
    backward_only = sum(tiny.items[k] for k in ("gradient buffer", "reader inputs", "attention", "mlp",
                                                "backward transient")) + 3 * 50257 * 4
    assert tiny.items["FSDP forward gather"] == root * 4 - backward_only > 0
    assert "FSDP forward gather" not in plan.plan_step(GPT2, batch=1, seq=16, runtime_bytes=0).items


def test_largest_batch_is_the_boundary():
    budget = 4 * plan.GIB
    best = plan.largest_batch(GPT2, budget, seq=32, runtime_bytes=0)
    assert plan.plan_step(GPT2, batch=best, seq=32, runtime_bytes=0).fits(budget)
    assert not plan.plan_step(GPT2, batch=best + 1, seq=32, runtime_bytes=0).fits(budget)
    assert plan.largest_batch(GPT2, 1, seq=32, runtime_bytes=0) == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(batch=8, seq=32, nproc=3, examples=16), "do not divide among 3 ranks"),
    (dict(batch=8, seq=32, examples=4), "fewer than its batch"),
    (dict(batch=8, seq=2048), "exceeds the model's 1024 positions"),
    (dict(batch=8, seq=32, dtype=torch.bfloat16), "is for a GPU"),
    (dict(batch=0, seq=32), "batch must be a whole number"),
    (dict(batch=8, seq=32, ablation="half"), "unknown ablation"),
])
def test_impossible_plans_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan.plan_step(GPT2, **kwargs)


def test_a_config_with_an_unknown_field_is_refused(tmp_path):
    d = json.loads((plan.CONFIGS / "gpt2.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "n_experts": 8}))
    with pytest.raises(ValueError, match="field 'n_experts' is unknown to a gpt2 config"):
        plan.read_config(str(tmp_path))
    with pytest.raises(ValueError, match="no config at"):
        plan.read_config(str(tmp_path / "missing.json"))


def _plan(capsys, *argv):
    code = main(["plan", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_plan_prints_the_items_and_whether_it_fits(capsys, tmp_path):
    code, out, _ = _plan(capsys, "--model", "codellama/CodeLlama-13b-hf", "--batch", "4", "--seq", "128",
                         "--dtype", "bf16", "--nproc", "8", "--gpu-memory", "80")
    assert code == 0 and "reader inputs" in out and "fits" in out and "largest batch per rank" in out
    code, out, _ = _plan(capsys, "--model", "codellama/CodeLlama-13b-hf", "--batch", "32", "--seq", "128",
                         "--dtype", "bf16", "--gpu-memory", "141")
    assert code == 1 and "does NOT fit" in out
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((plan.CONFIGS / "gpt2.json").read_text())
    assert _plan(capsys, "--model", folder, "--batch", "2", "--seq", "16")[0] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "gpt2", "--batch", "8", "--seq", "32", "--dtype", "bf16"], "is for a GPU"),
    (["--model", "gpt2", "--batch", "8", "--seq", "32", "--nproc", "3", "--examples", "32"], "do not divide"),
    (["--model", "/no/such/config.json", "--batch", "8", "--seq", "32"], "no config at"),
    (["--model", "gpt2", "--batch", "8", "--seq", "32", "--gpu-memory", "-1"], "--gpu-memory"),
])
def test_prune_plan_refusals(capsys, argv, message):
    code, out, err = _plan(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("malloc", ["default", "keep"])
def test_keep_freed_memory_keeps_a_freed_block_for_reuse(malloc):
    """glibc returns a freed 512 MB block to the kernel at once (a fresh mmap per allocation); after
    prune.allocator.keep_freed_memory() it keeps it in the heap, so the next one reuses its pages."""
    code = ("import sys, torch\n"
            "from prune.allocator import keep_freed_memory\n"
            "from prune.plan import process_resident_bytes as rss\n"
            "kept = keep_freed_memory() if sys.argv[1] == 'keep' else None\n"
            "t = torch.ones(2**27)\n"  # 512 MB, touched
            "before = rss()\n"
            "del t\n"
            "print(kept, (before - rss()) / 2**20)\n")
    out = subprocess.run([sys.executable, "-c", code, malloc], capture_output=True, text=True, check=True)
    kept, freed_mib = out.stdout.split()
    if malloc == "keep":
        assert kept == "True" and float(freed_mib) < 16  # still resident: nothing went back
    else:
        assert float(freed_mib) > 500  # all of it went back at once
