"""A memory plan for one Edge Pruning step, from a model's config alone (no weights loaded).

``plan_step(config, batch=B, seq=S, dtype=..., nproc=N)`` itemises what one
masked step (:meth:`prune.edge_pruning.EdgePruner.step`, resample ablation,
the whole step's autograd graph alive at the start of the backward pass)
holds per rank, in bytes:

- ``weights``: every parameter, frozen (Edge Pruning trains no weight), so
  there are no weight gradients or optimizer state. With ``nproc > 1``,
  FSDP's full sharding (``fully_shard`` per block, then the model:
  :func:`prune.sharding.shard`) holds ``1/nproc`` of them, plus, gathered
  whole: the model's own unit (embeddings, final norm, unembedding), which
  FSDP keeps gathered from the forward pass to the end of the backward (it
  does not reshard the root unit after the forward); and two blocks in the
  backward pass, the one running and the next, prefetched. Measured
  (``bench/plan.py --nproc 2``): at the step's peak, every rank holds those
  gathered weights and no more.
- ``FSDP forward gather`` (``nproc > 1`` only): in the forward pass FSDP
  keeps a unit's all-gather buffer (a second copy of its weights) until the
  next unit is gathered, so the root unit is held twice while the first
  block is gathered, before any activation is kept. That moment exceeds the
  backward's peak by the root unit less what only the backward holds (the
  gradient buffer, reader inputs, attention, MLP, backward transient and the
  answer logits' float32 softmax and gradient), when that is positive: a
  small batch of a large vocabulary. The item is that excess, so the total
  is the larger of the two moments.
- ``writer stack``: every writer's output ``[W, B, S, D]`` (W = 1 + L (H + 1)).
- ``gradient buffer``: the writers' gradients, accumulated in place ``[W, B, S, D]``.
- ``ablated writers``: resample: the writers on each corrupted prompt of this
  rank's examples ``[W, N / nproc, S, D]``, computed once; mean: ``[W, 1, S, D]``;
  zero: none.
- ``reader inputs``: each layer's ``3H`` query, key and value inputs and its
  MLP input as read from the stack, kept by the norm for its backward
  (``(3H + 1) B S D`` per layer). The projections' weights are frozen, so
  autograd keeps none of their inputs (the normed copies). With
  ``recompute_reads``, only the MLP's input and the ablated writers' sum the
  attention read took, to redo it (``2 B S D`` per layer under resample ablation).
- ``attention``: queries, keys, values and head outputs ``4 B H S E`` and the
  attention probabilities ``B H S S`` per layer.
- ``mlp``: the hidden activations kept for backward: the activation's input
  ``B S F`` per layer (gated: the gate's input, its activation and the up
  projection, ``3 B S F``).
- ``backward transient``: the largest gradients alive at once besides the
  buffer: one layer's reader-input gradient and the norm's intermediate,
  ``2 (3H + 1) B S D``; with ``recompute_reads``, also that layer's recomputed
  inputs, ``3 (3H + 1) B S D``, and with a norm that does not fold into the
  projections (a layer norm, an RMS norm in half precision) its normed output
  too, ``4 (3H + 1) B S D``.
- ``logits``: the answer positions' logits and their softmax and gradient in
  float32 ``3 B V``, and the full model's reference logits ``N V``.
- ``masks and optimizer``: the log-alphas with their gradient and Adam's two
  moments (float32), and the dense ``[W, R]`` mask and its gradients.
- ``runtime``: what a process holds before any of this (CPU: Python, torch
  and this package, measured as the planning process's own resident memory
  unless given; CUDA: the context, ``cuda_context_gib``).

Validated against measured peaks by ``bench/plan.py`` (``bench/results/plan.md``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from prune.graph import Graph
from prune.model import TransformerConfig

__all__ = ["MemoryPlan", "plan_step", "largest_batch", "process_resident_bytes", "read_config", "SHIPPED"]

GIB = 2**30
_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}


def process_resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank of one Edge Pruning step, item by item (module doc)."""

    batch: int
    seq: int
    dtype: str
    nproc: int
    examples: int
    ablation: str
    device: str
    items: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def fits(self, budget_bytes: int) -> bool:
        return self.total <= budget_bytes

    def table(self) -> str:
        width = max(len(k) for k in self.items)
        rows = [f"  {k:<{width}}  {v / GIB:9.3f} GiB" for k, v in self.items.items()]
        return "\n".join([*rows, f"  {'total per rank':<{width}}  {self.total / GIB:9.3f} GiB"])


def _check(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def plan_step(cfg: TransformerConfig, *, batch: int, seq: int, dtype: torch.dtype = torch.float32,
              nproc: int = 1, examples: int | None = None, ablation: str = "resample", device: str = "cpu",
              runtime_bytes: int | None = None, cuda_context_gib: float = 0.5,
              recompute_reads: bool = False) -> MemoryPlan:
    """The memory plan of one step (module doc). ``examples``: the data set's size (default ``batch *
    nproc``: every rank's batch is its whole share), which resample ablation holds writers for.
    ``recompute_reads``: the step recomputes the attention reader inputs in backward (``EdgePruningConfig``)."""
    from prune.loaders import estimate_params

    B, S, P = _check("batch", batch), _check("seq", seq), _check("nproc", nproc)
    N = B * P if examples is None else _check("examples", examples)
    if N % P:
        raise ValueError(f"{N} examples do not divide among {P} ranks; give a multiple of {P}")
    if N // P < B:
        raise ValueError(f"each rank's {N // P} examples are fewer than its batch of {B}")
    if seq > cfg.n_positions:
        raise ValueError(f"seq {seq} exceeds the model's {cfg.n_positions} positions")
    if dtype not in _BYTES:
        raise ValueError(f"dtype {dtype} has no plan; choose one of {sorted(str(d) for d in _BYTES)}")
    if device == "cpu" and dtype in (torch.bfloat16, torch.float16):
        # Measured (bench/results/plan.md): torch's CPU kernels compute much of such a step in float32,
        # so a bf16 step there holds more than this plan counts, more even than the float32 step.
        raise ValueError(f"a {str(dtype).removeprefix('torch.')} plan is for a GPU (device='cuda'; prune plan "
                         f"--gpu-memory GiB); on CPU the half-precision step is partly computed in float32 and "
                         f"this plan would under-count")
    if ablation not in ("zero", "mean", "resample"):
        raise ValueError(f"unknown ablation {ablation!r}; choose zero, mean or resample")
    b = _BYTES[dtype]
    L, H, D, E, F, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.out_size
    W = 1 + L * (H + 1)  # writers
    R = L * (3 * H + 1) + 1  # readers
    n_edges = Graph(n_layers=L, n_heads=H).n_edges
    params = estimate_params(cfg)
    # The model's own FSDP unit (prune.sharding.shard): embeddings, final norm and unembedding; the rest is blocks.
    root = (cfg.vocab_size * D + (cfg.n_positions * D if cfg.positional == "learned" else 0)
            + {"none": 0, "rmsnorm": D, "layernorm": 2 * D}[cfg.norm] + V * D + V * cfg.unembed_bias)
    per_block = (params - root) // L
    weights = params * b if P == 1 else (math.ceil(params / P) + root + 2 * per_block) * b
    stack = W * B * S * D * b
    ablated = {"zero": 0, "mean": W * S * D * b, "resample": W * (N // P) * S * D * b}[ablation]
    reads = (3 * H + 1) * B * S * D * b  # one layer's reader inputs
    # Reader-input-sized gradients alive at once in a layer's backward (module doc). Recomputed, the
    # layer's inputs are made again there; a norm that does not fold into the projections (a layer norm,
    # an RMS norm in half precision) also remakes its normed output and takes its input gradient from the
    # projections: 4, against 3 for an RMS norm folded into them (float32, float64).
    folds = cfg.norm == "rmsnorm" and dtype in (torch.float32, torch.float64)
    # Recomputed: the MLP's input, and the sum of the ablated writers the read took (kept to redo it).
    kept_sum = {"zero": 0, "mean": S * D * b, "resample": B * S * D * b}[ablation]
    transient = (3 if folds else 4) if recompute_reads else 2
    items = {
        "weights": weights,
        "weight gradients and optimizer": 0,
        "writer stack": stack,
        "gradient buffer": stack,
        "ablated writers": ablated,
        "reader inputs": L * (B * S * D * b + kept_sum if recompute_reads else reads),
        "attention": L * (4 * B * H * S * E + B * H * S * S) * b,
        "mlp": L * (3 if cfg.gated_mlp else 1) * B * S * F * b,
        "backward transient": transient * reads,
        "logits": 3 * B * V * 4 + (N // P) * V * b,
        "masks and optimizer": 4 * n_edges * 4 + 3 * W * R * b,
        "runtime": (process_resident_bytes() if runtime_bytes is None else runtime_bytes) if device == "cpu"
        else int(cuda_context_gib * GIB),
    }
    if P > 1:  # the forward's moment with the root unit held twice, where it exceeds the backward's peak (module doc)
        backward_only = sum(items[k] for k in ("gradient buffer", "reader inputs", "attention", "mlp",
                                               "backward transient")) + 3 * B * V * 4
        items["FSDP forward gather"] = max(0, root * b - backward_only)
    return MemoryPlan(batch=B, seq=S, dtype=str(dtype).removeprefix("torch."), nproc=P, examples=N,
                      ablation=ablation, device=device, items=items)


CONFIGS = Path(__file__).resolve().parent / "configs"
# Published configs shipped with the package (configs only, no weights), by the names they go by.
SHIPPED = {"gpt2": "gpt2.json", "openai-community/gpt2": "gpt2.json", "codellama-13b": "codellama-13b.json",
           "codellama/CodeLlama-13b-hf": "codellama-13b.json"}
# Keys real checkpoints carry that a default config of their type no longer lists; none changes memory.
_LEGACY_KEYS = {"_source", "_name_or_path", "n_ctx", "rope_scaling", "rope_theta", "torch_dtype", "pretraining_tp",
                "transformers_version"}


def read_config(spec: str):
    """A Hugging Face config from a shipped name (:data:`SHIPPED`), a ``config.json`` file, a checkpoint
    folder, or a hub name (which needs a network). A field unknown to its model type is refused: the
    plan could not tell what it changes."""
    import json

    import transformers

    path = CONFIGS / SHIPPED[spec] if spec in SHIPPED else Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.endswith(".json")):
        raise ValueError(f"no config at {spec!r}; give a config.json, a checkpoint folder, or one of "
                         f"{', '.join(sorted(SHIPPED))}")
    if not path.exists():
        try:
            return transformers.AutoConfig.from_pretrained(spec)
        except Exception as err:  # noqa: BLE001 (offline, unknown name: transformers raises anything)
            raise ValueError(f"{spec!r} is no shipped config ({', '.join(sorted(SHIPPED))}), file or folder, and "
                             f"the hub cannot give it here ({type(err).__name__}); pass its config.json") from None
    if not path.is_file():  # a FIFO would block the read; a folder without config.json
        raise ValueError(f"{path} is not a regular config file; give a config.json or a checkpoint folder")
    try:
        d = json.loads(path.read_text())
        model_type = d["model_type"]
        known = set(transformers.AutoConfig.for_model(model_type).to_dict()) | _LEGACY_KEYS
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a usable config ({type(err).__name__}: {err}); pass a Hugging Face "
                         f"config.json with a model_type") from None
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{path}: field {unknown[0]!r} is unknown to a {model_type} config"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                         + "; the plan cannot tell what it changes: remove it or fix the model_type")
    d.pop("_source", None)
    return transformers.AutoConfig.for_model(**d)


def largest_batch(cfg: TransformerConfig, budget_bytes: int, **kwargs) -> int:
    """The largest batch whose plan fits ``budget_bytes`` (0 if not even batch 1 does)."""
    lo, hi = 0, 1
    while hi <= 2**20 and plan_step(cfg, batch=hi, **kwargs).fits(budget_bytes):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the plan grows with the batch: bisect
        mid = (lo + hi) // 2
        if plan_step(cfg, batch=mid, **kwargs).fits(budget_bytes):
            lo = mid
        else:
            hi = mid
    return lo
