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
reaches nothing are dropped (they cannot affect the output).

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
- ``batch_size=64``, ``steps=300``, ``lr=0.1`` with a linear decay to 0 in the
  last ``1 - warmup`` of the steps, so gates settle before binarisation; a few
  seconds per program on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from prune import hard_concrete
from prune.ablation import ablated_writers, check_ablation
from prune.circuit import Circuit
from prune.data import Examples
from prune.evaluate import full_logits
from prune.model import Transformer

__all__ = ["EdgePruningConfig", "edge_pruning", "faithfulness_loss"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EdgePruningConfig:
    """Hyperparameters of :func:`edge_pruning` (defaults recover the library exactly)."""

    steps: int = 300
    batch_size: int = 64  # examples per step (the whole set when smaller)
    lr: float = 0.1  # Adam on log-alphas
    lambda_lr: float = 1e-4  # Adam (ascent) on the Lagrange multipliers
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


def faithfulness_loss(circuit_logits: torch.Tensor, full_logits: torch.Tensor, examples: Examples,
                      answer: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Per example ``[B]``: KL(full || circuit) over the output classes (categorical) or
    squared error (numerical), averaged over the example's answer positions."""
    n = answer.sum(-1).clamp_min(1)
    if examples.kind == "numerical":
        err = (circuit_logits[..., 0] - full_logits[..., 0]).pow(2)
        return (err * answer).sum(-1) / n
    logp = F.log_softmax(logit_scale * circuit_logits.float(), -1)
    logq = F.log_softmax(logit_scale * full_logits.float(), -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * answer).sum(-1) / n


class _Lagrangian(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Parameter(torch.zeros(()))
        self.l2 = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sparsity, target):
        gap = sparsity - target
        return self.l1 * gap + self.l2 * gap * gap


def edge_pruning(
    model: Transformer,
    examples: Examples,
    *,
    ablation: str,
    seed: int = 0,
    config: EdgePruningConfig | None = None,
    model_name: str = "",
    quiet: bool = True,
) -> Circuit:
    """Find a circuit of ``model`` on ``examples`` under ``ablation``; the same seed gives the same circuit."""
    cfg = config or EdgePruningConfig()
    check_ablation(ablation)
    if len(examples) == 0:
        raise ValueError("empty dataset: Edge Pruning needs at least one example")
    g = model.graph
    device = model.W_E.device
    dtype = model.W_E.dtype
    model.requires_grad_(False)
    start = time.perf_counter()

    gen = torch.Generator(device="cpu").manual_seed(seed)
    reference = full_logits(model, examples)  # targets: fixed weights, fixed data
    ablated = ablated_writers(model, examples, ablation)  # None, [W,1,S,D] or [W,N,S,D]

    log_alpha = torch.nn.Parameter(torch.full((g.n_edges,), float(cfg.init_log_alpha), device=device))
    params = [log_alpha]
    node_log_alpha = None
    if cfg.node_masks:
        node_log_alpha = torch.nn.Parameter(torch.full((g.n_writers,), float(cfg.init_log_alpha), device=device))
        params.append(node_log_alpha)
    lagrangian = _Lagrangian().to(device)
    node_lagrangian = _Lagrangian().to(device)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    lam_opt = torch.optim.Adam([*lagrangian.parameters(), *node_lagrangian.parameters()], lr=cfg.lambda_lr,
                               maximize=True)
    warmup_steps = max(1, int(cfg.warmup * cfg.steps))

    def lr_factor(step):  # constant through warm-up, then linear decay to 0
        if step < warmup_steps:
            return 1.0
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scale = float(g.n_edges) if cfg.sparsity_in_edges else 1.0
    node_scale = float(g.n_writers) if cfg.sparsity_in_edges else 1.0
    N = len(examples)
    bar = tqdm(range(cfg.steps), desc="edge pruning", disable=quiet, leave=False)
    history = []
    for step in bar:
        if N > cfg.batch_size:
            idx = torch.randperm(N, generator=gen)[: cfg.batch_size].to(device)
        else:
            idx = torch.arange(N, device=device)
        if cfg.samples > 1:
            idx = idx.repeat(cfg.samples)  # sample k of example i at position k * n + i
        target = cfg.target_sparsity * min(1.0, step / warmup_steps)
        shape = () if cfg.shared_gates else (len(idx),)
        z = hard_concrete.sample(log_alpha.expand(*shape, -1), gen).to(dtype)
        nodes = None
        if node_log_alpha is not None:
            nodes = hard_concrete.sample(node_log_alpha.expand(*shape, -1), gen).to(dtype)
        part = None if ablated is None else (ablated if ablated.shape[1] == 1 else ablated[:, idx])
        logits = model(examples.clean[idx], attention_mask=examples.valid[idx], edge_mask=z, node_mask=nodes,
                       ablated=part)
        per_example = faithfulness_loss(logits, reference[idx], examples, examples.answer[idx], cfg.logit_scale)
        if cfg.loss_power != 1.0:
            per_example = per_example.clamp_min(1e-12).pow(cfg.loss_power)
        faith = per_example.mean()
        surrogate = faith
        if cfg.score_function and not cfg.shared_gates and len(idx) > 1:
            # Leave-one-out baseline: each sample's loss against the mean of the other samples
            # of the same example (samples > 1), or of the other examples (samples == 1).
            f = per_example.detach()
            if cfg.samples > 1:  # baseline: the other samples of the same example
                fk = f.view(cfg.samples, -1)
                advantage = (fk - (fk.sum(0) - fk) / (cfg.samples - 1)).reshape(-1)
            else:
                advantage = f - (f.sum() - f) / (len(f) - 1)
            logp = hard_concrete.log_prob_ends(log_alpha, z.detach()).sum(-1)  # [B]
            surrogate = surrogate + (advantage * logp).mean()
        if not torch.isfinite(faith):
            raise FloatingPointError(
                f"the faithfulness loss is {faith.item()} at step {step}; the model or data produce "
                f"non-finite logits (check the inputs and the model's dtype)"
            )
        sparsity = 1 - hard_concrete.prob_nonzero(log_alpha).mean()
        loss = surrogate + scale * lagrangian(sparsity, target)
        if node_log_alpha is not None:
            node_sparsity = 1 - hard_concrete.prob_nonzero(node_log_alpha).mean()
            loss = loss + node_scale * node_lagrangian(node_sparsity, cfg.node_target_sparsity * min(1.0, step / warmup_steps))
        opt.zero_grad(set_to_none=True)
        lam_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.decay:
            with torch.no_grad():
                step_lr = opt.param_groups[0]["lr"]
                for p in params:
                    p.sub_(step_lr * cfg.decay)
        lam_opt.step()
        sched.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "faithfulness": faith.item(), "sparsity": sparsity.item(),
                            "target": target, "lambda1": lagrangian.l1.item(), "lambda2": lagrangian.l2.item()})
            bar.set_postfix(loss=f"{faith.item():.3g}", sparsity=f"{sparsity.item():.3f}")

    with torch.no_grad():
        keep = log_alpha > 0
        if node_log_alpha is not None:  # a closed writer closes its edges
            keep &= (node_log_alpha > 0)[g.edge_index_tensor[0].to(device)]
    circuit = Circuit.from_mask(
        g, keep.float().cpu(), ablation=ablation, model=model_name, d_model=model.cfg.d_model,
        scores=tuple(log_alpha.detach().cpu().tolist()), method="edge_pruning",
        metadata={"seed": seed, "config": dataclasses.asdict(cfg), "seconds": round(time.perf_counter() - start, 3),
                  "history": history},
    )
    return circuit.without_dead_ends()
