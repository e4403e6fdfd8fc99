"""``prune`` command line: Edge Pruning on a Hugging Face model and a generated task.

  prune run --model gpt2 --task ioi --target-edge-sparsity 0.96 --out DIR
  prune run --model ./my-llama --task boolean_expressions --target-edge-sparsity 0.98,0.99 --out DIR

``--model`` is a local checkpoint folder or a hub name (where a network
exists). One run per target: ``DIR/target-<t>/`` holds ``circuit.json``
(EAP-IG) and ``metrics.json``. With several targets, ``DIR/sweep.png`` plots
the task metric against the edge count. (Resuming a killed run from periodic
checkpoints is not implemented yet.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["main", "circuit_metrics"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


@torch.no_grad()
def circuit_metrics(model, task, circuit, ablation: str) -> dict:
    """KL, exact match with the full model, and the task's metrics, for the circuit and the full model."""
    from prune.edge_pruning import faithfulness_loss
    from prune.evaluate import circuit_logits, full_logits
    from prune import tasks as T

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
    except Exception as err:  # no tokenizer files in the checkpoint
        raise SystemExit(f"error: {model_spec} has no usable tokenizer ({type(err).__name__}: {err}); "
                         f"a {model_type} task needs the checkpoint's own tokenizer") from None


def cmd_run(args) -> int:
    from prune import loaders
    from prune.edge_pruning import EdgePruningConfig, edge_pruning
    from prune.tasks import TASKS, make_task

    if args.task not in TASKS:
        print(f"error: unknown task {args.task!r}; choose one of {list(TASKS)}", file=sys.stderr)
        return 2
    try:
        targets = [float(t) for t in args.target_edge_sparsity.split(",")]
        configs = [EdgePruningConfig(target_sparsity=t, steps=args.steps, batch_size=args.batch_size,
                                     logit_scale=1.0) for t in targets]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model = loaders.from_hf(args.model, dtype=_DTYPES[args.dtype])
    except (FileNotFoundError, ValueError, MemoryError, NotImplementedError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model_type = loaders.model_type_of(args.model)
    task = make_task(args.task, _tokenizer_for(args.model, model_type), args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for cfg in configs:
        run_dir = args.out / f"target-{cfg.target_sparsity:g}"
        run_dir.mkdir(exist_ok=True)
        circuit = edge_pruning(model, task.examples, ablation=args.ablation, seed=args.seed, config=cfg,
                               model_name=str(args.model), quiet=args.quiet)
        circuit.save(run_dir / "circuit.json")
        metrics = {"target_edge_sparsity": cfg.target_sparsity, "task": args.task, "ablation": args.ablation,
                   "seed": args.seed, **circuit_metrics(model, task, circuit, args.ablation)}
        _write_json(run_dir / "metrics.json", metrics)
        summary.append(metrics)
        print(json.dumps(metrics))
    if len(summary) > 1:
        _plot(summary, args.out / "sweep.png")
    return 0


def _plot(summary, path: Path) -> None:
    import matplotlib

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="prune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="Edge Pruning on a Hugging Face model and a task")
    p.add_argument("--model", required=True, help="local checkpoint folder or hub name")
    p.add_argument("--task", required=True)
    p.add_argument("--target-edge-sparsity", required=True, help="one target in [0, 1], or several, comma-separated")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200, help="examples")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ablation", default="resample", choices=["zero", "mean", "resample"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", choices=list(_DTYPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
