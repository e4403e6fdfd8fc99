"""``prune`` command line: Edge Pruning on a Hugging Face model and a generated task.

  prune run --model gpt2 --task ioi --target-edge-sparsity 0.96 --out DIR
  prune run --model ./my-llama --task boolean_expressions --target-edge-sparsity 0.98,0.99 --out DIR
  prune run ... --out DIR --resume          # after a kill: continue every target where it stopped
  prune run ... --out DIR --nproc 2         # 2 ranks under torchrun: FSDP-sharded weights, data parallel
  prune transcode --model ./my-gpt2 --task ioi --out DIR   # transcoders on its MLPs (docs/transcoders.md)

``--model`` is a local checkpoint folder or a hub name (where a network
exists). One run per target, with :func:`prune.edge_pruning.language_model_config`
(``--steps`` and ``--batch-size`` override its defaults). ``DIR/target-<t>/``
(``<t>`` the target as written by ``:g`` where that reads back as exactly the
target, else its ``repr``: ``target-0.9``, ``target-0.9000001``, ``target-1``)
holds ``checkpoint.safetensors`` (the pruner's whole state, saved every
``--checkpoint-every`` steps and at the end, and kept), then the circuit's drawing
``circuit.png`` and ``circuit.svg`` (:mod:`prune.draw`; not with ``--no-draw``),
``circuit.json`` (EAP-IG; found under ``--conventions``, ours by default or EAP-IG's
and MIB's, docs/conventions.md) and ``metrics.json``. With several targets, ``DIR/sweep.png`` plots the
task metric against the edge count. ``DIR/run.json`` records the model, task,
data and training settings.

Resuming. ``--resume`` continues every target of an earlier run in ``DIR`` from
its checkpoint; the result is bit for bit that of an uninterrupted run with the
same arguments (same ``--threads`` too). A target with ``circuit.json`` and
``metrics.json`` is finished and skipped. A target with no checkpoint yet (the
run was killed before reaching it, or it is a new target) starts from step 0,
and the command says so. ``--resume`` on a ``DIR`` that holds no run (no
``run.json`` and no checkpoint or results of the targets named) is an error
(nothing to resume: a mistyped ``--out`` should not silently start over), as is
a checkpoint, results or a ``run.json`` made with other arguments. Without
``--resume``, a ``DIR`` that already holds a run (a ``run.json``, or any
``target-*`` folder with a checkpoint or results) is refused rather than
overwritten or mixed with another run: new targets join a run with ``--resume``.

Sharding. ``--nproc N`` starts N ranks of the same command with torchrun's
launcher (:mod:`prune.sharding`; or start them with ``torchrun --standalone
--nproc-per-node N -m prune.cli run ...``): rank 0 loads the model and every
rank keeps its FSDP share of the weights (:func:`prune.sharding.load_sharded`),
trains on its own ``--n / N`` examples, and holds the same masks; rank 0 alone writes and prints. ``--n`` must be a
multiple of N, and a checkpoint resumes only with the number of ranks that
wrote it. When a rank dies the others are stopped and the command says which
rank failed (exit status 1); the checkpoints are intact, for ``--resume``.

Every file is written to a temporary name and renamed into place
(:mod:`prune.files`; modes follow the umask), so a killed run leaves only
complete files; temporary files a kill left behind (named
``.<output>.*``) are removed when the next run into ``DIR`` starts. A lock on
``DIR`` keeps two runs from writing into it at once. Errors are one line
``error: ...`` on stderr and exit status 2, with nothing written: the
arguments, the model folder (a path that names no folder is refused without
asking the hub) and ``--out`` (it must be creatable and writable) are checked
before the model loads; then an unknown model type, a broken or truncated
checkpoint, weights that do not fit config.json, or a model too large for the
memory available (estimated before loading).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

from prune import sharding
from prune._cli import (
    ArgumentParser,
    nonempty,
    parse_fractions,
    parse_int,
    positive_int,
    print_refusal,
    random_seed,
    run_command,
)
from prune.allocator import keep_freed_memory
from prune.files import atomic_write_json, check_writable_folder, read_json
from prune.graph import CONVENTIONS

__all__ = ["OUTPUTS", "circuit_metrics", "main", "remove_stale_temp_files", "target_folder"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

CHECKPOINT, CIRCUIT, METRICS, SWEEP, RUN = (
    "checkpoint.safetensors", "circuit.json", "metrics.json", "sweep.png", "run.json")
DRAWING = "circuit"  # the circuit's drawing, circuit.png and circuit.svg (prune.draw)
OUTPUTS = (CHECKPOINT, CIRCUIT, METRICS, SWEEP, RUN, f"{DRAWING}.png", f"{DRAWING}.svg")
# What must match for --resume to continue a run (targets may differ: new ones start fresh).
_RUN_KEYS = ("model", "task", "n", "seed", "ablation", "dtype", "steps", "batch_size", "conventions", "tie_kv",
             "recompute_reads")
# What a finished target's metrics.json records of its run (and must match to be skipped on --resume).
_METRICS_KEYS = ("task", "ablation", "seed", "steps", "conventions")
MAX_THREADS = 1024


class UsageError(Exception):
    """A problem with the arguments or the output folder: one line on stderr, exit status 2."""


def target_folder(target: float) -> str:
    """``target-<t>``: ``<t>`` is ``f"{target:g}"`` where that reads back as exactly ``target``
    (``target-0.9``, ``target-1``: the names earlier runs used), else ``repr(target)``
    (``target-0.9000001``), so that distinct targets never share a folder."""
    target = float(target) + 0.0  # -0.0 -> 0.0
    short = f"{target:g}"
    return f"target-{short if float(short) == target else repr(target)}"


def _shown(target: float) -> str:
    return target_folder(target).removeprefix("target-")


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
    from prune.evaluate import Evaluator, faithfulness_loss

    ex = task.examples
    evaluator = Evaluator(model, ex, ablation, batch_size=16)
    full, logits = evaluator.reference, evaluator.logits(circuit.mask())
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
    """The checkpoint folder's own tokenizer where it has one; else GPT-2's for a GPT-2 model."""
    from prune.loaders import has_tokenizer
    from prune.tasks import gpt2_tokenizer

    if model_type == "gpt2" and not has_tokenizer(model_spec):
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


def _read_json(path: Path, what: str) -> dict:
    return read_json(path, UsageError, fix=f"it records {what}: restore it, or choose another --out")


def _check_out_dir(args, targets: list[float], run_dirs: list[Path], record: dict) -> list[str]:
    """Refuse what cannot be started or resumed, before anything is loaded or written; the state of each target.

    Without ``--resume`` ``--out`` must hold no run at all: no ``run.json`` and no
    ``target-*`` folder with a checkpoint or results (this command's targets or
    others). With ``--resume`` the run it holds must be this one: ``run.json``
    and the finished targets' ``metrics.json`` must record the same arguments
    (checkpoints are checked against the run when they load).
    """
    out = args.out
    for d in run_dirs:
        if os.path.lexists(d) and not d.is_dir():
            raise UsageError(f"{d} is not a folder; move it away, or choose another --out")
    states = [_state(d) if d.is_dir() else "empty" for d in run_dirs]
    run_file = out / RUN
    has_record = os.path.lexists(run_file)
    if not args.resume:
        busy = [(d, s) for d, s in zip(run_dirs, states, strict=True) if s != "empty"]
        if out.is_dir():
            busy += [(d, _state(d)) for d in sorted(out.glob("target-*"))
                     if d not in run_dirs and d.is_dir() and _state(d) != "empty"]
        if busy and busy[0][0] in run_dirs:
            d, s = busy[0]
            what = "finished results" if s == "finished" else f"a checkpoint ({CHECKPOINT})"
            raise UsageError(f"{d} already holds {what}; pass --resume to continue that run, or choose another --out")
        if has_record or busy:
            held = run_file if has_record else (
                f"{busy[0][0]} has {'results' if busy[0][1] == 'finished' else 'a checkpoint'}")
            raise UsageError(f"{out} already holds a run ({held}); pass --resume with that run's arguments to continue "
                             f"it (new targets join it so), or choose another --out")
        return states
    if all(s == "empty" for s in states) and not has_record:
        raise UsageError(
            f"nothing to resume in {out}: no {RUN}, and no target ({', '.join(d.name for d in run_dirs)}) has a "
            f"{CHECKPOINT} or finished results; run without --resume to start")
    if has_record:
        old = _read_json(run_file, "the run to resume")
        for key in _RUN_KEYS:
            if key in old and old[key] != record[key]:
                raise UsageError(
                    f"{out} holds a run with {key} = {old[key]!r}, but this command has {record[key]!r}; "
                    f"resume with the same arguments, or choose another --out")
    for t, d, s in zip(targets, run_dirs, states, strict=True):
        if s == "checkpoint":
            _check_checkpoint(d / CHECKPOINT)
        if s != "finished":
            continue
        metrics = _read_json(d / METRICS, f"target {_shown(t)}'s results")
        want = {**{k: record[k] for k in _METRICS_KEYS}, "target_edge_sparsity": t}
        for key, value in want.items():
            if key in metrics and metrics[key] != value:
                raise UsageError(
                    f"{d / METRICS} holds results with {key} = {metrics[key]!r}, but this command has {value!r}; "
                    f"resume with the same arguments, or choose another --out")
    return states


def _check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint to resume that is unreadable or no Edge Pruning checkpoint, reading its header only
    (before the model loads and anything is written); whether it is of this run is checked when it loads."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        raise UsageError(f"{path} is not a readable safetensors checkpoint: {err}; delete it to start that "
                         f"target afresh, or choose another --out") from None
    if not str(meta.get("format", "")).startswith("edge-pruning-checkpoint/"):
        raise UsageError(f"{path} is not an Edge Pruning checkpoint (format {meta.get('format')!r}); delete it "
                         f"to start that target afresh, or choose another --out")


def _make_out_dir(out: Path) -> list[Path]:
    """Create ``out`` and check that it takes files (a probe written and deleted); the folders created.

    Before the model loads: a ``--out`` that cannot hold the results is refused
    at once, not after minutes of loading.
    """
    if os.path.islink(out) and not out.exists():
        raise UsageError(f"--out {out} is a link to nothing (or a loop of links); choose a folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder")
    created, p = [], out
    while not os.path.lexists(p) and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=f".{RUN}.", suffix=".probe")  # removed as stale if killed
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        _remove_empty(created)
        raise UsageError(f"cannot write into --out {out}: {err.strerror or err}"
                         f"{f' ({err.filename})' if err.filename and str(err.filename) != str(out) else ''}; "
                         f"choose a folder you can create and write to") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) this command created, as long as they are still empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def _check_model(spec: str) -> None:
    """Refuse a ``--model`` that names a local path but no checkpoint folder, without the network."""
    from prune import loaders

    try:
        loaders._local_folder(spec)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(f"--model: {err}") from None


def _check_trained_on(spec: str, task: str) -> None:
    """Refuse a task that a model shipped with its training record (``training.json``) was not trained on."""
    from prune import loaders

    try:
        trained = loaders.trained_tasks(spec)
    except ValueError as err:
        raise UsageError(f"--model: {err}") from None
    if trained is not None and task not in trained:
        raise UsageError(f"--task {task}: {spec} was trained on {', '.join(trained)} only (its training.json); "
                         f"choose one of those, or a model that has learned {task}")


def cmd_run(args) -> int:
    from prune.edge_pruning import language_model_config
    from prune.tasks import TASKS

    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    try:
        targets = parse_fractions(args.target_edge_sparsity, "--target-edge-sparsity")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if len(set(targets)) != len(targets):
        raise UsageError(f"--target-edge-sparsity lists a target twice: {args.target_edge_sparsity}")
    names = [target_folder(t) for t in targets]
    if len(set(names)) != len(names):  # cannot happen (the names read back exactly); never share a folder
        raise UsageError(f"--target-edge-sparsity {args.target_edge_sparsity}: two targets would share a folder")
    try:
        configs = [language_model_config(t, steps=args.steps, batch_size=args.batch_size, tie_kv=args.tie_kv,
                                         recompute_reads=args.recompute_reads) for t in targets]
    except ValueError as err:
        raise UsageError(f"{err}") from None
    _check_model(args.model)
    _check_trained_on(args.model, args.task)
    run_dirs = [args.out / name for name in names]
    record = {"model": _model_key(args.model), "task": args.task, "n": args.n, "seed": args.seed,
              "ablation": args.ablation, "dtype": args.dtype, "steps": args.steps, "batch_size": args.batch_size,
              "conventions": args.conventions, "tie_kv": args.tie_kv, "recompute_reads": args.recompute_reads}
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    if not args.no_draw:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("drawing the circuits needs matplotlib (the plot extra: pip install -e '.[plot]'); "
                             "or pass --no-draw") from None
    rank_of_many = sharding.launched_by_torchrun()
    ranks = int(os.environ["WORLD_SIZE"]) if rank_of_many else args.nproc
    if rank_of_many and args.nproc not in (1, ranks):
        raise UsageError(f"--nproc {args.nproc}, but torchrun started {ranks} ranks; give the same number, or "
                         f"leave --nproc out under torchrun")
    if args.n % ranks:
        raise UsageError(f"--n {args.n} examples do not split evenly over {ranks} ranks (each rank holds its own "
                         f"share); use a multiple of {ranks}")
    _check_out_dir(args, targets, run_dirs, record)
    if rank_of_many:
        return _run_as_rank(args, targets, configs, run_dirs, record)
    created = _make_out_dir(args.out)
    try:
        lock = _lock(args.out)
        try:
            states = _check_out_dir(args, targets, run_dirs, record)  # again, under the lock
            if args.nproc > 1:
                return _launch(args)
            return _run(args, targets, configs, run_dirs, states, record)
        finally:
            if lock is not None:
                os.close(lock)  # releases the lock
    except BaseException:
        _remove_empty(created)  # refused before writing anything: leave no empty --out behind
        raise


_LOCK_HELD = "PRUNE_RUN_LOCK_HELD"  # set by `prune run --nproc N` for its ranks: it holds --out's lock


def _launch(args) -> int:
    """``--nproc N``: the same command as N ranks under torchrun's launcher; this process holds the lock."""
    failed = sharding.launch(args.argv, args.nproc, threads=args.threads, env={_LOCK_HELD: "1"})
    if not failed:
        return 0
    if next(iter(failed.values())) == 2:  # refused: rank 0 has said why, in one line, before any rank exited
        return 2
    rank, code = next(iter(failed.items()))  # the first to fail
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    sys.stderr.write(f"error: rank {rank} of {args.nproc} {how}, and the launcher stopped the others; each target's "
                     f"last checkpoint in {args.out} is intact: continue with the same command and --resume\n")
    return 1


# What gloo and NCCL say in a collective whose peer has died (there is no exception class for it).
_LOST_RANK = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


def _lost_a_rank(err: RuntimeError) -> bool:
    return any(text in str(err) for text in _LOST_RANK)


def _run_as_rank(args, targets, configs, run_dirs, record) -> int:
    """One rank of a sharded run (started by torchrun): every rank computes, rank 0 alone writes and speaks.
    A refusal is reported by rank 0 (every rank meets the same one); the others exit 2 silently."""
    import torch.distributed as dist

    rank, _ = sharding.init_from_environment()
    lock, created = None, []
    try:
        try:
            if rank == 0 and not os.environ.get(_LOCK_HELD):  # started by torchrun directly
                created = _make_out_dir(args.out)
                lock = _lock(args.out)
            states = _check_out_dir(args, targets, run_dirs, record)
            dist.barrier()  # every rank has read --out before rank 0 writes into it
            return _run(args, targets, configs, run_dirs, states, record, rank=rank)
        except UsageError as err:
            if rank == 0:
                _remove_empty(created)
                print_refusal(err)  # now: once a rank exits, the launcher stops the others
            # Every rank meets the same refusal, at its own pace (rank 0 loads the weights, the others do not):
            # none exits before rank 0 has said why.
            dist.barrier()
            return 2
        except RuntimeError as err:
            if _lost_a_rank(err):  # another rank died mid-collective: the launcher names it, in one line
                return 3
            raise
        except KeyboardInterrupt:  # Ctrl-C reaches every rank: under `--nproc` the launcher alone says so
            if rank == 0 and not os.environ.get(_LOCK_HELD):
                raise
            # Out at once, past the process group's teardown: with a collective in flight it can abort in
            # C++ on the way out ("terminate called without an active exception" on stderr, seen once in
            # tests/test_sharding.py under load). Nothing is left to write: checkpoints are atomic.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
    finally:
        if lock is not None:
            os.close(lock)
        dist.destroy_process_group()


def _run(args, targets, configs, run_dirs, states, record, rank: int = 0) -> int:
    """Every target in turn; ``rank`` > 0: one rank of a sharded run, which computes but writes and says nothing."""
    from prune import loaders
    from prune.edge_pruning import CheckpointError, EdgePruner
    from prune.tasks import make_task

    keep_freed_memory()  # before the model loads: every step reuses the last one's pages (prune.allocator)
    lead = rank == 0
    if lead:
        for f in remove_stale_temp_files(args.out):
            print(f"removed {f}, a temporary file left by an interrupted run", file=sys.stderr)
    torch.set_num_threads(args.threads)

    summary: list[dict | None] = [None] * len(targets)
    for i, (run_dir, state) in enumerate(zip(run_dirs, states, strict=True)):
        if state == "finished":
            summary[i] = json.loads((run_dir / METRICS).read_text())
            if lead:
                print(f"target {_shown(targets[i])}: finished earlier, skipped ({run_dir / METRICS})", file=sys.stderr)
                if not args.no_draw and not (run_dir / f"{DRAWING}.png").is_file():  # finished under --no-draw
                    _draw(run_dir)
    if all(m is not None for m in summary):
        if len(summary) > 1 and lead:
            _plot(summary, args.out / SWEEP)
        return 0

    if args.quiet or not lead:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" and the like
    try:
        model_type = loaders.model_type_of(args.model)
    except (FileNotFoundError, ValueError, NotImplementedError, OSError) as err:
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    try:  # the task needs the tokenizer only: made first, so that its length enters the memory plan
        task = make_task(args.task, _tokenizer_for(args.model, model_type), args.n, args.seed)
    except ValueError as err:
        raise UsageError(f"cannot make task {args.task!r} for {args.model!r}: {err}") from None
    _check_plan(args, task)
    try:
        if sharding.launched_by_torchrun():  # rank 0 loads; each rank keeps its share (the others never hold more)
            model = sharding.load_sharded(args.model, dtype=_DTYPES[args.dtype], conventions=args.conventions)
        else:
            model = loaders.from_hf(args.model, dtype=_DTYPES[args.dtype]).with_conventions(args.conventions)
    except (FileNotFoundError, ValueError, MemoryError, NotImplementedError, OSError) as err:
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    if args.tie_kv and model.cfg.kv_heads == model.cfg.n_heads:
        raise UsageError(f"--tie-kv: {args.model} has no grouped-query attention ({model.cfg.n_heads} query and "
                         f"{model.cfg.kv_heads} key-value heads); leave --tie-kv out")
    # Before anything is written: every checkpoint to resume is of this run (model, data, seed, configuration).
    # One pruner at a time (each holds the ablated activations), dropped once its checkpoint has loaded.
    for cfg, run_dir, state in zip(configs, run_dirs, states, strict=True):
        if state == "checkpoint":
            try:
                EdgePruner(model, task.examples, ablation=args.ablation, seed=args.seed, config=cfg,
                           model_name=str(args.model)).load(run_dir / CHECKPOINT)
            except CheckpointError as err:
                raise UsageError(str(err)) from None
    old_record = _read_json(args.out / RUN, "the run to resume") if (args.out / RUN).is_file() else {}
    old_targets = [t for t in old_record.get("targets", []) if isinstance(t, (int, float))]
    if lead:
        atomic_write_json(args.out / RUN, {**old_record, **record, "targets": sorted({*old_targets, *targets})})

    for i, (cfg, run_dir, state) in enumerate(zip(configs, run_dirs, states, strict=True)):
        if summary[i] is not None:
            continue
        if lead:
            run_dir.mkdir(exist_ok=True)
        checkpoint = run_dir / CHECKPOINT
        pruner = EdgePruner(model, task.examples, ablation=args.ablation, seed=args.seed, config=cfg,
                            model_name=str(args.model))
        where = f"target {_shown(targets[i])} ({i + 1}/{len(targets)})"
        if state == "checkpoint":
            try:
                pruner.load(checkpoint)
            except CheckpointError as err:
                raise UsageError(str(err)) from None
            if lead:
                print(f"{where}: resuming from step {pruner.step_index}/{cfg.steps} ({checkpoint})", file=sys.stderr)
        elif args.resume and lead:
            print(f"{where}: no checkpoint in {run_dir}; starting this target from step 0", file=sys.stderr)
        elif not args.quiet and lead:
            print(f"{where}: {cfg.steps} steps, checkpoint every {args.checkpoint_every} in {checkpoint}"
                  + (f", over {pruner.ranks} ranks" if pruner.ranks > 1 else ""), file=sys.stderr)
        try:
            pruner.run(quiet=args.quiet or not lead, checkpoint=checkpoint, every=args.checkpoint_every)
        except FloatingPointError as err:
            raise UsageError(str(err)) from None
        circuit = pruner.circuit()
        if not args.no_draw and lead:  # before circuit.json: a finished target has its drawing
            from prune.draw import draw_circuit

            draw_circuit(circuit, run_dir / DRAWING)
        if lead:
            atomic_write_json(run_dir / CIRCUIT, circuit.to_dict())  # Circuit.save's JSON; mode from the umask
        metrics = {"target_edge_sparsity": cfg.target_sparsity, "task": args.task, "ablation": args.ablation,
                   "seed": args.seed, "steps": cfg.steps, "conventions": args.conventions,
                   **circuit_metrics(model, task, circuit, args.ablation)}  # every rank: the model is sharded
        if lead:
            atomic_write_json(run_dir / METRICS, metrics)
            print(json.dumps(metrics), flush=True)
        summary[i] = metrics
    if len(summary) > 1 and lead:
        _plot(summary, args.out / SWEEP)
    return 0


# The most the resident size of a measured step exceeded its plan with freed memory kept, as prune run keeps it
# (bench/plan.py --malloc kept, bench/results/plan.md): 1.39 with the reader inputs kept, 1.56 with them
# recomputed (more transients, whose freed memory stays resident), rounded up. Beyond the plan times this, a
# warning; beyond the memory available, a refusal.
SLACK = {False: 1.40, True: 1.60}  # by recompute_reads


def _check_plan(args, task) -> None:
    """Refuse, before any weight loads, a run whose step would not fit in the memory available
    (:mod:`prune.plan`; float32 only: a half-precision step on CPU is not planned)."""
    from prune import loaders, plan

    if _DTYPES[args.dtype] != torch.float32:
        return
    local = loaders._local_folder(args.model)
    try:
        cfg = loaders.transformer_config(loaders._load_config(args.model))
    except (ValueError, NotImplementedError, OSError) as err:
        where = local / "config.json" if local is not None else args.model
        raise UsageError(f"cannot load model {args.model!r}: {where}: {err}") from None
    n, S = task.examples.clean.shape
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # sharded: every rank on this machine holds its own share
    batch = -(-min(args.batch_size, n) // ranks)  # examples per rank per step
    p = plan.plan_step(cfg, batch=batch, seq=S, examples=n, ablation=args.ablation, nproc=ranks,
                       recompute_reads=args.recompute_reads)
    have = loaders.available_bytes() // ranks  # this rank's part of the machine's memory
    per = f" per rank (of {ranks})" if ranks > 1 else ""
    slack = SLACK[args.recompute_reads]
    if p.fits(have) and not p.fits(int(have / slack)):
        print(f"warning: an Edge Pruning step needs about {p.total / plan.GIB:.1f} GiB{per} of the "
              f"{have / plan.GIB:.1f} GiB available; with the memory glibc keeps after frees (up to {slack - 1:.0%} "
              f"more, measured: bench/results/plan.md) it may not fit", file=sys.stderr)
    if not p.fits(have):
        nproc = f" --nproc {ranks}" if ranks > 1 else ""
        raise UsageError(f"an Edge Pruning step of {args.model} at batch {p.batch} x {S} ({n} examples, "
                         f"{args.ablation}) needs about {p.total / plan.GIB:.1f} GiB{per} but {have / plan.GIB:.1f} "
                         f"GiB is available (see `prune plan --model {args.model} --batch {p.batch} --seq {S} "
                         f"--examples {n}{nproc}`); use a smaller --batch-size or --n, or a machine with more memory")


def _draw(run_dir: Path) -> None:
    from prune.circuit import Circuit, CircuitFileError
    from prune.draw import draw_circuit

    try:
        draw_circuit(Circuit.load(run_dir / CIRCUIT), run_dir / DRAWING)
    except CircuitFileError as err:
        raise UsageError(f"cannot draw {run_dir / CIRCUIT}: {err}") from None


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


def _out_folder(text: str) -> Path:
    """argparse ``type`` of ``--out``: a path, not an empty string (which would mean the current folder)."""
    return Path(nonempty(text))


def _gib(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of GiB")
    return value


def _finite(text: str, ok, what: str) -> float:
    """``text`` as a finite float for which ``ok(value)`` holds, else argparse's refusal naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _expansion(text: str) -> float:
    return _finite(text, lambda v: v > 0, "a positive number of features per MLP hidden unit")


def _l1(text: str) -> float:
    return _finite(text, lambda v: v >= 0, "a finite coefficient >= 0")


def _threads(text: str) -> int:
    return parse_int(text, "", minimum=1, maximum=MAX_THREADS)


def cmd_mib_export(args) -> int:
    """Circuit files (this project's or EAP-IG's) into MIB's circuit-track submission layout."""
    from prune import mib
    from prune.circuit import Circuit, CircuitFileError
    from prune.tasks import TASKS

    if args.task not in TASKS:
        raise UsageError(f"--task {args.task!r}: unknown; choose one of {', '.join(TASKS)}")
    try:
        check_writable_folder(args.out, "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None
    paths = [Path(f) for f in args.circuits]
    seen: set[str] = set()
    for path in paths:
        if os.path.abspath(path) in seen:
            raise UsageError(f"circuit file {path} is given twice; give each file once")
        seen.add(os.path.abspath(path))
    circuits = []
    for path in paths:
        try:
            circuits.append(Circuit.load(path))
        except (CircuitFileError, ValueError) as err:
            raise UsageError(str(err)) from None
    graphs = {(c.graph.n_layers, c.graph.n_heads, c.graph.conventions) for c in circuits}
    if len(graphs) > 1:
        raise UsageError(f"the circuit files are of different graphs (layers, heads, conventions): {sorted(graphs)}")
    (_, _, conventions), = graphs
    if conventions != "eap-ig" and not args.any_conventions:
        raise UsageError(f"{paths[0]} was found under {conventions!r} writer conventions; MIB evaluates under "
                         f"EAP-IG's (docs/conventions.md): find it with --conventions eap-ig, or pass "
                         f"--any-conventions to export it anyway")
    mode = args.mode or ("scores" if len(circuits) == 1 else "circuits")
    n = circuits[0].graph.n_edges
    try:
        if mode == "scores":
            if len(circuits) != 1:
                raise UsageError(f"--mode scores takes one circuit file (its scores rank every edge), got {len(paths)}")
            try:
                folder = mib.write_submission(args.out, method=args.method, task=args.task, model=args.model_name,
                                              scores=circuits[0])
            except (ValueError, OSError) as err:
                raise UsageError(str(err)) from None
            print(f"{folder}/importances.json: the scores of {paths[0]} ({n} edges)")
            return 0
        chosen = {}
        for p in mib.PERCENTAGES[:-1]:
            fitting = [(len(c), i) for i, c in enumerate(circuits) if len(c) <= int(p * n)]
            chosen[p] = max(fitting)[1] if fitting else None
        empty = circuits[0].__class__(graph=circuits[0].graph, edges=(), ablation=circuits[0].ablation,
                                      model=circuits[0].model, d_model=circuits[0].d_model, method="empty")
        folder = mib.write_submission(args.out, method=args.method, task=args.task, model=args.model_name,
                                      circuits={p: empty if i is None else circuits[i] for p, i in chosen.items()})
    except (ValueError, OSError) as err:  # a refused circuit or name; a folder that exists or cannot be made
        raise UsageError(str(err)) from None
    for p, i in chosen.items():
        what = "empty (no given circuit is that small)" if i is None else f"{paths[i]} ({len(circuits[i])} edges)"
        print(f"{folder}/{p:g}.json: at most {int(p * n)} of {n} edges: {what}")
    return 0


def cmd_plan(args) -> int:
    """Memory per rank of one Edge Pruning step, from the config alone; exit 1 when it does not fit."""
    from prune import loaders, plan

    dtype = _DTYPES[args.dtype]
    device = "cuda" if args.gpu_memory is not None else "cpu"
    try:
        cfg = loaders.transformer_config(plan.read_config(args.model))
    except (ValueError, NotImplementedError) as err:
        raise UsageError(f"--model {args.model}: {err}") from None
    kwargs = dict(seq=args.seq, dtype=dtype, nproc=args.nproc, ablation=args.ablation, device=device,
                  recompute_reads=args.recompute_reads)
    if args.examples is not None:
        kwargs["examples"] = args.examples
    try:
        p = plan.plan_step(cfg, batch=args.batch, **kwargs)
    except ValueError as err:  # names the values at fault (--batch, --seq, --nproc, --examples, --dtype)
        raise UsageError(f"cannot plan {args.model} so: {err}") from None
    budget = int(args.gpu_memory * plan.GIB) if device == "cuda" else loaders.available_bytes()
    where = f"a GPU of {args.gpu_memory:g} GiB" if device == "cuda" else "this machine's available memory"
    print(f"Edge Pruning step of {args.model} ({loaders.estimate_params(cfg) / 1e9:.2f}B parameters), batch "
          f"{p.batch} x {p.seq} per rank, {p.dtype}, {p.nproc} rank(s), {p.examples} examples, {p.ablation} "
          f"ablation, on {device}:")
    print(p.table())
    fits = p.fits(budget)
    print(f"budget per rank: {budget / plan.GIB:.3f} GiB ({where}): {'fits' if fits else 'does NOT fit'}")
    kwargs.pop("examples", None)  # the largest batch with every rank's share its batch
    best = plan.largest_batch(cfg, budget, **kwargs)
    print(f"largest batch per rank that fits at length {p.seq}: {best}" if best else
          f"no batch fits at length {p.seq}: shard over more ranks (--nproc) or use a larger device")
    return 0 if fits else 1


TRANSCODERS, TRANSCODE_REPORT = "transcoders", "transcode.json"
# prune transcode's training: an L1 penalty on activations times decoder norms, from sampled inputs, constant lr
# (the first recipe of bench/results/transcoders.md); --l1 and --steps override.
LANGUAGE_MODEL_RECIPE = {"l1": 0.03, "weight_decay": 0.3, "lr": 3e-3, "schedule": "constant", "init": "sample"}


def _layers(text: str, n_layers: int) -> list[int]:
    """``all`` or comma-separated MLP layers, each in ``0..n_layers-1``, none twice."""
    if text == "all":
        return list(range(n_layers))
    try:
        layers = [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--layers {text!r}: give all or comma-separated layer numbers, e.g. 0,2") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise UsageError(f"--layers: MLP layer {bad[0]} is out of range: this model's MLP layers are 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise UsageError(f"--layers {text!r} names a layer twice")
    return layers


def cmd_transcode(args) -> int:
    """Train a transcoder on each chosen MLP of a model, from a generated task's text, and report its faithfulness."""
    from prune import loaders
    from prune.tasks import TASKS, make_task
    from prune.transcoder import (
        mlp_activations,
        replace_mlps,
        replacement_faithfulness,
        save_transcoders,
        train_transcoder,
    )

    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    _check_model(args.model)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out} already holds files; choose a new or empty folder (nothing is replaced)")
    try:  # the layers are checked against the config before anything loads or is written
        layers = _layers(args.layers, loaders.transformer_config(loaders._load_config(args.model)).n_layers)
    except (FileNotFoundError, ValueError, NotImplementedError, OSError) as err:
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" and the like
    created = _make_out_dir(args.out)
    try:
        torch.set_num_threads(args.threads)
        try:
            model_type = loaders.model_type_of(args.model)
            task = make_task(args.task, _tokenizer_for(args.model, model_type), args.n, args.seed)
            model = loaders.from_hf(args.model)
        except (FileNotFoundError, ValueError, MemoryError, NotImplementedError, OSError) as err:
            raise UsageError(f"cannot load {args.model!r} or make task {args.task!r}: {err}") from None
        ex = task.examples
        # A language model's MLP has no exact sparse decomposition for the library's data-driven starts to find,
        # and reconstruction alone gives dense features: the sparse recipe (docs/transcoders.md) by default.
        given = {k: v for k, v in (("steps", args.steps), ("l1", args.l1)) if v is not None}
        recipe = {**LANGUAGE_MODEL_RECIPE, **given}
        transcoders, rows = {}, []
        for layer in layers:
            try:
                tc = train_transcoder(model, layer, ex.clean, ex.valid, expansion=args.expansion, seed=args.seed,
                                      progress=not args.quiet, **recipe)
            except ValueError as err:  # NaN in training, a bad coefficient: named by the trainer
                raise UsageError(f"layer {layer}: {err}") from None
            transcoders[layer] = tc
            x, _ = mlp_activations(model, layer, ex.clean, ex.valid)
            with torch.no_grad():
                dead = int((tc.encode(x) > 0).sum(0).eq(0).sum())  # features active on no input
            rows.append({"layer": layer, "d_transcoder": tc.cfg.d_transcoder, "nmse": tc.log.nmse, "l0": tc.log.l0,
                         "dead": dead, "resampled": tc.log.resampled, "seconds": round(tc.log.seconds, 2)})
        alone = replacement_faithfulness(model, replace_mlps(model, transcoders), ex)
        kept = replacement_faithfulness(model, replace_mlps(model, transcoders, keep_error=True), ex)
    except BaseException:
        _remove_empty(created)
        raise
    save_transcoders(args.out / TRANSCODERS, transcoders, model=model, model_name=_model_key(args.model))
    report = {"model": _model_key(args.model), "task": args.task, "n": args.n, "seed": args.seed,
              "expansion": args.expansion, "recipe": transcoders[layers[0]].log.recipe, "layers": rows,
              "replacement": dataclasses.asdict(alone), "replacement_with_error_terms": dataclasses.asdict(kept)}
    atomic_write_json(args.out / TRANSCODE_REPORT, report)
    print("| layer | d_transcoder | nmse | L0 | dead | resampled | train s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['d_transcoder']} | {r['nmse']:.3g} | {r['l0']:.2f} | {r['dead']} | "
              f"{r['resampled']} | {r['seconds']} |")
    kl = "-" if alone.kl is None else f"{alone.kl:.4g}"
    print(f"replacement model ({len(layers)} MLP(s) replaced, no error terms): decoded agreement "
          f"{alone.agreement:.1%}, mean KL {kl}; with error terms: max |logit difference| "
          f"{kept.max_abs_logit_diff:.2g}")
    if not args.quiet:
        print(f"written: {args.out / TRANSCODERS}/ (circuit-tracer's layout), {args.out / TRANSCODE_REPORT}",
              file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="prune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("plan", help="memory per rank of an Edge Pruning step, from the config alone")
    q.add_argument("--model", required=True, type=nonempty,
                   help="a config.json, a checkpoint folder, gpt2 or codellama/CodeLlama-13b-hf (shipped configs)")
    q.add_argument("--batch", required=True, type=positive_int, help="examples per rank per step")
    q.add_argument("--seq", required=True, type=positive_int, help="tokens per example")
    q.add_argument("--dtype", default="fp32", choices=list(_DTYPES))
    q.add_argument("--nproc", type=positive_int, default=1, help="ranks (FSDP full sharding of the weights)")
    q.add_argument("--examples", type=positive_int, help="examples in all (default: batch x nproc)")
    q.add_argument("--ablation", default="resample", choices=["zero", "mean", "resample"])
    q.add_argument("--gpu-memory", type=_gib, metavar="GiB", help="plan for a GPU of this memory (default: this CPU)")
    q.add_argument("--recompute-reads", action="store_true", help="plan for prune run --recompute-reads")
    q.set_defaults(func=cmd_plan)
    e = sub.add_parser("mib-export", help="circuit files into MIB's circuit-track submission layout")
    e.add_argument("circuits", nargs="+", help="circuit JSON files (prune run's circuit.json, EAP-IG's files)")
    e.add_argument("--task", required=True, help="the task they were found on (its folder name in MIB's layout)")
    e.add_argument("--model-name", required=True, type=nonempty, help="the model's name in MIB's layout (no '_')")
    e.add_argument("--method", required=True, type=nonempty, help="the method's folder name")
    e.add_argument("--out", type=_out_folder, required=True, help="writes OUT/METHOD/TASK_MODEL/")
    e.add_argument("--mode", choices=["scores", "circuits"],
                   help="scores: one file's scores as importances; circuits: for each of MIB's nine fractions "
                        "the largest given circuit within it (default: scores for one file, circuits for several)")
    e.add_argument("--any-conventions", action="store_true",
                   help="export circuits found under this project's writer conventions too")
    e.set_defaults(func=cmd_mib_export)
    p = sub.add_parser("run", help="Edge Pruning on a Hugging Face model and a task")
    p.add_argument("--model", required=True, type=nonempty, help="local checkpoint folder or hub name")
    p.add_argument("--task", required=True)
    p.add_argument("--target-edge-sparsity", required=True, help="one target in [0, 1], or several, comma-separated")
    p.add_argument("--out", type=_out_folder, required=True)
    p.add_argument("--n", type=positive_int, default=200, help="examples")
    p.add_argument("--steps", type=positive_int, default=3000, help="training steps per target")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--ablation", default="resample", choices=["zero", "mean", "resample"])
    p.add_argument("--conventions", default="ours", choices=list(CONVENTIONS),
                   help="writer conventions: ours, or EAP-IG's and MIB's (docs/conventions.md)")
    p.add_argument("--seed", type=random_seed, default=0, help="from 0 to 2**63 - 1")
    p.add_argument("--dtype", default="fp32", choices=list(_DTYPES))
    p.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="N",
                   help="save DIR/target-<t>/checkpoint.safetensors every N steps (and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints; finished targets are skipped")
    p.add_argument("--tie-kv", action="store_true",
                   help="grouped-query attention: one key and one value gate per writer and key-value group, so "
                        "keys and values are read and projected once per group (circuits keep EAP-IG's "
                        "ungrouped names)")
    p.add_argument("--recompute-reads", action="store_true",
                   help="recompute each layer's query, key and value inputs in the backward pass instead of "
                        "keeping them: less memory for one more read per layer (docs/performance.md)")
    p.add_argument("--threads", type=_threads, default=2,
                   help=f"torch CPU threads (per rank), 1 to {MAX_THREADS} (resume with the same number)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="ranks: run under torchrun, FSDP-sharded and data parallel (docs/performance.md); "
                        "resume with the same number")
    p.add_argument("--no-draw", action="store_true",
                   help="do not draw each circuit (DIR/target-<t>/circuit.png and .svg; matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    t = sub.add_parser("transcode", help="train transcoders on a model's MLPs from a task's text, and score them")
    t.add_argument("--model", required=True, type=nonempty, help="local checkpoint folder or hub name")
    t.add_argument("--task", required=True, help="the generated task whose text the MLPs read")
    t.add_argument("--out", type=_out_folder, required=True,
                   help="a new folder: OUT/transcoders/ (circuit-tracer's layout) and OUT/transcode.json")
    t.add_argument("--layers", default="all", help="all, or comma-separated MLP layers")
    t.add_argument("--n", type=positive_int, default=200, help="examples of the task")
    t.add_argument("--expansion", type=_expansion, default=4.0, help="features per MLP hidden unit")
    t.add_argument("--steps", type=positive_int, default=None, help="training steps (default: fit_transcoder's)")
    t.add_argument("--l1", type=_l1, default=None, help="sparsity coefficient (default 0.03)")
    t.add_argument("--seed", type=random_seed, default=0, help="the task's and the training's seed")
    t.add_argument("--threads", type=_threads, default=2, help=f"torch CPU threads, 1 to {MAX_THREADS}")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_transcode)
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args, extra = parser.parse_known_args(argv)
        args.argv = argv  # `prune run --nproc N` starts N ranks of the same command
        if extra:  # refused by the subcommand's parser, so that its --help is the one named
            which = {"run": p, "mib-export": e, "plan": q, "transcode": t}.get(getattr(args, "command", None), parser)
            which.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help, or a refusal ArgumentParser.error has printed
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    return run_command(args.func, args, refused=(UsageError,),
                       interrupted="interrupted; continue from the last checkpoint with the same command and --resume")


if __name__ == "__main__":
    sys.exit(main())
