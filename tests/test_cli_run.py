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


def _args(model: Path | str, out: Path, targets: str = "0.9", steps: int = 6, every: int = 100,
          *extra: str) -> list[str]:
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
        # The drawing is of this circuit: its title counts its edges.
        assert (run_dir / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f": {len(circuit)} of {graph.n_edges} edges" in (run_dir / "circuit.svg").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "ioi" and run["targets"] == [0.5, 0.9] and run["steps"] == 6
    assert _temp_files(out) == []


# -------------------------------------------------------- kill and resume
def wait_for_checkpoint(proc: subprocess.Popen, checkpoint: Path, seconds: float) -> None:
    """Until ``checkpoint`` exists; fails if ``proc`` ends first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not checkpoint.exists():
        if proc.poll() is not None:
            err = proc.stderr.read()
            pytest.fail(f"the run ended (status {proc.returncode}) before its first checkpoint: "
                        f"{(err.decode() if isinstance(err, bytes) else err)[-3000:]}")
        assert time.monotonic() < deadline, f"no checkpoint within {seconds} s"
        time.sleep(0.002)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resume_after_kill_equals_an_uninterrupted_run(checkpoints, arch, tmp_path):
    model, steps, every = checkpoints[arch], KILL_RUN[arch]["steps"], KILL_RUN[arch]["every"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    checkpoint = killed / "target-0.9" / "checkpoint.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "prune.cli", *_args(model, killed, "0.9", steps, every)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(proc, checkpoint, 120)
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


def test_no_draw_writes_no_drawing_and_resume_draws_finished_targets(checkpoints, tmp_path):
    model, out = checkpoints["llama"], tmp_path / "out"
    assert main(_args(model, out, "0.5", 2, 100, "--no-draw")) == 0
    run_dir = out / "target-0.5"
    assert (run_dir / "circuit.json").is_file() and not list(run_dir.glob("circuit.*g"))
    before = (run_dir / "circuit.json").read_bytes()
    assert main(_args(model, out, "0.5", 2, 100, "--resume")) == 0  # finished: only the drawing is made
    assert (run_dir / "circuit.json").read_bytes() == before
    n_edges = len(Circuit.load(run_dir / "circuit.json"))
    assert f": {n_edges} of " in (run_dir / "circuit.svg").read_text()
    assert (run_dir / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert "'1.5' is not in [0, 1]" in _error(_args(gpt2, tmp_path / "a", "1.5"), capsys)
    assert "--checkpoint-every" in _error(_args(gpt2, tmp_path / "a", "0.9", 6, 0), capsys)
    assert "no checkpoint folder" in _error(_args(tmp_path / "missing", tmp_path / "a"), capsys)
    assert "--tie-kv: " in _error(_args(gpt2, tmp_path / "t", "0.9", 6, 100, "--tie-kv"), capsys)  # no GQA
    assert not (tmp_path / "t").exists()

    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    assert "unsupported model type 'bert'" in _error(_args(tmp_path / "bert", tmp_path / "b"), capsys)

    monkeypatch.setattr(loaders, "available_bytes", lambda: 1024**2)  # 1 MiB free
    # Refused by the step's memory plan, before any weight loads, with the plan's command.
    message = _error(_args(gpt2, tmp_path / "c"), capsys)
    assert "but 0.0 GiB is available" in message and "prune plan --model" in message
    # Half precision is not planned on CPU: the weights' own check (two copies while converting) refuses it.
    assert "only 0.0 GiB is available" in _error(_args(gpt2, tmp_path / "c", "0.9", 6, 100, "--dtype", "bf16"), capsys)
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


# ------------------------------------------------- refusals, case by case
def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (hidden ones too): relative path -> (mode, contents)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments and --out were checked")


def _with(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option`` set to ``value`` (replaced where ``argv`` has it, else added)."""
    argv = list(argv)
    if option in argv:
        argv[argv.index(option) + 1] = value
        return argv
    return [*argv, option, value]


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_out_holding_another_run_is_refused_both_ways(checkpoints, tmp_path, capsys):
    model, out = checkpoints["llama"], tmp_path / "out"
    assert main(_args(model, out, "0.5", 2)) == 0
    capsys.readouterr()
    before = _tree(out)
    argv = _args(model, out, "0.5", 2)
    # Without --resume: new targets, another task, seed or ablation, or the same run again.
    assert "already holds a run" in _error(_args(model, out, "0.9", 2), capsys)
    assert "already holds a run" in _error(_args(model, out, "0.9", 2, 100, "--seed", "1"), capsys)
    assert "already holds a run" in _error(_with(_args(model, out, "0.7", 2), "--task", "greater_than"), capsys)
    assert "already holds a run" in _error(_args(model, out, "0.7", 2, 100, "--ablation", "zero"), capsys)
    assert "already holds" in _error(argv, capsys)
    # With --resume: another seed, ablation or task is refused too.
    assert "seed = 0" in _error(_args(model, out, "0.5,0.9", 2, 100, "--resume", "--seed", "1"), capsys)
    assert "ablation = 'resample'" in _error(_args(model, out, "0.9", 2, 100, "--resume", "--ablation", "zero"),
                                              capsys)
    assert "task = 'ioi'" in _error(_with(argv, "--task", "gendered_pronoun") + ["--resume"], capsys)
    assert _tree(out) == before
    # Target folders of another run, without its run.json: finished results, then a checkpoint.
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    (foreign / "run.json").unlink()
    assert "already holds a run" in _error(_args(model, foreign, "0.9", 2), capsys)
    assert "seed = 0" in _error(_args(model, foreign, "0.5", 2, 100, "--resume", "--seed", "1"), capsys)
    (foreign / "target-0.5" / "metrics.json").unlink()
    assert "already holds a checkpoint" in _error(_args(model, foreign, "0.5", 2), capsys)
    assert "seed = '0'" in _error(_args(model, foreign, "0.5", 2, 100, "--resume", "--seed", "1"), capsys)
    assert not (foreign / "run.json").exists()
    # A folder holding only the run.json of a run killed before its first checkpoint.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_bytes((out / "run.json").read_bytes())
    assert "already holds a run" in _error(_args(model, killed, "0.5", 2), capsys)
    assert "seed = 0" in _error(_args(model, killed, "0.5", 2, 100, "--resume", "--seed", "3"), capsys)
    assert main(_args(model, killed, "0.5", 2, 100, "--resume")) == 0
    # The same run resumed with a new target: accepted, and the run.json lists both.
    assert main(_args(model, out, "0.5,0.9", 2, 100, "--resume")) == 0
    assert json.loads((out / "run.json").read_text())["targets"] == [0.5, 0.9]
    assert (out / "target-0.5" / "metrics.json").read_bytes() == before["target-0.5/metrics.json"][1]


def test_target_folders_are_exact_and_distinct(checkpoints, tmp_path, capsys):
    model, out = checkpoints["llama"], tmp_path / "out"
    assert main(_args(model, out, "0.9,0.9000001", 1)) == 0
    folders = sorted(out.glob("target-*"))
    assert [d.name for d in folders] == ["target-0.9", "target-0.9000001"]
    for d in folders:
        t = float(d.name.removeprefix("target-"))
        assert json.loads((d / "metrics.json").read_text())["target_edge_sparsity"] == t
    assert json.loads((out / "run.json").read_text())["targets"] == [0.9, 0.9000001]
    assert "twice" in _error(_args(model, tmp_path / "o2", "0.9,0.90"), capsys)
    assert "twice" in _error(_args(model, tmp_path / "o2", "0,-0.0"), capsys)

    from prune.cli import target_folder

    for t in (0.9, 0.9000001, 1.0, 0.0, 0.5, 1e-05, 0.1 + 0.2, 0.97, 1 - 2**-53, 5e-324):
        name = target_folder(t)
        assert name.startswith("target-") and float(name.removeprefix("target-")) == t
    assert target_folder(0.9) == "target-0.9" and target_folder(1.0) == "target-1"  # the names of earlier runs


def test_written_files_follow_the_umask(checkpoints, tmp_path):
    import stat

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    old = os.umask(0o027)
    try:
        # Everything `prune run` writes.
        out = tmp_path / "out"
        assert main(_args(checkpoints["llama"], out, "0.5,0.9", 1)) == 0
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {p.name for p in files} == {"run.json", "sweep.png", "checkpoint.safetensors", "circuit.json",
                                            "metrics.json", "circuit.png", "circuit.svg"}
        assert {str(p.relative_to(out)): mode(p) for p in files} == {str(p.relative_to(out)): 0o640 for p in files}
        # The helpers.
        from prune.files import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

        for umask, want in [(0o022, 0o644), (0o077, 0o600)]:
            os.umask(umask)
            d = tmp_path / f"u{umask:o}"
            atomic_write_bytes(d / "a.bin", b"\x00\x01")
            atomic_write_text(d / "b.txt", "text")
            atomic_write_json(d / "c.json", {"a": [1, 2]})
            atomic_write_json(d / "c.json", {"a": [1, 3]})  # replacing an existing file
            with atomic_path(d / "d.png") as tmp:
                tmp.write_bytes(b"png")
            with atomic_path(d / "e.st") as tmp:  # a writer that makes its own private file, as safetensors does
                tmp.unlink()
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
            assert (d / "a.bin").read_bytes() == b"\x00\x01" and (d / "b.txt").read_text() == "text"
            assert (d / "c.json").read_text() == json.dumps({"a": [1, 3]}, indent=1)
            assert {p.name: mode(p) for p in d.iterdir()} == dict.fromkeys(
                ["a.bin", "b.txt", "c.json", "d.png", "e.st"], want)
    finally:
        os.umask(old)


def test_unwritable_out_is_refused_before_the_model_loads(checkpoints, tmp_path, capsys, monkeypatch):
    model = checkpoints["gpt2"]
    monkeypatch.setattr(loaders, "from_hf", _no_model)
    (tmp_path / "loop").symlink_to("loop")
    assert "--out" in _error(_args(model, tmp_path / "loop"), capsys)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "out")
    assert "--out" in _error(_args(model, tmp_path / "dangling"), capsys)
    (tmp_path / "file").write_text("x")
    assert "--out" in _error(_args(model, tmp_path / "file" / "out"), capsys)
    assert "--out" in _error(_args(model, tmp_path / "loop" / "out"), capsys)
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / "existing").mkdir()
        ro.chmod(0o555)
        (ro / "existing").chmod(0o555)
        try:
            assert "--out" in _error(_args(model, ro / "out"), capsys)
            assert "--out" in _error(_args(model, ro / "existing"), capsys)
        finally:
            (ro / "existing").chmod(0o755)
            ro.chmod(0o755)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "loop"] + (
        ["ro"] if os.geteuid() != 0 else [])


def test_model_path_typo_is_refused_without_the_network(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    import transformers

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked for a model spec that is a local path")

    for target in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(target, "from_pretrained", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf").mkdir()
    for spec in ("hf/nothere", "./nothere", "a/b/c", "~/surely-not-a-model-folder-here", str(tmp_path / "x")):
        err = _error(_args(spec, tmp_path / "out"), capsys)
        assert f"no checkpoint folder at {spec!r}" in err and "check the path" in err
    assert not (tmp_path / "out").exists()


def test_broken_checkpoints_are_one_line_errors(checkpoints, tmp_path, capsys):
    # Weights cut in half.
    cut = _copy_checkpoint(checkpoints["gpt2"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = _error(_args(cut, tmp_path / "out"), capsys)
    assert str(cut / "model.safetensors") in err and "truncated" in err
    (cut / "model.safetensors").write_bytes(data[:5])  # not even a header
    assert str(cut / "model.safetensors") in _error(_args(cut, tmp_path / "out"), capsys)
    # config.json says n_embd 32, the weights are 16 wide.
    wide = _copy_checkpoint(checkpoints["gpt2"], tmp_path / "wide")
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "n_embd": 32}))
    err = _error(_args(wide, tmp_path / "out"), capsys)
    assert str(wide / "model.safetensors") in err and "(50257, 16)" in err and "(50257, 32)" in err
    # n_head 0, and other impossible sizes.
    for field, value in [("n_head", 0), ("n_layer", -1), ("n_embd", "16"), ("n_head", 3)]:
        (wide / "config.json").write_text(json.dumps({**config, field: value}))
        err = _error(_args(wide, tmp_path / "out"), capsys)
        assert str(wide / "config.json") in err and field in err, err
    assert not (tmp_path / "out").exists()


_BAD_ARGUMENTS = [
    (["--threads", "0"], "--threads"), (["--threads", "-2"], "--threads"), (["--threads", "two"], "--threads"),
    (["--n", "0"], "--n"), (["--steps", "0"], "--steps"), (["--batch-size", "0"], "--batch-size"),
    (["--checkpoint-every", "0"], "--checkpoint-every"), (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--target-edge-sparsity", "1.5"], "'1.5'"), (["--target-edge-sparsity", "-0.1"], "'-0.1'"),
    (["--target-edge-sparsity", "abc"], "'abc'"), (["--target-edge-sparsity", "nan"], "'nan'"),
    (["--target-edge-sparsity", ""], "--target-edge-sparsity"),
    (["--target-edge-sparsity", ","], "--target-edge-sparsity"),
    (["--target-edge-sparsity", "0.5,,0.9"], "--target-edge-sparsity"),
    (["--model", ""], "--model"), (["--out", ""], "--out"), (["--task", ""], "task"),
    (["--ablation", "half"], "--ablation"), (["--dtype", "fp8"], "--dtype"), (["--nope"], "--nope"),
]


@pytest.mark.parametrize("change, named", _BAD_ARGUMENTS, ids=[" ".join(c) or "empty" for c, _ in _BAD_ARGUMENTS])
def test_bad_arguments_are_refused_before_any_work(checkpoints, tmp_path, capsys, monkeypatch, change, named):
    monkeypatch.setattr(loaders, "from_hf", _no_model)
    argv = _args(checkpoints["gpt2"], tmp_path / "out")
    argv = _with(argv, *change) if len(change) == 2 else [*argv, *change]
    assert named in _error(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_argparse_errors_are_one_line(checkpoints, tmp_path, capsys):
    argv = _args(checkpoints["gpt2"], tmp_path / "out")
    err = _error([a for i, a in enumerate(argv) if i not in (1, 2)], capsys)  # no --model
    assert "--model" in err and err.rstrip().endswith("(see prune run --help)")
    assert "invalid choice" in _error(["walk"], capsys)
    assert _error([*argv, "--nope"], capsys).rstrip().endswith("unrecognized arguments: --nope (see prune run --help)")
    assert "--help" in _error([], capsys)
    assert main(["run", "--help"]) == 0
    assert "--target-edge-sparsity" in capsys.readouterr().out


def _refused_in_subprocesses(cases: list[tuple[list[str], list[Path], str]], timeout: float = 40) -> None:
    """Run each ``prune run`` argv as ``python -m prune.cli`` (concurrently) and check the contract:
    exit status 2, exactly one line ``error: ...`` on stderr naming ``expect``, no traceback, and the
    folders listed unchanged (files, modes and contents)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    before = [[_tree(f) for f in folders] for _, folders, _ in cases]
    procs = [subprocess.Popen([sys.executable, "-m", "prune.cli", *argv], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv, _, _ in cases]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for (argv, folders, expect), p, (out, err), trees in zip(cases, procs, results, before, strict=True):
        assert p.returncode == 2, (argv, p.returncode, err)
        assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
        assert expect in err and out == "", (err, out)
        assert [_tree(f) for f in folders] == trees


def test_weight_file_that_is_not_a_regular_file_is_refused(checkpoints, tmp_path):
    fifo = _copy_checkpoint(checkpoints["gpt2"], tmp_path / "fifo")
    (fifo / "model.safetensors").unlink()
    os.mkfifo(fifo / "model.safetensors")
    out = tmp_path / "out"
    _refused_in_subprocesses([(_args(fifo, out), [fifo, out], f"{fifo / 'model.safetensors'} is not a regular file")])
    assert not out.exists()


def test_refusals_in_a_subprocess_leave_no_trace(checkpoints, tmp_path):
    cut = _copy_checkpoint(checkpoints["llama"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "loop").symlink_to("loop")
    held = tmp_path / "held"
    (held / "target-0.5").mkdir(parents=True)
    (held / "target-0.5" / "checkpoint.safetensors").write_bytes(b"a checkpoint")
    (held / "run.json").write_text("{}")
    _refused_in_subprocesses([
        (_args(checkpoints["llama"], tmp_path / "loop"), [checkpoints["llama"]], "--out"),
        (_args(cut, tmp_path / "out"), [cut, tmp_path / "out"], "truncated"),
        (_args(checkpoints["llama"], held, "0.9"), [held, checkpoints["llama"]], "already holds a run"),
    ])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "warns"), [((), False), (("--recompute-reads",), True)])
def test_a_plan_close_to_the_memory_available_warns_by_the_measured_slack(checkpoints, tmp_path, monkeypatch,
                                                                            capsys, options, warns):
    # prune run warns when the plan times SLACK exceeds the memory available: the resident size with freed
    # memory kept exceeded the plan by up to 1.39x with the reader inputs kept and 1.56x recomputed
    # (bench/results/plan.md). With 1.5x the plan available, only the recomputing run is warned.
    from prune import plan

    planned = []
    real_plan = plan.plan_step
    monkeypatch.setattr(plan, "plan_step", lambda *a, **k: planned.append(real_plan(*a, **k)) or planned[-1])
    monkeypatch.setattr(loaders, "available_bytes", lambda: int(1.5 * planned[-1].total) if planned else 2**40)
    assert main(_args(checkpoints["llama"], tmp_path / "run", "0.9", 2, 100, "--no-draw", *options)) == 0
    assert planned and ("it may not fit" in capsys.readouterr().err) == warns


@pytest.mark.parametrize(("flag", "key"), [("--tie-kv", "tie_kv"), ("--recompute-reads", "recompute_reads")])
def test_tie_kv_and_recompute_reads_are_recorded_and_resume_only_as_themselves(checkpoints, tmp_path, flag, key):
    # --tie-kv: one gate per writer and key-value group (grouped-query attention); --recompute-reads: the
    # backward pass recomputes the reader inputs. Either is part of the run's configuration.
    from safetensors import safe_open

    out = tmp_path / "run"
    assert main(_args(checkpoints["llama"], out, "0.9", 4, 100, flag, "--no-draw")) == 0
    with safe_open(str(out / "target-0.9" / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["config"])[key] is True
    assert json.loads((out / "run.json").read_text())[key] is True
    # Resuming without the flag is another run: refused.
    (out / "target-0.9" / "circuit.json").unlink()
    (out / "target-0.9" / "metrics.json").unlink()
    assert main(_args(checkpoints["llama"], out, "0.9", 4, 100, "--resume", "--no-draw")) == 2
