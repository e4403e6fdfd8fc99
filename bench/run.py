"""Benchmarks: recovery time over the library, and one Edge Pruning step on GPT-2-small shapes.

    .venv/bin/python bench/run.py library          # wall time of recovery per program
    .venv/bin/python bench/run.py step             # GPT-2-small-shaped training step vs plain fwd+bwd
    .venv/bin/python bench/run.py all

Every measurement that reports peak memory runs in its own process (peak RSS
is per process). Figures go to stdout, and to --json if given.
"""

from __future__ import annotations

import argparse
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

GPT2_SMALL = dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072,
                  n_positions=1024, norm="layernorm", activation="gelu_tanh", causal=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ------------------------------------------------------------------ library
def bench_library(seeds: list[int], ablation: str) -> dict:
    import torch

    from groundtruth.artifacts import load_all
    from groundtruth.recovery import recover

    torch.set_num_threads(2)
    arts = load_all()
    rows, total = [], 0.0
    for name, art in arts.items():
        gt = art.functional(ablation)
        if not gt:
            continue
        times, exact = [], 0
        for seed in seeds:
            r = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed)
            times.append(r.seconds)
            exact += r.exact
        total += sum(times)
        rows.append({"program": name, "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
                     "exact": f"{exact}/{len(seeds)}"})
        print(f"{name:24s} median {statistics.median(times):6.2f} s  max {max(times):6.2f} s  exact {exact}/{len(seeds)}",
              flush=True)
    per_seed = total / len(seeds)
    print(f"whole library, {ablation} ablation: {per_seed:.1f} s per seed (seeds {seeds}); "
          f"slowest median {max(r['median_s'] for r in rows):.2f} s")
    return {"ablation": ablation, "seeds": seeds, "library_seconds_per_seed": round(per_seed, 1), "programs": rows}


# --------------------------------------------------------------------- step
def _one_measurement(kind: str, batch: int, length: int, steps: int) -> dict:
    """Runs in a child process: median step time and peak RSS for one configuration."""
    import torch
    import torch.nn.functional as F

    from prune import hard_concrete
    from prune.edge_pruning import faithfulness_loss
    from prune.data import Examples
    from prune.model import Transformer, TransformerConfig

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**GPT2_SMALL))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    clean = torch.randint(0, 50257, (batch, length))
    corrupt = torch.randint(0, 50257, (batch, length))
    valid = torch.ones(batch, length, dtype=torch.bool)
    times = []
    if kind == "plain":  # forward + backward into the weights, as fine-tuning would
        model.requires_grad_(True)
        target = torch.randint(0, 50257, (batch, length))
        for _ in range(steps):
            t = time.perf_counter()
            loss = F.cross_entropy(model(clean).flatten(0, 1), target.flatten())
            model.zero_grad(set_to_none=True)
            loss.backward()
            times.append(time.perf_counter() - t)
    else:  # one Edge Pruning step: masked forward (resample) + KL + Lagrangian + backward + Adam
        model.requires_grad_(False)
        g = model.graph
        examples = Examples(clean=clean, corrupted=corrupt, valid=valid, answer=valid.clone())
        with torch.no_grad():
            full = model(clean)
            ablated = model.writers(corrupt)  # resample: writers on the corrupted prompts
        log_alpha = torch.nn.Parameter(torch.full((g.n_edges,), 3.0))
        lam = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.Adam([log_alpha], lr=0.1)
        lam_opt = torch.optim.Adam([lam], lr=0.01, maximize=True)
        for _ in range(steps):
            t = time.perf_counter()
            z = hard_concrete.sample(log_alpha)
            logits = model(clean, edge_mask=z, ablated=ablated)
            faith = faithfulness_loss(logits, full, examples, examples.answer).mean()
            s = 1 - hard_concrete.prob_nonzero(log_alpha).mean()
            loss = faith + lam[0] * (s - 1) + lam[1] * (s - 1) ** 2
            opt.zero_grad(set_to_none=True)
            lam_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lam_opt.step()
            times.append(time.perf_counter() - t)
    warm = times[1:] if len(times) > 1 else times  # the first step pays one-off allocations
    return {"kind": kind, "batch": batch, "length": length, "median_s": statistics.median(warm),
            "min_s": min(warm), "max_s": max(warm), "peak_rss_gib": round(peak_rss_gib(), 2)}


def measure(kind: str, batch: int, length: int, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_measure", kind, str(batch), str(length), str(steps)],
        capture_output=True, text=True, cwd=ROOT,
    )
    if out.returncode != 0:
        return {"kind": kind, "batch": batch, "length": length, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_step(steps: int) -> dict:
    results = {}
    for batch, length in ((8, 32), (32, 64)):
        plain = measure("plain", batch, length, steps)
        ep = measure("edge_pruning", batch, length, steps)
        ratio = ep["median_s"] / plain["median_s"] if "median_s" in ep and "median_s" in plain else None
        results[f"{batch}x{length}"] = {"plain": plain, "edge_pruning": ep, "ratio": ratio}
        print(f"batch {batch}, length {length}: plain fwd+bwd {plain.get('median_s', float('nan')):.3f} s "
              f"(peak {plain.get('peak_rss_gib', float('nan'))} GiB); Edge Pruning step "
              f"{ep.get('median_s', float('nan')):.3f} s (peak {ep.get('peak_rss_gib', float('nan'))} GiB); "
              f"ratio {ratio if ratio is None else round(ratio, 2)}", flush=True)
        for r in (plain, ep):
            if "error" in r:
                print(f"  {r['kind']} failed: {r['error']}")
    return results


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_measure":
        kind, batch, length, steps = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(_one_measurement(kind, batch, length, steps)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["library", "step", "all"], nargs="?", default="all")
    parser.add_argument("--seeds", default="0,1,2", help="seeds for the library part")
    parser.add_argument("--ablation", default="zero")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per step measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if args.part in ("library", "all"):
        report["library"] = bench_library([int(s) for s in args.seeds.split(",")], args.ablation)
    if args.part in ("step", "all"):
        report["step"] = bench_step(args.steps)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
