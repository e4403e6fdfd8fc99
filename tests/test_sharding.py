"""Edge Pruning sharded with FSDP over 2 CPU processes (gloo), through ``prune run --nproc 2``.

The same tiny random GPT-2 and grouped-query Llama checkpoints as
tests/test_cli_run.py. Every sharded run is a real one: torchrun's launcher
starts two ranks; rank 0 loads the checkpoint, both shard it with
``torch.distributed.fsdp.fully_shard`` (rank 1 receives its shard from rank 0) and
each trains its own half of the examples.

Tolerance. A sharded run sums the same float32 terms in another order (each
rank sums its own examples' losses, and one all-reduce adds the two), so its
log-alphas differ from one process's by rounding carried through Adam. We
allow 1e-3, a hundredth of one step of the learning rate (0.1): measured,
the difference after 60 steps is 1.5e-5 (Llama) and 5e-7 (GPT-2). Any real
error in the sharded gradient (a rank's examples missing, the Lagrangian term
counted twice, ranks taking different steps) moves log-alphas by a sizeable
fraction of a step on every step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_cli_run import _args, _checkpoint_step, _temp_files, checkpoints, wait_for_checkpoint  # noqa: F401 (checkpoints: a fixture)

from prune.cli import main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
STEPS = 60
TOLERANCE = 1e-3  # on log-alphas: the module docstring says why
# (model, ablation, target, options): each ablation once; the tiny models keep a non-empty circuit at these
# targets. --recompute-reads once, on a layer norm: its backward needs the norm's weights gathered.
CASES = [("gpt2", "zero", "0.5", ()), ("llama", "resample", "0.9", ()), ("llama", "mean", "0.9", ()),
         ("gpt2", "zero", "0.5", ("--recompute-reads",))]


def _prune(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prune.cli", *argv], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=timeout)


def _edges(run_dir: Path) -> set[str]:
    edges = json.loads((run_dir / "circuit.json").read_text())["edges"]
    return {name for name, e in edges.items() if e["in_graph"]}


def _ranks(path: Path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["ranks"]


@pytest.mark.parametrize(("arch", "ablation", "target", "options"), CASES)
def test_two_ranks_give_the_log_alphas_and_circuit_of_one_process(checkpoints, arch, ablation, target,  # noqa: F811
                                                                  options, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(checkpoints[arch], one, target, STEPS, 20, "--no-draw", "--ablation", ablation, *options)) == 0
    done = _prune(*_args(checkpoints[arch], two, target, STEPS, 20, "--no-draw", "--ablation", ablation, *options,
                         "--nproc", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    run_one, run_two = one / f"target-{target}", two / f"target-{target}"
    a, b = load_file(run_one / "checkpoint.safetensors"), load_file(run_two / "checkpoint.safetensors")
    assert _ranks(run_one / "checkpoint.safetensors") == "1" and _ranks(run_two / "checkpoint.safetensors") == "2"
    assert torch.equal(a["generator"], b["generator"])  # the same batches and gates were drawn
    assert (a["log_alpha"] - b["log_alpha"]).abs().max().item() <= TOLERANCE
    # The circuit is not decided by rounding: no kept gate sits within the tolerance of the threshold.
    assert (a["log_alpha"].abs() > TOLERANCE).all()
    assert _edges(run_one) == _edges(run_two) and 0 < len(_edges(run_one)) < len(a["log_alpha"])
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (run_one, run_two))
    assert m1["edges"] == m2["edges"] and m1["kl"] == pytest.approx(m2["kl"], abs=1e-5)
    assert json.loads(done.stdout.strip().splitlines()[-1])["edges"] == m2["edges"]  # rank 0 alone printed it


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of ``rank`` among the launcher's child processes (from their environment), or None yet."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
    return None


def test_a_killed_rank_stops_the_run_and_resuming_equals_an_uninterrupted_run(checkpoints, tmp_path):  # noqa: F811
    model, killed, whole = checkpoints["llama"], tmp_path / "killed", tmp_path / "whole"
    checkpoint = killed / "target-0.9" / "checkpoint.safetensors"
    argv = _args(model, killed, "0.9", STEPS, 2, "--no-draw", "--nproc", "2")
    proc = subprocess.Popen([sys.executable, "-m", "prune.cli", *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(proc, checkpoint, 180)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None, "rank 1 is not a child of the launcher"
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: rank 1 of 2 was killed by signal 9, and the launcher stopped the others; each "
                      f"target's last checkpoint in {killed} is intact: continue with the same command and --resume"]
    assert "Traceback" not in stderr
    assert 0 < _checkpoint_step(checkpoint) < STEPS, "the kill must land mid-run"
    assert not (checkpoint.parent / "circuit.json").exists()

    resumed = _prune(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    straight = _prune(*_args(model, whole, "0.9", STEPS, 2, "--no-draw", "--nproc", "2"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_file(killed / "target-0.9" / "checkpoint.safetensors")
    b = load_file(whole / "target-0.9" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert json.loads((killed / "target-0.9" / "circuit.json").read_text())["edges"] == \
        json.loads((whole / "target-0.9" / "circuit.json").read_text())["edges"]
    assert _temp_files(killed) == [] and _temp_files(whole) == []


def test_ctrl_c_stops_every_rank_with_one_line_and_the_run_resumes(checkpoints, tmp_path):  # noqa: F811
    # Ctrl-C in a terminal signals the whole foreground process group: the launcher and both ranks.
    model, out = checkpoints["llama"], tmp_path / "interrupted"
    checkpoint = out / "target-0.9" / "checkpoint.safetensors"
    argv = _args(model, out, "0.9", STEPS, 2, "--no-draw", "--nproc", "2")
    proc = subprocess.Popen([sys.executable, "-m", "prune.cli", *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_checkpoint(proc, checkpoint, 180)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert stderr.splitlines() == ["interrupted; continue from the last checkpoint with the same command and --resume"]
    assert 0 < _checkpoint_step(checkpoint) < STEPS and _temp_files(out) == []
    resumed = _prune(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr and (checkpoint.parent / "circuit.json").is_file()


def test_a_checkpoint_of_another_rank_count_is_refused_both_ways(checkpoints, tmp_path, capsys):  # noqa: F811
    model = checkpoints["llama"]
    for written, resumed in ((2, 1), (1, 2)):
        out = tmp_path / f"ranks-{written}"
        argv = _args(model, out, "0.9", 4, 2, "--no-draw", "--nproc", str(written))
        assert (main(argv) if written == 1 else _prune(*argv).returncode) == 0
        for name in ("circuit.json", "metrics.json"):  # unfinished: only the checkpoint is left
            (out / "target-0.9" / name).unlink()
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        again = _args(model, out, "0.9", 4, 2, "--no-draw", "--nproc", str(resumed), "--resume")
        if resumed == 1:
            capsys.readouterr()
            assert main(again) == 2
            err = capsys.readouterr().err
        else:
            done = _prune(*again)
            assert done.returncode == 2
            err = done.stderr
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert f"was written by a run over {written} rank(s), but this run has {resumed}" in errors[0]
        assert f"--nproc {written}" in errors[0]
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing changed


def test_examples_that_do_not_split_over_the_ranks_are_refused_before_launching(checkpoints, tmp_path,  # noqa: F811
                                                                               capsys):
    out = tmp_path / "out"
    argv = _args(checkpoints["llama"], out, "0.9", 4, 2, "--nproc", "3")  # --n 8 over 3 ranks
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: --n 8 examples do not split evenly over 3 ranks (each rank holds its own share); " \
                  "use a multiple of 3\n"
    assert not out.exists()


def test_sharding_needs_the_process_group():
    from conftest import random_model
    from prune.model import TransformerConfig
    from prune.sharding import shard

    cfg = TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_head=4, d_mlp=4, n_positions=4)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        shard(random_model(cfg, 0))


_LOAD_SHARDED = """
import sys
import torch
from prune import loaders, sharding

rank, ranks = sharding.init_from_environment()
if rank != 0:  # only rank 0 may read the weights: any other rank doing so fails the test
    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {rank} read the weights")
    loaders._load_weights = refuse
model = sharding.load_sharded(sys.argv[1], dtype=torch.float32)
local = {name: p.to_local() for name, p in model.named_parameters()}
whole = sharding.full_state_dict(model)
if rank == 0:
    want = loaders.from_hf(sys.argv[1]).state_dict()
    assert set(whole) == set(want), sorted(set(whole) ^ set(want))
    bad = [k for k in want if not torch.equal(whole[k], want[k])]
    assert not bad, bad
total = sum(v.numel() for v in want.values()) if rank == 0 else 0
held = sum(v.numel() for v in local.values())
assert not any(p.requires_grad for p in model.parameters()) and not model.training
print(f"rank {rank}: holds {held} weights" + (f" of {total}" if rank == 0 else ""), flush=True)
"""


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sharded_loading_reads_the_weights_on_rank_0_only_and_gives_every_weight(checkpoints, arch,  # noqa: F811
                                                                                   tmp_path):
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SHARDED)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(checkpoints[arch])], capture_output=True, text=True, env=ENV, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    held = {int(line.split()[1].rstrip(":")): int(line.split()[3]) for line in out.stdout.splitlines()
            if line.startswith("rank ")}
    total = int(next(line for line in out.stdout.splitlines() if line.startswith("rank 0")).split()[-1])
    assert sorted(held) == [0, 1] and sum(held.values()) == total  # two disjoint shards, every weight once
    assert max(held.values()) < total
