"""Transcoders: a wide, sparsely active MLP trained to stand in for one MLP sublayer.

A transcoder (Dunefsky, Chlenski and Nanda 2024, "Transcoders Find
Interpretable LLM Feature Circuits") maps an MLP's *normed* input to that MLP's
output through features ``f = act(x W_enc + b_enc)``, ``y = f W_dec + b_dec``.
This module trains them (:func:`train_transcoder`), saves and loads them in
circuit-tracer's single-layer layout (:func:`save_transcoders`,
:func:`load_transcoders`), swaps them into a model (:func:`replace_mlps`; with
every feature a writer of the graph, :func:`feature_model`), and
scores a trained one against known features (:func:`match_features`). A
compiled Tracr MLP *is* a ReLU transcoder: :meth:`Transcoder.from_mlp` gives
that ideal one, each hidden unit a feature. docs/transcoders.md has the recipe,
its defaults and the file layout.

Shapes: N inputs (valid positions), D d_model, T d_transcoder, F d_mlp.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prune.files import atomic_folder
from prune.model import Block, Transformer

__all__ = [
    "TranscoderConfig", "Transcoder", "TranscoderFileError", "TrainingLog",
    "mlp_activations", "fit_transcoder", "train_transcoder",
    "save_transcoders", "load_transcoders", "load_transcoder",
    "replace_mlps", "feature_model", "Faithfulness", "replacement_faithfulness",
    "FeatureMatch", "match_features",
]

Activation = Literal["relu", "jumprelu", "topk"]
_ACTIVATIONS = ("relu", "jumprelu", "topk")


class TranscoderFileError(ValueError):
    """A transcoder folder or file that is missing, malformed, or made for another model or layer."""


# ----------------------------------------------------------------- the module
@dataclasses.dataclass(frozen=True, kw_only=True)
class TranscoderConfig:
    """What a :class:`Transcoder` is: its widths, the layer whose MLP it replaces, its activation.

    ``activation``: ``relu``; ``jumprelu`` (ReLU gated by a learned per-feature
    ``threshold``, as circuit-tracer's ``activation_function.threshold``); or
    ``topk`` (the ``k`` largest pre-activations per input, then ReLU).
    """

    d_model: int
    d_transcoder: int
    layer: int
    activation: Activation = "relu"
    k: int | None = None

    def __post_init__(self):
        for name in ("d_model", "d_transcoder"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TranscoderConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"TranscoderConfig.layer must be a non-negative int, got {self.layer!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TranscoderConfig.activation={self.activation!r}; choose one of {_ACTIVATIONS}")
        if self.activation == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_transcoder:
                raise ValueError(f"a topk transcoder needs 1 <= k <= d_transcoder={self.d_transcoder}, "
                                 f"got k={self.k!r}")
        elif self.k is not None:
            raise ValueError(f"k={self.k!r} is only for activation='topk', not {self.activation!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TranscoderConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - fields:
            raise ValueError(f"a transcoder config is a mapping of {sorted(fields)}, got {d!r}")
        return cls(**d)


class Transcoder(nn.Module):
    """``forward(x)``: the MLP's normed input ``[.., D]`` to its output ``[.., D]`` through ``T`` features.

    Weights (TransformerLens orientation, as :class:`prune.model.Block`'s MLP):
    ``W_enc [D, T]``, ``b_enc [T]``, ``W_dec [T, D]``, ``b_dec [D]``, and
    ``threshold [T]`` for ``jumprelu`` (None otherwise). Files hold circuit-tracer's
    orientation (``W_enc [T, D]``); :func:`save_transcoders` transposes.
    """

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        D, T = cfg.d_model, cfg.d_transcoder
        self.W_enc = nn.Parameter(torch.zeros(D, T))
        self.b_enc = nn.Parameter(torch.zeros(T))
        self.W_dec = nn.Parameter(torch.zeros(T, D))
        self.b_dec = nn.Parameter(torch.zeros(D))
        self.threshold = nn.Parameter(torch.zeros(T)) if cfg.activation == "jumprelu" else None
        self.log: TrainingLog | None = None  # set by fit_transcoder: how it was trained

    @property
    def layer(self) -> int:
        return self.cfg.layer

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:  # [.., D] -> [.., T]
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:  # [.., T] -> [.., T]
        if self.cfg.activation == "jumprelu":
            return pre * (pre > self.threshold).to(pre.dtype)
        if self.cfg.activation == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        return F.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [.., D] -> feature activations [.., T]
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # [.., T] -> [.., D]
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normed MLP input [.., D] -> MLP output [.., D]
        return self.decode(self.encode(x))

    @classmethod
    def from_mlp(cls, block: Block, layer: int) -> Transcoder:
        """The ideal transcoder of a non-gated ReLU MLP: the MLP itself, one feature per hidden unit
        (``W_enc = W_in``, ``b_enc = b_in``, ``W_dec = W_out``, ``b_dec = b_out``; zero biases where it has none)."""
        cfg = block.cfg
        if block.W_gate is not None or cfg.activation != "relu":
            kind = "gated " if block.W_gate is not None else ""
            raise ValueError(f"layer {layer}'s MLP is {kind}{cfg.activation}, not a plain ReLU MLP: it is no "
                             f"transcoder; train one with train_transcoder")
        tc = cls(TranscoderConfig(d_model=cfg.d_model, d_transcoder=cfg.d_mlp, layer=layer))
        with torch.no_grad():
            tc.W_enc.copy_(block.W_in)
            tc.W_dec.copy_(block.W_out)
            if block.b_in is not None:
                tc.b_enc.copy_(block.b_in)
            if block.b_out is not None:
                tc.b_dec.copy_(block.b_out)
        return tc.to(block.W_in.dtype).requires_grad_(False)


# ---------------------------------------------------------- the MLP's data
def _check_layer(model: Transformer, layer) -> int:
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"MLP layer {layer!r} is out of range: this model's MLP layers are 0..{n - 1}")
    return layer


def mlp_activations(model: Transformer, layer: int, tokens: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, D], y [N, D])``: layer ``layer``'s normed MLP input and its MLP output at the valid positions.

    One plain forward with a hook on the layer's ``ln2`` (what ``Block.mlp`` reads);
    the output is that block's own ``mlp`` of it. ``attention_mask`` ``[B, S]`` marks
    the valid positions (None: all). No unembedding is computed.
    """
    _check_layer(model, layer)
    block = model.blocks[layer]
    seen: list[torch.Tensor] = []
    handle = block.ln2.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            none = torch.zeros_like(tokens, dtype=torch.bool)  # read no logits: skip the unembedding
            model(tokens, attention_mask=attention_mask, positions=none)
            x = seen[0]  # [B, S, D]
            keep = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            x = x[keep]
            y = block.mlp(x)
    finally:
        handle.remove()
    return x, y


# ------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True)
class TrainingLog:
    """How a transcoder was trained, and where its loss ended (on the whole training set)."""

    recipe: dict
    n_inputs: int
    steps: int
    seconds: float
    loss: float  # final total loss
    nmse: float  # final normalised MSE: mean ||y_hat - y||^2 / mean ||y - mean(y)||^2
    l0: float  # mean number of active features per input
    resampled: int  # features re-initialised over the run
    history: tuple[float, ...]  # total loss on the batch, every `log_every` steps
    init: str = "sample"  # the initialisation the kept weights came from ("sample", "distinct" or "steps")
    best_step: int = -1  # the step whose weights were kept (keep_best: lowest loss on the whole set); -1: the last


def _seeded_choice(weights: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` indices drawn with probability proportional to ``weights`` (uniform when all are zero)."""
    w = weights.double().clamp_min(0)
    if not bool(w.sum() > 0):
        w = torch.ones_like(w)
    return torch.multinomial(w, n, replacement=True, generator=gen)


def _unit_rows(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rows of ``v`` scaled to unit norm; a zero row becomes a random unit row."""
    norm = v.norm(dim=-1, keepdim=True)
    rand = torch.randn(v.shape, generator=gen, dtype=v.dtype)
    v = torch.where(norm > 1e-8, v, rand)
    return v / v.norm(dim=-1, keepdim=True)


def _init_from_data(tc: Transcoder, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, idx: torch.Tensor):
    """Features ``idx`` start as "an input like x_n gives an output like y_n", for random inputs n.

    Encoders are centred inputs and decoders centred outputs, so every weight starts
    inside the span the data varies in: directions the data never uses get no gradient
    and would otherwise keep their random start (Tracr's residual stream has many).
    """
    mx, my = x.mean(0), y.mean(0)
    pick = torch.randint(0, len(x), (len(idx),), generator=gen)
    # activations start at about a tenth of the output's norm: decoders are unit rows
    scale = 0.1 * (y - my).norm(dim=-1).mean() / (x - mx).norm(dim=-1).mean().clamp_min(1e-12)
    enc = _unit_rows(x[pick] - mx, gen) * scale  # [n, D]
    dec = _unit_rows(y[pick] - my, gen)  # [n, D]
    with torch.no_grad():
        tc.W_enc[:, idx] = enc.T
        tc.b_enc[idx] = -(enc @ mx)  # fires where the input leans towards x_n from the mean
        tc.W_dec[idx] = dec


def _relevant_basis(x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-3) -> torch.Tensor:
    """``[D, r]`` orthonormal input directions along which the output varies linearly (least squares ``y ~ x``)."""
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    B = torch.linalg.pinv(xc, rtol=1e-6) @ yc  # [D, D]
    u, s, _ = torch.linalg.svd(B, full_matrices=False)
    keep = s > rtol * s.max() if len(s) and bool(s.max() > 0) else torch.zeros_like(s, dtype=torch.bool)
    return u[:, keep].float()


def _init_distinct(tc: Transcoder, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, b_dec: torch.Tensor,
                   decimals: int = 4) -> int:
    """One feature per distinct input, as the input is seen by the output: "this input gives this output".

    The centred inputs are projected onto the directions along which the output varies
    linearly (:func:`_relevant_basis`), rounded to ``decimals`` and deduplicated; each
    distinct projection ``z_c`` whose mean output is not ``b_dec`` gets a feature: encoder
    the unit direction of ``z_c``, bias halfway between ``z_c``'s projection and the next
    lower one (so it fires on ``c`` and on what lies beyond it), scaled so that its largest
    activation on the data is ``|| y_c - b_dec ||``, decoder the unit ``y_c - b_dec``.
    More distinct inputs than features: k-means++ (seeded) picks which; fewer: the rest
    start silent (``b_enc = -1``, zero encoder, a sampled output as decoder) until resampled.
    Returns the number of features placed. Data only: inputs, outputs, their means.
    """
    T, D = tc.cfg.d_transcoder, x.shape[1]
    mx = x.mean(0)
    U = _relevant_basis(x, y)  # [D, r]
    z = (x - mx) @ U  # [N, r]
    _, inv, counts = torch.unique(z.round(decimals=decimals), dim=0, return_inverse=True, return_counts=True)
    K = len(counts)
    cx = torch.zeros(K, D).index_add_(0, inv, x) / counts[:, None]
    cy = torch.zeros(K, D).index_add_(0, inv, y) / counts[:, None]
    cz = torch.zeros(K, z.shape[1]).index_add_(0, inv, z) / counts[:, None]
    scale = (y - y.mean(0)).norm(dim=-1).mean().clamp_min(1e-12)
    cand = ((cy - b_dec).norm(dim=-1) > 1e-3 * scale).nonzero().flatten()
    if len(cand) > T:  # k-means++ seeding on the projections, weighted by how often each input occurs
        chosen = [int(cand[torch.multinomial(counts[cand].double(), 1, generator=gen)])]
        d2 = (cz[cand] - cz[chosen[0]]).pow(2).sum(-1).double()
        while len(chosen) < T and bool((d2 * counts[cand]).sum() > 0):
            j = int(cand[torch.multinomial(d2 * counts[cand], 1, generator=gen)])
            chosen.append(j)
            d2 = torch.minimum(d2, (cz[cand] - cz[j]).pow(2).sum(-1).double())
        cand = torch.tensor(chosen, dtype=torch.long)
    else:  # the most frequent first
        cand = cand[torch.argsort(counts[cand], descending=True, stable=True)]
    rest = torch.randint(0, len(x), (T,), generator=gen)
    with torch.no_grad():
        tc.W_enc.zero_()
        tc.b_enc.fill_(-1.0)
        tc.W_dec.copy_(_unit_rows(y[rest] - y.mean(0), gen))
        for j, c in enumerate(cand.tolist()):
            w = U @ cz[c]
            w = w / w.norm().clamp_min(1e-12)
            pj = (cx - mx) @ w  # [K]: every distinct input's projection
            top = pj[c]
            below = pj[pj < top - 1e-6]
            thr = (top + below.max()) / 2 if len(below) else top - 1.0
            a = (cy[c] - b_dec).norm() / (pj.max() - thr).clamp_min(1e-6)  # largest activation: the output's norm
            tc.W_enc[:, j] = a * w
            tc.b_enc[j] = -a * (thr + w @ mx)
            tc.W_dec[j] = (cy[c] - b_dec) / (cy[c] - b_dec).norm().clamp_min(1e-12)
    return len(cand)


def _steps_along(x: torch.Tensor, r: torch.Tensor, budget: int, scale: torch.Tensor):
    """One round of :func:`_init_steps` on the residual ``r``: ``(encoders [n, D], biases [n], decoders [n, D],
    the residual's mean at the lowest value [D])``, or None when no input coordinate has a linear effect on it."""
    D = x.shape[1]
    xc, rc = (x - x.mean(0)).double(), (r - r.mean(0)).double()
    effect = (torch.linalg.pinv(xc, rtol=1e-6) @ rc).norm(dim=-1) * xc.std(0)  # [D]: each input coordinate's
    if not bool(effect.max() > 0):  # linear effect on the residual; u the coordinate of largest effect
        return None
    u = torch.zeros(D)
    u[int(effect.argmax())] = 1.0
    if bool((x @ u).mean() < 0):  # signed so that the inputs' mean projection is positive (a value held)
        u = -u
    p = x @ u  # [N]
    vals, inv, counts = torch.unique(p.round(decimals=4), return_inverse=True, return_counts=True)  # ascending
    K = len(vals)
    cp = torch.zeros(K).index_add_(0, inv, p) / counts
    cr = torch.zeros(K, D).index_add_(0, inv, r) / counts[:, None]
    d = cr[1:] - cr[:-1]  # [K - 1, D]: the step between neighbouring values
    # neighbouring steps of one slope (the output linear in the value there) make one ramp: a pair from its
    # first value to its last, as a linear numerical MLP computes it (pair_balance's opens - closes)
    slope = d / (cp[1:] - cp[:-1]).clamp_min(1e-6)[:, None]
    starts = [0] + [k for k in range(1, K - 1) if not bool(
        (slope[k] - slope[k - 1]).norm() <= 1e-4 * torch.maximum(slope[k].norm(), slope[k - 1].norm()))]
    lo = torch.tensor(starts, dtype=torch.long)  # [S]: each ramp's first value, and its last
    hi = torch.tensor(starts[1:] + [K - 1], dtype=torch.long)
    step = cr[hi] - cr[lo]  # [S, D]
    size = step.norm(dim=-1)
    order = torch.argsort(size, descending=True, stable=True)
    order = order[size[order] > 1e-3 * scale][: budget // 2]
    enc, bias, dec = [], [], []
    for k in order.tolist():
        a = 1.0 / (cp[hi[k]] - cp[lo[k]]).clamp_min(1e-6)
        for shift, sign in ((0.0, 1.0), (1.0, -1.0)):
            enc.append(size[k] * a * u)
            bias.append(-size[k] * (a * cp[lo[k]] + shift))
            dec.append(sign * step[k] / size[k])
    if not enc:
        return None
    return torch.stack(enc), torch.stack(bias), torch.stack(dec), cr[0]


def _init_steps(tc: Transcoder, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                rounds: int = 4) -> torch.Tensor:
    """Steps along the input coordinates the output depends on: "above this value, the output changes by d".

    A round takes the input coordinate ``u`` of largest linear effect on what is left to
    explain, the residual ``r = y - y_hat`` (least squares ``r ~ x``: its coefficients'
    norm times the coordinate's spread), signed so that the inputs' mean projection on it
    is positive (a value held in the residual stream). The distinct projections
    ``v_1 < ... < v_K`` (rounded to 4 decimals) and their mean residuals ``r_1 .. r_K``
    give a step ``d_k = r_k - r_{k-1}`` between neighbours; each step is a pair of
    features along ``u``, ``|d_k| relu(a (p - v_{k-1}))`` writing the unit ``+d_k`` and
    ``|d_k| relu(a (p - v_{k-1}) - 1)`` writing ``-d_k``, ``a = 1 / (v_k - v_{k-1})``,
    whose difference is 0 up to ``v_{k-1}`` and ``d_k`` from ``v_k`` on; ``b_dec`` moves
    by ``r_1``. Neighbouring steps of one slope ``d_k / (v_k - v_{k-1})`` (within 1e-4)
    make one ramp, a single pair from its first value to its last: a linear numerical MLP
    is one pair per input, not one per value. The largest steps are kept when they need
    more features than are left.
    Rounds repeat (at most ``rounds``) while one lowers the squared residual by more than
    0.1%: a layer where Tracr placed several numerical MLPs side by side (``is_majority``'s
    two ``SelectorWidth``\\ s) gets steps along each one's input. Features still free then
    start as :func:`_init_distinct` of the residual (e.g. the BOS position's own unit);
    the rest start silent. Returns ``b_dec``. Data only: inputs, outputs, their means.
    """
    T, D = tc.cfg.d_transcoder, x.shape[1]
    rest = torch.randint(0, len(x), (T,), generator=gen)
    with torch.no_grad():
        tc.W_enc.zero_()
        tc.b_enc.fill_(-1.0)
        tc.W_dec.copy_(_unit_rows(y[rest] - y.mean(0), gen))
    b_dec = y.mean(0)
    if _relevant_basis(x, y).shape[1] == 0:
        return b_dec
    scale = (y - y.mean(0)).norm(dim=-1).mean().clamp_min(1e-12)
    used = 0

    def residual(bias):
        with torch.no_grad():
            tc.b_dec.copy_(bias)
            return y - tc(x)

    r = residual(b_dec)
    for _ in range(rounds):
        if T - used < 2 or not bool(r.norm(dim=-1).mean() > 1e-3 * scale):
            break
        step = _steps_along(x, r, T - used, scale)
        if step is None:
            break
        enc, bias, dec, base = step
        n, kept = len(enc), (tc.W_enc.clone(), tc.b_enc.clone(), tc.W_dec.clone())
        with torch.no_grad():
            tc.W_enc[:, used:used + n] = enc.T
            tc.b_enc[used:used + n] = bias
            tc.W_dec[used:used + n] = dec
        after = residual(b_dec + base)
        if not bool(after.pow(2).sum() < (1 - 1e-3) * r.pow(2).sum()):
            with torch.no_grad():  # this round explains nothing more: undone
                tc.W_enc.copy_(kept[0])
                tc.b_enc.copy_(kept[1])
                tc.W_dec.copy_(kept[2])
            break
        b_dec, used, r = b_dec + base, used + n, after
    if used and T > used and bool(r.norm(dim=-1).mean() > 1e-3 * scale):
        leftover = Transcoder(TranscoderConfig(d_model=D, d_transcoder=T - used, layer=tc.cfg.layer))
        _init_distinct(leftover, x, r, gen, torch.zeros(D))  # the residual's baseline is 0
        with torch.no_grad():
            tc.W_enc[:, used:] = leftover.W_enc
            tc.b_enc[used:] = leftover.b_enc
            tc.W_dec[used:] = leftover.W_dec
    return b_dec


def _resample_dead(tc: Transcoder, opt: torch.optim.Adam, x: torch.Tensor, y: torch.Tensor,
                   dead: torch.Tensor, gen: torch.Generator, scale: float) -> int:
    """Re-initialise the dead features towards inputs the transcoder reconstructs worst.

    Anthropic's recipe (Towards Monosemanticity, 2023): draw inputs with probability
    proportional to the squared reconstruction error; the decoder becomes the unit
    residual ``y - y_hat`` there, the encoder the unit centred input times ``scale``
    times the mean live encoder norm, the bias so that it fires on that input; their
    Adam moments are zeroed.
    """
    idx = dead.nonzero().flatten()
    if not len(idx):
        return 0
    with torch.no_grad():
        resid = y - tc(x)  # [N, D]
        pick = _seeded_choice(resid.pow(2).sum(-1), len(idx), gen)
        mx = x.mean(0)
        enc = _unit_rows(x[pick] - mx, gen)  # [n, D]
        alive = ~dead
        norm = tc.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
        enc = enc * scale * norm
        tc.W_enc[:, idx] = enc.T
        tc.b_enc[idx] = -(enc @ mx)
        dec = _unit_rows(resid[pick], gen)
        tc.W_dec[idx] = dec
        for p, sl in ((tc.W_enc, (slice(None), idx)), (tc.b_enc, (idx,)), (tc.W_dec, (idx,))):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][sl] = 0
    return len(idx)


_INITS = ("sample", "distinct", "steps")  # init="best" trains from each, in this order


def fit_transcoder(
    x: torch.Tensor, y: torch.Tensor, *, layer: int, d_transcoder: int, l1: float | None = None,
    steps: int = 3000, lr: float = 1e-2, batch: int = 1024, seed: int = 0, activation: str = "relu",
    k: int | None = None, resample_every: int = 500, resample_until: float = 0.6, resample_scale: float = 0.2,
    weight_decay: float = 0.0, sparsity_p: float = 0.5, log_every: int = 50, progress: bool = True,
    init: str = "best", schedule: str = "cosine", keep_best: bool = True, tol: float = 1e-10,
    tie_tol: float = 1e-6,
) -> Transcoder:
    """Train a transcoder on given activations: normed MLP inputs ``x [N, D]`` to MLP outputs ``y [N, D]``.

    Loss per batch: ``||y_hat - y||^2 / v`` + ``l1 * sum_i (g_i + eps)^p - eps^p``,
    ``g_i = f_i ||W_dec[i]|| / sqrt(v)``, averaged over inputs, where ``v = mean ||y - mean(y)||^2``
    over the whole set: the reconstruction is a fraction of the output's variance and the
    penalty is in units of the output's norm, so one ``l1`` suits outputs of any scale.
    The default recipe (docs/transcoders.md, "Training") is reconstruction alone
    (``l1=0``, ``weight_decay=0``), Adam at ``lr=1e-2`` with a cosine decay to 0
    (``schedule="cosine"``; ``"constant"``), ``steps=3000``; features that fired on no
    input during the last ``resample_every`` steps are resampled (:func:`_resample_dead`)
    until ``resample_until`` of the steps. ``init``: ``"sample"`` (each feature from a
    random input, :func:`_init_from_data`), ``"distinct"`` (one feature per distinct input
    as the output sees it, :func:`_init_distinct`), ``"steps"`` (rounds of pairs of ReLUs cutting
    the input coordinates the output depends on where it changes, :func:`_init_steps`), or
    ``"best"`` (default: a run from each, ``steps`` steps apiece, keeping the one of lowest
    loss on the whole set; within ``tie_tol`` of it, the one of least L0, then the first;
    ``tc.log.init`` says which). ``keep_best``: keep the weights of lowest loss on the
    whole set among those at the start, every ``resample_every`` steps (before resampling)
    and the end, so a near-exact start is never trained away; a run stops at such a check
    once that loss is <= ``tol``. Every start uses the layer's inputs and outputs only.
    Its figures on the compiled library are in bench/results/transcoders.md; on a
    language model, where no start is exact, pass ``l1`` (e.g. 0.03 with ``weight_decay=0.3``)
    for sparse features.
    Deterministic for a seed (same inputs, same weights, bit for bit).
    """
    if init not in _INITS + ("best",):
        raise ValueError(f"init={init!r}; choose one of {_INITS + ('best',)}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule={schedule!r}; choose 'constant' or 'cosine'")
    if x.ndim != 2 or y.shape != x.shape or len(x) == 0:
        raise ValueError(f"x and y must both be [N, D] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    for name, v in (("steps", steps), ("batch", batch), ("resample_every", resample_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    l1 = 0.0 if l1 is None else l1
    if not (isinstance(l1, (int, float)) and l1 >= 0 and math.isfinite(l1)):
        raise ValueError(f"l1 must be a non-negative number, got {l1!r}")
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("the training activations hold NaN or infinite values")
    recipe = dict(d_transcoder=d_transcoder, l1=float(l1), steps=steps, lr=float(lr), batch=batch, seed=seed,
                  activation=activation, k=k, resample_every=resample_every, resample_until=resample_until,
                  resample_scale=resample_scale, weight_decay=weight_decay, sparsity_p=sparsity_p, init=init,
                  schedule=schedule, keep_best=keep_best)
    cfg = TranscoderConfig(d_model=x.shape[1], d_transcoder=d_transcoder, layer=layer, activation=activation, k=k)
    x, y = x.detach().float(), y.detach().float()
    t0 = time.perf_counter()
    runs = []
    for start in (_INITS if init == "best" else (init,)):
        runs.append(_fit_once(x, y, cfg, start, l1=l1, steps=steps, lr=lr, batch=batch, seed=seed,
                              resample_every=resample_every, resample_until=resample_until,
                              resample_scale=resample_scale, weight_decay=weight_decay, sparsity_p=sparsity_p,
                              log_every=log_every, progress=progress, schedule=schedule, keep_best=keep_best,
                              tol=tol))
    low = min(r[1]["loss"] for r in runs)  # of the runs within tie_tol of the lowest loss: the sparsest, then the first
    tc, stats = min((r for r in runs if r[1]["loss"] <= low + tie_tol), key=lambda r: r[1]["l0"])
    tc.requires_grad_(False)
    tc.log = TrainingLog(recipe=recipe, n_inputs=len(x), steps=steps, seconds=time.perf_counter() - t0, **stats)
    return tc


def _fit_once(x, y, cfg: TranscoderConfig, init: str, *, l1, steps, lr, batch, seed, resample_every, resample_until,
              resample_scale, weight_decay, sparsity_p, log_every, progress, schedule, keep_best, tol):
    """One training run from one initialisation: ``(transcoder, TrainingLog fields)``."""
    layer, d_transcoder = cfg.layer, cfg.d_transcoder
    gen = torch.Generator().manual_seed(seed)
    tc = Transcoder(cfg)
    b_dec = y.mean(0)
    if init == "sample":
        _init_from_data(tc, x, y, gen, torch.arange(d_transcoder))
    elif init == "distinct":
        _init_distinct(tc, x, y, gen, b_dec)
    else:
        b_dec = _init_steps(tc, x, y, gen)
    with torch.no_grad():
        tc.b_dec.copy_(b_dec)
    var = (y - y.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)  # the output's variance
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    fired = torch.zeros(d_transcoder, dtype=torch.bool)
    history, resampled = [], 0
    best = (math.inf, -1, None)

    def checkpoint(step) -> bool:  # keeps the weights of lowest loss; True: good enough to stop
        nonlocal best
        with torch.no_grad():
            full = _loss(tc, x, y, var, l1, sparsity_p)[0].item()
        if full < best[0]:
            best = (full, step, copy.deepcopy(tc.state_dict()))
        return full <= tol

    done = keep_best and checkpoint(0)
    bar = _progress(steps, layer, progress)
    try:
        for step in range(0 if done else steps):
            step_lr = lr * 0.5 * (1 + math.cos(math.pi * step / steps)) if schedule == "cosine" else lr
            for group in opt.param_groups:
                group["lr"] = step_lr
            pick = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen)
            loss, f = _loss(tc, x[pick], y[pick], var, l1, sparsity_p)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"transcoder loss is {loss.item()} at step {step} of {steps} (layer {layer}, "
                                         f"lr {lr}, l1 {l1}); lower lr or check the activations")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _constrain(tc, step_lr * weight_decay)
            fired |= (f > 0).any(0)
            if (step + 1) % resample_every == 0:
                if keep_best and checkpoint(step + 1):  # before any resample: the weights as trained so far
                    break
                if step + 1 < resample_until * steps:  # late resamples would have no time to settle
                    resampled += _resample_dead(tc, opt, x, y, ~fired, gen, resample_scale)
                fired.zero_()
            if step % log_every == 0 or step == steps - 1:
                history.append(loss.item())
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.4g}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    best_step = -1
    if keep_best:
        if best[1] != 0 or not done:
            checkpoint(steps)
        if best[1] != steps:
            tc.load_state_dict(best[2])
            best_step = best[1]
    with torch.no_grad():
        total, f = _loss(tc, x, y, var, l1, sparsity_p)
        nmse = ((tc.decode(f) - y).pow(2).sum(-1).mean() / var).item()
        l0 = (f > 0).sum(-1).float().mean().item()
    return tc, dict(loss=total.item(), nmse=nmse, l0=l0, resampled=resampled, history=tuple(history), init=init,
                    best_step=best_step)


def _constrain(tc: Transcoder, decay: float):
    """Decoder rows back to unit norm (the paper's practice), so a feature's scale lives in its encoder; then
    the encoder's decoupled weight decay picks, of the encoders that compute the same activations on the data,
    the one of least norm (e.g. reading a variable's own direction, not several correlated ones)."""
    with torch.no_grad():
        tc.W_dec /= tc.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if decay:
            tc.W_enc.mul_(1 - decay)


_EPS = 1e-3  # keeps the gradient of an L^p penalty (p < 1) finite at zero activation


def _loss(tc: Transcoder, x, y, var, l1, p=1.0):  # -> (scalar loss, activations [n, T])
    f = tc.encode(x)
    mse = (tc.decode(f) - y).pow(2).sum(-1).mean() / var
    if not l1:
        return mse, f
    g = f * tc.W_dec.norm(dim=-1) / var.sqrt()  # [n, T]: each feature's share, in units of the output's norm
    if p != 1:  # concave: two copies of one feature cost more than one (an L1 penalty is blind to copies)
        g = (g + _EPS).pow(p) - _EPS ** p
    return mse + l1 * g.sum(-1).mean(), f


def _progress(steps: int, layer: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm  # only here: `import prune` needs torch, numpy and safetensors alone

    return tqdm(total=steps, desc=f"transcoder m{layer}", leave=False)


def train_transcoder(
    model: Transformer, layer: int, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
    expansion: float = 4.0, d_transcoder: int | None = None, **recipe,
) -> Transcoder:
    """Train a transcoder for ``model``'s MLP in ``layer`` on its own activations over ``tokens``.

    ``d_transcoder`` defaults to ``ceil(expansion * d_mlp)``: the expansion is relative
    to the MLP's own width (the paper's 32x d_model is 8x d_mlp on GPT-2). The other
    keywords (``l1``, ``steps``, ``lr``, ``batch``, ``seed``, ``activation``, ``k``,
    ``resample_every``, ``progress``, ...) are :func:`fit_transcoder`'s.
    """
    _check_layer(model, layer)
    if d_transcoder is None:
        if not (isinstance(expansion, (int, float)) and expansion > 0):
            raise ValueError(f"expansion must be a positive number, got {expansion!r}")
        d_transcoder = max(1, math.ceil(expansion * model.cfg.d_mlp))
    x, y = mlp_activations(model, layer, tokens, attention_mask)
    tc = fit_transcoder(x, y, layer=layer, d_transcoder=d_transcoder, **recipe)
    return tc.to(model.W_E.dtype)


# ------------------------------------------------------------- files
# circuit-tracer's single-layer layout (its TranscoderSet.to_safetensors and load_relu_transcoder, 0.5.0):
# one `layer_{l}.safetensors` per layer, tensors W_enc [T, D] (its encode is F.linear), W_dec [T, D],
# b_enc [T], b_dec [D], optional `activation_function.threshold` [T] (JumpReLU); `config.yaml` beside them
# with model_kind, feature_input_hook and feature_output_hook. Ours is written as JSON, which YAML reads.
CONFIG_FILE = "config.yaml"
FORMAT = "prune.transcoder/1"
_THRESHOLD = "activation_function.threshold"
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")


def _layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def _file_tensors(tc: Transcoder) -> dict[str, torch.Tensor]:
    t = {"W_enc": tc.W_enc.T, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
    if tc.threshold is not None:
        t[_THRESHOLD] = tc.threshold
    return {k: v.detach().float().contiguous().cpu() for k, v in t.items()}


def save_transcoders(folder: str | Path, transcoders: dict[int, Transcoder], *, model: Transformer | None = None,
                     model_name: str = "") -> Path:
    """Write ``transcoders`` (by layer) to ``folder`` atomically: the whole folder or nothing.

    The folder is built under a temporary name beside it, then renamed into place (an
    existing one is replaced only once the new one is complete). ``model``, when given,
    is checked against (width, layers) and names the hooks: ``ln2.hook_normalized``
    after a norm, ``hook_resid_mid`` without one. circuit-tracer loads a set only when
    its layers are ``0..n-1`` with one ``d_transcoder``; ours may hold any layers.
    """
    if not transcoders:
        raise ValueError("no transcoders to save")
    if isinstance(transcoders, Transcoder):
        transcoders = {transcoders.layer: transcoders}
    for layer, tc in transcoders.items():
        if not isinstance(tc, Transcoder) or tc.layer != layer:
            got = tc.layer if isinstance(tc, Transcoder) else type(tc).__name__
            raise ValueError(f"transcoders[{layer!r}] must be a Transcoder for layer {layer!r}, got {got!r}")
        if model is not None:
            _check_layer(model, layer)
            _check_width(tc, model, f"transcoders[{layer}]")
    widths = {tc.cfg.d_model for tc in transcoders.values()}
    if len(widths) > 1:
        raise ValueError(f"transcoders of one set must share d_model, got {sorted(widths)}")
    normed = model is not None and model.cfg.norm != "none"
    config = {
        "model_kind": "transcoder_set",
        "model_name": model_name,
        "feature_input_hook": "ln2.hook_normalized" if normed else "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
        "format": FORMAT,
        "d_model": widths.pop(),
        "n_layers": None if model is None else model.cfg.n_layers,
        "layers": {str(l): tc.cfg.to_dict() for l, tc in sorted(transcoders.items())},
    }
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        for layer, tc in transcoders.items():
            save_file(_file_tensors(tc), str(tmp / _layer_file(layer)))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")

    return atomic_folder(folder, write)


def _check_width(tc: Transcoder, model: Transformer, what: str):
    if tc.cfg.d_model != model.cfg.d_model:
        raise TranscoderFileError(f"{what} is for a model of width d_model={tc.cfg.d_model}, "
                                  f"this model's is {model.cfg.d_model}")


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise TranscoderFileError(f"{path} is missing: a transcoder folder holds {CONFIG_FILE} and "
                                  f"layer_<l>.safetensors files")
    text = path.read_text(errors="replace")
    try:
        config = json.loads(text)
    except ValueError as err:
        config = _yaml(text, path, err)
    if not isinstance(config, dict) or config.get("model_kind") != "transcoder_set":
        kind = config.get("model_kind") if isinstance(config, dict) else type(config).__name__
        raise TranscoderFileError(f"{path}: model_kind is {kind!r}; a single-layer set has 'transcoder_set'")
    return config


def _yaml(text: str, path: Path, err: Exception):
    """A config that is not JSON: circuit-tracer's own (yaml.dump), read with PyYAML where it is installed."""
    try:
        import yaml
    except ImportError:
        raise TranscoderFileError(f"{path} does not parse as JSON ({err}) and PyYAML is not installed") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as yerr:
        first = " ".join(str(yerr).split())[:200]
        raise TranscoderFileError(f"{path} does not parse: {first}") from None


def _layer_config(config: dict, layer: int, tensors: dict, path: Path) -> TranscoderConfig:
    """The layer's config: ours from config.yaml, or (a folder circuit-tracer wrote) from the tensors."""
    entry = (config.get("layers") or {}).get(str(layer))
    if entry is None:
        if "layers" in config:
            raise TranscoderFileError(f"{path} is not listed in {CONFIG_FILE}'s layers {sorted(config['layers'])}")
        b_enc, b_dec = tensors.get("b_enc"), tensors.get("b_dec")
        if b_enc is None or b_dec is None or b_enc.ndim != 1 or b_dec.ndim != 1:
            raise TranscoderFileError(f"{path} lacks a 1-d b_enc or b_dec to size the transcoder by")
        entry = dict(d_model=b_dec.shape[0], d_transcoder=b_enc.shape[0], layer=layer,
                     activation="jumprelu" if _THRESHOLD in tensors else "relu")
    try:
        cfg = TranscoderConfig.from_dict(entry)
    except (TypeError, ValueError) as err:
        raise TranscoderFileError(f"{path.parent / CONFIG_FILE}: layer {layer}: {err}") from None
    if cfg.layer != layer:
        raise TranscoderFileError(f"{path} holds the transcoder of layer {cfg.layer} by its config, not {layer}")
    return cfg


def _from_tensors(cfg: TranscoderConfig, tensors: dict[str, torch.Tensor], path: Path) -> Transcoder:
    D, T = cfg.d_model, cfg.d_transcoder
    want = {"W_enc": (T, D), "W_dec": (T, D), "b_enc": (T,), "b_dec": (D,)}
    if cfg.activation == "jumprelu":
        want[_THRESHOLD] = (T,)
    for name, shape in want.items():
        if name not in tensors:
            raise TranscoderFileError(f"{path} has no tensor {name!r}; a transcoder file holds {sorted(want)}")
        if tuple(tensors[name].shape) != shape:
            raise TranscoderFileError(f"{path}: tensor {name} is {list(tensors[name].shape)}, expected "
                                      f"{list(shape)} for d_model={D}, d_transcoder={T}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise TranscoderFileError(f"{path} holds tensors this transcoder does not use: {extra}")
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise TranscoderFileError(f"{path}: tensor {bad[0]} has NaN or infinite values")
    tc = Transcoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(tensors["W_enc"].T)
        for name in ("W_dec", "b_enc", "b_dec"):
            getattr(tc, name).copy_(tensors[name])
        if tc.threshold is not None:
            tc.threshold.copy_(tensors[_THRESHOLD])
    return tc.requires_grad_(False)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TranscoderFileError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types for a bad file)
        raise TranscoderFileError(f"{path} is not a readable safetensors file ({type(err).__name__}: "
                                  f"{' '.join(str(err).split())[:200]})") from None


def _layers_in(folder: Path, config: dict) -> list[int]:
    if "layers" in config:
        try:
            return sorted(int(l) for l in config["layers"])
        except (TypeError, ValueError):
            raise TranscoderFileError(f"{folder / CONFIG_FILE}: layers {config['layers']!r} are not "
                                      f"layer numbers") from None
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _LAYER_FILE.match(p.name)))


def load_transcoder(folder: str | Path, layer: int, *, model: Transformer | None = None) -> Transcoder:
    """The transcoder of ``layer`` in ``folder``; refused (one line) when the folder has none for that layer,
    its file lacks a tensor or has one of the wrong shape, its config does not parse, or, with ``model``,
    it is for another width or the layer is not the model's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TranscoderFileError(f"no transcoder folder at {folder}")
    config = _read_config(folder)
    if model is not None:
        _check_layer(model, layer)
    layers = _layers_in(folder, config)
    if layer not in layers:
        raise TranscoderFileError(f"{folder} has no transcoder for layer {layer!r}; it has layers {layers}")
    path = folder / _layer_file(layer)
    tensors = _read_tensors(path)
    cfg = _layer_config(config, layer, tensors, path)
    width = config.get("d_model")
    if width is not None and width != cfg.d_model:
        raise TranscoderFileError(f"{path}: its config says d_model={cfg.d_model}, the set's is {width!r}")
    tc = _from_tensors(cfg, tensors, path)
    if model is not None:
        _check_width(tc, model, str(path))
    return tc


def load_transcoders(folder: str | Path, *, model: Transformer | None = None) -> dict[int, Transcoder]:
    """Every transcoder in ``folder``, by layer (see :func:`load_transcoder` for what is refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TranscoderFileError(f"no transcoder folder at {folder}")
    layers = _layers_in(folder, _read_config(folder))
    if not layers:
        raise TranscoderFileError(f"{folder} holds no layer_<l>.safetensors file")
    return {l: load_transcoder(folder, l, model=model) for l in layers}


# ------------------------------------------------------- the replacement model
class _TranscodedBlock(Block):
    """A :class:`Block` whose MLP is a transcoder (plus, with ``keep_error``, the true MLP's residual).

    It holds the original block's parameters and norms (shared, not copied), so
    attention and every reader are unchanged; plain and masked runs and every
    method call ``mlp`` and get the transcoder. With ``per_feature`` (a feature
    graph's layer, :func:`feature_model`) ``mlp_sublayer`` returns the layer's
    writers apart, ``[T + 1, B, S, D]``: each feature's ``f_i W_dec[i]``, then
    ``m{l}.err``, the rest of the output (see :meth:`feature_outputs`); ``mlp``
    still returns their sum.
    """

    def __init__(self, block: Block, transcoder: Transcoder, keep_error: bool, per_feature: bool = False):
        nn.Module.__init__(self)
        for name, value in vars(block).items():  # cfg, and the weights it lacks (None: W_gate, biases)
            if not name.startswith("_"):
                object.__setattr__(self, name, value)
        for name, p in block._parameters.items():
            self.register_parameter(name, p)
        for name, m in block._modules.items():
            self.add_module(name, m)
        self.transcoder = transcoder
        self.keep_error = keep_error
        self.per_feature = per_feature
        object.__setattr__(self, "transcoder_base", block)  # the original block, not registered (no duplicate)

    def mlp(self, x):  # x normed, [B, S, D] -> [B, S, D]
        out = self.transcoder(x)
        if self.keep_error:
            err = super().mlp(x) - out  # the error term, from the same input
            out = out + err
        return out

    def mlp_sublayer(self, x):  # [B, S, D] -> [B, S, D]; per feature: the layer's writers [T + 1, B, S, D]
        if not self.per_feature:
            return super().mlp_sublayer(x)
        return self.feature_outputs(self.ln2(x))

    def feature_outputs(self, x):  # x normed, [B, S, D] -> [T + 1, B, S, D]
        """Each feature's output ``f_i W_dec[i]`` (``[T, B, S, D]``), then ``m{l}.err``: everything else the
        layer writes, ``b_dec`` plus (with ``keep_error``) the error term ``mlp(x) - transcoder(x)``.

        ``m{l}.err`` owns ``b_dec`` so that a feature writes nothing where it does not fire (a silent feature's
        edges can never matter, under any ablation) and the writers still sum to the layer's output exactly,
        as our conventions ask of every writer. With ``keep_error`` it is computed as ``mlp(x) - f W_dec``
        from the same input (``f W_dec + b_dec + error``, up to rounding), without as ``b_dec`` alone.
        """
        tc = self.transcoder
        f = tc.encode(x)  # [B, S, T]
        features = f.movedim(-1, 0).unsqueeze(-1) * tc.W_dec[:, None, None, :]  # [T, B, S, D]
        rest = super().mlp(x) - f @ tc.W_dec if self.keep_error else tc.b_dec.expand_as(x)  # [B, S, D]
        return torch.cat([features, rest.unsqueeze(0)])


def replace_mlps(model: Transformer, transcoders: dict[int, Transcoder], *, keep_error: bool = False,
                 features: bool = False) -> Transformer:
    """``model`` with the MLP of each layer in ``transcoders`` computed by its transcoder.

    A new :class:`Transformer` sharing ``model``'s parameters (as
    :meth:`Transformer.with_conventions` does) and the transcoders given; ``model``
    itself is unchanged. With ``keep_error`` each replaced MLP also adds its error
    term (true output minus the transcoder's, from the same input), so the result
    equals ``model`` up to float rounding. With ``features`` the replaced layers'
    features and error terms are writers of the graph (:func:`feature_model`).
    The result's graph follows its blocks: a layer has features exactly when its
    block writes them.
    """
    if isinstance(transcoders, Transcoder):
        transcoders = {transcoders.layer: transcoders}
    blocks = list(model.blocks)
    for layer, tc in transcoders.items():
        _check_layer(model, layer)
        if not isinstance(tc, Transcoder):
            raise ValueError(f"transcoders[{layer}] must be a Transcoder, got {type(tc).__name__}")
        if tc.layer != layer:
            raise ValueError(f"transcoders[{layer}] is the transcoder of layer {tc.layer}, not {layer}")
        _check_width(tc, model, f"transcoders[{layer}]")
        base = blocks[layer].transcoder_base if isinstance(blocks[layer], _TranscodedBlock) else blocks[layer]
        blocks[layer] = _TranscodedBlock(base, tc.to(model.W_E.dtype), keep_error, per_feature=features)
    other = copy.copy(model)
    other._modules = dict(model._modules)  # a new module dict: assigning blocks must not touch model's
    other._parameters = dict(model._parameters)
    other.blocks = nn.ModuleList(blocks)
    counts = tuple(b.transcoder.cfg.d_transcoder if isinstance(b, _TranscodedBlock) and b.per_feature else 0
                   for b in blocks)
    other.graph = dataclasses.replace(model.graph, features=counts)  # all 0: the ordinary graph
    return other


def feature_model(model: Transformer, transcoders: dict[int, Transcoder], *, keep_error: bool = True
                  ) -> Transformer:
    """``model`` on its feature graph: every feature of each transcoder a writer ``m{l}.f{i}``, and the rest of
    that layer's MLP output a writer ``m{l}.err`` (docs/transcoders.md, "The feature graph").

    Built by :func:`replace_mlps` (the same sharing, ``model`` unchanged); its ``graph`` is the feature graph
    (``Graph.features``: each transcoder's width in its layer, 0 elsewhere), and plain, masked and
    ``run_with_cache`` runs name and write the new writers. With ``keep_error`` (default) ``m{l}.err`` holds
    ``b_dec`` and the error term, and the model equals ``model`` to float rounding; without, ``b_dec``
    alone, and the model is the replacement model of ``replace_mlps(model, transcoders)``.
    """
    return replace_mlps(model, transcoders, keep_error=keep_error, features=True)


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """How closely a replacement model reproduces the original on a set of examples."""

    agreement: float  # fraction of examples decoded alike at every answer position
    n_examples: int
    kl: float | None  # mean KL(original || replacement) over answer positions; None for numerical outputs
    max_abs_logit_diff: float


def replacement_faithfulness(model: Transformer, replaced: Transformer, examples) -> Faithfulness:
    """Decoded agreement (Tracr programs' criterion) and KL (language models') of ``replaced`` against ``model``."""
    with torch.no_grad():
        mask = examples.valid
        a = model(examples.clean, attention_mask=mask)
        b = replaced(examples.clean, attention_mask=mask)
        agree = examples.agree(a, b).float().mean().item()
        at = examples.answer
        kl = None
        if examples.kind == "categorical":
            la, lb = a[at].log_softmax(-1), b[at].log_softmax(-1)
            kl = (la.exp() * (la - lb)).sum(-1).mean().item()
        diff = (a - b)[at].abs().max().item() if bool(at.any()) else 0.0
    return Faithfulness(agree, len(examples), kl, diff)


# ----------------------------------------------------------------- matching
@dataclasses.dataclass(frozen=True)
class FeatureMatch:
    """A trained transcoder's features matched to the true ones on a set of inputs (:func:`match_features`).

    Per true feature ``i`` (tuples indexed by ``i``): the trained feature with the
    highest encoder cosine, decoder cosine and activation correlation, and those
    values. Counts are over the *evaluable* true features: those that fire on some
    input, whose activation varies and whose decoder row is not zero (one that never
    fires, that is the same on every input and so indistinguishable from the decoder
    bias, or that writes nothing, cannot be recovered from data; they are listed apart).
    """

    threshold: float
    dense_fraction: float
    span: str
    n_inputs: int
    n_true: int
    n_trained: int
    evaluable: tuple[int, ...]  # true features that fire and vary on the inputs
    empty: tuple[int, ...]  # true features with zero weights (Tracr pads every layer's MLP to one width)
    never_fire: tuple[int, ...]  # true features (not empty) inactive on every input
    constant: tuple[int, ...]  # true features that fire with one value on every input
    best_encoder: tuple[int, ...]
    encoder_cos: tuple[float, ...]
    best_decoder: tuple[int, ...]
    decoder_cos: tuple[float, ...]
    best_correlation: tuple[int, ...]
    correlation: tuple[float, ...]
    recovered_by: tuple[int, ...]  # the trained feature recovering each true one (-1: none)
    recovered: tuple[int, ...]  # evaluable true features recovered
    functional: tuple[int, ...]  # evaluable true features with a trained one of decoder cos and correlation >= t
    split: tuple[int, ...]  # true features split over >= 2 trained ones
    merged: tuple[int, ...]  # trained features that merge >= 2 true ones
    dead: tuple[int, ...]  # trained features inactive on every input
    dense: tuple[int, ...]  # trained features active on more than dense_fraction of the inputs
    silent: tuple[int, ...] = ()  # true features (not empty) that fire and vary but write nothing (zero decoder)
    confounded: tuple[int, ...] = ()  # evaluable true features the inputs cannot tell from another (a diagnostic)

    @property
    def recovered_fraction(self) -> float:
        return len(self.recovered) / len(self.evaluable) if self.evaluable else 1.0

    def summary(self) -> dict:
        return {"true": self.n_true - len(self.empty), "evaluable": len(self.evaluable),
                "never_fire": len(self.never_fire), "silent": len(self.silent),
                "constant": len(self.constant), "recovered": len(self.recovered),
                "functional": len(self.functional),
                "recovered_fraction": self.recovered_fraction, "split": len(self.split),
                "merged": len(self.merged), "dead": len(self.dead), "dense": len(self.dense),
                "trained": self.n_trained, "confounded": len(self.confounded),
                "recovered_unconfounded": len(set(self.recovered) - set(self.confounded))}


def _data_span(x: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """``[D, D]`` orthogonal projection onto the span of the centred inputs ``x [N, D]``."""
    xc = (x - x.mean(0)).double()
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    keep = s > rtol * s.max() if len(s) and bool(s.max() > 0) else torch.zeros_like(s, dtype=torch.bool)
    v = vh[keep]  # [r, D]
    return v.T @ v


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # rows [n, D], [m, D] -> [n, m]
    an, bn = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    return (a / an.clamp_min(1e-12)) @ (b / bn.clamp_min(1e-12)).T


def _correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, n], [N, m] -> [n, m]; 0 where constant
    ac, bc = a - a.mean(0), b - b.mean(0)
    sa, sb = ac.norm(dim=0), bc.norm(dim=0)
    c = (ac.T @ bc) / (sa[:, None] * sb[None, :]).clamp_min(1e-12)
    return torch.where((sa[:, None] > 0) & (sb[None, :] > 0), c, torch.zeros_like(c))


def match_features(trained: Transcoder, true: Transcoder, x_in: torch.Tensor, *, threshold: float = 0.9,
                   dense_fraction: float = 0.5, span: Literal["data", "raw"] = "data") -> FeatureMatch:
    """Match ``trained``'s features to ``true``'s on inputs ``x_in [N, D]`` (normed MLP inputs).

    ReLU features are defined up to a positive scale, so directions are compared
    (cosines), never norms. Encoders are compared on what they compute on the data:
    with ``span="data"`` (default) both are projected onto the span of the centred
    inputs first, since a component the inputs never vary along (Tracr's constant
    ``one`` direction, which trades off with ``b_enc``; directions unused at this layer)
    changes no activation. ``span="raw"`` compares the weights as they are.

    Definitions (``t`` = ``threshold``; "fires" means activation > 0 on an input):

    - *recovered*: an evaluable true feature ``i`` with a trained ``j`` whose encoder
      and decoder cosines to ``i`` are both >= t (``recovered_by[i]``: the one with the
      highest decoder cosine among those).
    - *functional*: an evaluable true ``i`` with a trained ``j`` that writes its direction
      (decoder cosine >= t) and whose activation correlates with it (>= t) on the
      inputs: the same feature on the data, whatever its encoder reads off the data.
    - *split*: a true ``i`` with >= 2 live trained features that each write its
      direction (decoder cosine >= t) and fire only where it fires (on >= t of their
      own firing inputs).
    - *merged*: a live, non-dense trained ``j`` that, for >= 2 evaluable true
      features, fires on >= t of each one's firing inputs and writes a substantial part
      of each one's direction (decoder cosine >= 1/2).
    - *dead*: fires on no input; *dense*: fires on more than ``dense_fraction`` of them.

    True features that fire and vary but whose decoder is zero (Tracr's discretising MLPs
    keep a pair of units at every breakpoint, also where the output does not change) write
    nothing: the MLP computes the same function without them, and no decoder cosine is
    defined for them (the ideal transcoder would not recover itself). They are listed apart
    as ``silent``, not evaluable.

    *confounded* (a diagnostic; the counts above do not change): evaluable true features
    that these inputs cannot tell apart from another evaluable one, because a single
    feature computes what the two write together, exactly, on every input:

    - *co-firing*: ``i``'s activations are a multiple of ``j``'s on every input (cosine of
      the two activation columns >= 1 - 1e-9): one feature with ``j``'s activation and the
      decoder ``c W_dec[i] + W_dec[j]`` writes both (``SelectorWidth``'s BOS unit and the
      pair of its last breakpoint, which fire on the BOS position only);
    - *merge*: ``i`` and ``j`` write one direction (decoder cosine >= 1 - 1e-9) and the
      single ReLU of their summed pre-activations (each scaled by its decoder norm) equals
      the sum of their scaled activations on every input (relative error <= 1e-9): a lookup
      table's two input values mapped to one output value.

    A transcoder trained on these inputs alone has no reason, from reconstruction or from
    any activation penalty, to prefer the two features to their single stand-in.
    """
    if span not in ("data", "raw"):
        raise ValueError(f"span={span!r}; choose 'data' or 'raw'")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    D = true.cfg.d_model
    if trained.cfg.d_model != D or x_in.ndim != 2 or x_in.shape[1] != D or len(x_in) == 0:
        raise ValueError(f"trained and true transcoders must share d_model and x_in be [N, {D}]: got "
                         f"d_model {trained.cfg.d_model} and {true.cfg.d_model}, x_in {tuple(x_in.shape)}")
    with torch.no_grad():
        x = x_in.double()
        true, trained = copy.deepcopy(true).double(), copy.deepcopy(trained).double()  # callers' modules untouched
        ft, fr = true.encode(x), trained.encode(x)  # [N, Tt], [N, Tr]
        enc_t, enc_r = true.W_enc.double().T, trained.W_enc.double().T  # [Tt, D], [Tr, D]
        if span == "data":
            P = _data_span(x)
            enc_t, enc_r = enc_t @ P, enc_r @ P
        enc = _cosines(enc_t, enc_r)  # [Tt, Tr]
        dec = _cosines(true.W_dec.double(), trained.W_dec.double())  # [Tt, Tr]
        corr = _correlations(ft, fr)  # [Tt, Tr]
        on_t, on_r = (ft > 0).double(), (fr > 0).double()  # [N, Tt], [N, Tr]
        both = on_t.T @ on_r  # [Tt, Tr]: inputs where both fire
        cover = both / on_t.sum(0)[:, None].clamp_min(1)  # share of i's inputs on which j fires
        purity = both / on_r.sum(0)[None, :].clamp_min(1)  # share of j's inputs on which i fires
    fires_t = on_t.sum(0) > 0
    empty = (true.W_enc.abs().sum(0) == 0) & (true.W_dec.abs().sum(1) == 0)
    varies_t = ft.std(0) > 0 if len(x) > 1 else torch.zeros_like(fires_t)
    writes_t = true.W_dec.abs().sum(1) > 0  # a unit with a zero decoder changes no output: no data shows it
    silent = fires_t & varies_t & ~writes_t & ~empty
    evaluable = fires_t & varies_t & writes_t
    live = on_r.sum(0) > 0
    dense = on_r.mean(0) > dense_fraction
    ok = (enc >= threshold) & (dec >= threshold)  # [Tt, Tr]
    rec_by = torch.where(ok.any(1) & evaluable, torch.where(ok, dec, -2.0).argmax(1), -1)
    splits = ((dec >= threshold) & (purity >= threshold) & live[None, :]).sum(1) >= 2
    merges = ((cover >= threshold) & (dec >= 0.5) & evaluable[:, None]).sum(0) >= 2
    merges &= live & ~dense

    confounded = _confounded(true, x, ft, evaluable)

    def ids(mask):
        return tuple(int(i) for i in mask.nonzero().flatten())

    def best(m):
        if m.shape[1] == 0:
            return (-1,) * m.shape[0], (0.0,) * m.shape[0]
        v, i = m.max(1)
        return tuple(int(a) for a in i), tuple(float(a) for a in v)

    (be, ce), (bd, cd), (bc, cc) = best(enc), best(dec), best(corr)
    return FeatureMatch(
        threshold=threshold, dense_fraction=dense_fraction, span=span, n_inputs=len(x_in),
        n_true=true.cfg.d_transcoder, n_trained=trained.cfg.d_transcoder,
        evaluable=ids(evaluable), empty=ids(empty), never_fire=ids(~fires_t & ~empty),
        constant=ids(fires_t & ~varies_t),
        best_encoder=be, encoder_cos=ce, best_decoder=bd, decoder_cos=cd, best_correlation=bc, correlation=cc,
        recovered_by=tuple(int(a) for a in rec_by), recovered=ids(rec_by >= 0),
        functional=ids(((dec >= threshold) & (corr >= threshold)).any(1) & evaluable),
        split=ids(splits & evaluable), merged=ids(merges), dead=ids(~live), dense=ids(dense & live),
        silent=ids(silent), confounded=ids(confounded),
    )


def _confounded(true: Transcoder, x: torch.Tensor, ft: torch.Tensor, evaluable: torch.Tensor,
                tol: float = 1e-9) -> torch.Tensor:
    """``[Tt]`` bool: evaluable true features with a co-firing or a merge partner (:func:`match_features`)."""
    ev = evaluable.nonzero().flatten()
    out = torch.zeros_like(evaluable)
    if len(ev) < 2:
        return out
    f = ft[:, ev]  # [N, E], float64
    fn = f / f.norm(dim=0, keepdim=True)
    cofire = (fn.T @ fn) >= 1 - tol  # [E, E]
    dnorm = true.W_dec[ev].norm(dim=-1)  # [E]
    dec = true.W_dec[ev] / dnorm[:, None]
    candidates = (dec @ dec.T) >= 1 - tol  # one direction
    pre = (x @ true.W_enc[:, ev] + true.b_enc[ev]) * dnorm  # [N, E]: pre-activations scaled by decoder norms
    scaled = f * dnorm
    merge = torch.zeros_like(cofire)
    for a, b in candidates.triu(1).nonzero().tolist():
        together = (scaled[:, a] + scaled[:, b])
        err = (torch.relu(pre[:, a] + pre[:, b]) - together).abs().max()
        merge[a, b] = merge[b, a] = bool(err <= tol * together.abs().max().clamp_min(1e-300))
    partner = (cofire & ~torch.eye(len(ev), dtype=torch.bool)) | merge
    out[ev] = partner.any(1)
    return out
