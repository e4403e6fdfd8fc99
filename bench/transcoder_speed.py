"""Transcoder training throughput and peak memory on a GPT-2-small-shaped MLP.

    .venv/bin/python bench/transcoder_speed.py [--expansions 8] [--batches 1024,4096] [--steps 5]
                                               [--threads 2] [--json F] [--load-note TEXT]

A random-weight model of GPT-2 small's shape (``bench/run.py``'s ``gpt2``: d_model 768,
d_mlp 3072) gives its layer-0 MLP's normed inputs and outputs on random tokens
(``prune.transcoder.mlp_activations``); ``fit_transcoder`` then trains a ReLU
transcoder of ``expansion x d_mlp`` features (the paper's GPT-2 transcoders have
24,576 = 8 x 3072) with the language-model recipe (``prune transcode``'s
``LANGUAGE_MODEL_RECIPE``: L1 penalty, weight decay, constant rate, sampled start),
one start, no dead-feature resampling or full-set checks inside the timed steps.
Each configuration runs in its own process, so its peak RSS is its own: tokens per
second is ``batch x steps / seconds`` over the steps after the first (the first pays
one-off allocations), timed by the training log's own clock around the loop.
Speed and memory only: what the features are is scored by ``bench/transcoders.py``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_TOKENS = 16 * 1024  # activations held in memory: 16 sequences of 1024 tokens


def _activations(path: Path, threads: int) -> dict:
    """Layer 0's normed MLP inputs and outputs on random tokens, written to ``path`` (safetensors)."""
    import torch
    from safetensors.torch import save_file

    from bench.run import SHAPES
    from prune.model import Transformer, TransformerConfig
    from prune.transcoder import mlp_activations

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(**{**SHAPES["gpt2"], "n_layers": 1})  # layer 0's activations need layer 0 only
    model = Transformer(cfg).eval()
    with torch.no_grad():  # GPT-2's initialisation scale (as bench/run.py's step); norm gains 1
        for name, p in model.named_parameters():
            p.normal_(0, 0.02)
            if name.endswith(".weight") and (".ln" in name or name.startswith("ln_f.")):
                p.fill_(1.0)
    tokens = torch.randint(0, cfg.vocab_size, (N_TOKENS // 1024, 1024), generator=torch.Generator().manual_seed(0))
    x, y = mlp_activations(model, 0, tokens)
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(path))
    return {"d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "tokens": len(x)}


def _measure(path: Path, d_mlp: int, expansion: float, batch: int, steps: int, threads: int) -> dict:
    """In a child process (its peak RSS its own): the activations, then training runs of 1, 1 and 1 + ``steps``
    steps from the same start; the difference of the last two is ``steps`` steps."""
    import torch
    from safetensors.torch import load_file

    from prune.cli import LANGUAGE_MODEL_RECIPE
    from prune.transcoder import fit_transcoder

    torch.set_num_threads(threads)
    data = load_file(str(path))
    x, y = data["x"], data["y"]
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    d_transcoder = int(expansion * d_mlp)
    recipe = {k: v for k, v in LANGUAGE_MODEL_RECIPE.items() if k not in ("steps", "batch")}
    recipe.update(resample_every=10 ** 9, keep_best=False, progress=False)

    def run(n):
        return fit_transcoder(x, y, layer=0, d_transcoder=d_transcoder, steps=n, batch=batch, **recipe)

    run(1)  # warm-up: one-off allocations
    one, full = run(1), run(1 + steps)
    seconds = full.log.seconds - one.log.seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    params = sum(p.numel() for p in full.parameters())
    return {"expansion": expansion, "d_transcoder": d_transcoder, "batch": batch, "steps_timed": steps,
            "seconds": round(seconds, 3), "tokens_per_s": round(batch * steps / seconds),
            "s_per_step": round(seconds / steps, 4), "peak_rss_gib": round(peak, 3),
            "rss_with_activations_gib": round(rss_data, 3), "parameters": params,
            "parameters_and_adam_gib": round(3 * params * 4 / 2 ** 30, 3),
            "recipe": recipe, "final_nmse": full.log.nmse, "l0": full.log.l0}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_activations":
        print(json.dumps(_activations(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(_measure(Path(sys.argv[2]), *map(int, sys.argv[3:4]), float(sys.argv[4]),
                                  *map(int, sys.argv[5:8]))))
        return 0
    from groundtruth.cli import MAX_THREADS
    from prune._cli import ArgumentParser, parse_int, positive_int

    parser = ArgumentParser(prog="bench/transcoder_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--expansions", default="8", help="features per MLP unit, comma-separated (paper: 8)")
    parser.add_argument("--batches", default="1024,4096", help="tokens per step, comma-separated")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per measurement")
    parser.add_argument("--threads", type=lambda t: parse_int(t, "", minimum=1, maximum=MAX_THREADS), default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--load-note", default="", help="what else ran on the machine, written with the figures")
    args = parser.parse_args(argv)
    try:
        expansions = [float(e) for e in args.expansions.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--expansions {args.expansions!r} / --batches {args.batches!r}: give numbers, comma-separated")
    if min(expansions) <= 0 or min(batches) < 1:
        parser.error(f"--expansions {args.expansions!r} / --batches {args.batches!r}: expansions must be > 0 and "
                     f"batches >= 1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    report = {"command": " ".join(["bench/transcoder_speed.py", *(sys.argv[1:] if argv is None else argv)]),
              "commit": commit.strip() + (" (with uncommitted changes)" if dirty else ""),
              "date": datetime.date.today().isoformat(), "threads": args.threads,
              "machine": f"{os.cpu_count()} cores ({platform.machine()})",
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "load_note": args.load_note, "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="transcoder-speed-"))
    try:
        # In a child too: a process forked from a large one starts with its peak RSS (Linux keeps it over exec).
        out = subprocess.run([sys.executable, __file__, "_activations", str(tmp / "activations.safetensors"),
                              str(args.threads)], capture_output=True, text=True, check=True)
        report["activations"] = json.loads(out.stdout.strip().splitlines()[-1])
        _runs(report, tmp / "activations.safetensors", expansions, batches, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all("error" not in r for r in report["runs"]) else 1


def _runs(report: dict, path: Path, expansions, batches, args) -> None:
    for expansion in expansions:
        for batch in batches:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "_measure", str(path), str(report["activations"]["d_mlp"]),
                                  str(expansion), str(batch), str(args.steps), str(args.threads)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                run = {"expansion": expansion, "batch": batch, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                run = json.loads(out.stdout.strip().splitlines()[-1])
            run["wall_s"] = round(time.perf_counter() - t, 1)
            report["runs"].append(run)
            print(json.dumps({k: run.get(k) for k in ("d_transcoder", "batch", "tokens_per_s", "s_per_step",
                                                       "peak_rss_gib", "error")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
