"""``prune`` command line: Edge Pruning on a Hugging Face model and a generated task.

  prune run --model gpt2 --task ioi --target-edge-sparsity 0.96 --out DIR
  prune run --model ./my-llama --task boolean_expressions --target-edge-sparsity 0.98,0.99 --out DIR
  prune run ... --out DIR --resume          # after a kill: continue every target where it stopped

``--model`` is a local checkpoint folder or a hub name (where a network
exists). One run per target, with :func:`prune.edge_pruning.language_model_config`
(``--steps`` and ``--batch-size`` override its defaults). ``DIR/target-<t>/``
holds ``checkpoint.safetensors`` (the pruner's whole state, saved every
``--checkpoint-every`` steps and at the end, and kept), then ``circuit.json``
(EAP-IG) and ``metrics.json``. With several targets, ``DIR/sweep.png`` plots the
task metric against the edge count. ``DIR/run.json`` records the model, task,
data and training settings.

Resuming. ``--resume`` continues every target of an earlier run in ``DIR`` from
its checkpoint; the result is bit for bit that of an uninterrupted run with the
same arguments (same ``--threads`` too). A target with ``circuit.json`` and
``metrics.json`` is finished and skipped. A target with no checkpoint yet (the
run was killed before reaching it, or it is a new target) starts from step 0,
and the command says so. ``--resume`` on a ``DIR`` where no target has a
checkpoint or results is an error (nothing to resume: a mistyped ``--out``
should not silently start over), as is a checkpoint or ``run.json`` made with
other arguments. Without ``--resume``, a ``DIR`` that already holds a run is
refused rather than overwritten.

Every file is written to a temporary name and renamed into place, so a killed
run leaves only complete files; temporary files a kill left behind (named
``.<output>.*``) are removed when the next run into ``DIR`` starts. A lock on
``DIR`` keeps two runs from writing into it at once. Errors (unknown task or
model type, a missing or foreign checkpoint, a model too large for the memory
available, estimated before loading) are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["OUTPUTS", "circuit_metrics", "main", "remove_stale_temp_files"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

CHECKPOINT, CIRCUIT, METRICS, SWEEP, RUN = "checkpoint.safetensors", "circuit.json", "metrics.json", "sweep.png", "run.json"
OUTPUTS = (CHECKPOINT, CIRCUIT, METRICS, SWEEP, RUN)
# What must match for --resume to continue a run (targets may differ: new ones start fresh).
_RUN_KEYS = ("model", "task", "n", "seed", "ablation", "dtype", "steps", "batch_size")


class UsageError(Exception):
    """A problem with the arguments or the output folder: one line on stderr, exit status 2."""


def _write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files (``.<output>.*``) a killed run left in ``folder`` and its targets."""
    removed = []
    for d in [folder, *sorted(folder.glob("target-*"))]:
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.is_file() and any(f.name.startswith(f".{name}.") for name in OUTPUTS):
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def _lock(folder: Path):
    """An exclusive lock on the output folder for this process's lifetime (released on exit or kill)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(f"another prune run is writing into {folder}; wait for it or choose another --out") from None
    return fd


@torch.no_grad()
def circuit_metrics(model, task, circuit, ablation: str) -> dict:
    """KL, exact match with the full model, and the task's metrics, for the circuit and the full model."""
    from prune import tasks as T
    from prune.edge_pruning import faithfulness_loss
    from prune.evaluate import circuit_logits, full_logits

    ex = task.examples
    full = full_logits(model, ex, batch_size=16)
    logits = circuit_logits(model, ex, circuit.mask(), ablation, batch_size=16)
    out = {
        "edges": len(circuit),
        "edge_sparsity": 1 - len(circuit) / model.graph.n_edges,
        "kl": faithfulness_loss(logits, full, ex, ex.answer).mean().item(),
        "exact_match": ex.agree(logits, full).float().mean().item(),
    }
    metric = T.probability_difference if task.name == "greater_than" else T.logit_difference
    out[metric.__name__] = metric(logits, task)
    out[f"full_model_{metric.__name__}"] = metric(full, task)
    out["accuracy"] = T.accuracy(logits, task)
    out["full_model_accuracy"] = T.accuracy(full, task)
    return out


def _tokenizer_for(model_spec: str, model_type: str):
    from prune.tasks import gpt2_tokenizer

    if model_type == "gpt2":
        return gpt2_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_spec)
    except Exception as err:  # noqa: BLE001 (any failure: no tokenizer files, a broken one)
        raise UsageError(f"{model_spec} has no usable tokenizer ({type(err).__name__}: {err}); "
                         f"a {model_type} task needs the checkpoint's own tokenizer") from None


def _model_key(spec: str) -> str:
    """The model as recorded in run.json: a local folder's absolute path, else the hub name."""
    p = Path(os.path.expanduser(spec))
    return str(p.resolve()) if p.exists() else spec


def _state(run_dir: Path) -> str:
    """``"finished"``, ``"checkpoint"`` or ``"empty"``."""
    if (run_dir / CIRCUIT).is_file() and (run_dir / METRICS).is_file():
        return "finished"
    return "checkpoint" if (run_dir / CHECKPOINT).is_file() else "empty"


def _check_out_dir(args, run_dirs: list[Path], record: dict) -> list[str]:
    """Refuse what cannot be started or resumed, before anything is loaded; the state of each target."""
    states = [_state(d) if d.is_dir() else "empty" for d in run_dirs]
    if not args.resume:
        busy = [(d, s) for d, s in zip(run_dirs, states) if s != "empty"]
        if busy:
            d, s = busy[0]
            what = "finished results" if s == "finished" else f"a checkpoint ({CHECKPOINT})"
            raise UsageError(f"{d} already holds {what}; pass --resume to continue that run, or choose another --out")
        return states
    if all(s == "empty" for s in states):
        raise UsageError(
            f"nothing to resume in {args.out}: no target ({', '.join(d.name for d in run_dirs)}) has a {CHECKPOINT} "
            f"or finished results; run without --resume to start")
    run_file = args.out / RUN
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{run_file} is unreadable ({err}); it records the run to resume") from None
        for key in _RUN_KEYS:
            if key in old and old[key] != record[key]:
                raise UsageError(
                    f"{args.out} holds a run with {key} = {old[key]!r}, but this command has {record[key]!r}; "
                    f"resume with the same arguments, or choose another --out")
    return states


def cmd_run(args) -> int:
    from prune.edge_pruning import language_model_config
    from prune.tasks import TASKS

    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be a positive number of steps, got {args.checkpoint_every}")
    try:
        targets = [float(t) for t in args.target_edge_sparsity.split(",")]
        configs = [language_model_config(t, steps=args.steps, batch_size=args.batch_size) for t in targets]
    except ValueError as err:
        raise UsageError(f"{err}") from None
    if len(set(targets)) != len(targets):
        raise UsageError(f"--target-edge-sparsity lists a target twice: {args.target_edge_sparsity}")
    run_dirs = [args.out / f"target-{t:g}" for t in targets]
    record = {"model": _model_key(args.model), "task": args.task, "n": args.n, "seed": args.seed,
              "ablation": args.ablation, "dtype": args.dtype, "steps": args.steps, "batch_size": args.batch_size}
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    _check_out_dir(args, run_dirs, record)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = _lock(args.out)
    try:
        return _run(args, targets, configs, run_dirs, record)
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock


def _run(args, targets, configs, run_dirs, record) -> int:
    from prune import loaders
    from prune.edge_pruning import CheckpointError, EdgePruner
    from prune.tasks import make_task

    states = [_state(d) if d.is_dir() else "empty" for d in run_dirs]  # again, under the lock
    for f in remove_stale_temp_files(args.out):
        print(f"removed {f}, a temporary file left by an interrupted run", file=sys.stderr)
    torch.set_num_threads(args.threads)

    summary: list[dict | None] = [None] * len(targets)
    for i, (run_dir, state) in enumerate(zip(run_dirs, states)):
        if state == "finished":
            summary[i] = json.loads((run_dir / METRICS).read_text())
            print(f"target {targets[i]:g}: finished earlier, skipped ({run_dir / METRICS})", file=sys.stderr)
    if all(m is not None for m in summary):
        if len(summary) > 1:
            _plot(summary, args.out / SWEEP)
        return 0

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" and the like
    try:
        model = loaders.from_hf(args.model, dtype=_DTYPES[args.dtype])
        model_type = loaders.model_type_of(args.model)
    except (FileNotFoundError, ValueError, MemoryError, NotImplementedError, OSError) as err:
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    try:
        task = make_task(args.task, _tokenizer_for(args.model, model_type), args.n, args.seed)
    except ValueError as err:
        raise UsageError(f"cannot make task {args.task!r} for {args.model!r}: {err}") from None
    old_record = json.loads((args.out / RUN).read_text()) if (args.out / RUN).is_file() else {}
    _write_json(args.out / RUN, {**old_record, **record, "targets": sorted({*old_record.get("targets", []), *targets})})

    for i, (cfg, run_dir, state) in enumerate(zip(configs, run_dirs, states)):
        if summary[i] is not None:
            continue
        run_dir.mkdir(exist_ok=True)
        checkpoint = run_dir / CHECKPOINT
        pruner = EdgePruner(model, task.examples, ablation=args.ablation, seed=args.seed, config=cfg,
                            model_name=str(args.model))
        where = f"target {cfg.target_sparsity:g} ({i + 1}/{len(targets)})"
        if state == "checkpoint":
            try:
                pruner.load(checkpoint)
            except CheckpointError as err:
                raise UsageError(str(err)) from None
            print(f"{where}: resuming from step {pruner.step_index}/{cfg.steps} ({checkpoint})", file=sys.stderr)
        elif args.resume:
            print(f"{where}: no checkpoint in {run_dir}; starting this target from step 0", file=sys.stderr)
        elif not args.quiet:
            print(f"{where}: {cfg.steps} steps, checkpoint every {args.checkpoint_every} in {checkpoint}",
                  file=sys.stderr)
        try:
            pruner.run(quiet=args.quiet, checkpoint=checkpoint, every=args.checkpoint_every)
        except FloatingPointError as err:
            raise UsageError(str(err)) from None
        circuit = pruner.circuit()
        circuit.save(run_dir / CIRCUIT)
        metrics = {"target_edge_sparsity": cfg.target_sparsity, "task": args.task, "ablation": args.ablation,
                   "seed": args.seed, "steps": cfg.steps,
                   **circuit_metrics(model, task, circuit, args.ablation)}
        _write_json(run_dir / METRICS, metrics)
        summary[i] = metrics
        print(json.dumps(metrics), flush=True)
    if len(summary) > 1:
        _plot(summary, args.out / SWEEP)
    return 0


def _plot(summary, path: Path) -> None:
    import matplotlib

    from prune.files import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "probability_difference" if "probability_difference" in summary[0] else "logit_difference"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = sorted((m["edges"], m[key]) for m in summary)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="circuit")
    ax.axhline(summary[0][f"full_model_{key}"], color="gray", ls="--", label="full model")
    ax.set_xscale("log")
    ax.set_xlabel("edges in circuit")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(f"{summary[0]['task']}: {key.replace('_', ' ')} vs edges")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="Edge Pruning on a Hugging Face model and a task")
    p.add_argument("--model", required=True, help="local checkpoint folder or hub name")
    p.add_argument("--task", required=True)
    p.add_argument("--target-edge-sparsity", required=True, help="one target in [0, 1], or several, comma-separated")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200, help="examples")
    p.add_argument("--steps", type=int, default=3000, help="training steps per target")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ablation", default="resample", choices=["zero", "mean", "resample"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", choices=list(_DTYPES))
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="save DIR/target-<t>/checkpoint.safetensors every N steps (and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints; finished targets are skipped")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (resume with the same number)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue from the last checkpoint with the same command and --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
