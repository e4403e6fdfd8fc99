"""The memory plan (prune.plan) against the measured peak of Edge Pruning steps, on CPU.

    .venv/bin/python bench/plan.py [--json out/plan.json]

Each configuration runs in its own process: it records its resident memory after importing torch and
this package (the plan's ``runtime``), builds a random-weight model of the configuration (on the meta
device, then materialised, so no second copy exists), makes ``N`` random examples, runs three
``EdgePruner(...).step()`` (``language_model_config``, resample ablation) and reports its peak resident
memory (``ru_maxrss``). The plan is computed from the configuration alone. Float32 only: on CPU the
half-precision step is partly computed in float32 (the plan refuses it there).
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


def child(config: dict, batch: int, seq: int, examples: int) -> dict:
    import torch

    from prune.data import Examples
    from prune.edge_pruning import EdgePruner, language_model_config
    from prune.model import Transformer, TransformerConfig
    from prune.plan import plan_step, process_resident_bytes

    torch.set_num_threads(2)
    runtime = process_resident_bytes()
    cfg = TransformerConfig(**config)
    plan = plan_step(cfg, batch=batch, seq=seq, examples=examples, runtime_bytes=runtime)
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    valid = torch.ones(examples, seq, dtype=torch.bool)
    answer = torch.zeros_like(valid)
    answer[:, -1] = True
    ex = Examples(clean=torch.randint(0, V, (examples, seq), generator=g),
                  corrupted=torch.randint(0, V, (examples, seq), generator=g), valid=valid, answer=answer)
    pruner = EdgePruner(model, ex, ablation="resample", seed=0,
                        config=language_model_config(0.9, steps=10**6, batch_size=batch))
    for _ in range(3):
        pruner.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak, "plan_bytes": plan.total, "items": plan.items}


def _measure(case: list, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", json.dumps(case)], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for name, config, batch, seq, n in CASES:
        r = _measure([config, batch, seq, n], ENV)
        r.update(name=name, config=config, batch=batch, seq=seq, examples=n,
                 error=r["plan_bytes"] / r["peak_bytes"] - 1,
                 peak_bytes_default_malloc=_measure([config, batch, seq, n], {})["peak_bytes"])
        rows.append(r)
        print(f"{name}, batch {batch} x {seq}, {n} examples: measured {r['peak_bytes'] / 2**30:.3f} GiB "
              f"({r['peak_bytes_default_malloc'] / 2**30:.3f} GiB with glibc's default threshold), planned "
              f"{r['plan_bytes'] / 2**30:.3f} GiB ({100 * r['error']:+.1f}%)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {"command": "bench/plan.py", "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d"),
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
    sys.exit(main())
