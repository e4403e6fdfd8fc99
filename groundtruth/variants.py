"""Compressed variants of a compiled program: its residual stream in ``d < D`` dimensions.

Tracr's ``CompressedTransformer`` reads the residual stream through a matrix
``W`` (``d x D``, D the compiled width) and writes through ``W^T``: a layer sees
``x = h @ W`` of the compressed stream ``h`` and adds ``out @ W^T``
(:func:`read_through`). Folding ``W`` into the weights makes that model an
ordinary :class:`prune.model.Transformer` of width ``d`` (:func:`fold`), on
which the masked model, the ablations and every method run unchanged:

- embeddings and every write (``W_O``, ``b_O``, ``W_out``, ``b_out``) are
  multiplied by ``W^T`` on the right;
- every read (``W_Q``, ``W_K``, ``W_V``, ``W_in``) and the unembedding ``W_U``
  by ``W`` on the left.

That is exact only without a norm between the stream and its readers (a norm
does not commute with ``W``): compiled Tracr models have none.

Two projections lose nothing on a data set. :func:`residual_basis` spans every
residual state the model passes through. :func:`read_basis` is narrower: only
the part of that span some reader reads (the states projected onto the
readers' weight columns), so values that no reader tells apart (three tokens
that every MLP maps alike) share a direction. Both are exact, with no
interference.

:func:`compress` goes narrower than the read basis, where features must share
dimensions and interfere. Starting from the top principal directions of the
read part of the states, it first learns ``W`` with the compiled weights
frozen (Tracr's method), then, where that decodes at no learning rate, ``W``
and every weight together; the losses are the output loss plus a
reconstruction of the compiled residual at every layer. The stage that
succeeded is recorded.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from prune.data import Examples
from prune.model import Transformer

__all__ = ["LIVE_SCALES", "live_intervals", "live_sharing",
           "fold", "read_through", "residual_basis", "read_basis", "principal_directions", "Compression", "compress",
           "Perturbation", "perturb"]

# Scales tried in turn by the live-sharing stage of compress, smallest (the most interference) first.
LIVE_SCALES = (10.0, 100.0, 1000.0, 10000.0)
_READS = ("W_Q", "W_K", "W_V", "W_in", "W_gate")
_WRITES = ("W_O", "b_O", "W_out", "b_out")


def fold(model: Transformer, W: torch.Tensor) -> Transformer:
    """The model that reads its stream through ``W`` ``[d, D]`` and writes through ``W^T``, as a
    :class:`Transformer` of width ``d`` (module doc). ``model`` is not changed."""
    cfg = model.cfg
    D = cfg.d_model
    if cfg.norm != "none":
        raise ValueError(f"cannot fold a projection into a model with {cfg.norm} (a norm does not commute with "
                         f"it); compiled Tracr models have none")
    if W.ndim != 2 or W.shape[1] != D:
        raise ValueError(f"W must be [d, {D}] for this model's width {D}, got {tuple(W.shape)}")
    d = W.shape[0]
    if not 1 <= d <= D:
        raise ValueError(f"the compressed width d={d} must be in [1, {D}] (the compiled width)")
    W = W.to(model.W_E.dtype)
    small = Transformer(dataclasses.replace(cfg, d_model=d), conventions=model.conventions).to(model.W_E.dtype)
    state = {}
    for name, value in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if name in ("W_E", "W_pos") or leaf in _WRITES:
            value = value @ W.T  # [..., D] -> [..., d]
        elif name == "W_U" or leaf in _READS:
            value = W @ value if value.ndim == 2 else torch.einsum("dD,hDe->hde", W, value)  # [D, ...] -> [d, ...]
        state[name] = value
    small.load_state_dict(state)
    return small.requires_grad_(False)


@torch.no_grad()
def _residual_states(model: Transformer, examples: Examples) -> torch.Tensor:
    """``[K, D]`` float64: the residual stream after every writer, at every valid position of every example."""
    _, writers = model(examples.clean, attention_mask=examples.valid, return_writers=True)  # [W, N, S, D]
    return writers.cumsum(0)[:, examples.valid].reshape(-1, model.cfg.d_model).double()


@torch.no_grad()
def residual_basis(model: Transformer, examples: Examples, *, rtol: float = 1e-6) -> torch.Tensor:
    """``[r, D]`` orthonormal rows spanning every residual state of ``model`` on ``examples``: at every
    valid position, after every writer. Singular values below ``rtol`` times the largest count as zero."""
    _, s, vh = torch.linalg.svd(_residual_states(model, examples), full_matrices=False)
    r = int((s > rtol * s[0]).sum())
    return vh[:r].to(model.W_E.dtype)


@torch.no_grad()
def principal_directions(model: Transformer, examples: Examples, width: int) -> torch.Tensor:
    """``[width, D]``: the top right singular vectors of every residual state on ``examples`` (uncentred),
    the best rank-``width`` linear reconstruction of the stream."""
    return torch.linalg.svd(_residual_states(model, examples), full_matrices=False)[2][:width].to(model.W_E.dtype)

def read_through(model: Transformer, W: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor):
    """The compressed model computed from ``model``'s own blocks, differentiable in ``W`` ``[d, D]`` and
    the weights: ``(logits, states)``, ``states`` the residual read back into ``D`` dimensions
    (``h @ W``) before every attention, every MLP and the unembedding, each ``[B, S, D]``.
    ``read_through(model, eye(D), ...)`` is the compiled model and its own residual."""
    h = model.embed(tokens) @ W.T  # [B, S, d]
    states = []
    for block in model.blocks:
        x = h @ W
        states.append(x)
        h = h + block.attention(x, x, x, attention_mask, None).sum(0) @ W.T
        x = h @ W
        states.append(x)
        h = h + block.mlp(x) @ W.T
    x = h @ W
    states.append(x)
    return model.unembed(model.ln_f(x)), states


def _read_columns(model: Transformer) -> torch.Tensor:
    """``[D, K]`` float64: every column any reader multiplies the stream by."""
    cols = [model.W_U]
    for b in model.blocks:
        cols += [*b.W_Q.unbind(0), *b.W_K.unbind(0), *b.W_V.unbind(0), b.W_in]
        if b.W_gate is not None:
            cols.append(b.W_gate)
    return torch.cat([c.detach().double() for c in cols], 1)


@torch.no_grad()
def _read_part(model: Transformer, examples: Examples, rtol: float) -> torch.Tensor:
    """``[D, t]`` float64 orthonormal columns: the readers' columns projected onto the span of the residual
    states. For a state x in that span and any reader column c, ``x . c = (x P) . c`` with P the projection
    onto these columns, so nothing is lost (module doc)."""
    S = residual_basis(model, examples, rtol=rtol).double()  # [r, D]
    u, s, _ = torch.linalg.svd(S.T @ (S @ _read_columns(model)), full_matrices=False)
    return u[:, : int((s > rtol * s[0]).sum())]


@torch.no_grad()
def read_basis(model: Transformer, examples: Examples, *, rtol: float = 1e-6) -> torch.Tensor:
    """``[t, D]`` orthonormal rows: the part of every residual state on ``examples`` that some reader reads.
    Folding it in loses nothing; ``t`` is at most the residual rank."""
    return _read_part(model, examples, rtol).T.to(model.W_E.dtype)


def _initial_projection(model: Transformer, examples: Examples, width: int) -> tuple[torch.Tensor, str]:
    """``[width, D]`` and its name: the read basis padded with zero rows (unused dimensions) when it fits,
    else the top principal directions of the read part of the residual states."""
    T = _read_part(model, examples, 1e-6)  # [D, t]
    t = T.shape[1]
    if width >= t:
        return torch.cat([T.T, T.new_zeros(width - t, T.shape[0])]).to(model.W_E.dtype), "read basis"
    X = _residual_states(model, examples) @ T @ T.T  # [K, D]
    W = torch.linalg.svd(X, full_matrices=False)[2][:width].to(model.W_E.dtype)
    return W, "principal directions of the read part of the residual states"


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a model and tensors have no truth value
class Compression:
    """A compressed variant: the folded model of width ``width`` and how it was made.

    Column ``i`` of ``W`` is the image, in the compressed stream, of the compiled residual's direction ``i``
    (its label is ``residual_labels[i]`` of the compiled model): it is what writing that direction adds and
    what reading it takes the dot product with."""

    model: Transformer
    W: torch.Tensor  # [width, D]
    width: int
    agreement: float  # fraction of examples decoded exactly as the compiled model does
    recipe: dict

    def directions(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """Each labelled compiled direction's image ``[width]`` in the compressed stream."""
        if len(labels) != self.W.shape[1]:
            raise ValueError(f"{len(labels)} labels for a compiled width of {self.W.shape[1]}")
        return dict(zip(labels, self.W.T.unbind(0), strict=True))


def _loss(examples: Examples, logits, full, labels, states, targets, reconstruction: float) -> torch.Tensor:
    at, v = examples.answer, examples.valid
    if examples.kind == "categorical":
        out = torch.nn.functional.cross_entropy(logits[at], labels[at])
    else:
        # Decoding allows atol: only errors above a quarter of it cost, so the loss spends itself on the
        # outputs that would fail (a mean squared error is content to leave a few far off).
        err = (logits[at][:, 0] - full[at][:, 0]).abs()
        out = (torch.relu(err - examples.atol / 4) / examples.atol).pow(2).mean()
    rec = sum((s - t)[v].pow(2).sum(-1).mean() / t[v].pow(2).sum(-1).mean() for s, t in zip(states, targets,
                                                                                              strict=True))
    return out + reconstruction * rec / len(states)


def _masked_agrees(model: Transformer, examples: Examples, full: torch.Tensor) -> bool:
    """Every example decodes as ``full`` in masked mode with every edge kept (what the ground truth's
    derivation starts from; the ablation is irrelevant when no edge is pruned)."""
    from prune.evaluate import Evaluator

    ev = Evaluator(model, examples, "zero")
    with torch.no_grad():
        return bool(examples.agree(ev.logits(torch.ones(model.graph.n_edges)), full).all())


def _accept(trained: Transformer, W: torch.Tensor, examples: Examples, full: torch.Tensor):
    """``(folded, agreement)`` of the model that reads ``trained`` through ``W``, checked on the folded model
    itself (not only the path that trained it) and in masked mode: an output exact in plain mode but not
    in masked mode with every edge kept sits so close to a boundary that it flips on the rounding of
    another summation order, and no ground truth could be derived; it counts as one example short."""
    folded = fold(trained, W.detach())
    with torch.no_grad():
        agreement = examples.agree(folded(examples.clean, attention_mask=examples.valid), full).float().mean().item()
    if agreement == 1.0 and not _masked_agrees(folded, examples, full):
        agreement = 1.0 - 1.0 / len(examples)
    return folded, agreement


def live_intervals(model: Transformer, *, tol: float = 0.0) -> list[tuple[int, int] | None]:
    """Per compiled direction, ``(first write, last read)`` in the order the model runs its components
    (0 the embedding, ``2l + 1`` attention ``l``, ``2l + 2`` MLP ``l``, ``2L + 1`` the unembedding), read
    off the weights: a direction is written by a component whose output weights are nonzero there and read
    by one whose input weights are. ``None`` for a direction never written or never read (no reader needs
    it). A direction is live for the readers after its first write up to its last read: two whose live
    ranges do not overlap can share a dimension."""
    L, D = len(model.blocks), model.cfg.d_model
    nz = lambda t, dims: (t.detach().abs().sum(dims) if dims is not None else t.detach().abs()) > tol  # noqa: E731
    writes = torch.zeros(2 * L + 2, D, dtype=torch.bool)
    reads = torch.zeros(2 * L + 2, D, dtype=torch.bool)
    writes[0] = nz(model.W_E, 0) | nz(model.W_pos, 0)
    for i, b in enumerate(model.blocks):
        writes[2 * i + 1] = nz(b.W_O, (0, 1)) | (nz(b.b_O, None) if b.b_O is not None else False)
        reads[2 * i + 1] = nz(b.W_Q, (0, 2)) | nz(b.W_K, (0, 2)) | nz(b.W_V, (0, 2))
        writes[2 * i + 2] = nz(b.W_out, 0) | (nz(b.b_out, None) if b.b_out is not None else False)
        reads[2 * i + 2] = nz(b.W_in, 1) | (nz(b.W_gate, 1) if b.W_gate is not None else False)
    reads[2 * L + 1] = nz(model.W_U, 1)
    out: list[tuple[int, int] | None] = []
    for i in range(D):
        w, r = writes[:, i].nonzero().flatten(), reads[:, i].nonzero().flatten()
        out.append((int(w.min()), int(r.max())) if len(w) and len(r) else None)
    return out


def live_sharing(model: Transformer) -> tuple[list[int | None], list[int]]:
    """A dimension for every compiled direction, shared by directions whose live ranges do not overlap
    (:func:`live_intervals`; greedy colouring of the intervals in order of first write, which needs as many
    dimensions as the most directions live at once), and each direction's rank: how many directions had
    its dimension before it. ``(dimension per direction or None, rank per direction)``."""
    live = live_intervals(model)
    slots: list[tuple[int, int]] = []  # per dimension: (last read of its current direction, its rank)
    dim: list[int | None] = [None] * len(live)
    rank = [0] * len(live)
    for i in sorted((i for i, v in enumerate(live) if v is not None), key=lambda i: (*live[i], i)):
        first_write, last_read = live[i]
        free = [k for k, (end, _) in enumerate(slots) if end <= first_write]  # read, at the latest, by the writer
        if free:
            k = min(free, key=lambda k: (slots[k][1], slots[k][0], k))  # the lowest rank keeps scales small
            dim[i], rank[i] = k, slots[k][1] + 1
        else:
            k = dim[i] = len(slots)
            slots.append((0, -1))
        slots[k] = (last_read, rank[i])
    return dim, rank


def _rescaled(model: Transformer, scale: torch.Tensor) -> Transformer:
    """``model`` with compiled direction ``i`` written ``scale[i]`` times larger and read ``scale[i]`` times
    smaller: the same function (no norm), a change of scale of each residual coordinate."""
    out = copy.deepcopy(model)
    s = scale.to(model.W_E.dtype)
    with torch.no_grad():
        out.W_E.mul_(s)
        out.W_pos.mul_(s)
        out.W_U.div_(s[:, None])
        for b in out.blocks:
            b.W_O.mul_(s)
            b.W_out.mul_(s)
            for bias in (b.b_O, b.b_out):
                if bias is not None:
                    bias.mul_(s)
            for w in (b.W_Q, b.W_K, b.W_V):
                w.div_(s[None, :, None])
            b.W_in.div_(s[:, None])
            if b.W_gate is not None:
                b.W_gate.div_(s[:, None])
    return out.requires_grad_(False)


def compress(model: Transformer, examples: Examples, width: int, *, learning_rates=(1e-3, 3e-4, 1e-4),
             steps: int = 1500, patience: int = 300, reconstruction: float = 0.1) -> Compression:
    """The compiled ``model`` at residual width ``width``, decoding every example exactly (module doc).

    Full-batch Adam on the output loss (cross-entropy against the compiled model's decoded labels;
    numerical outputs: the error beyond a quarter of the tolerance) plus ``reconstruction`` times the
    mean normalised squared error of the residual read back at every layer. First ``W`` alone, the
    compiled weights frozen, at each learning rate in turn; then ``W`` and every weight. Stops at the
    first step where every example decodes as compiled; a rate whose best agreement has not risen for
    ``patience`` steps gives way to the next. Deterministic: no sampling.
    Raises ``ValueError`` naming the best agreement reached when no stage and rate decodes every example.
    """
    D = model.cfg.d_model
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= D:
        raise ValueError(f"width {width!r} must be a whole number in [1, {D}] (the compiled width)")
    for label, value in (("steps", steps), ("patience", patience)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive whole number, got {value!r}")
    compiled = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        full, targets = read_through(compiled, torch.eye(D, dtype=model.W_E.dtype), examples.clean, examples.valid)
    labels = examples.decode(full)
    W0, init = _initial_projection(compiled, examples, width)
    best = (-1.0, None, None)
    for stage in ("frozen", "fine-tuned"):
        for lr in learning_rates:
            trained = copy.deepcopy(compiled).requires_grad_(stage == "fine-tuned")
            W = W0.clone().requires_grad_(True)
            opt = torch.optim.Adam([W, *trained.parameters()] if stage == "fine-tuned" else [W], lr=lr)
            rate_best, since = -1.0, 0
            for step in range(steps + 1):
                logits, states = read_through(trained, W, examples.clean, examples.valid)
                agreement = examples.agree(logits.detach(), full).float().mean().item()
                if agreement == 1.0:
                    folded, agreement = _accept(trained, W, examples, full)
                    if agreement == 1.0:
                        recipe = {"init": init, "stage": stage,
                                  "trained": "W" if stage == "frozen" else "W and every weight",
                                  "optimizer": "Adam, full batch", "lr": lr, "steps": step,
                                  "reconstruction": reconstruction, "learning_rates": list(learning_rates),
                                  "max_steps": steps, "patience": patience}
                        return Compression(model=folded, W=W.detach().clone(), width=width, agreement=1.0,
                                           recipe=recipe)
                best = max(best, (agreement, stage, lr), key=lambda b: b[0])
                rate_best, since = (agreement, 0) if agreement > rate_best else (rate_best, since + 1)
                if step == steps or since > patience:
                    break
                loss = _loss(examples, logits, full, labels, states, targets, reconstruction)
                if not torch.isfinite(loss):
                    break  # this rate diverged: the next one is tried
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    common = {"reconstruction": reconstruction, "learning_rates": list(learning_rates), "max_steps": steps,
              "patience": patience}
    # Stage 3, where neither decodes at any rate: W and every weight from the same start, the first rate
    # annealed to zero on a cosine over twice the steps, no patience (a constant rate plateaus where the
    # annealed one settles: sort, sort_unique and shuffle_dyck at 0.75 D).
    lr0, n = learning_rates[0], 2 * steps
    trained = copy.deepcopy(compiled).requires_grad_(True)
    W = W0.clone().requires_grad_(True)
    opt = torch.optim.Adam([W, *trained.parameters()], lr=lr0)
    for step in range(n + 1):
        for group in opt.param_groups:
            group["lr"] = lr0 * 0.5 * (1.0 + math.cos(math.pi * step / n))
        logits, states = read_through(trained, W, examples.clean, examples.valid)
        agreement = examples.agree(logits.detach(), full).float().mean().item()
        if agreement == 1.0:
            folded, agreement = _accept(trained, W, examples, full)
            if agreement == 1.0:
                recipe = {"init": init, "stage": "annealed", "trained": "W and every weight",
                          "optimizer": "Adam, full batch, cosine-annealed rate", "lr": lr0, "steps": step,
                          "annealed_steps": n, **common}
                return Compression(model=folded, W=W.detach().clone(), width=width, agreement=1.0, recipe=recipe)
        best = max(best, (agreement, "annealed", lr0), key=lambda b: b[0])
        if step == n:
            break
        loss = _loss(examples, logits, full, labels, states, targets, reconstruction)
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # Stage 4: no training. Directions whose live ranges do not overlap share a dimension (live_sharing);
    # the compiled weights write each direction alpha^rank times larger and read it as much smaller, so a
    # reader sees its own direction plus what earlier, dead ones left there, alpha times smaller or more.
    dim, rank = live_sharing(compiled)
    live_width = 1 + max((k for k in dim if k is not None), default=-1)
    if width >= live_width:
        W = torch.zeros(width, D, dtype=model.W_E.dtype)
        for i, k in enumerate(dim):
            if k is not None:
                W[k, i] = 1.0
        for alpha in LIVE_SCALES:
            shared = _rescaled(compiled, torch.tensor([alpha ** r for r in rank], dtype=torch.float64))
            folded, agreement = _accept(shared, W, examples, full)
            if agreement == 1.0:
                recipe = {"init": f"live sharing: {live_width} dimensions, each shared by directions whose live "
                                  f"ranges do not overlap", "stage": "live sharing",
                          "trained": "nothing: the compiled weights, each direction written alpha^rank times "
                                     "larger and read as much smaller",
                          "optimizer": None, "lr": None, "steps": 0, "alpha": alpha, "live_width": live_width,
                          "max_rank": max(rank), **common}
                return Compression(model=folded, W=W, width=width, agreement=1.0, recipe=recipe)
            best = max(best, (agreement, "live sharing", alpha), key=lambda b: b[0])
    where = {"frozen": "frozen weights, learning rate {:g}", "fine-tuned": "fine-tuned weights, learning rate {:g}",
             "annealed": "fine-tuned weights, learning rate {:g} annealed", "live sharing": "live sharing, scale {:g}"}
    raise ValueError(f"no compression to width {width} of {D} decodes every example: the best agreement was "
                     f"{best[0]:.3f} ({where[best[1]].format(best[2])}; at most {steps} steps each rate, "
                     f"{2 * steps} annealed; live sharing needs {live_width} dimensions); try a wider width or "
                     f"more steps")


@dataclasses.dataclass(frozen=True, eq=False)
class Perturbation:
    """A perturbed variant: ``model`` with seeded Gaussian noise at ``scale`` on every weight.

    ``critical_scale`` is the largest scale bisection found at which every example still decodes as
    compiled; ``scale`` is ``margin`` times it, so that no single edge's noise sits on a decision boundary
    (at the critical scale an output is within rounding of flipping, and removing any noisy edge can flip
    it: the ground truth would be the noise's, not the program's)."""

    model: Transformer
    scale: float
    critical_scale: float
    margin: float
    seed: int
    agreement: float


def _noise(model: Transformer, seed: int) -> dict[str, torch.Tensor]:
    """Per weight: a standard normal draw times the weight's own root mean square (the model's, for a
    weight that is all zeros), so that a scale is relative to each weight's size. Drawn in state-dict order
    from one generator: the same seed, the same noise."""
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    overall = torch.cat([v.flatten() for v in state.values()]).double().pow(2).mean().sqrt()
    out = {}
    for name, value in state.items():
        rms = value.double().pow(2).mean().sqrt()
        size = rms if rms > 0 else overall
        out[name] = (torch.randn(value.shape, generator=gen, dtype=torch.float64) * size).to(value.dtype)
    return out


def _with_noise(model: Transformer, noise: dict[str, torch.Tensor], scale: float) -> Transformer:
    noisy = copy.deepcopy(model)
    noisy.load_state_dict({k: v + scale * noise[k] for k, v in model.state_dict().items()})
    return noisy.requires_grad_(False)


def perturb(model: Transformer, examples: Examples, *, seed: int = 0, scale: float | None = None,
            margin: float = 0.5, iterations: int = 20, reference: torch.Tensor | None = None) -> Perturbation:
    """``model`` with seeded Gaussian noise on every weight (:func:`_noise`), decoding every example as
    ``reference`` (logits ``[N, S, out]``; default ``model``'s own) does. Give the compiled model's logits
    when ``model`` is itself a variant: numerical outputs are compared within a tolerance, and the noise
    must not spend what the compression already used of it.

    With ``scale`` given, that scale is used and checked. Otherwise the critical scale is bracketed by
    doubling or halving from 1e-4 and bisected (geometrically, ``iterations`` times); the noise used is ``margin``
    times it (class doc). Raises ``ValueError`` for a negative scale, a margin outside (0, 1], or a given
    scale at which some example no longer decodes as compiled.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale >= 0 and scale == scale):
        raise ValueError(f"noise scale {scale!r} must be a number >= 0")
    if not (isinstance(margin, (int, float)) and 0 < margin <= 1):
        raise ValueError(f"margin {margin!r} must be in (0, 1]")
    noise = _noise(model, seed)
    with torch.no_grad():
        full = model(examples.clean, attention_mask=examples.valid) if reference is None else reference

    def agreement(s: float) -> float:
        noisy = _with_noise(model, noise, s)
        with torch.no_grad():
            return examples.agree(noisy(examples.clean, attention_mask=examples.valid), full).float().mean().item()

    if scale is not None:
        got = agreement(float(scale))
        if got < 1.0:
            raise ValueError(f"at noise scale {scale:g} (seed {seed}) only {got:.3f} of the examples decode as "
                             f"compiled; give a smaller scale, or none to find the largest by bisection")
        return Perturbation(model=_with_noise(model, noise, float(scale)), scale=float(scale),
                            critical_scale=float("nan"), margin=1.0, seed=seed, agreement=1.0)
    good, bad = 1e-4, 1e-4  # bracket [good, bad]: doubling up from 1e-4, or halving down
    if agreement(good) == 1.0:
        while agreement(bad) == 1.0:
            good, bad = bad, bad * 2
            if bad > 1e4:
                raise ValueError(f"noise up to scale {good:g} changes no decoded output of this model: its "
                                 f"outputs do not depend on its weights")
    else:
        while agreement(good) < 1.0:
            bad, good = good, good / 2
            if good < 1e-12:
                raise ValueError(f"even noise at scale {bad:g} (seed {seed}) changes a decoded output; this model "
                                 f"has no margin for noise")
    for _ in range(iterations):
        mid = (good * bad) ** 0.5
        good, bad = (mid, bad) if agreement(mid) == 1.0 else (good, mid)
    used = margin * good
    if agreement(used) < 1.0:  # the boundary need not be monotone; a used scale must decode, not only its bracket
        raise ValueError(f"noise at {margin} x the critical scale {good:g} (seed {seed}) changes a decoded output; "
                         f"try another seed or margin")
    return Perturbation(model=_with_noise(model, noise, used), scale=used, critical_scale=good, margin=margin,
                        seed=seed, agreement=1.0)
