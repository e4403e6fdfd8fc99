"""Two variants of the Edge Pruning step, alternated in one process: a comparison that process-to-process
noise does not swamp.

    .venv/bin/python bench/step_ab.py --model llama --compare lookahead [--tie-kv] [--rounds 4] [--json F]
    .venv/bin/python bench/step_ab.py --model gpt2 --compare recompute_reads

The same pruner as ``bench/run.py step`` (random-weight ``gpt2`` or ``llama`` shape, resample ablation,
``language_model_config``, batch 32 x 64 unless ``--shape``) takes one warm-up step, then ``--rounds``
rounds of one step per variant, in turn; each variant's median is reported. On this machine one process's
step time differs from another's by up to 10%, more than the changes compared here, while steps within
one process differ by 2-4%.

- ``lookahead``: each layer's attention read also reads the MLP's writers (``_ReadWriters``'s
  ``lookahead``, the default) against every read covering its own writers (as before it).
- ``recompute_reads``: ``EdgePruningConfig(recompute_reads=True)`` against the default (inputs kept).
  Peak memory cannot be compared in one process: ``bench/run.py step --recompute-reads`` measures it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["gpt2", "llama"], default="llama")
    p.add_argument("--compare", choices=["lookahead", "recompute_reads"], required=True)
    p.add_argument("--tie-kv", action="store_true")
    p.add_argument("--shape", default="32x64", help="batch x length")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        B, S = (int(v) for v in args.shape.split("x"))
    except ValueError:
        p.error(f"--shape {args.shape!r}: give batch x length, e.g. 32x64")
    if args.rounds < 1 or B < 1 or S < 1:
        p.error("--rounds and the shape must be positive")

    from prune.allocator import keep_freed_memory

    keep_freed_memory()  # as bench/run.py step and prune run
    import torch
    from run import SHAPES

    import prune._masked_read as masked_read
    from prune.data import Examples
    from prune.edge_pruning import EdgePruner, language_model_config
    from prune.model import Transformer, TransformerConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(**SHAPES[args.model])
    model = Transformer(cfg)
    with torch.no_grad():
        for name, w in model.named_parameters():
            w.normal_(0, 0.02)
            if name.endswith(".weight") and (".ln" in name or name.startswith("ln_f.")):
                w.fill_(1.0)
    V = cfg.vocab_size
    valid = torch.ones(B, S, dtype=torch.bool)
    answer = torch.zeros_like(valid)
    answer[:, -1] = True
    examples = Examples(clean=torch.randint(0, V, (B, S)), corrupted=torch.randint(0, V, (B, S)), valid=valid,
                        answer=answer)
    pruner = EdgePruner(model, examples, ablation="resample", seed=0,
                        config=language_model_config(0.9, steps=10**6, batch_size=B, tie_kv=args.tie_kv))
    read = masked_read._Residual.read
    base_cfg = pruner.cfg

    def use(variant: str) -> None:
        if args.compare == "lookahead":
            masked_read._Residual.read = read if variant == "with" else (
                lambda self, readers, lookahead=False: read(self, readers))
        else:
            pruner.cfg = dataclasses.replace(base_cfg, recompute_reads=variant == "with")

    times = {"with": [], "without": []}
    use("with")
    pruner.step()  # warm-up
    for _ in range(args.rounds):
        for variant, out in times.items():
            use(variant)
            t = time.perf_counter()
            pruner.step()
            out.append(time.perf_counter() - t)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model}{' tie_kv' if args.tie_kv else ''} {B}x{S}, {args.threads} threads: step with "
          f"{args.compare} {medians['with']:.3f} s, without {medians['without']:.3f} s "
          f"({medians['with'] / medians['without']:.3f}x); per round: "
          + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(times["with"], times["without"], strict=True)))
    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join(["bench/step_ab.py", *(argv if argv is not None else sys.argv[1:])]),
            "model": args.model, "tie_kv": args.tie_kv, "shape": [B, S], "threads": args.threads,
            "compare": args.compare, "seconds": times, "medians": medians,
            "load_average_at_end": os.getloadavg()[0]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
