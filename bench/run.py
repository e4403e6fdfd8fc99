"""Benchmarks: recovery time over the library, and one Edge Pruning step on GPT-2-small and Llama shapes.

    .venv/bin/python bench/run.py library                 # wall time of recovery per program
    .venv/bin/python bench/run.py library --programs shuffle_dyck2 --config '{"steps": 150}'
    .venv/bin/python bench/run.py step                    # training step vs plain fwd+bwd, both model shapes
    .venv/bin/python bench/run.py step --model llama --shapes 8x32 --steps 3
    .venv/bin/python bench/run.py all

The step is the real trainer's: ``EdgePruner(...).step()`` with
``language_model_config`` (one gate sample shared by the batch, pathwise
gradients) and resample ablation, on a random-weight model of GPT-2 small's
shape (``gpt2``) or a Llama-style one of comparable size (``llama``: RMSNorm,
SwiGLU, rotary, grouped-query attention). Every measurement runs in its own
process (peak RSS is per process): the Edge Pruning process times the step,
records its peak memory, then times a plain forward + backward (into the
weights, cross-entropy at every position) of the same model in the same
process; the ratio is between those two. A separate process measures the plain
forward + backward's own peak memory. Figures go to stdout, and to --json if
given.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ------------------------------------------------------------------ library
def bench_library(seeds: list[int], ablation: str, threads: int = 2, programs: list[str] | None = None,
                  config: dict | None = None) -> dict:
    """Recovery of every program with a non-empty ground truth, per seed: time, exact, own (thresholded) exact.

    ``programs``: only these; ``config``: Edge Pruning with these fields of
    ``EdgePruningConfig`` changed (e.g. to measure a shorter training run).
    """
    import dataclasses
    import functools

    import torch

    from groundtruth.artifacts import load_all
    from groundtruth.recovery import recover
    from prune.edge_pruning import EdgePruningConfig, edge_pruning

    torch.set_num_threads(threads)
    arts = load_all()
    if programs:
        unknown = sorted(set(programs) - set(arts))
        if unknown:
            raise SystemExit(f"unknown --programs {unknown}; choose from {sorted(arts)}")
        arts = {name: arts[name] for name in programs}
    pruner = None
    if config:
        try:
            cfg = EdgePruningConfig(**config)
        except TypeError as err:
            fields = [f.name for f in dataclasses.fields(EdgePruningConfig)]
            raise SystemExit(f"--config {config}: {err}; EdgePruningConfig has the fields {fields}") from None
        pruner = functools.partial(edge_pruning, config=cfg)
        print(f"Edge Pruning with {config}")
    rows, total, misses = [], 0.0, []
    print(f"| program | edges | exact (of {len(seeds)}) | own exact | median s | max s |")
    print("|---|---|---|---|---|---|")
    for name, art in arts.items():
        gt = art.functional(ablation)
        if not gt:
            continue
        times, exact, threshold = [], 0, 0
        for seed in seeds:
            r = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed, pruner=pruner)
            times.append(r.seconds)
            exact += r.exact
            threshold += bool(r.own_exact)
            if not r.exact:
                misses.append({"program": name, "seed": seed, "extra": r.only_found, "missed": r.only_ground_truth})
        total += sum(times)
        rows.append({"program": name, "edges": art.model.graph.n_edges, "median_s": round(statistics.median(times), 2),
                     "max_s": round(max(times), 2), "exact": exact, "own_exact": threshold})
        print(f"| {name} | {art.model.graph.n_edges} | {exact}/{len(seeds)} | {threshold}/{len(seeds)} | "
              f"{statistics.median(times):.1f} | {max(times):.1f} |", flush=True)
    per_seed = total / len(seeds)
    n_runs = len(rows) * len(seeds)
    print(f"\nwhole library, {ablation} ablation, {threads} threads: {per_seed:.1f} s per seed (seeds {seeds}); "
          f"slowest median {max(r['median_s'] for r in rows):.2f} s; exact {sum(r['exact'] for r in rows)}/{n_runs}; "
          f"own (thresholded) circuit exact {sum(r['own_exact'] for r in rows)}/{n_runs}")
    for m in misses:
        print(f"not exact: {m}")
    return {"ablation": ablation, "seeds": seeds, "threads": threads, "config": config or {},
            "library_seconds_per_seed": round(per_seed, 1),
            "programs": rows, "misses": misses}


# --------------------------------------------------------------------- step
GPT2_SMALL = {"vocab_size": 50257, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_head": 64, "d_mlp": 3072,
              "n_positions": 1024, "norm": "layernorm", "activation": "gelu_tanh", "causal": True}
# Llama-style at GPT-2 small's size: grouped-query attention (12 query, 4 key-value heads), SwiGLU
# (3 matrices of 768 x 2048, about GPT-2's 2 x 768 x 3072), RMSNorm, rotary, no biases, Llama's vocabulary.
LLAMA_SMALL = {"vocab_size": 32000, "d_model": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 4, "d_head": 64,
               "d_mlp": 2048, "n_positions": 2048, "norm": "rmsnorm", "norm_eps": 1e-5, "activation": "silu",
               "gated_mlp": True, "positional": "rotary", "rope_theta": 10000.0, "causal": True, "attn_bias": False,
               "attn_out_bias": False, "mlp_bias": False, "unembed_bias": False}
SHAPES = {"gpt2": GPT2_SMALL, "llama": LLAMA_SMALL}


def _peak_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


def _time(fn, steps: int, device) -> list[float]:
    import torch

    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times[1:] if len(times) > 1 else times  # the first step pays one-off allocations


def _one_measurement(kind: str, shape: str, batch: int, length: int, steps: int, threads: int, device: str) -> dict:
    """Runs in a child process: median step time and peak memory for one configuration."""
    if os.environ.get("BENCH_MALLOC", "keep") == "keep":  # before any tensor: for both steps measured here
        from prune.allocator import keep_freed_memory

        keep_freed_memory()
    import torch
    import torch.nn.functional as F

    from prune.data import Examples
    from prune.edge_pruning import EdgePruner, language_model_config
    from prune.model import Transformer, TransformerConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if shape in SHAPES:
        cfg = TransformerConfig(**SHAPES[shape])
        model = Transformer(cfg).to(dev)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(0, 0.02)
                if name.endswith(".weight") and (".ln" in name or name.startswith("ln_f.")):
                    p.fill_(1.0)  # norm gains
    else:  # a checkpoint folder (models/gpt2-ioi-gt): its trained weights
        from prune.loaders import from_hf

        model = from_hf(shape).to(dev)
        cfg = model.cfg
    V = cfg.vocab_size
    clean = torch.randint(0, V, (batch, length), device=dev)
    target = torch.randint(0, V, (batch, length), device=dev)

    def plain_step():  # forward + backward into the weights, as fine-tuning would
        loss = F.cross_entropy(model(clean).flatten(0, 1).float(), target.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()

    out = {"kind": kind, "model": shape, "batch": batch, "length": length, "device": device}
    if kind == "plain":
        model.requires_grad_(True)
        times = _time(plain_step, steps, dev)
        return {**out, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                "peak_gib": round(_peak_gib(dev), 2)}
    # The trainer's step: masked forward (resample ablation: every writer on the corrupted prompt,
    # computed once at construction), KL at the answer position, Lagrangian, backward, Adam.
    valid = torch.ones(batch, length, dtype=torch.bool, device=dev)
    answer = torch.zeros_like(valid)
    answer[:, -1] = True  # one answer position per example, as the tasks have
    examples = Examples(clean=clean, corrupted=torch.randint(0, V, (batch, length), device=dev), valid=valid,
                        answer=answer)
    tie = os.environ.get("BENCH_TIE_KV") == "1" and cfg.kv_heads < cfg.n_heads  # grouped-query shapes only
    recompute = os.environ.get("BENCH_RECOMPUTE_READS") == "1"
    pruner = EdgePruner(model, examples, ablation="resample", seed=0,
                        config=language_model_config(0.9, steps=10**6, batch_size=batch, tie_kv=tie,
                                                     recompute_reads=recompute))
    times = _time(pruner.step, steps, dev)
    peak = _peak_gib(dev)
    del pruner
    model.requires_grad_(True)
    plain = _time(plain_step, steps, dev)  # the same model, in this same process
    median, plain_median = statistics.median(times), statistics.median(plain)
    return {**out, "edges": model.graph.n_edges, "median_s": median, "min_s": min(times), "max_s": max(times),
            "peak_gib": round(peak, 2), "plain_same_process_s": plain_median, "ratio": median / plain_median}


def measure(kind: str, shape: str, batch: int, length: int, steps: int, threads: int, device: str,
            malloc: str = "keep", tie_kv: bool = False, recompute_reads: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_measure", kind, shape, str(batch), str(length), str(steps), str(threads), device],
        check=False, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "BENCH_MALLOC": malloc, "BENCH_TIE_KV": "1" if tie_kv else "0",
             "BENCH_RECOMPUTE_READS": "1" if recompute_reads else "0"},
    )
    if out.returncode != 0:
        return {"kind": kind, "model": shape, "batch": batch, "length": length,
                "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_step(steps: int, models: list[str], shapes: list[tuple[int, int]], threads: int, device: str,
               malloc: str = "keep", tie_kv: bool = False, recompute_reads: bool = False) -> dict:
    results = {}
    nan = float("nan")
    for shape in models:
        for batch, length in shapes:
            plain = measure("plain", shape, batch, length, steps, threads, device, malloc)
            ep = measure("edge_pruning", shape, batch, length, steps, threads, device, malloc, tie_kv,
                         recompute_reads)
            results[f"{shape} {batch}x{length}"] = {"plain": plain, "edge_pruning": ep, "ratio": ep.get("ratio")}
            ratio = ep.get("ratio")
            print(f"{shape}, batch {batch}, length {length}: Edge Pruning step {ep.get('median_s', nan):.3f} s "
                  f"(peak {ep.get('peak_gib', nan)} GiB); plain fwd+bwd {ep.get('plain_same_process_s', nan):.3f} s "
                  f"in the same process, {plain.get('median_s', nan):.3f} s alone (peak {plain.get('peak_gib', nan)} "
                  f"GiB); ratio {ratio if ratio is None else round(ratio, 2)}", flush=True)
            for r in (plain, ep):
                if "error" in r:
                    print(f"  {r['kind']} failed: {r['error']}")
    return results


def _shapes(text: str) -> list[tuple[int, int]]:
    """argparse ``type`` of ``--shapes``: ``BxL`` pairs of whole numbers >= 1, comma-separated."""
    import argparse

    shapes = []
    for part in text.split(","):
        batch, x, length = part.strip().partition("x")
        try:
            shape = (int(batch), int(length)) if x else ()
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not batch x length; give e.g. 8x32 or 8x32,32x64")
        shapes.append(shape)
    return shapes


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_measure":
        kind, shape = sys.argv[2], sys.argv[3]
        batch, length, steps, threads = map(int, sys.argv[4:8])
        print(json.dumps(_one_measurement(kind, shape, batch, length, steps, threads, sys.argv[8])))
        return 0
    from groundtruth.cli import MAX_THREADS, parse_seeds
    from prune._cli import ArgumentParser, parse_int, positive_int

    parser = ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["library", "step", "all"], nargs="?", default="all")
    parser.add_argument("--seeds", type=parse_seeds, default="0,1,2", help="seeds for the library part: 0,1,2 or 0-9")
    parser.add_argument("--ablation", default="zero", help="ablation for the library part")
    parser.add_argument("--programs", help="library: only these programs, comma-separated")
    parser.add_argument("--config", type=json.loads, default=None,
                        help='library: EdgePruningConfig fields to change, as JSON, e.g. \'{"steps": 150}\'')
    parser.add_argument("--model", default="gpt2,llama",
                        help="step: model shapes (gpt2, llama) or checkpoint folders (models/gpt2-ioi-gt)")
    parser.add_argument("--shapes", type=_shapes, default="8x32,32x64", help="step: batch x length, comma-separated")
    parser.add_argument("--steps", type=positive_int, default=5,
                        help="timed steps per step measurement (the first is a warm-up)")
    parser.add_argument("--threads", type=lambda t: parse_int(t, "", minimum=1, maximum=MAX_THREADS), default=1,
                        help=f"torch CPU threads, 1 to {MAX_THREADS}")
    parser.add_argument("--device", default="cpu",
                        help="step: cpu or cuda (peak memory: RSS on cpu, allocated on cuda)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="step: keep: glibc keeps freed memory for reuse (prune.allocator, as prune run does); "
                             "default: glibc's default malloc")
    parser.add_argument("--tie-kv", action="store_true",
                        help="step: grouped-query shapes run Edge Pruning with tie_kv (one key and one value gate "
                             "per writer and group; keys and values read and projected once per group)")
    parser.add_argument("--recompute-reads", action="store_true",
                        help="step: Edge Pruning recomputes the reader inputs in backward instead of keeping them")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    models = args.model.split(",")
    unknown = [m for m in models if m not in SHAPES and not (Path(m) / "config.json").is_file()]
    if unknown:
        parser.error(f"unknown --model {unknown}; choose from {list(SHAPES)} or give a checkpoint folder")
    if args.device != "cpu":
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            parser.error(f"--device {args.device!r}: this torch build has no usable {args.device} device "
                         f"(cuda available: {torch.cuda.is_available()}); use --device cpu")
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "threads": args.threads,
                          "device": args.device}}
    if args.part in ("library", "all"):
        programs = args.programs.split(",") if args.programs else None
        report["library"] = bench_library(args.seeds, args.ablation, args.threads, programs, args.config)
    if args.part in ("step", "all"):
        report["step"] = bench_step(args.steps, models, args.shapes, args.threads, args.device, args.malloc,
                                    args.tie_kv, args.recompute_reads)
        report["machine"].update(malloc=args.malloc, tie_kv=args.tie_kv, recompute_reads=args.recompute_reads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
