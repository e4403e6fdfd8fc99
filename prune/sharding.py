"""Edge Pruning over several processes: FSDP's full sharding of the frozen weights, data parallel over examples.

Launch one process per rank with ``torchrun``, or let ``prune run --nproc N``
launch them (it calls torchrun's own launcher)::

    torchrun --standalone --nproc-per-node 2 -m prune.cli run --model M --task ioi \\
        --target-edge-sparsity 0.95 --out DIR

:func:`shard` applies PyTorch's FSDP (``torch.distributed.fsdp.fully_shard``)
to every block and then to the model: each rank holds ``1/N`` of every weight,
and a block's weights are gathered whole only while one of its two sublayers
(:meth:`prune.model.Block.attention_sublayer`, ``mlp_sublayer``) runs, in the
forward pass and again for the backward. The model reads and writes the
residual stream between sublayers, so each block is gathered twice per pass:
once per sublayer.

:class:`prune.edge_pruning.EdgePruner` sees a sharded model and runs data
parallel: every rank holds the whole data set's token ids but only its own
contiguous ``N / ranks`` examples' reference logits and ablated writers. Edge
Pruning's state (log-alphas, multipliers, optimizer moments, the random
generator) is replicated: every rank draws the same batch and the same gates
as one process would, runs the examples of the batch that are its own, and the
gradients of the log-alphas and multipliers are summed over ranks with one
all-reduce (:func:`all_reduce_gradients`). Every rank therefore takes the same
step and holds the same masks; rank 0 alone writes checkpoints and results.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

from prune.model import Transformer

__all__ = ["shard", "load_sharded", "is_sharded", "rank_and_size", "all_reduce_gradients", "all_reduce_sum",
           "full_state_dict", "init_from_environment", "launched_by_torchrun", "launch"]


def launched_by_torchrun() -> bool:
    """Is this process one rank of several started by torchrun (``WORLD_SIZE`` above 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA);
    returns ``(rank, ranks)``. Once per process; later calls return the same."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def shard(model: Transformer, *, device: str | None = None) -> Transformer:
    """Fully shard ``model`` over every rank of the process group, one FSDP unit per block and one for
    the rest (embeddings, final norm, unembedding); in place, and returned. Needs the process group.
    ``device``: the device type its shards will live on (default: the model's; give it for a model
    built on the meta device)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if not dist.is_initialized():
        raise RuntimeError("sharding needs the process group: launch with torchrun (or prune run --nproc N) "
                           "and call prune.sharding.init_from_environment() first")
    if is_sharded(model):
        raise ValueError("this model is already sharded")
    # FSDP warns whenever a sublayer returns a view (an in-place change to it would skip the gather for the
    # backward); the model never changes a sublayer's output in place (the residual copies what it writes).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device or model.W_E.device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
        for method in ("attention_sublayer", "mlp_sublayer"):  # the model calls a block only through these
            register_fsdp_forward_method(block, method)
    fully_shard(model, mesh=mesh)
    return model


def load_sharded(source, *, dtype: torch.dtype = torch.float32, conventions: str = "ours") -> Transformer:
    """A Hugging Face checkpoint (:func:`prune.loaders.from_hf`'s ``source``), loaded and sharded so that only
    rank 0 ever holds the whole model: rank 0 loads it; every other rank builds the same model from the config
    on the meta device (no memory); all shard it (:func:`shard`), the others allocate their shard alone, and
    rank 0's weights reach every shard through ``torch.distributed.checkpoint``'s broadcast from rank 0.
    On one machine, host memory holds one whole copy during loading, not one per rank. Needs the process group.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from prune import loaders

    if not dist.is_initialized():
        raise RuntimeError("sharded loading needs the process group: launch with torchrun (or prune run --nproc N) "
                           "and call prune.sharding.init_from_environment() first")
    if dist.get_rank() == 0:
        model = loaders.from_hf(source, dtype=dtype).with_conventions(conventions)
        whole = dict(model.state_dict())  # kept until broadcast: sharding below frees the model's own copy
    else:
        cfg = loaders.transformer_config(loaders._load_config(source))
        with torch.device("meta"):  # as loaders.convert builds it, without the weights
            model = Transformer(cfg).to(dtype=dtype).with_conventions(conventions)
        whole = {}
    shard(model, device="cpu")
    if dist.get_rank() != 0:
        model.to_empty(device="cpu")  # this rank's shard only; filled by the broadcast
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del whole
    return model.requires_grad_(False).eval()


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def rank_and_size(model: torch.nn.Module) -> tuple[int, int]:
    """``(rank, ranks)`` of a sharded model's process group; ``(0, 1)`` for a model in one process."""
    if not is_sharded(model):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_reduce_gradients(params) -> None:
    """Sum the parameters' gradients over ranks, in one collective (flattened together). A parameter
    without a gradient keeps none: every rank runs the same code, so it has none on any rank."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over ranks (a new tensor; ``value`` is unchanged)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, as one process holds it (a collective under FSDP: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return {name: (t.full_tensor() if isinstance(t, DTensor) else t) for name, t in model.state_dict().items()}


def launch(argv: list[str], nproc: int, *, threads: int, env: dict[str, str] | None = None) -> dict[int, int]:
    """Run ``python -m prune.cli ARGV`` as ``nproc`` ranks on this machine with torchrun's own launcher
    (``torchrun --standalone --nproc-per-node N --max-restarts 0``), each with ``threads`` CPU threads;
    wait for all of them. Returns ``{rank: exit code}`` of the ranks that failed, the first to fail first
    (empty when all succeeded; a negative code is the signal that ended the rank). When one rank fails, the
    launcher stops the others."""
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Its reports (a failed rank, "Received 2 death signal"): the caller words them. Its modules' loggers have
    # levels of their own, so each is quieted, not only the parent.
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", *(env or {}))}
    os.environ.update({"OMP_NUM_THREADS": str(threads), **(env or {})})  # the ranks inherit this environment
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "prune.cli", *argv)
    except ChildFailedError as err:
        first, _ = err.get_first_failure()  # the cause: the others were stopped after it
        failures = sorted(err.failures.items(), key=lambda item: item[0] != first)
        return {int(f.local_rank): int(f.exitcode) for _, f in failures}
    except SignalException:  # Ctrl-C or SIGTERM: the agent has passed the signal on to the ranks and stopped them
        raise KeyboardInterrupt from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {}
