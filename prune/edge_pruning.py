"""Edge Pruning (Bhaskar et al. 2024): learn a hard-concrete gate on every edge.

The model's weights are frozen. Each edge has a log-alpha; each step draws
``batch_size`` examples, each ``samples`` times with its own gate sample per
edge, runs the masked model with the chosen ablation standing in for closed
gates, and minimises

    faithfulness + n_edges * (l1 * (s - t) + l2 * (s - t)^2)

where faithfulness is, per example, KL(full || circuit) at the answer positions
(categorical outputs, inverse temperature ``logit_scale``) or the squared error
of the output (numerical), raised to ``loss_power``; ``s`` is the expected edge
sparsity ``1 - mean P(gate != 0)``, and the target ``t`` ramps linearly from 0
to ``target_sparsity`` during warm-up. The multipliers ``l1``, ``l2`` are
trained by gradient ascent, so the pressure to prune rises until the target is
met. The gradient of the faithfulness term is the pathwise (reparameterised)
one plus a score-function (REINFORCE) term for gates sampled exactly 0 or 1.
Adam updates the log-alphas; in addition every log-alpha is pulled down by
``lr_t * decay`` per step, outside Adam (decoupled, as AdamW's weight decay).
At the end every gate is binarised: an edge is kept when its noiseless gate is
above 1/2 (``log_alpha > 0``), and edges into heads or MLPs whose output
reaches nothing are dropped (they cannot affect the output). That thresholded
circuit is Edge Pruning's own; by default it then goes through the shared exact
finalizer (:mod:`prune.finalize`) on the training set along the learned ranking
(``finalize="exact"``, below), and the thresholded circuit is kept in the
circuit's metadata as ``own_edges``.

Defaults, and why they differ from the reference implementation. They were
tuned so that, under zero ablation, the binarised circuit equals the verified
functional ground truth of the compiled Tracr programs in
:mod:`groundtruth.artifacts`. Tracr models are step functions (discretising
MLPs with ramps ~1/100 wide, attention with a very cold softmax), so closing an
edge changes the output by a discrete jump and pathwise gradients of a gate are
mostly zero; the defaults make the score-function signal usable.

- ``init_log_alpha=8`` (reference: 10). Every gate starts open with
  probability ~0.9999, so the starting circuit is the full model and every
  example's loss is ~0; lower (3) starts from a broken circuit and optimisation
  stalls in it (e.g. ``count_less_freq`` collapses to the empty circuit).
- ``shared_gates=False`` and ``samples=2`` (reference: one gate sample per step
  shared by the batch). Each example draws its own gates, twice; the
  score-function baseline of a sample is the loss of the other sample of the
  same example. This removes the example-to-example variance of the loss from
  the REINFORCE term (the leave-one-out baseline over *other* examples keeps
  it), which is what drowns edges that matter on only a few examples.
- ``score_function=True`` (reference: pathwise only). The pathwise gradient
  misses edges whose effect is a jump (query/key edges into cold attention,
  value edges from BOS); the score function of the point masses at 0 and 1
  sees the jump.
- ``decay=0.25``: a decoupled pull ``log_alpha -= lr_t * decay`` every step
  (reference: AdamW weight decay 0.01 toward 0). Adam normalises each
  coordinate, so with REINFORCE noise an unneeded edge random-walks instead of
  descending; the decoupled pull moves every gate down at a fixed rate, and an
  edge survives only when its faithfulness signal pushes it back up
  consistently. A pull toward a constant rather than toward 0 leaves no gate
  parked at the threshold. The rate trades two failures: at 0.15 "helper"
  edges (useful only while a needed gate is sometimes closed) survive; at 0.35
  needed edges with a rare effect (query/key edges of a mean aggregation) die.
- ``sparsity_in_edges=True`` and ``lambda_lr=1e-4`` (reference: the mean over
  edges and lr ~1). The Lagrangian term is measured in edges (``n_edges``
  times the mean), so the push per edge does not shrink on big graphs, and the
  multipliers grow slowly: with the target 1 (below) they never stop rising,
  and a multiplier larger than the KL cost of a needed edge (as low as ~0.01
  when the edge changes the output of a few percent of the examples) prunes
  it. Adam turns any non-zero multiplier into a full step on an edge with no
  faithfulness gradient, so a small one suffices.
- ``target_sparsity=1.0``: remove every edge the loss allows; the final size is
  set by the balance above, not by a guessed target.
- ``logit_scale=1`` and ``loss_power=0.5``. Tracr logits are one-hot, so a
  larger scale makes a confidently wrong output far costlier than a uniform
  one (KL ~ scale vs log K), and the optimiser then prefers cutting the edge
  to the logits while upstream gates are noisy. The square root (sqrt KL, RMS
  error) makes small but real effects (e.g. a numerical mean that drifts by a
  few percent when a query edge is closed) count for more relative to big
  ones, which raises their signal-to-noise ratio.
- ``batch_size=64``, ``steps=150``, ``lr=0.2`` (and ``lambda_lr=2e-4``) with a
  linear decay to 0 in the last ``1 - warmup`` of the steps, so gates settle
  before binarisation. The defaults were 300 steps at ``lr=0.1`` and
  ``lambda_lr=1e-4`` (the rates above, ``decay`` included, were tuned there):
  the same total movement of the gates and the multipliers in half the steps,
  and half the time. Exact recovery held on every program and seed measured
  (bench/results/library-*.md), but the thresholded circuit of the largest
  programs is exact less often, so the exact finalizer repairs more;
  ``steps=300, lr=0.1, lambda_lr=1e-4`` is the longer run.
- ``finalize="exact"`` (reference: a fixed threshold for Tracr, or a threshold
  bisected to hit the target sparsity for language models). A Tracr program's
  functional ground truth is defined by exact reproduction of the decoded
  outputs, and the shared exact finalizer (:mod:`prune.finalize`) holds the
  learned circuit to that same criterion on the training set: while the
  circuit does not reproduce every output, the shortest prefix of the learned ranking (decreasing log-alpha)
  that repairs it is found by bisection and its last edge, one the circuit
  needs, is added; then every kept edge whose removal keeps every output is
  dropped, lowest log-alpha first, until none is left. The
  learned ranking decides what the repair tries first, so a good ranking
  costs at most one evaluation of the training set per kept edge and changes
  nothing.
  Where training falls short (the query/key edges of ``shuffle_dyck2``'s
  averaging heads end below the threshold) the repair finds them. How often
  the thresholded circuit alone is exact is reported next to every recovery
  (``own exact`` in ``groundtruth recover``). Use ``finalize="own"`` for
  Edge Pruning's circuit alone, and for language models, whose circuits at
  a target sparsity do not reproduce every output
  (:func:`language_model_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import torch

from prune import hard_concrete, sharding
from prune.ablation import ablated_writers, check_ablation
from prune.circuit import Circuit
from prune.data import Examples
from prune.evaluate import Evaluator, answer_loss, check_examples, full_logits
from prune.files import atomic_path
from prune.finalize import check_finalize, finalize
from prune.model import Transformer

__all__ = ["EdgePruningConfig", "EdgePruner", "CheckpointError", "edge_pruning", "language_model_config"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EdgePruningConfig:
    """Hyperparameters of :func:`edge_pruning` (defaults recover the library exactly)."""

    steps: int = 150
    batch_size: int = 64  # examples per step (the whole set when smaller)
    lr: float = 0.2  # Adam on log-alphas
    lambda_lr: float = 2e-4  # Adam (ascent) on the Lagrange multipliers
    target_sparsity: float = 1.0  # in [0, 1]
    warmup: float = 0.5  # fraction of steps over which the target ramps up
    init_log_alpha: float = 8.0
    node_masks: bool = False  # also learn a gate per writer
    node_target_sparsity: float = 0.0
    logit_scale: float = 1.0  # inverse temperature of the KL (categorical outputs)
    shared_gates: bool = False  # True: one gate sample per step for the batch (the reference's choice)
    score_function: bool = True  # add a REINFORCE term for gates sampled exactly 0 or 1
    sparsity_in_edges: bool = True  # True: the Lagrangian term is multiplied by the number of edges
    loss_power: float = 0.5  # per-example faithfulness is raised to this power (0.5: RMS error, sqrt KL)
    samples: int = 2  # gate samples per example (>1: the score-function baseline is per example)
    decay: float = 0.25  # decoupled pull: every step log_alpha -= lr_t * decay (outside Adam)
    finalize: str = "exact"  # "exact": the shared exact finalizer on the training set; "own": log_alpha > 0
    tie_kv: bool = False  # grouped-query attention: one gate per writer and key-value group for key and value edges
    recompute_reads: bool = False  # recompute each layer's reader inputs in backward instead of keeping them (memory)

    def __post_init__(self):
        for name in ("target_sparsity", "node_target_sparsity", "warmup"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        for name in ("lr", "lambda_lr", "loss_power"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be a positive int, got {self.samples!r}")
        if not (isinstance(self.decay, (int, float)) and self.decay >= 0):
            raise ValueError(f"decay must be >= 0, got {self.decay!r}")
        check_finalize(self.finalize)


def language_model_config(target_sparsity: float, **overrides) -> EdgePruningConfig:
    """The configuration for a real language model at a chosen edge sparsity.

    A language model's circuit at a given sparsity is an approximation, not an
    exact reproduction, so there is no exact finalizer (``finalize="own"``:
    the thresholded circuit), and the step is the reference implementation's:
    one gate sample per step shared by the batch, pathwise gradients only and a loss of
    plain KL. The reference's learning rates (0.8) assume its AdamW decay and
    gradient clipping; ours is plain Adam at the rates below, without the
    decoupled pull of the Tracr defaults (``decay=0``: the Lagrangian alone sets
    the size), and ``init_log_alpha=3`` (gates open with probability ~0.99) so
    that 3000 steps suffice to move them.

    The Lagrangian is measured in edges (``sparsity_in_edges=True``), not the
    reference's mean: with the mean, the push on each edge shrinks as
    1/n_edges, so the multipliers that reach a target grow with the graph
    (GPT-2 small has 32,491 edges) and at ``lambda_lr=0.01`` never get there.
    Measured on tiny random Llamas (resample ablation, IOI, target 0.9): with
    the mean, the expected edge sparsity ended at 0.46 after 300 steps and 0.65
    after 1500 (262 edges), 0.66 after 300 (3,628 edges); in edges, 0.87 and
    0.92 after 300 steps, and 0.92 after 3000 (262 edges), where the gates have
    settled and the thresholded circuit has the same sparsity (targets 0.5 and
    0.97: 0.51 and 0.90 after 300 steps, 0.96 after 3000 for 0.97). Runs of a
    few hundred steps lag the target at the end of the ramp; ``warmup=0.5``
    leaves them time to catch up (0.91 after 300 steps for both graphs).
    """
    values = dict(
        steps=3000, batch_size=32, lr=0.1, lambda_lr=0.01, target_sparsity=target_sparsity, warmup=5 / 6,
        init_log_alpha=3.0, shared_gates=True, score_function=False, sparsity_in_edges=True, loss_power=1.0,
        samples=1, decay=0.0, finalize="own",
    )
    values.update(overrides)
    return EdgePruningConfig(**values)


class _Lagrangian(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Parameter(torch.zeros(()))
        self.l2 = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sparsity, target):
        gap = sparsity - target
        return self.l1 * gap + self.l2 * gap * gap


def _kv_ties(model: Transformer) -> torch.Tensor:
    """``[n_edges]``: for each edge, the edge whose gate it takes under ``tie_kv``: an edge into the key
    or value reader of a query head takes the one from the same writer into its group's first head's;
    every other edge its own."""
    g, H, G = model.graph, model.cfg.n_heads, model.cfg.kv_heads
    if G == H:
        raise ValueError(f"tie_kv is for grouped-query attention; this model has {H} query and {G} key-value heads")
    group = H // G
    first = torch.arange(g.n_readers)  # [R]: the reader whose gate each reader's edges take
    for l in range(g.n_layers):
        for port in "kv":
            for h in range(H):
                first[g.head_reader(l, h, port)] = g.head_reader(l, h - h % group, port)
    index = {edge: i for i, edge in enumerate(g.edges)}
    return torch.tensor([index[(w, int(first[r]))] for w, r in g.edges])


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or made for another run."""


def _fingerprint(model: Transformer, examples: Examples) -> str:
    """What a checkpoint must match to be resumed: the graph, the weights (their bytes, not only
    their shapes: a checkpoint resumed on other weights would train one run on two models) and the data.
    The same for a model in one process and sharded (its weights gathered whole: every rank calls this)."""
    h = hashlib.sha256()
    h.update(repr((model.graph.n_layers, model.graph.n_heads, model.cfg.d_model, model.cfg.vocab_size)).encode())
    # A feature model (prune.transcoder): whether each transcoded layer keeps its error term is not a weight.
    # Only then hashed, so an ordinary model's fingerprint (and its checkpoints) stays as it was.
    kept = tuple((l, b.keep_error) for l, b in enumerate(model.blocks) if hasattr(b, "keep_error"))
    if kept:
        h.update(repr(("transcoded", model.graph.features, kept)).encode())
    state = sharding.full_state_dict(model) if sharding.is_sharded(model) else model.state_dict()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for t in (examples.clean, examples.corrupted, examples.valid, examples.answer):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class EdgePruner:
    """One Edge Pruning run, a step at a time: ``step()``, ``save``/``resume``, ``circuit()``.

    :func:`edge_pruning` runs it start to end; use this class to checkpoint a
    long run, or to time one step. The model's weights are frozen (no grad).

    Given a model sharded over several processes (:func:`prune.sharding.shard`),
    every rank runs this with the same arguments (the whole data set) and the run
    is data parallel (:mod:`prune.sharding`): each rank holds the reference
    logits and ablated writers of its own contiguous ``len(examples) / ranks``
    examples only (the count must divide), and gives the same log-alphas as one
    process up to the order of floating-point sums.
    """

    def __init__(self, model: Transformer, examples: Examples, *, ablation: str, seed: int = 0,
                 config: EdgePruningConfig | None = None, model_name: str = ""):
        self.cfg = cfg = config or EdgePruningConfig()
        check_ablation(ablation)
        if len(examples) == 0:
            raise ValueError("empty dataset: Edge Pruning needs at least one example")
        check_examples(model, examples)
        self.model, self.examples, self.ablation = model, examples, ablation
        self.seed, self.model_name = seed, model_name
        g = model.graph
        device = model.W_E.device
        model.requires_grad_(False)
        self.rank, self.ranks = sharding.rank_and_size(model)
        N = len(examples)
        if N % self.ranks:
            raise ValueError(f"{N} examples do not split evenly over {self.ranks} ranks; use a multiple of "
                             f"{self.ranks} examples, or a number of ranks that divides {N}")
        per = N // self.ranks
        self.first = self.rank * per  # this rank's own examples: first, ..., first + per - 1
        own = examples if self.ranks == 1 else examples.subset(torch.arange(self.first, self.first + per))
        self.own_examples = own
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        # Targets (fixed weights, fixed data): the full model's logits at the answer positions only,
        # [K, out] in row-major order; answer_row[i, s] is the row of example i's position s (own examples).
        self.reference = full_logits(model, own, batch_size=256, answers_only=True)
        self.answer_row = torch.full(own.answer.shape, -1, dtype=torch.long, device=own.answer.device)
        self.answer_row[own.answer] = torch.arange(len(self.reference), device=own.answer.device)
        # None, [W,1,S,D] (the mean over every example, on every rank) or [W,per,S,D] (own examples)
        self.ablated = ablated_writers(model, own, ablation, reference=examples if ablation == "mean" else None)

        self.log_alpha = torch.nn.Parameter(torch.full((g.n_edges,), float(cfg.init_log_alpha), device=device))
        self.params = [self.log_alpha]
        self.tie = _kv_ties(model).to(device) if cfg.tie_kv else None  # [n_edges]: the edge whose gate each uses
        self.node_log_alpha = None
        if cfg.node_masks:
            self.node_log_alpha = torch.nn.Parameter(
                torch.full((g.n_writers,), float(cfg.init_log_alpha), device=device))
            self.params.append(self.node_log_alpha)
        self.lagrangian = _Lagrangian().to(device)
        self.node_lagrangian = _Lagrangian().to(device)
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.lam_opt = torch.optim.Adam([*self.lagrangian.parameters(), *self.node_lagrangian.parameters()],
                                        lr=cfg.lambda_lr, maximize=True)
        self.warmup_steps = max(1, int(cfg.warmup * cfg.steps))
        self.step_index = 0  # steps taken
        self.history: list[dict] = []
        self.seconds = 0.0  # training time so far, over every resume
        if self.ranks > 1:
            self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Refuse a sharded run whose ranks were given different weights, data, seed or configuration
        (each would train another run, and the summed gradients would belong to none)."""
        import torch.distributed as dist

        mine = {k: self._metadata()[k] for k in ("seed", "ablation", "config", "fingerprint", "conventions")}
        every = [None] * self.ranks
        dist.all_gather_object(every, mine)
        for r, theirs in enumerate(every):
            for key in mine:
                if theirs[key] != mine[key]:
                    raise ValueError(f"rank {r} has {key} = {theirs[key]!r} but rank {self.rank} has {mine[key]!r}; "
                                     f"start every rank with the same model, data, seed and configuration")

    # ------------------------------------------------------------------ training
    def edge_log_alpha(self) -> torch.Tensor:
        """``[n_edges]``: every edge's log-alpha (with ``tie_kv``, its group's key or value gate's)."""
        return self.log_alpha if self.tie is None else self.log_alpha[self.tie]

    @functools.cached_property
    def _free(self) -> torch.Tensor:  # [n_edges] bool, with tie_kv: the log-alphas that gate some edge
        return self.tie == torch.arange(len(self.tie), device=self.tie.device)

    @property
    def done(self) -> bool:
        return self.step_index >= self.cfg.steps

    def lr_factor(self, step: int) -> float:
        """Constant through warm-up, then a linear decay to 0 at the last step."""
        if step < self.warmup_steps:
            return 1.0
        return max(0.0, (self.cfg.steps - step) / max(1, self.cfg.steps - self.warmup_steps))

    def step(self) -> dict:
        """One training step; returns its faithfulness, expected sparsity and target."""
        cfg, model, gen = self.cfg, self.model, self.generator
        if self.done:
            raise RuntimeError(f"the run has finished its {cfg.steps} steps")
        start = time.perf_counter()
        step = self.step_index
        device, dtype = model.W_E.device, model.W_E.dtype
        N = len(self.examples)
        whole = N <= cfg.batch_size and cfg.samples == 1  # the batch is the data set, in order: no copies
        if N > cfg.batch_size:
            idx = torch.randperm(N, generator=gen)[: cfg.batch_size].to(device)
        else:
            idx = torch.arange(N, device=device)
        if cfg.samples > 1:
            idx = idx.repeat(cfg.samples)  # sample k of example i at position k * n + i
        ramp = min(1.0, step / self.warmup_steps)
        target = cfg.target_sparsity * ramp
        shape = () if cfg.shared_gates else (len(idx),)
        z = hard_concrete.sample(self.log_alpha.expand(*shape, -1), gen).to(dtype)
        gates = z  # one per free log-alpha (every edge's own, or with tie_kv its group's)
        if self.tie is not None:
            z = z[..., self.tie]
        nodes = None
        if self.node_log_alpha is not None:
            nodes = hard_concrete.sample(self.node_log_alpha.expand(*shape, -1), gen).to(dtype)
        # Sharded: every rank drew the batch and the gates above as one process does; it runs the samples of its
        # own examples (`mine`, positions in the batch). One that has none still runs (FSDP gathers the weights
        # collectively) on its first example, with weight 0.
        count, weight = len(idx), 1.0
        if self.ranks > 1:
            mine = ((idx >= self.first) & (idx < self.first + len(self.own_examples))).nonzero(as_tuple=True)[0]
            if not len(mine):
                mine, weight = torch.arange(cfg.samples, device=device) * (count // cfg.samples), 0.0
            idx = idx[mine] - self.first if weight else torch.zeros(len(mine), dtype=idx.dtype, device=device)
            if not cfg.shared_gates:
                z = z[mine]
                nodes = None if nodes is None else nodes[mine]
        ex = self.own_examples
        ablated = self.ablated
        part = None if ablated is None else (ablated if ablated.shape[1] == 1 or whole else ablated[:, idx])
        batch = ex if whole else ex.subset(idx)
        logits = model(batch.clean, attention_mask=batch.valid, edge_mask=z, node_mask=nodes, ablated=part,
                       positions=batch.answer, tied_kv=self.tie is not None,
                       recompute_reads=cfg.recompute_reads)  # [K, out]: answer positions only
        rows = batch.answer.nonzero(as_tuple=True)[0]
        reference = self.reference[(self.answer_row if whole else self.answer_row[idx])[batch.answer]]
        per_example = answer_loss(logits, reference, rows, batch.answer, ex.kind, cfg.logit_scale)
        if cfg.loss_power != 1.0:
            per_example = per_example.clamp_min(1e-12).pow(cfg.loss_power)

        def batch_mean(values):  # the mean over the whole batch; sharded, this rank's share of it
            return values.mean() if self.ranks == 1 else values.sum() * (weight / count)

        faith = batch_mean(per_example)
        faith_all = faith.detach() if self.ranks == 1 else sharding.all_reduce_sum(faith)
        if not torch.isfinite(faith_all):
            raise FloatingPointError(
                f"the faithfulness loss is {faith_all.item()} at step {step}; the model or data produce "
                f"non-finite logits (check the inputs and the model's dtype)"
            )
        surrogate = faith
        if cfg.score_function and not cfg.shared_gates and count > 1:
            # Leave-one-out baseline: each sample's loss against the mean of the other samples
            # of the same example (samples > 1: on the same rank), or of the other examples (samples == 1).
            f = per_example.detach()
            if cfg.samples > 1:
                fk = f.view(cfg.samples, -1)
                advantage = (fk - (fk.sum(0) - fk) / (cfg.samples - 1)).reshape(-1)
            else:
                total = f.sum() if self.ranks == 1 else sharding.all_reduce_sum(f.sum() * weight)
                advantage = f - (total - f) / (count - 1)
            la, gz = self.log_alpha, gates.detach()
            if self.tie is not None:  # the free gates only: a tied one counts once
                la, gz = la[self._free], gz[..., self._free]
            logp = hard_concrete.log_prob_ends(la, gz).sum(-1)  # [B]
            surrogate = surrogate + batch_mean(advantage * logp)
        sparsity = 1 - hard_concrete.prob_nonzero(self.edge_log_alpha()).mean()  # over every edge of the graph
        scale = float(model.graph.n_edges) if cfg.sparsity_in_edges else 1.0
        scale /= self.ranks  # sharded: every rank adds its share, and the gradients are summed
        loss = surrogate + scale * self.lagrangian(sparsity, target)
        if self.node_log_alpha is not None:
            node_scale = (float(model.graph.n_writers) if cfg.sparsity_in_edges else 1.0) / self.ranks
            node_sparsity = 1 - hard_concrete.prob_nonzero(self.node_log_alpha).mean()
            loss = loss + node_scale * self.node_lagrangian(node_sparsity, cfg.node_target_sparsity * ramp)
        step_lr = cfg.lr * self.lr_factor(step)
        for group in self.opt.param_groups:
            group["lr"] = step_lr
        self.opt.zero_grad(set_to_none=True)
        self.lam_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.ranks > 1:
            sharding.all_reduce_gradients([*self.params, *self.lagrangian.parameters(),
                                           *self.node_lagrangian.parameters()])
        self.opt.step()
        if cfg.decay:
            with torch.no_grad():
                for p in self.params:
                    p.sub_(step_lr * cfg.decay)
        self.lam_opt.step()
        self.step_index += 1
        stats = {"step": step, "faithfulness": faith_all.item(), "sparsity": sparsity.item(), "target": target,
                 "lambda1": self.lagrangian.l1.item(), "lambda2": self.lagrangian.l2.item()}
        if step % 25 == 0 or self.done:
            self.history.append(stats)
        self.seconds += time.perf_counter() - start
        return stats

    def run(self, *, quiet: bool = True, checkpoint: str | Path | None = None, every: int = 100) -> EdgePruner:
        """Train to the last step; with ``checkpoint``, save there every ``every`` steps and at the end."""
        from tqdm import tqdm  # only here: `import prune` needs torch, numpy and safetensors alone

        bar = tqdm(total=self.cfg.steps, initial=self.step_index, desc="edge pruning", disable=quiet, leave=False)
        while not self.done:
            stats = self.step()
            bar.update(1)
            if self.step_index % 25 == 0 or self.done:
                bar.set_postfix(loss=f"{stats['faithfulness']:.3g}", sparsity=f"{stats['sparsity']:.3f}")
            if checkpoint is not None and (self.step_index % every == 0 or self.done):
                self.save(checkpoint)
        bar.close()
        return self

    # ------------------------------------------------------------------ checkpoints
    @functools.cached_property
    def fingerprint(self) -> str:
        """Of the model's weights and the data (computed once: the weights are frozen)."""
        return _fingerprint(self.model, self.examples)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor a resumed run needs to continue bit for bit."""
        state = {"log_alpha": self.log_alpha.detach(), "generator": self.generator.get_state(),
                 **{f"lagrangian.{k}": v.detach() for k, v in self.lagrangian.state_dict().items()},
                 **{f"node_lagrangian.{k}": v.detach() for k, v in self.node_lagrangian.state_dict().items()}}
        if self.node_log_alpha is not None:
            state["node_log_alpha"] = self.node_log_alpha.detach()
        for name, opt in (("opt", self.opt), ("lam_opt", self.lam_opt)):
            for i, slots in opt.state_dict()["state"].items():
                for k, v in slots.items():
                    state[f"{name}.{i}.{k}"] = torch.as_tensor(v)
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def _metadata(self) -> dict[str, str]:
        return {"format": "edge-pruning-checkpoint/1", "step": str(self.step_index), "seed": str(self.seed),
                "ablation": self.ablation, "config": json.dumps(dataclasses.asdict(self.cfg), sort_keys=True),
                "fingerprint": self.fingerprint, "history": json.dumps(self.history),
                "seconds": repr(self.seconds), "conventions": self.model.graph.conventions, "ranks": str(self.ranks)}

    def save(self, path: str | Path) -> Path:
        """Write a safetensors checkpoint atomically (a temporary file, then a rename). Sharded, rank 0
        writes it (the state is replicated) and the others wait until it is in place."""
        from safetensors.torch import save_file

        if self.rank == 0:
            with atomic_path(path) as tmp:
                save_file(self.state_dict(), str(tmp), metadata=self._metadata())
        if self.ranks > 1:
            import torch.distributed as dist

            dist.barrier()
        return Path(path)

    def load(self, path: str | Path) -> EdgePruner:
        """Continue from a checkpoint of this same run (model, data, ablation, seed and config)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}; start without --resume, or point to an existing file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from None
        if meta.get("format") != "edge-pruning-checkpoint/1":
            raise CheckpointError(f"{path} is not an Edge Pruning checkpoint (format {meta.get('format')!r})")
        mine = self._metadata()
        meta = {"conventions": "ours", **meta}  # a checkpoint from before conventions were recorded: ours
        written = meta.get("ranks", "1")  # a checkpoint from before sharding: one process
        if written != mine["ranks"]:
            raise CheckpointError(
                f"{path} was written by a run over {written} rank(s), but this run has {mine['ranks']}; each rank "
                f"holds its own examples, so resume with the same number of ranks (--nproc {written}), or start afresh")
        for key in ("seed", "ablation", "config", "fingerprint", "conventions"):
            if meta.get(key) != mine[key]:
                raise CheckpointError(
                    f"{path} was made with {key} = {meta.get(key)!r}, but this run has {mine[key]!r}; "
                    f"resume with the same model, task, data, ablation, seed and configuration, or start afresh")
        with torch.no_grad():
            self.log_alpha.copy_(tensors["log_alpha"])
            if self.node_log_alpha is not None:
                self.node_log_alpha.copy_(tensors["node_log_alpha"])
            self.lagrangian.load_state_dict({k: tensors[f"lagrangian.{k}"] for k in ("l1", "l2")})
            self.node_lagrangian.load_state_dict({k: tensors[f"node_lagrangian.{k}"] for k in ("l1", "l2")})
        for name, opt in (("opt", self.opt), ("lam_opt", self.lam_opt)):
            slots: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith(name + "."):
                    _, i, k = key.split(".", 2)
                    slots.setdefault(int(i), {})[k] = value
            opt.load_state_dict({"state": slots, "param_groups": opt.state_dict()["param_groups"]})
        self.generator.set_state(tensors["generator"])
        self.step_index = int(meta["step"])
        self.history = json.loads(meta["history"])
        self.seconds = float(meta["seconds"])
        return self

    # ------------------------------------------------------------------ the circuit
    def threshold_mask(self) -> torch.Tensor:
        """``[n_edges]`` bool: edges whose noiseless gate is above 1/2 (``log_alpha > 0``)."""
        with torch.no_grad():
            keep = self.edge_log_alpha() > 0
            if self.node_log_alpha is not None:  # a closed writer closes its edges
                g = self.model.graph
                keep &= (self.node_log_alpha > 0)[g.edge_index_tensor[0].to(keep.device)]
        return keep.cpu()

    def circuit(self) -> Circuit:
        """The circuit: the thresholded one (Edge Pruning's own: ``log_alpha > 0``, no dead ends), through
        the shared exact finalizer along the learned ranking unless ``finalize="own"``."""
        g = self.model.graph
        start = time.perf_counter()
        metadata = {"seed": self.seed, "config": dataclasses.asdict(self.cfg), "steps_done": self.step_index,
                    "history": self.history}
        circuit = Circuit.from_mask(
            g, self.threshold_mask().float(), ablation=self.ablation, model=self.model_name,
            d_model=self.model.cfg.d_model, scores=tuple(self.edge_log_alpha().detach().cpu().tolist()),
            method="edge_pruning", metadata=metadata,
        ).without_dead_ends()
        if self.cfg.finalize == "exact":
            evaluator = Evaluator(self.model, self.examples, self.ablation)
            circuit = finalize(circuit, evaluator, self.edge_log_alpha().detach().cpu())
        circuit.metadata["seconds"] = round(self.seconds + time.perf_counter() - start, 3)
        return circuit


def edge_pruning(
    model: Transformer,
    examples: Examples,
    *,
    ablation: str,
    seed: int = 0,
    config: EdgePruningConfig | None = None,
    model_name: str = "",
    quiet: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    finalize: str | None = None,
) -> Circuit:
    """Find a circuit of ``model`` on ``examples`` under ``ablation``; the same seed gives the same circuit.

    With ``checkpoint``, the run's state is saved there (safetensors, atomic)
    every ``checkpoint_every`` steps and at the end; with ``resume`` it first
    continues from that file, and a resumed run ends with the same circuit as
    an uninterrupted one. ``finalize`` (``"exact"`` or ``"own"``), when given,
    replaces ``config.finalize``, as for every other method.
    """
    if finalize is not None:
        config = dataclasses.replace(config or EdgePruningConfig(), finalize=check_finalize(finalize))
    pruner = EdgePruner(model, examples, ablation=ablation, seed=seed, config=config, model_name=model_name)
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs the checkpoint path to resume from")
        pruner.load(checkpoint)
    pruner.run(quiet=quiet, checkpoint=checkpoint, every=checkpoint_every)
    return pruner.circuit()
