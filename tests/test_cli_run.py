"""``prune run`` end to end on tiny random GPT-2 and Llama checkpoints.

Both models are saved with ``save_pretrained`` and loaded back through the real
path (folder -> Hugging Face -> conversion). GPT-2 uses the real, offline GPT-2
tokenizer, so its vocabulary is GPT-2's 50257 tokens; the Llama (grouped-query
attention) gets a tiny word-level tokenizer saved in its checkpoint folder, as
a real Llama checkpoint ships its own. Steps and examples are few: these tests
check the command's plumbing (outputs, checkpoints, resuming after a kill,
errors), not the quality of the circuits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import word_level_tokenizer
from prune import loaders, tasks
from prune.circuit import Circuit
from prune.cli import main
from prune.graph import Graph

ROOT = Path(__file__).resolve().parent.parent

# Per architecture: steps of the interrupted run and how often it checkpoints.
# Enough steps after the first checkpoint that the kill lands before the end.
KILL_RUN = {"gpt2": {"steps": 10, "every": 2}, "llama": {"steps": 60, "every": 2}}


def _scaled(model):
    """Weights with std 0.3 (norm gains near 1), so that edges matter and circuits are not empty."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3)
            if "ln_" in name or "norm" in name:
                p.add_(1.0)
    return model.eval()


def _word_tokenizer():
    """A word-level tokenizer with a BOS (as Llama's), covering every word of the IOI prompts."""
    return word_level_tokenizer(
        " ".join([*tasks.MALE_NAMES, *tasks.FEMALE_NAMES, *tasks.PLACES, *tasks.OBJECTS, *tasks._IOI_BASE]))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    gpt2 = _scaled(GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2)))
    gpt2.save_pretrained(root / "gpt2")
    tok = _word_tokenizer()
    llama = _scaled(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)))
    llama.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    return {"gpt2": root / "gpt2", "llama": root / "llama"}


def _args(model: Path, out: Path, targets: str = "0.9", steps: int = 6, every: int = 100, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--task", "ioi", "--target-edge-sparsity", targets, "--out", str(out),
            "--n", "8", "--batch-size", "4", "--steps", str(steps), "--checkpoint-every", str(every),
            "--threads", "1", "--seed", "0", "--quiet", *extra]


def _graph(model: Path) -> Graph:
    cfg = json.loads((model / "config.json").read_text())
    if cfg["model_type"] == "gpt2":
        return Graph(n_layers=cfg["n_layer"], n_heads=cfg["n_head"])
    return Graph(n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"])


def _temp_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


METRIC_KEYS = {"target_edge_sparsity", "task", "ablation", "seed", "steps", "edges", "edge_sparsity", "kl",
               "exact_match", "logit_difference", "full_model_logit_difference", "accuracy", "full_model_accuracy"}


# ------------------------------------------------------------------ a run
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_run_writes_valid_outputs(checkpoints, arch, tmp_path, capsys):
    model, out = checkpoints[arch], tmp_path / "out"
    assert main(_args(model, out, "0.5,0.9", 6, 4)) == 0
    graph = _graph(model)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for target, line in zip(("0.5", "0.9"), printed):
        run_dir = out / f"target-{target}"
        circuit = Circuit.load(run_dir / "circuit.json", graph=graph, model=str(model))
        assert circuit.ablation == "resample" and len(circuit.scores) == graph.n_edges
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert METRIC_KEYS <= set(metrics) and metrics == line
        assert metrics["target_edge_sparsity"] == float(target) and metrics["edges"] == len(circuit)
        assert metrics["edge_sparsity"] == pytest.approx(1 - len(circuit) / graph.n_edges)
        assert all(isinstance(metrics[k], float) and metrics[k] == metrics[k] for k in ("kl", "logit_difference"))
        assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["accuracy"] <= 1
        assert _checkpoint_step(run_dir / "checkpoint.safetensors") == 6  # the final state is kept
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "ioi" and run["targets"] == [0.5, 0.9] and run["steps"] == 6
    assert _temp_files(out) == []


# -------------------------------------------------------- kill and resume
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resume_after_kill_equals_an_uninterrupted_run(checkpoints, arch, tmp_path):
    model, steps, every = checkpoints[arch], KILL_RUN[arch]["steps"], KILL_RUN[arch]["every"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    checkpoint = killed / "target-0.9" / "checkpoint.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "prune.cli", *_args(model, killed, "0.9", steps, every)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (status {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < _checkpoint_step(checkpoint) < steps, "the kill must land mid-run"
    assert not (checkpoint.parent / "circuit.json").exists()
    # What a kill during a write would leave (the checkpoint's and the circuit's temporary names).
    (checkpoint.parent / ".checkpoint.safetensors.k1ll3d.tmp").write_bytes(b"partial")
    (checkpoint.parent / ".circuit.json.k1ll3d").write_text('{"cfg": ')

    assert main(_args(model, killed, "0.9", steps, every, "--resume")) == 0
    assert main(_args(model, whole, "0.9", steps, every)) == 0

    graph = _graph(model)
    resumed = Circuit.load(killed / "target-0.9" / "circuit.json", graph=graph)
    straight = Circuit.load(whole / "target-0.9" / "circuit.json", graph=graph)
    assert resumed.edges == straight.edges
    assert resumed.scores == straight.scores  # bit for bit
    assert (json.loads((killed / "target-0.9" / "metrics.json").read_text())
            == json.loads((whole / "target-0.9" / "metrics.json").read_text()))
    assert _temp_files(killed) == [] and _temp_files(whole) == []


def test_resume_skips_finished_targets_and_starts_missing_ones(checkpoints, tmp_path, capsys):
    model, out = checkpoints["llama"], tmp_path / "out"
    assert main(_args(model, out, "0.5", 4)) == 0
    before = (out / "target-0.5" / "circuit.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_args(model, out, "0.5,0.9", 4, 100, "--resume")) == 0
    err = capsys.readouterr().err
    assert "target 0.5: finished earlier, skipped" in err
    assert "no checkpoint" in err and "starting this target from step 0" in err
    assert (out / "target-0.5" / "circuit.json").stat().st_mtime_ns == before
    assert (out / "target-0.9" / "metrics.json").is_file() and (out / "sweep.png").is_file()
    # Everything finished: nothing to load, the sweep is redrawn.
    (out / "sweep.png").unlink()
    assert main(_args(model, out, "0.5,0.9", 4, 100, "--resume")) == 0
    assert (out / "sweep.png").is_file()


# ------------------------------------------------------------------ errors
def _error(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_errors_are_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    gpt2 = checkpoints["gpt2"]
    argv = _args(gpt2, tmp_path / "a")
    assert "unknown task 'nope'" in _error([*argv[:4], "nope", *argv[5:]], capsys)
    assert "nothing to resume" in _error(_args(gpt2, tmp_path / "a", "0.9", 6, 100, "--resume"), capsys)
    assert "target_sparsity must be in [0, 1]" in _error(_args(gpt2, tmp_path / "a", "1.5"), capsys)
    assert "--checkpoint-every" in _error(_args(gpt2, tmp_path / "a", "0.9", 6, 0), capsys)
    assert "no checkpoint folder" in _error(_args(tmp_path / "missing", tmp_path / "a"), capsys)

    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    assert "unsupported model type 'bert'" in _error(_args(tmp_path / "bert", tmp_path / "b"), capsys)

    monkeypatch.setattr(loaders, "available_bytes", lambda: 1024**2)  # 1 MiB free
    assert "only 0.0 GiB is available" in _error(_args(gpt2, tmp_path / "c"), capsys)
    monkeypatch.undo()

    # A checkpoint that is not one, and a run directory reused without --resume.
    run_dir = tmp_path / "d" / "target-0.9"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert "not a readable safetensors checkpoint" in _error(_args(gpt2, tmp_path / "d", "0.9", 6, 100, "--resume"),
                                                             capsys)
    assert "already holds a checkpoint" in _error(_args(gpt2, tmp_path / "d"), capsys)
    # Resuming with other arguments than the run in the folder.
    (run_dir / "checkpoint.safetensors").unlink()
    assert main(_args(gpt2, tmp_path / "d", "0.9", 2)) == 0
    capsys.readouterr()
    (run_dir / "metrics.json").unlink()
    assert "steps = 2" in _error(_args(gpt2, tmp_path / "d", "0.9", 3, 100, "--resume"), capsys)
