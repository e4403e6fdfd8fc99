"""One decoder-only transformer for Tracr, GPT-2 and Llama, with a masked mode.

Plain mode is an ordinary residual-stream transformer. Masked mode gives every
reader of the graph (:mod:`prune.graph`) its own input::

    x_r = sum_w  z[w, r] * clean_w + (1 - z[w, r]) * ablated_w

followed by the layer's norm (if any) and the reader's own slice of the weights
(head h's query/key/value weights, the MLP, the unembedding). ``clean_w`` is
writer w's output in this (masked) run; ``ablated_w`` is what stands in for it
when an edge is pruned (see :mod:`prune.ablation`). Optional node masks act on
writers: a writer with node mask ``n_w`` writes ``n_w * clean_w + (1 - n_w) *
ablated_w`` to all its readers.

What a writer's output is follows the graph's conventions (:mod:`prune.graph`,
docs/conventions.md). Under ``"ours"`` every writer's output is exact: a head's
share of the attention output bias is ``b_O / n_heads``, ``input`` is the token
plus position embedding and the MLP owns its output bias, so the writers sum to
the residual stream. Under ``"eap-ig"`` (EAP-IG, MIB) heads exclude ``b_O`` and
``input`` is the token embedding; the position embedding and each layer's ``b_O``
are a fixed part of the stream that every later reader takes and no mask
ablates. Either way plain and masked (all masks 1) runs agree;
:meth:`Transformer.with_conventions` gives the same model under the other.

Each :class:`Block` holds a layer's weights (TransformerLens names and shapes)
and computes its attention and MLP; the model reads their inputs and writes
their outputs. :meth:`Transformer.run_with_cache` gives every writer's output by
name. The autograd kernels behind masked reads are in :mod:`prune._masked_read`.

Shapes: B batch, S positions, D d_model, H query heads, G key/value heads,
E d_head, F d_mlp, W writers, R readers.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prune._masked_read import _norm, _NormProjectReaders, _ProjectReaders, _RecomputedNorm, _Residual
from prune.graph import Graph, check_conventions

__all__ = ["TransformerConfig", "Transformer"]

Norm = Literal["none", "layernorm", "rmsnorm"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu"]
Positional = Literal["learned", "rotary"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Architecture of :class:`Transformer`; loaders build one per source model."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_positions: int
    n_kv_heads: int | None = None  # None: as many as query heads
    d_out: int | None = None  # None: vocab_size logits
    norm: Norm = "none"
    norm_eps: float = 1e-5
    activation: Activation = "relu"
    gated_mlp: bool = False  # SwiGLU-style: act(x W_gate) * (x W_in)
    positional: Positional = "learned"
    rope_theta: float = 10000.0
    causal: bool = True
    attn_bias: bool = True  # query/key/value biases
    attn_out_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "n_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        choices = {"norm": Norm, "activation": Activation, "positional": Positional}
        for name, kind in choices.items():
            if getattr(self, name) not in kind.__args__:
                raise ValueError(
                    f"TransformerConfig.{name}={getattr(self, name)!r}; choose one of {kind.__args__}"
                )
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {self.d_head}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def out_size(self) -> int:
        return self.d_out or self.vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {sorted(unknown)}")
        return cls(**d)


class _Norm(nn.Module):
    def __init__(self, kind: Norm, d: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind != "none":
            self.weight = nn.Parameter(torch.ones(d))
        if kind == "layernorm":
            self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):  # any leading dims, last dim D
        return _norm(self.kind, x, getattr(self, "weight", None), getattr(self, "bias", None), self.eps)


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu,
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def _apply_rotary(x, cos, sin):  # x [..., S, E], cos/sin [S, E]; Llama's rotate-half convention
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    """One layer: its weights (TransformerLens names and shapes) and its attention and MLP.

    Heads are kept apart so each reader can use its own slice. The block does
    not add to the residual stream: :class:`Transformer` reads the inputs
    (one shared stream, or one per reader when masked), and writes what its
    sublayers return: ``attention_sublayer`` (``ln1``, then ``attention``) and
    ``mlp_sublayer`` (``ln2``, then ``mlp``).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        H, G, D, E, Fh = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
        self.ln1 = _Norm(cfg.norm, D, cfg.norm_eps)
        self.W_Q = nn.Parameter(torch.zeros(H, D, E))
        self.W_K = nn.Parameter(torch.zeros(G, D, E))
        self.W_V = nn.Parameter(torch.zeros(G, D, E))
        self.W_O = nn.Parameter(torch.zeros(H, E, D))
        self.b_Q = nn.Parameter(torch.zeros(H, E)) if cfg.attn_bias else None
        self.b_K = nn.Parameter(torch.zeros(G, E)) if cfg.attn_bias else None
        self.b_V = nn.Parameter(torch.zeros(G, E)) if cfg.attn_bias else None
        self.b_O = nn.Parameter(torch.zeros(D)) if cfg.attn_out_bias else None
        self.ln2 = _Norm(cfg.norm, D, cfg.norm_eps)
        self.W_in = nn.Parameter(torch.zeros(D, Fh))
        self.W_gate = nn.Parameter(torch.zeros(D, Fh)) if cfg.gated_mlp else None
        self.W_out = nn.Parameter(torch.zeros(Fh, D))
        self.b_in = nn.Parameter(torch.zeros(Fh)) if cfg.mlp_bias else None
        self.b_out = nn.Parameter(torch.zeros(D)) if cfg.mlp_bias else None

    def attention(self, xq, xk, xv, attention_mask, rotary, heads=None, bias_share=True, tied_kv=False,
                  norm=None, reread=None):
        """Per-head outputs ``[H, B, S, D]``, with each head's share ``b_O / H`` of the output bias
        unless ``bias_share`` is False (EAP-IG's conventions, where the model adds ``b_O`` itself).

        ``xq``/``xk``/``xv`` are normed inputs, either shared ``[B, S, D]`` (plain)
        or one per query head ``[H, B, S, D]`` (masked, ungrouped key/value); or, masked, all three
        in ``xq`` ``[3H, B, S, D]`` with ``xk`` and ``xv`` None (one input gradient, see
        :class:`prune._masked_read._ProjectReaders`); with ``tied_kv`` (the key and value masks tied
        within each group), ``xq`` is ``[H + 2G, B, S, D]``: one key and one value input per group.
        ``attention_mask``: ``[B, S]``, 0 at padding keys, or None. ``rotary``:
        ``(cos, sin)``, each ``[S, E]``, or None (learned positions).
        ``heads`` (masked only): the query heads to run, ``[h]`` indices, when
        the inputs are those heads' only; the output is then ``[h, B, S, D]``.
        ``norm`` (masked, one tensor): the RMS norm still to apply to ``xq``, folded into the projections
        (:class:`prune._masked_read._NormProjectReaders`); with ``reread``, a function that recomputes
        ``xq``, the backward pass recomputes it instead of keeping it.
        """
        cfg = self.cfg
        H, G = cfg.n_heads, cfg.kv_heads
        group = H // G
        W_Q, b_Q, W_O = self.W_Q, self.b_Q, self.W_O
        if heads is not None:
            W_Q, W_O, b_Q = W_Q[heads], W_O[heads], None if b_Q is None else b_Q[heads]
        n = W_Q.shape[0]  # query heads run

        def project(x, W, b, n):  # -> [B, n, S, E]; matmuls (einsum is slow on CPU here)
            if x.ndim == 3:  # one input for all heads
                Bx, Sx, Dx = x.shape
                y = (x.reshape(Bx * Sx, Dx) @ W.permute(1, 0, 2).reshape(Dx, -1)).view(Bx, Sx, n, -1).transpose(1, 2)
            else:  # one input per head. W^T x^T: the long side (B*S) as the matmul's columns, not d_head
                _, Bx, Sx, Dx = x.shape  # (4x faster for Tracr's d_head of 7; the same for 64)
                y = torch.matmul(W.transpose(1, 2), x.reshape(n, Bx * Sx, Dx).transpose(1, 2))  # [n, E, B*S]
                y = y.view(n, -1, Bx, Sx).permute(2, 0, 3, 1)
            return y if b is None else y + b[None, :, None, :]

        def expand(W, b):  # key/value weights of the group, per query head run
            if group == 1 and heads is None:
                return W, b
            idx = (torch.arange(H, device=W.device) if heads is None else heads) // group
            return W[idx], None if b is None else b[idx]

        if xk is None:  # masked: the readers' inputs in one tensor [3n or H + 2G, B, S, D], one input gradient
            if tied_kv:  # one key and one value input per group: project G heads once, then repeat
                (W_K, b_K), (W_V, b_V) = (self.W_K, self.b_K), (self.W_V, self.b_V)
            else:
                (W_K, b_K), (W_V, b_V) = expand(self.W_K, self.b_K), expand(self.W_V, self.b_V)
            if norm is not None:
                qkv = _NormProjectReaders.apply(xq, norm.weight, norm.eps, W_Q, W_K, W_V, reread)
            else:
                qkv = _ProjectReaders.apply(xq, W_Q, W_K, W_V)
            q, k, v = (t if b is None else t + b[None, :, None, :] for t, b in zip(qkv, (b_Q, b_K, b_V), strict=True))
            if tied_kv:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        else:
            q = project(xq, W_Q, b_Q, n)
            if xk.ndim == 3:  # shared input: project G heads once, then repeat
                k = project(xk, self.W_K, self.b_K, G).repeat_interleave(group, dim=1)
            else:
                k = project(xk, *expand(self.W_K, self.b_K), n)
            if xv.ndim == 3:
                v = project(xv, self.W_V, self.b_V, G).repeat_interleave(group, dim=1)
            else:
                v = project(xv, *expand(self.W_V, self.b_V), n)
        if rotary is not None:
            q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        S = q.shape[2]
        mask = None
        if cfg.causal:
            mask = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
        if attention_mask is not None:
            key_ok = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
            mask = key_ok if mask is None else (mask & key_ok)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, n, S, E]
        Bz, _, Sz, E = z.shape
        out = torch.matmul(z.transpose(0, 1).reshape(n, Bz * Sz, E), W_O).view(n, Bz, Sz, -1)  # [n, B, S, D]
        if self.b_O is not None and bias_share:
            out = out + self.b_O / H
        return out

    def attention_sublayer(self, x, attention_mask, rotary, heads=None, bias_share=True, tied_kv=False,
                           reread=None):
        """``ln1``, then :meth:`attention`, from the residual as the heads' readers take it: one stream
        ``[B, S, D]`` for every head (plain), or each reader's own ``[3n, B, S, D]`` (masked: the ``n``
        query readers of the heads run, then their key and their value readers; with ``tied_kv``,
        ``[H + 2G, B, S, D]``: the key and the value reader of each group's first head stand for the group).

        ``reread`` (masked, with gradients): a function that recomputes ``x``; the backward pass then
        recomputes the readers' inputs instead of keeping them (``Transformer.forward``'s
        ``recompute_reads``), where the weights are frozen and ``ln1`` is a norm with no hook.

        The model calls a block only through its two sublayers, so that under FSDP
        (:mod:`prune.sharding`) each call gathers the block's weights and nothing outside a call needs them.
        """
        if x.ndim == 4 and self._norm_folds(x):  # the readers' inputs normed inside their projections
            return self.attention(x, None, None, attention_mask, rotary, heads=heads, bias_share=bias_share,
                                  tied_kv=tied_kv, norm=self.ln1, reread=reread)
        if reread is not None and x.ndim == 4 and self._frozen_unhooked(x):
            ln = self.ln1
            x = _RecomputedNorm.apply(x, ln.kind, ln.weight, getattr(ln, "bias", None), ln.eps, reread)
        else:
            x = self.ln1(x)
        if x.ndim == 3:
            return self.attention(x, x, x, attention_mask, rotary, heads=heads, bias_share=bias_share)
        return self.attention(x, None, None, attention_mask, rotary, heads=heads, bias_share=bias_share,
                              tied_kv=tied_kv)

    def _norm_folds(self, x) -> bool:
        """Can ``ln1`` fold into the masked readers' projections? An RMS norm (a layer norm's own kernel is
        faster: prune._masked_read._NormProjectReaders) in float32 or float64 (half precision norms in
        float32 and converts back, which does not fold), frozen weights (the fused kernel gives no weight
        gradients), autograd on (without it, norm then project is as cheap), and no hook on ``ln1`` (one
        that changes its output, as :func:`prune.feature_attribution.linearised` does, would be skipped)."""
        return self.ln1.kind == "rmsnorm" and x.dtype in (torch.float32, torch.float64) and self._frozen_unhooked(x)

    def _frozen_unhooked(self, x) -> bool:
        """Autograd on for ``x``, ``ln1`` and the query, key and value weights frozen, no hook on ``ln1``."""
        if not (torch.is_grad_enabled() and x.requires_grad) or self.ln1.kind == "none":
            return False
        ln = self.ln1
        if ln._forward_hooks or ln._forward_pre_hooks or nn.modules.module._global_forward_hooks \
                or nn.modules.module._global_forward_pre_hooks:
            return False
        return not any(w.requires_grad for w in (*ln.parameters(), self.W_Q, self.W_K, self.W_V))

    def mlp_sublayer(self, x):  # the residual as the MLP reads it, [B, S, D] -> [B, S, D]
        return self.mlp(self.ln2(x))

    def mlp(self, x):  # x normed, [B, S, D] -> [B, S, D]
        h = x @ self.W_in  # [B, S, F]
        if self.b_in is not None:
            h = h + self.b_in
        act = _ACTIVATIONS[self.cfg.activation]
        h = act(x @ self.W_gate) * h if self.W_gate is not None else act(h)
        out = h @ self.W_out
        return out if self.b_out is None else out + self.b_out


class Transformer(nn.Module):
    """Decoder-only transformer; ``forward`` runs plain or masked (see module doc).

    ``conventions``: what its graph's writers are (:data:`prune.graph.CONVENTIONS`).
    """

    def __init__(self, cfg: TransformerConfig, *, conventions: str = "ours"):
        super().__init__()
        self.cfg = cfg
        self.graph = Graph(n_layers=cfg.n_layers, n_heads=cfg.n_heads, conventions=conventions)
        self.W_E = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.d_model))
        self.W_pos = (
            nn.Parameter(torch.zeros(cfg.n_positions, cfg.d_model))
            if cfg.positional == "learned"
            else None
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = _Norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.out_size))
        self.b_U = nn.Parameter(torch.zeros(cfg.out_size)) if cfg.unembed_bias else None

    @property
    def conventions(self) -> str:
        return self.graph.conventions

    def with_conventions(self, conventions: str) -> Transformer:
        """This model under other writer conventions: the same parameters (shared, not copied),
        another graph. Circuits, ablated writers and evaluators follow the model they are given."""
        check_conventions(conventions)
        other = copy.copy(self)  # a new Module whose parameter and submodule dicts are this one's
        other.graph = dataclasses.replace(self.graph, conventions=conventions)  # a feature graph stays one
        return other

    # ------------------------------------------------------------ components
    def _check_tokens(self, tokens: torch.Tensor):
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        S = tokens.shape[1]
        if self.cfg.positional == "learned" and S > self.cfg.n_positions:
            raise ValueError(
                f"sequence length {S} exceeds the model's {self.cfg.n_positions} positions"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.cfg.vocab_size})")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, S, D]
        x = self.W_E[tokens]
        if self.W_pos is not None:
            x = x + self.W_pos[: tokens.shape[1]]
        return x

    @property
    def _eap_ig(self) -> bool:
        return self.graph.conventions == "eap-ig"

    def _input_writer(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, S, D]: the `input` writer
        return self.W_E[tokens] if self._eap_ig else self.embed(tokens)

    def _fixed_input(self, S: int) -> torch.Tensor | None:  # [S, D]: what no mask ablates at the start
        return self.W_pos[:S] if self._eap_ig and self.W_pos is not None else None

    def _fixed_attention(self, block: Block) -> torch.Tensor | None:  # [D]: what no mask ablates after a layer
        return block.b_O if self._eap_ig else None

    def _rotary(self, S: int, device, dtype):
        E = self.cfg.d_head
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, E, 2, device=device).float() / E))
        ang = torch.outer(torch.arange(S, device=device).float(), inv)  # [S, E/2]
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def unembed(self, x):  # normed [.., D] -> [.., out]
        y = x @ self.W_U
        return y if self.b_U is None else y + self.b_U

    # --------------------------------------------------------------- forward
    def forward(
        self,
        tokens: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        edge_mask: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
        ablated: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        return_writers: bool = False,
        tied_kv: bool = False,
        recompute_reads: bool = False,
    ):
        """Logits ``[B, S, out]``; with ``return_writers``, also the writers ``[W, B, S, D]`` (detached).

        ``positions``: bool ``[B, S]``; when given, only those positions are
        normed and unembedded and the logits are ``[K, out]``, one row per True
        entry in row-major order (``positions.nonzero()``). A loss read at a few
        answer positions then skips the unembedding (vocabulary-sized for a
        language model) everywhere else.

        Plain mode when ``edge_mask`` and ``node_mask`` are None. Otherwise masked:
        ``edge_mask`` is ``[n_edges]`` (graph order) or a dense ``[W, R]`` matrix,
        or one of those per example (``[B, n_edges]``, ``[B, W, R]``);
        ``node_mask`` is ``[W]`` or ``[B, W]``; and ``ablated`` holds the writers' stand-in
        outputs ``[W, B or 1, S, D]`` (None: zero ablation).

        ``tied_kv`` (masked, grouped-query attention): the caller ties the key and value masks within
        each key-value group (every query head of a group has the same key-edge and value-edge gates; it
        is refused otherwise), so each group's key and value inputs are read and projected once, as the
        plain model projects them. The mask's gradient then goes whole to each group's first head's key
        and value columns (the others get 0): the gradient of the tied gate.

        ``recompute_reads`` (masked, with gradients, frozen attention weights): the backward pass
        recomputes each layer's query, key and value inputs (``[3H, B, S, D]``, the largest thing a
        masked step keeps) from the writers instead of keeping them, for one more read per layer.
        """
        self._check_tokens(tokens)
        masked = edge_mask is not None or node_mask is not None
        if not masked and ablated is not None:
            raise ValueError("`ablated` only has an effect with an edge_mask or node_mask")
        if positions is not None and (positions.shape != tokens.shape or positions.dtype != torch.bool):
            raise ValueError(f"positions must be a bool mask shaped like the tokens {tuple(tokens.shape)}, "
                             f"got {positions.dtype} {tuple(positions.shape)}")
        cfg = self.cfg
        B, S = tokens.shape
        rotary = None
        if cfg.positional == "rotary":
            rotary = self._rotary(S, tokens.device, self.W_E.dtype)
        if not masked:
            for name, value in (("tied_kv", tied_kv), ("recompute_reads", recompute_reads)):
                if value:
                    raise ValueError(f"{name} is for masked runs: it needs an edge_mask")
            return self._plain(tokens, attention_mask, rotary, positions, return_writers)
        return self._masked(tokens, attention_mask, rotary, edge_mask, node_mask, ablated, positions, return_writers,
                            tied_kv, recompute_reads)

    def _plain(self, tokens, attention_mask, rotary, positions, return_writers):
        g = self.graph
        x = self.embed(tokens)
        stack = None
        if return_writers:
            stack = x.new_empty(g.n_writers, *x.shape)  # detached copies
            stack[0] = self._input_writer(tokens).detach()
        for l, block in enumerate(self.blocks):
            heads = block.attention_sublayer(x, attention_mask, rotary, bias_share=not self._eap_ig)  # [H, B, S, D]
            x = x + heads.sum(0)
            if (fixed := self._fixed_attention(block)) is not None:
                x = x + fixed
            mlp = self._mlp_outputs(l, block.mlp_sublayer(x))  # [n, B, S, D]: the layer's n MLP writers
            x = x + (mlp[0] if len(mlp) == 1 else mlp.sum(0))
            if stack is not None:
                first, wm = g.head_writer(l, 0), g.mlp_writers(l)
                stack[first : first + g.n_heads] = heads.detach()
                stack[wm.start : wm.stop] = mlp.detach()
        logits = self.unembed(self.ln_f(x if positions is None else x[positions]))
        return (logits, stack) if return_writers else logits

    def _check_masks(self, edge_mask, node_mask, ablated, B, S):
        g, dev = self.graph, self.W_E.device
        if edge_mask is None:
            edge_mask = torch.ones(g.n_edges, device=dev)
        for name, m in (("edge_mask", edge_mask), ("node_mask", node_mask)):
            if m is not None and m.dtype != torch.bool:
                # A gate is a fraction of the clean writer: outside [0, 1] (or NaN) it is no circuit at all.
                with torch.no_grad():
                    out = m.isnan() | (m < 0) | (m > 1)
                if bool(out.any()):
                    raise ValueError(f"{name} values must be in [0, 1], got {m[out][0].item()!r}")
        if edge_mask.ndim in (1, 2) and edge_mask.shape[-1] == g.n_edges and edge_mask.shape[0] in (g.n_edges, B):
            edge_mask = g.dense(edge_mask.to(self.W_E.dtype))
        if edge_mask.shape not in ((g.n_writers, g.n_readers), (B, g.n_writers, g.n_readers)):
            raise ValueError(
                f"edge_mask must be [{g.n_edges}], [{g.n_writers}, {g.n_readers}], or per example "
                f"[{B}, {g.n_edges}] or [{B}, {g.n_writers}, {g.n_readers}] for this model's graph "
                f"and batch, got {tuple(edge_mask.shape)}"
            )
        if node_mask is not None and node_mask.shape not in ((g.n_writers,), (B, g.n_writers)):
            raise ValueError(f"node_mask must be [{g.n_writers}] or [{B}, {g.n_writers}], got {tuple(node_mask.shape)}")
        if ablated is not None:
            want = (g.n_writers, S, self.cfg.d_model)
            if ablated.ndim != 4 or (ablated.shape[0], *ablated.shape[2:]) != want or ablated.shape[1] not in (1, B):
                raise ValueError(
                    f"ablated writers must be [{g.n_writers}, {B} or 1, {S}, {self.cfg.d_model}] "
                    f"for this batch, got {tuple(ablated.shape)}; were they computed on a batch "
                    f"of another shape?"
                )
            ablated = ablated.to(self.W_E.dtype)
        return edge_mask.to(self.W_E.dtype), node_mask, ablated

    def _mlp_outputs(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """``mlp_sublayer``'s output as the layer's MLP writers ``[n, B, S, D]``: a plain MLP's ``[B, S, D]``
        is one writer; a transcoded layer of a feature graph (:func:`prune.transcoder.feature_model`) returns
        its features' and error term's outputs apart, ``[F + 1, B, S, D]``."""
        n = len(self.graph.mlp_writers(layer))
        if out.ndim == 3 and n == 1 and not self.graph.n_features(layer):
            return out.unsqueeze(0)
        if out.ndim == 4 and out.shape[0] == n:
            return out
        raise RuntimeError(f"layer {layer}'s MLP returned {tuple(out.shape)}, but the graph has {n} writers there "
                           f"(features {self.graph.features}); build a feature model with "
                           f"prune.transcoder.feature_model, not by changing blocks or graph alone")

    def _live_writers(self, z: torch.Tensor) -> list[bool]:
        """Per writer: does its output reach the logits along edges with a non-zero gate in ``z`` ``[W, R]``?"""
        g, H = self.graph, self.cfg.n_heads
        nonzero = z.ne(0)
        needed = torch.zeros(g.n_readers, dtype=torch.bool, device=z.device)  # readers of live nodes
        needed[g.logits_reader] = True
        live = [True] * g.n_writers
        for l in reversed(range(g.n_layers)):  # a node reads only earlier writers: later nodes first
            wm = g.mlp_writers(l)  # m{l}, or a transcoded layer's features and error term: computed together
            mlp_live = bool(nonzero[wm.start : wm.stop][:, needed].any())
            live[wm.start : wm.stop] = [mlp_live] * len(wm)
            if mlp_live:
                needed[g.mlp_reader(l)] = True
            w0, r0 = g.head_writer(l, 0), g.head_reader(l, 0, "q")
            heads = nonzero[w0 : w0 + H][:, needed].any(1)  # [H]
            live[w0 : w0 + H] = heads.tolist()
            for k in range(3):  # query, key and value readers of the live heads
                needed[r0 + k * H : r0 + (k + 1) * H] |= heads
        return live

    def tied_kv_readers(self) -> torch.Tensor:
        """``[R']``: the readers a masked run with ``tied_kv`` reads, in its order: per layer the H query
        readers, each group's first key reader, each group's first value reader, the MLP; then the logits."""
        g, H, G = self.graph, self.cfg.n_heads, self.cfg.kv_heads
        group, cols = H // G, []
        for l in range(g.n_layers):
            r0 = g.head_reader(l, 0, "q")
            cols += [*range(r0, r0 + H), *range(r0 + H, r0 + 2 * H, group), *range(r0 + 2 * H, r0 + 3 * H, group),
                     g.mlp_reader(l)]
        return torch.tensor([*cols, g.logits_reader])

    def _check_tied(self, z: torch.Tensor) -> None:
        g, H, G = self.graph, self.cfg.n_heads, self.cfg.kv_heads
        if G == H:
            raise ValueError(f"tied_kv is for grouped-query attention; this model has {H} query and {G} key-value "
                             f"heads")
        with torch.no_grad():
            for l in range(g.n_layers):
                r0 = g.head_reader(l, 0, "q")
                kv = z[..., r0 + H : r0 + 3 * H].unflatten(-1, (2 * G, H // G))  # [.., W, 2G, group]
                if not torch.equal(kv, kv[..., :1].expand_as(kv)):
                    raise ValueError(f"tied_kv: layer {l}'s key or value masks differ within a key-value group; "
                                     f"tie them (one gate per writer and group), or run without tied_kv")

    def _masked(self, tokens, attention_mask, rotary, edge_mask, node_mask, ablated, positions, return_writers,
                tied_kv=False, recompute_reads=False):
        g, cfg = self.graph, self.cfg
        B, S = tokens.shape
        H = cfg.n_heads
        z, node_mask, ablated = self._check_masks(edge_mask, node_mask, ablated, B, S)
        if tied_kv:
            self._check_tied(z)
        # Without gradients and with one mask for the batch (evaluating a circuit): read sparsely,
        # and skip the heads and MLPs whose output no reader takes (they write zeros instead).
        wants_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (z, node_mask, ablated, *self.parameters()))
        sparse = z.ndim == 2 and not wants_grad
        live = self._live_writers(z) if sparse and not return_writers else [True] * g.n_writers  # [W]
        # Tied (dense reads only: a sparse read takes only the columns it needs anyway): read the tied
        # readers' columns alone; readers_per_layer and the offsets below index them.
        tied = tied_kv and not sparse
        if tied:
            z = z.index_select(-1, self.tied_kv_readers().to(z.device))  # [.., W, L (H + 2G + 1) + 1]
        G = cfg.kv_heads if tied else H
        resid = _Residual(z, node_mask, ablated, self.W_E.new_empty(g.n_writers, B, S, cfg.d_model), sparse)

        resid.write(0, self._input_writer(tokens).unsqueeze(0))
        resid.add_fixed(self._fixed_input(S))
        share = not self._eap_ig
        for l, block in enumerate(self.blocks):
            r0, w0 = l * (H + 2 * G + 1), g.head_writer(l, 0)  # readers: H queries, G keys, G values (G = H untied)
            run = [h for h in range(H) if live[w0 + h]]
            if len(run) == H:
                readers = slice(r0, r0 + H + 2 * G)
                x = resid.read(readers, lookahead=True)  # [H + 2G, B, S, D]; then the MLP's
                reread = resid.rereader(readers) if recompute_reads and not sparse else None
                heads = block.attention_sublayer(x, attention_mask, rotary, bias_share=share, tied_kv=tied,
                                                 reread=reread)
            else:  # (sparse only) the live heads' query, key and value readers; the others write zeros
                heads = self.W_E.new_zeros(H, B, S, cfg.d_model)
                if run:
                    idx = torch.tensor(run, device=self.W_E.device)
                    x = resid.read(torch.cat([r0 + idx, r0 + H + idx, r0 + 2 * H + idx]))
                    heads[idx] = block.attention_sublayer(x, attention_mask, rotary, heads=idx, bias_share=share)
            resid.write(w0, heads)
            resid.add_fixed(self._fixed_attention(block))
            rm, wm = r0 + H + 2 * G, g.mlp_writers(l)  # one reader; one writer, or features and error term
            if live[wm.start]:
                out = block.mlp_sublayer(resid.read(slice(rm, rm + 1)).squeeze(0))
                resid.write(wm.start, self._mlp_outputs(l, out))
            else:
                resid.write(wm.start, self.W_E.new_zeros(len(wm), B, S, cfg.d_model))
        rl = g.n_layers * (H + 2 * G + 1)  # the logits reader
        x = resid.read(slice(rl, rl + 1)).squeeze(0)  # [B, S, D]
        logits = self.unembed(self.ln_f(x if positions is None else x[positions]))
        return (logits, resid.writers()) if return_writers else logits

    # ----------------------------------------------------------------- misc
    def writers(self, tokens, *, attention_mask=None) -> torch.Tensor:
        """Writers' outputs ``[W, B, S, D]`` of a plain run, without gradients."""
        with torch.no_grad():
            return self(tokens, attention_mask=attention_mask, return_writers=True)[1]

    def run_with_cache(self, tokens: torch.Tensor, **masks) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B, S, out]`` and every writer's output by graph name, ``{name: [B, S, D]}`` (detached).

        TransformerLens's activation cache without hooks: the names are
        ``self.graph.writer_names`` in graph order (``input``, ``a0.h0``, ...,
        ``m0``, ...). In a plain run under our conventions the outputs sum to the
        residual stream before ``ln_f`` (under EAP-IG's, with the position
        embedding and every ``b_O`` added). ``masks`` are ``forward``'s keywords:
        ``attention_mask``, and ``edge_mask``/``node_mask`` (with ``ablated``) for a masked run, in
        which each output is the writer's in that run, after its node mask:
        what its readers take where their edge is kept. Every writer is
        computed, live in the circuit or not.
        """
        if "positions" in masks or "return_writers" in masks:
            raise ValueError("run_with_cache caches every position's writers; positions and return_writers "
                             "are forward's alone")
        logits, stack = self(tokens, return_writers=True, **masks)
        return logits, dict(zip(self.graph.writer_names, stack.detach().unbind(0), strict=True))

    # Per-block computation, as the naive reference in tests/test_model.py calls it.
    def _attention(self, block: Block, xq, xk, xv, attention_mask, rotary, heads=None):
        return block.attention(xq, xk, xv, attention_mask, rotary, heads=heads, bias_share=not self._eap_ig)

    def _mlp(self, block: Block, x):
        return block.mlp(x)

