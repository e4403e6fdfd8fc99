"""Benchmark: time per circuit-discovery method (Edge Pruning, ACDC, EAP, EAP-IG).

    .venv/bin/python bench/methods.py library   # per program and total, from groundtruth.compare's JSON
    .venv/bin/python bench/methods.py gpt2      # GPT-2-small-shaped model, one IOI-sized batch
    .venv/bin/python bench/methods.py all [--json out/bench_methods.json]
    .venv/bin/python bench/methods.py gpt2 --n 200 --methods acdc,eap   # at the paper's 200 examples

``library``: the seconds column of ``python -m groundtruth.compare`` (zero
ablation, seed 0): the wall time of each method's call alone (not the
verification after it). The JSON is read from ``--compare-json`` (default
``out/compare/compare.json``); when it is missing the comparison is run first.

``gpt2``: a GPT-2-small-shaped model (12 layers, 12 heads, d_model 768, 32,491
edges) with random weights, on ``--n`` (32) IOI examples from
:func:`prune.tasks.make_task` with GPT-2's offline tokenizer, resample ablation
(each clean prompt's ABC corruption). Every method runs in its own process, so
each reports its own peak RSS.

- EAP and EAP-IG (5 steps) run in full, with a top-k circuit rule
  (``--top-k``, default 1,105 edges = 96.6 % sparsity, the paper's Table 1
  level), since the default rule (the smallest reproducing top-k) tries k = 1, 2, ...
  with one forward each. They run ``--eap-batch`` (32) examples per backward
  pass, so their peak memory does not grow with ``--n``.
- ACDC cannot finish here: it does one forward (the faithfulness of the current
  circuit with one more edge removed) per edge, 32,491 per tau. Measured: the
  setup (full model's logits and the corrupted writers) and the median time of
  ``--acdc-evals`` evaluations of :func:`prune.baselines.faithfulness` exactly
  as ACDC calls it. Extrapolated: setup + (32,491 + 1) evaluations, one tau
  (an upper bound: edges into nodes that no longer reach the output are
  skipped without a forward, how many depends on the model).
- Edge Pruning cannot finish here either (the paper trains 3,000 steps). It
  runs as ``prune run`` does on a language model: :class:`prune.edge_pruning.EdgePruner`
  with :func:`prune.edge_pruning.language_model_config` (the reference's step:
  batch 32, one gate sample shared by the batch, pathwise gradients; threshold
  binarisation), target ``--target-sparsity`` (0.966). Measured: the setup
  (full model's logits and the corrupted writers), the median of ``--ep-steps``
  steps after one warm-up step, and the binarisation. Extrapolated: setup +
  3,000 steps + binarisation (the paper's 2,756 s also include evaluation every
  64 steps and checkpoints; ours do not).

Every figure is labelled *measured* or *extrapolated* in the output, and given
both as wall time and as the process's CPU time (all its threads): on a shared
machine the wall time grows with the other load, the CPU time much less. The
load average at the start is recorded in the JSON. The paper's runtimes (200 IOI examples, one H100:
ACDC 18,783 s, EAP 21 s, Edge
Pruning 2,756 s) are printed next to ours as ratios.
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

METHODS = ("edge_pruning", "acdc", "eap", "eap_ig")
# The same shape as bench/run.py's GPT2_SMALL (kept here so this script does not import that one).
GPT2_SMALL = dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072,
                  n_positions=1024, norm="layernorm", activation="gelu_tanh", causal=True)
PAPER_SECONDS = {"acdc": 18783.0, "eap": 21.0, "edge_pruning": 2756.0}  # 200 IOI examples, one H100
PAPER_STEPS = 3000
DEFAULT_COMPARE_JSON = ROOT / "out" / "compare" / "compare.json"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _fmt_s(x) -> str:
    if x is None:
        return "-"
    if x >= 3600:
        return f"{x:,.0f} s ({x / 3600:.1f} h)"
    return f"{x:,.1f} s" if x >= 10 else f"{x:.3g} s"


# ------------------------------------------------------------------ library
def bench_library(compare_json: Path, threads: int) -> dict:
    """Per-program and total seconds per method, from (or by running) groundtruth.compare."""
    if not compare_json.exists():
        import torch

        from groundtruth.compare import compare

        print(f"{compare_json} not found: running groundtruth.compare (zero ablation, seed 0) first", flush=True)
        torch.set_num_threads(threads)
        compare(",".join(METHODS), "zero", seed=0, out_dir=compare_json.parent, quiet=True)
    report = json.loads(compare_json.read_text())
    if report.get("ablation") != "zero" or report.get("seed") != 0:
        print(f"warning: {compare_json} is for ablation {report.get('ablation')!r}, seed {report.get('seed')!r} "
              f"(this benchmark means zero, 0)")
    methods = [m for m in METHODS if m in report["methods"]]
    per_program: dict[str, dict[str, float]] = {}
    for row in report["rows"]:
        per_program.setdefault(row["program"], {})[row["method"]] = row["seconds"]
    totals = {m: round(sum(p.get(m, 0.0) for p in per_program.values()), 2) for m in methods}
    print(f"\nLibrary, zero ablation, seed 0 (measured; the 'seconds' column of {compare_json}):\n")
    print("| program | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for name, secs in per_program.items():
        print(f"| {name} | " + " | ".join(f"{secs[m]:.2f}" if m in secs else "-" for m in methods) + " |")
    print("| **total** | " + " | ".join(f"**{totals[m]:.1f}**" for m in methods) + " |")
    if report.get("skipped"):
        print(f"\n(skipped, empty zero-ablation ground truth: {', '.join(report['skipped'])})")
    return {"source": str(compare_json), "ablation": report.get("ablation"), "seed": report.get("seed"),
            "programs": per_program, "total_seconds": totals}


# --------------------------------------------------------------------- gpt2
def _gpt2_setup(n: int, seed: int):
    import torch

    from prune.model import Transformer, TransformerConfig
    from prune.tasks import gpt2_tokenizer, make_task

    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(**GPT2_SMALL))
    with torch.no_grad():  # GPT-2-like init: matrices N(0, 0.02), norms 1, biases 0 (the zeros/ones as built)
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.02)
    model.requires_grad_(False)
    task = make_task("ioi", gpt2_tokenizer(), n, seed)
    return model, task.examples


class _Clock:
    """Wall and process CPU time (all threads) of a block; CPU time is steadier on a shared machine."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _median_clock(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls after one uncounted warm-up call."""
    walls, cpus = [], []
    for _ in range(repeats + 1):
        with _Clock() as c:
            fn()
        walls.append(c.wall)
        cpus.append(c.cpu)
    return statistics.median(walls[1:]), statistics.median(cpus[1:])


def _measure_gpt2(method: str, opts: dict) -> dict:
    """Runs in a child process: one method's timings on the GPT-2-small-shaped model.

    Returns ``unit`` (what was timed), ``wall``/``cpu`` of the measured parts,
    and ``full_wall_s``/``full_cpu_s`` of a complete run, ``full`` saying
    whether that is ``measured`` or ``extrapolated`` and ``how``.
    """
    import torch

    torch.set_num_threads(opts["threads"])
    with _Clock() as c:
        model, examples = _gpt2_setup(opts["n"], opts["seed"])
    n_edges = model.graph.n_edges
    out = {"method": method, "n_examples": len(examples), "seq_len": int(examples.clean.shape[1]),
           "n_edges": n_edges, "model_and_task_s": round(c.wall, 2), "loadavg_at_start": os.getloadavg()}
    ablation = "resample"
    if method in ("eap", "eap_ig"):
        from prune.baselines import eap, eap_ig

        kw = {"ablation": ablation, "top_k": opts["top_k"], "batch_size": opts["eap_batch"], "finalize": "own"}
        if method == "eap_ig":
            kw["steps"] = opts["ig_steps"]
        with _Clock() as c:
            circuit = (eap if method == "eap" else eap_ig)(model, examples, **kw)
        how = f"complete run, top-{opts['top_k']} circuit" + (
            f", {opts['ig_steps']} IG steps" if method == "eap_ig" else "")
        out.update(unit="whole run", unit_wall_s=c.wall, unit_cpu_s=c.cpu, edges=len(circuit),
                   full="measured", full_wall_s=c.wall, full_cpu_s=c.cpu, how=how)
    elif method == "acdc":
        from prune.evaluate import Evaluator

        with _Clock() as setup, torch.no_grad():
            evaluator = Evaluator(model, examples, ablation)
        mask = torch.ones(n_edges)
        removed = iter(range(n_edges - 1, -1, -1))

        def evaluate():  # as ACDC does per edge: one more edge removed, the circuit's faithfulness
            mask[next(removed)] = 0.0
            with torch.no_grad():
                evaluator.faithfulness(mask)

        wall, cpu = _median_clock(evaluate, opts["acdc_evals"])
        evals = n_edges + 1
        out.update(unit=f"one edge evaluation (median of {opts['acdc_evals']})", unit_wall_s=wall, unit_cpu_s=cpu,
                   setup_wall_s=setup.wall, setup_cpu_s=setup.cpu, full="extrapolated",
                   full_wall_s=setup.wall + evals * wall, full_cpu_s=setup.cpu + evals * cpu,
                   how=f"setup + {evals:,} evaluations (one per edge, plus the full circuit), one tau")
    elif method == "edge_pruning":
        from prune.edge_pruning import EdgePruner, language_model_config

        config = language_model_config(opts["target_sparsity"], steps=PAPER_STEPS)
        with _Clock() as setup:
            pruner = EdgePruner(model, examples, ablation=ablation, seed=opts["seed"], config=config)
        wall, cpu = _median_clock(pruner.step, opts["ep_steps"])
        with _Clock() as binarise:
            circuit = pruner.circuit()  # finalize="own": log_alpha > 0, dead ends dropped
        out.update(unit=f"one training step (median of {opts['ep_steps']})", unit_wall_s=wall, unit_cpu_s=cpu,
                   setup_wall_s=setup.wall, setup_cpu_s=setup.cpu, binarise_wall_s=binarise.wall,
                   config={k: getattr(config, k) for k in ("batch_size", "shared_gates", "samples", "score_function",
                                                            "finalize", "target_sparsity")},
                   edges_after_steps=len(circuit), full="extrapolated",
                   full_wall_s=setup.wall + PAPER_STEPS * wall + binarise.wall,
                   full_cpu_s=setup.cpu + PAPER_STEPS * cpu + binarise.cpu,
                   how=f"setup + {PAPER_STEPS:,} steps (the paper's IOI run) + binarisation; "
                       f"no evaluation or checkpoints")
    else:
        raise ValueError(f"unknown method {method!r}")
    out["peak_rss_gib"] = round(peak_rss_gib(), 2)
    return out


def _child(method: str, opts: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "_child", method, json.dumps(opts)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"method": method, "error": " | ".join(tail) or f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_gpt2(opts: dict, methods=METHODS) -> dict:
    results = {}
    for method in methods:
        print(f"gpt2: {method} ...", file=sys.stderr, flush=True)
        results[method] = _child(method, opts)
    first = next((r for r in results.values() if "error" not in r), None)
    print(f"\nGPT-2-small-shaped model, random weights: {first['n_edges'] if first else '?'} edges; "
          f"{opts['n']} IOI examples (length {first['seq_len'] if first else '?'}), resample ablation; "
          f"{opts['threads']} torch thread(s). Wall and process CPU seconds (CPU: all threads):\n")
    print("| method | measured unit | unit wall / CPU | setup wall | full run wall | full run CPU | full run is "
          "| peak RSS |")
    print("|---|---|---|---|---:|---:|---|---:|")
    for method, r in results.items():
        if "error" in r:
            print(f"| {method} | failed: {r['error']} | | | | | | |")
            continue
        setup = _fmt_s(r["setup_wall_s"]) if "setup_wall_s" in r else "(in the run)"
        print(f"| {method} | {r['unit']} | {_fmt_s(r['unit_wall_s'])} / {_fmt_s(r['unit_cpu_s'])} | {setup} | "
              f"{_fmt_s(r['full_wall_s'])} | {_fmt_s(r['full_cpu_s'])} | **{r['full']}**: {r['how']} | "
              f"{r['peak_rss_gib']} GiB |")
    ok = {m: r for m, r in results.items() if "error" not in r}
    pairs = [("acdc", "edge_pruning"), ("edge_pruning", "eap"), ("acdc", "eap"), ("eap_ig", "eap")]
    print("\nCost ratios of full runs (ours extrapolated where the table says so; "
          "paper: 200 IOI examples, one H100):\n")
    print("| ratio | ours, wall | ours, CPU | paper |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for a, b in pairs:
        if a in ok and b in ok:
            paper = PAPER_SECONDS[a] / PAPER_SECONDS[b] if a in PAPER_SECONDS and b in PAPER_SECONDS else None
            ratios[f"{a}/{b}"] = {"wall": ok[a]["full_wall_s"] / ok[b]["full_wall_s"],
                                  "cpu": ok[a]["full_cpu_s"] / ok[b]["full_cpu_s"], "paper": paper}
            q = ratios[f"{a}/{b}"]
            print(f"| {a} / {b} | {q['wall']:,.1f} | {q['cpu']:,.1f} | "
                  f"{'-' if paper is None else f'{paper:,.1f}'} |")
    return {"options": opts, "results": results, "ratios": ratios, "paper_seconds": PAPER_SECONDS}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        print(json.dumps(_measure_gpt2(argv[1], json.loads(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["library", "gpt2", "all"], nargs="?", default="all")
    parser.add_argument("--compare-json", type=Path, default=DEFAULT_COMPARE_JSON)
    parser.add_argument("--n", type=int, default=32, help="IOI examples in the batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=1105, help="EAP/EAP-IG circuit size (1,105 = 96.6%% sparsity)")
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--eap-batch", type=int, default=32, help="EAP/EAP-IG examples per backward pass (memory)")
    parser.add_argument("--acdc-evals", type=int, default=10, help="timed ACDC edge evaluations")
    parser.add_argument("--ep-steps", type=int, default=5, help="timed Edge Pruning steps (after one warm-up)")
    parser.add_argument("--target-sparsity", type=float, default=0.966, help="Edge Pruning's target (Table 1 level)")
    parser.add_argument("--methods", default=",".join(METHODS), help="gpt2 part: comma-separated methods")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: on a shared machine two threads spin-wait)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for name in ("n", "ig_steps", "acdc_evals", "ep_steps", "threads", "top_k", "eap_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    report = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0],
                          "loadavg_at_start": os.getloadavg()}}
    if args.part in ("library", "all"):
        report["library"] = bench_library(args.compare_json, args.threads)
    if args.part in ("gpt2", "all"):
        opts = {k: getattr(args, k) for k in ("n", "seed", "top_k", "ig_steps", "eap_batch", "acdc_evals", "ep_steps",
                                              "threads", "target_sparsity")}
        methods = [m for m in args.methods.split(",") if m]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        report["gpt2"] = bench_gpt2(opts, methods)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwritten: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
