"""The memory plan (prune.plan) against the measured peak of Edge Pruning steps, on CPU.

    .venv/bin/python bench/plan.py [--recompute-reads] [--json out/plan.json]

Each configuration runs in its own process: it records its resident memory after importing torch and
this package (the plan's ``runtime``), builds a random-weight model of the configuration (on the meta
device, then materialised, so no second copy exists), makes ``N`` random examples, runs three
``EdgePruner(...).step()`` (``language_model_config``, resample ablation) and reports its peak resident
memory (``ru_maxrss``). The plan is computed from the configuration alone. Float32 only: on CPU the
half-precision step is partly computed in float32 (the plan refuses it there).

    .venv/bin/python bench/plan.py --nproc 2 [--json out/plan-sharded.json]

Sharded (FSDP, gloo): each configuration runs as 2 ranks under torchrun's launcher, one torch thread
each. Every rank records its resident memory after imports (the plan's ``runtime``), builds the model
on the meta device, materialises it with a fixed seed (both ranks hold the same weights),
``prune.sharding.shard``-s it, makes the same examples, constructs the ``EdgePruner`` (batch = every
example, so each rank runs its own ``N / 2`` per step) and runs three steps. The peak resident size
(VmHWM) is reset (``/proc/self/clear_refs``) after sharding, and again after the pruner is built (its
reference logits and ablated writers stay resident, but its start-up passes and the weight fingerprint,
which gathers every weight whole, are not part of a step): the steps' own peak is compared with
``plan_step(cfg, batch=N / 2, nproc=2, examples=N)``. The process peak is the largest of the three
parts' peaks (loading: the whole model materialised before ``fully_shard`` keeps its share, which the
plan does not count; building the pruner; the steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPT2 = {"norm": "layernorm", "activation": "gelu_tanh"}
LLAMA = {"norm": "rmsnorm", "activation": "silu", "gated_mlp": True, "positional": "rotary", "attn_bias": False,
         "attn_out_bias": False, "mlp_bias": False}
# glibc's malloc keeps freed blocks below its mmap threshold in the heap, and raises that threshold (up
# to 32 MiB) as large blocks are freed: the resident size then counts freed tensors as well as live ones,
# by an amount that depends on the order of allocations, not on the step. A fixed 1 MiB threshold hands
# every tensor of 1 MiB or more back to the system when it is freed, so the peak is that of live memory.
ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
KEEP_FREED = "BENCH_PLAN_KEEP_FREED"  # --malloc kept: the child calls prune.allocator.keep_freed_memory first
CASES = [  # (name, config, batch, seq, examples)
    ("gpt2-like 6x8x512", {"vocab_size": 10000, "d_model": 512, "n_layers": 6, "n_heads": 8, "d_head": 64,
                           "d_mlp": 2048, "n_positions": 128, **GPT2}, 16, 64, 16),
    ("gpt2-like 6x8x512, 64 examples", {"vocab_size": 10000, "d_model": 512, "n_layers": 6, "n_heads": 8,
                                        "d_head": 64, "d_mlp": 2048, "n_positions": 128, **GPT2}, 16, 64, 64),
    ("llama-like 4x8x256, GQA 2", {"vocab_size": 8000, "d_model": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 2,
                                   "d_head": 32, "d_mlp": 688, "n_positions": 256, **LLAMA}, 16, 128, 16),
    ("llama-like 8x8x512, GQA 4", {"vocab_size": 16000, "d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 4,
                                   "d_head": 64, "d_mlp": 1376, "n_positions": 256, **LLAMA}, 8, 128, 8),
    ("GPT-2 small", {"vocab_size": 50257, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_head": 64,
                     "d_mlp": 3072, "n_positions": 1024, **GPT2}, 8, 32, 8),
    ("GPT-2 small", {"vocab_size": 50257, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_head": 64,
                     "d_mlp": 3072, "n_positions": 1024, **GPT2}, 32, 64, 32),
]
# Sharded: (name, config, seq, examples); the batch is every example, so each of 2 ranks runs N / 2 per step.
SHARDED_CASES = [
    ("gpt2-like 6x8x512", CASES[0][1], 64, 32),
    ("llama-like 4x8x256, GQA 2", CASES[2][1], 128, 32),
    ("llama-like 8x8x512, GQA 4", CASES[3][1], 128, 16),
    ("GPT-2 small", CASES[4][1], 32, 16),
    ("GPT-2 small", CASES[4][1], 64, 32),
    ("GPT-2 small, a tiny batch", CASES[4][1], 16, 2),  # the forward's root gather exceeds the backward's peak
]


def _random_model(cfg):
    """A random-weight model of ``cfg``, built on the meta device and then materialised (no second copy)."""
    import torch

    from prune.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def _random_examples(cfg, n: int, seq: int):
    """``n`` random prompts of ``seq`` tokens (seeded), each answered at its last position."""
    import torch

    from prune.data import Examples

    g = torch.Generator().manual_seed(0)
    valid = torch.ones(n, seq, dtype=torch.bool)
    answer = torch.zeros_like(valid)
    answer[:, -1] = True
    return Examples(clean=torch.randint(0, cfg.vocab_size, (n, seq), generator=g),
                    corrupted=torch.randint(0, cfg.vocab_size, (n, seq), generator=g), valid=valid, answer=answer)


def child(config: dict, batch: int, seq: int, examples: int, recompute_reads: bool = False) -> dict:
    import torch

    from prune.edge_pruning import EdgePruner, language_model_config
    from prune.model import TransformerConfig
    from prune.plan import plan_step, process_resident_bytes

    if os.environ.get(KEEP_FREED):  # as `prune run` does: freed memory stays resident (prune.allocator)
        from prune.allocator import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(2)
    runtime = process_resident_bytes()
    cfg = TransformerConfig(**config)
    plan = plan_step(cfg, batch=batch, seq=seq, examples=examples, runtime_bytes=runtime,
                     recompute_reads=recompute_reads)
    model = _random_model(cfg)
    ex = _random_examples(cfg, examples, seq)
    pruner = EdgePruner(model, ex, ablation="resample", seed=0,
                        config=language_model_config(0.9, steps=10**6, batch_size=batch,
                                                     recompute_reads=recompute_reads))
    for _ in range(3):
        pruner.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak, "plan_bytes": plan.total, "items": plan.items}


def _status_bytes(key: str) -> int:
    """``key`` (VmRSS, VmHWM) of this process's ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    """Reset this process's peak resident size (VmHWM) to its resident size now (Linux: clear_refs 5)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def sharded_child(config: dict, seq: int, examples: int, out_dir: str) -> None:
    """One rank of a sharded measurement (module doc); writes ``rank-R.json`` into ``out_dir``."""
    import torch

    from prune import sharding
    from prune.edge_pruning import EdgePruner, language_model_config
    from prune.model import TransformerConfig
    from prune.plan import plan_step, process_resident_bytes

    torch.set_num_threads(1)
    runtime = process_resident_bytes()
    rank, ranks = sharding.init_from_environment()
    after_init = process_resident_bytes()
    cfg = TransformerConfig(**config)
    per_rank = examples // ranks
    plan = plan_step(cfg, batch=per_rank, seq=seq, nproc=ranks, examples=examples, runtime_bytes=runtime)
    torch.manual_seed(0)  # the same weights on every rank
    model = sharding.shard(_random_model(cfg))
    ex = _random_examples(cfg, examples, seq)
    load_peak = _status_bytes("VmHWM")  # imports, the whole model materialised, then sharded
    _reset_peak()
    after_shard = process_resident_bytes()
    pruner = EdgePruner(model, ex, ablation="resample", seed=0,
                        config=language_model_config(0.9, steps=10**6, batch_size=examples))
    setup_peak = _status_bytes("VmHWM")
    _reset_peak()
    before_steps = process_resident_bytes()
    start = time.perf_counter()
    for _ in range(3):
        pruner.step()
    seconds = (time.perf_counter() - start) / 3
    step_peak = _status_bytes("VmHWM")
    # Resetting VmHWM resets ru_maxrss too (Linux takes it from the same high-water mark): the process's peak
    # is the largest of the three parts' peaks.
    record = {"rank": rank, "ranks": ranks, "runtime_bytes": runtime, "after_process_group_bytes": after_init,
              "load_peak_bytes": load_peak, "after_shard_bytes": after_shard, "setup_peak_bytes": setup_peak,
              "before_steps_bytes": before_steps, "step_peak_bytes": step_peak,
              "process_peak_bytes": max(load_peak, setup_peak, step_peak),
              "seconds_per_step": seconds, "plan_bytes": plan.total, "items": plan.items}
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(record))


def _measure_sharded(case: list, nproc: int) -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(nproc), "--max-restarts", "0", __file__, "_sharded", json.dumps([*case, out])],
                       capture_output=True, text=True, cwd=ROOT, check=True,
                       env={**os.environ, **ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        return [json.loads(Path(out, f"rank-{r}.json").read_text()) for r in range(nproc)]


def main_sharded(nproc: int, json_path: Path | None) -> int:
    load = os.getloadavg()[0]
    rows = []
    for name, config, seq, n in SHARDED_CASES:
        ranks = _measure_sharded([config, seq, n], nproc)
        for r in ranks:
            r["error"] = r["plan_bytes"] / r["step_peak_bytes"] - 1
        rows.append({"name": name, "config": config, "batch_per_rank": n // nproc, "seq": seq, "examples": n,
                     "plan_bytes": ranks[0]["plan_bytes"], "ranks": ranks})
        print(f"{name}, {n // nproc} x {seq} per rank, {n} examples: planned {ranks[0]['plan_bytes'] / 2**30:.3f} GiB; "
              + "; ".join(f"rank {r['rank']}: step peak {r['step_peak_bytes'] / 2**30:.3f} GiB "
                          f"({100 * r['error']:+.1f}%), process peak {r['process_peak_bytes'] / 2**30:.3f} GiB"
                          for r in ranks), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {"command": f"bench/plan.py --nproc {nproc}", "commit": commit.stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "load_average_at_start": load,
              "machine": f"{os.cpu_count()} cores, {platform.machine()}", "threads": 1, "nproc": nproc,
              "rows": rows}
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(abs(r["error"]) <= 0.15 for row in rows for r in row["ranks"]) else 1


def _measure(case: list, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", json.dumps(case)], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main_kept(json_path: Path | None, recompute_reads: bool = False) -> int:
    """The resident peak of each case with freed memory kept (``prune.allocator``), over its plan: what
    ``prune run``'s ``SLACK`` must cover. Exit 1 when a ratio exceeds that ``SLACK``."""
    from prune.cli import SLACK

    slack = SLACK[recompute_reads]
    load = os.getloadavg()[0]
    rows = []
    for name, config, batch, seq, n in CASES:
        r = _measure([config, batch, seq, n, recompute_reads], {KEEP_FREED: "1"})
        r.update(name=name, config=config, batch=batch, seq=seq, examples=n, ratio=r["peak_bytes"] / r["plan_bytes"])
        rows.append(r)
        print(f"{name}, batch {batch} x {seq}, {n} examples: resident peak with freed memory kept "
              f"{r['peak_bytes'] / 2**30:.3f} GiB, planned {r['plan_bytes'] / 2**30:.3f} GiB: "
              f"{r['ratio']:.3f}x the plan", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {"command": "bench/plan.py --malloc kept" + (" --recompute-reads" if recompute_reads else ""),
              "commit": commit.stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "load_average_at_start": load,
              "machine": f"{os.cpu_count()} cores, {platform.machine()}", "threads": 2, "slack": slack, "rows": rows}
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(r["ratio"] <= slack for r in rows) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--nproc", type=int, default=1, help="ranks: above 1, the sharded (FSDP) cases")
    p.add_argument("--malloc", choices=["fixed", "kept"], default="fixed",
                   help="kept: only the resident peak with freed memory kept, as prune run's (its SLACK)")
    p.add_argument("--recompute-reads", action="store_true",
                   help="the steps recompute the reader inputs in backward (EdgePruningConfig.recompute_reads)")
    args = p.parse_args(argv)
    if args.recompute_reads and args.nproc > 1:
        p.error("--recompute-reads is measured single-process only")
    if args.nproc > 1:
        return main_sharded(args.nproc, args.json)
    if args.malloc == "kept":
        return main_kept(args.json, args.recompute_reads)
    load = os.getloadavg()[0]
    rows = []
    for name, config, batch, seq, n in CASES:
        case = [config, batch, seq, n, args.recompute_reads]
        r = _measure(case, ENV)
        r.update(name=name, config=config, batch=batch, seq=seq, examples=n,
                 error=r["plan_bytes"] / r["peak_bytes"] - 1,
                 peak_bytes_default_malloc=_measure(case, {})["peak_bytes"])
        rows.append(r)
        print(f"{name}, batch {batch} x {seq}, {n} examples: measured {r['peak_bytes'] / 2**30:.3f} GiB "
              f"({r['peak_bytes_default_malloc'] / 2**30:.3f} GiB with glibc's default threshold), planned "
              f"{r['plan_bytes'] / 2**30:.3f} GiB ({100 * r['error']:+.1f}%)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    command = "bench/plan.py" + (" --recompute-reads" if args.recompute_reads else "")
    record = {"command": command, "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d"),
              "load_average_at_start": load, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
              "threads": 2, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(abs(r["error"]) <= 0.15 for r in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        sys.exit(0)
    if sys.argv[1:2] == ["_sharded"]:
        sharded_child(*json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
