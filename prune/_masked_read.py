"""Autograd kernels behind :class:`prune.model.Transformer`'s masked mode (private).

In masked mode every reader of the graph (each head's query, key and value,
each MLP, the logits) takes its own mix of all earlier writers' outputs::

    x_r = sum_w  z[w, r] * clean_w + (1 - z[w, r]) * ablated_w

Written as autograd sees it, that is a weighted sum of per-writer copies per
reader, and a backward pass that allocates a fresh gradient for every writer at
every read and adds them up afterwards. Most of an Edge Pruning step went
there. The kernels here instead read many writers into many readers in one
matmul over a stack of the writers' outputs, without copying it
(``_ReadWriters``; ``_read_shared`` when evaluating one circuit without
gradients, reading only the writers the mask uses), and accumulate the writers'
and the mask's gradients in place, in one buffer each (``_Grads``).
``_RMSNorm`` norms the readers' inputs (``[3H, B, S, D]`` per layer) in few
passes over memory. ``_Residual`` puts them together as the masked residual
stream the model writes to and reads from.

The model (:mod:`prune.model`) only calls them; ``tests/test_model.py`` checks
them against a naive per-edge reference and finite differences.

Shapes: B batch, S positions, D d_model, W writers, R readers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


class _RMSNorm(torch.autograd.Function):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim, in few passes over memory.

    Masked mode norms one input per reader (``[3H, B, S, D]`` per layer), so the
    norm is a visible part of a step; autograd over the textbook expression
    allocates and traverses that tensor about a dozen times, this about five.
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        D = x.shape[-1]
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).pow_(2).div_(D).add_(eps).rsqrt_()  # [..., 1]
        y = x * r
        ctx.save_for_backward(x, weight, r)
        return y.mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        D = x.shape[-1]
        gw = grad * weight  # d loss / d (x * r)
        dx = torch.mul(gw, x)
        dot = dx.sum(-1, keepdim=True)  # [..., 1]
        torch.mul(gw, r, out=dx)
        dx.addcmul_(x, r.pow(3).mul_(dot).div_(-D))  # d(x r)/dx = r - x r^3 x^T / D
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * x * r).reshape(-1, D).sum(0)
        return dx, grad_weight, None


class _ProjectReaders(torch.autograd.Function):
    """The query, key and value projections of one layer's readers, from their normed inputs in one tensor.

    ``x`` ``[nq + nk + nv, B, S, D]``: the query readers' inputs, then the key and the value readers'
    (one per query head run, or one per key-value group when their masks are tied); ``W_q``, ``W_k``,
    ``W_v`` ``[n, D, E]``, each reader's head weights (``nq``, ``nk``, ``nv`` of them). Returns ``q``,
    ``k``, ``v``, each ``[B, n, S, E]``. Projected separately (each a slice of ``x``), autograd would give
    each input gradient transposed (``[n, D, B*S]``, the layout of the fast forward below) and then copy
    them into one gradient of ``x`` with a strided cat, a large part of a step at batch 32 x 64. Here the
    backward computes each gradient in ``x``'s own layout, straight into its rows of one buffer.
    """

    @staticmethod
    def forward(ctx, x, W_q, W_k, W_v):
        _, B, S, D = x.shape
        sizes = [W.shape[0] for W in (W_q, W_k, W_v)]
        parts = x.reshape(-1, B * S, D).split(sizes)
        out = []
        for part, W in zip(parts, (W_q, W_k, W_v), strict=True):
            # W^T x^T: the long side (B*S) as the matmul's columns, not d_head (4x faster for Tracr's
            # d_head of 7; the same for 64)
            y = torch.matmul(W.transpose(1, 2), part.transpose(1, 2))  # [n, E, B*S]
            out.append(y.view(W.shape[0], -1, B, S).permute(2, 0, 3, 1))  # [B, n, S, E]
        ctx.save_for_backward(x if any(ctx.needs_input_grad[1:]) else None, W_q, W_k, W_v)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        x, *Ws = ctx.saved_tensors
        sizes = [W.shape[0] for W in Ws]
        _, D, E = Ws[0].shape
        B, _, S, _ = next(g for g in grads if g is not None).shape
        dx = Ws[0].new_empty(sum(sizes), B * S, D) if ctx.needs_input_grad[0] else None
        dx_parts = dx.split(sizes) if dx is not None else [None] * 3
        x_parts = x.reshape(-1, B * S, D).split(sizes) if x is not None else [None] * 3
        dW = [None, None, None]
        for i, (g, W) in enumerate(zip(grads, Ws, strict=True)):
            if g is None:
                if dx is not None:
                    dx_parts[i].zero_()
                continue
            gy = g.permute(1, 0, 2, 3).reshape(W.shape[0], B * S, E)  # [n, B*S, E]
            if dx is not None:
                torch.bmm(gy, W.transpose(1, 2), out=dx_parts[i])  # [n, B*S, D]
            if ctx.needs_input_grad[1 + i]:
                dW[i] = x_parts[i].transpose(1, 2) @ gy  # [n, D, E]
        return (None if dx is None else dx.view(-1, B, S, D), *dW)


class _NormProjectReaders(torch.autograd.Function):
    """:class:`_RMSNorm` then :class:`_ProjectReaders`, without the normed inputs; frozen weights only.

    The norm is a per-row scale ``r = 1 / sqrt(mean(x^2) + eps)`` and a gain ``w``, so each reader's
    projection is ``(x r w) @ W = r (x @ (w W))``: the gain folds into the (small) head weights, the scale
    applies to the (small) projection, and the normed ``[R, B, S, D]`` tensor is never made. Backward,
    with ``u = x @ (w W)`` and ``g`` the output's gradient: ``dx = (r g) @ (w W)^T - (r^3 / D) (g . u) x``,
    one batched matmul into the gradient and one pass over ``x``, where the two kernels apart traverse
    ``[R, B, S, D]`` about ten times. Shapes as :class:`_ProjectReaders`. No gradient for the gain or the
    head weights (the model checks they are frozen). Not for a layer norm: measured, its own fused kernel
    then :class:`_ProjectReaders` is faster than a fold that must centre the rows
    (bench/results/step.md).
    """

    @staticmethod
    def forward(ctx, x, weight, eps, W_q, W_k, W_v, reread=None):
        _, B, S, D = x.shape
        sizes = [W.shape[0] for W in (W_q, W_k, W_v)]
        r = torch.linalg.vector_norm(x, dim=-1).pow_(2).div_(D).add_(eps).rsqrt_().view(-1, B * S)  # [R, B*S]
        folded = [weight[None, :, None] * W for W in (W_q, W_k, W_v)]  # [n, D, E] each
        out, pre = [], []
        for part, rp, W in zip(x.reshape(-1, B * S, D).split(sizes), r.split(sizes), folded, strict=True):
            u = torch.matmul(W.transpose(1, 2), part.transpose(1, 2))  # [n, E, B*S], as _ProjectReaders
            pre.append(u)
            out.append((u * rp[:, None, :]).view(W.shape[0], -1, B, S).permute(2, 0, 3, 1))  # [B, n, S, E]
        # reread (see _Residual.rereader): x is recomputed by backward instead of kept
        ctx.reread, ctx.shape = reread, x.shape
        ctx.save_for_backward(None if reread else x, r, *folded, *pre)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        x, r, *rest = ctx.saved_tensors
        folded, pre = rest[:3], rest[3:]
        _, B, S, D = ctx.shape
        sizes = [W.shape[0] for W in folded]
        dx = r.new_empty(sum(sizes), B * S, D)
        coef = r.new_zeros(r.shape)  # [R, B*S]: -(r^3 / D) (g . u) per row
        for g, W, u, rp, dxp, cp in zip(grads, folded, pre, r.split(sizes), dx.split(sizes), coef.split(sizes),
                                        strict=True):
            if g is None:
                dxp.zero_()
                continue
            gy = g.permute(1, 0, 2, 3).reshape(W.shape[0], B * S, -1)  # [n, B*S, E]
            torch.bmm(gy * rp[:, :, None], W.transpose(1, 2), out=dxp)  # [n, B*S, D]
            torch.sum(gy * u.transpose(1, 2), -1, out=cp).mul_(rp.pow(3)).div_(-D)
        if x is None:
            x = ctx.reread()
        dx.addcmul_(x.reshape(-1, B * S, D), coef[:, :, None])
        return dx.view(-1, B, S, D), None, None, None, None, None, None


def _norm(kind: str, x, weight, bias, eps):
    """The model's norms over the last dim (``prune.model._Norm`` calls this): ``layernorm``, ``rmsnorm``
    (in half precision computed in float32, as Llama does, then converted back) or ``none``."""
    if kind == "none":
        return x
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if x.dtype in (torch.float16, torch.bfloat16):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)
    return _RMSNorm.apply(x, weight, eps)


class _RecomputedNorm(torch.autograd.Function):
    """:func:`_norm` of the readers' inputs ``x`` ``[R, B, S, D]`` with frozen weights, without keeping
    ``x``: backward recomputes it with ``reread`` (see :meth:`_Residual.rereader`), then takes the norm's
    own backward. For the norms that do not fold into the projections (:class:`_NormProjectReaders`): a
    layer norm, or an RMS norm in half precision. The weights are saved as the forward pass saw them, as
    the projections' are, so that under FSDP backward finds them gathered."""

    @staticmethod
    def forward(ctx, x, kind, weight, bias, eps, reread):
        ctx.kind, ctx.eps, ctx.reread = kind, eps, reread
        ctx.save_for_backward(weight, bias)
        return _norm(kind, x, weight, bias, eps)

    @staticmethod
    def backward(ctx, grad):
        weight, bias = ctx.saved_tensors
        with torch.enable_grad():
            x = ctx.reread().requires_grad_(True)
            (dx,) = torch.autograd.grad(_norm(ctx.kind, x, weight, bias, ctx.eps), x, grad)
        return dx, None, None, None, None, None


class _Grads:
    """Gradients of one masked forward pass, accumulated in place by the reads' backward passes.

    Autograd would give every read's backward a fresh ``[n, B, S, D]`` gradient
    for all n writers before it and then add those up per writer, and a
    full-size gradient of the mask per read (the backward of slicing it): for a
    GPT-2-sized graph that is most of an Edge Pruning step, in allocation and
    memory traffic. Instead each read's backward adds ``z @ grad`` into one
    writer buffer (``addmm_``) and writes its readers' columns of one mask
    buffer; autograd gets a writer's gradient once, from the first read after
    the writer, and the mask's from the first read of all (see ``_ReadWriters``).
    """

    def __init__(self, stack: torch.Tensor, z: torch.Tensor):
        self.stack, self.z = stack, z
        self.writers: torch.Tensor | None = None  # [W, B, S, D]
        self.mask: torch.Tensor | None = None  # like z
        # A read with ``lookahead`` (see _ReadWriters) also sums its n writers into the next reader's input:
        # (reader, n, partial [B*S*D]) until that reader's read completes it. That read's backward leaves
        # rows :n of its gradient to the lookahead read's: (reader, n, gradient [B*S*D]).
        self.ahead: tuple[int, int, torch.Tensor] | None = None
        self.behind: tuple[int, int, torch.Tensor] | None = None

    def start(self, n: int) -> None:  # by the last read's backward, which runs first and reads n writers
        # Rows :n are about to be written whole by that read (no need to zero them).
        self.writers = torch.empty_like(self.stack)
        self.writers[n:].zero_()
        self.mask = torch.zeros_like(self.z)
        self.behind = None


class _ReadWriters(torch.autograd.Function):
    """Readers ``r0:r1``'s inputs from the first ``n`` writers, without copying the stack.

    ``stack[:n]`` holds each writer's output minus its ablated stand-in (filled
    as they are computed, never rewritten within a forward pass), and ``base``
    the sum of the first n stand-ins (``[B', S, D]``, B' in {1, B}; None under
    zero ablation). Then ``z.T @ clean + (1 - z).T @ ablated = z.T @ stack[:n] +
    base``: one matmul over contiguous memory per read, under every ablation,
    over the readers' columns of the mask ``z`` (``[W, R]``, or ``[B, W, R]``
    per example), instead of a sum of per-writer copies.

    Gradients, accumulated in ``grads`` (a :class:`_Grads`): ``new_blocks`` are
    the autograd tensors of the writers written since the previous read,
    ``stack[first:n]``. Backward adds this read's gradient for all n writers
    into the writer buffer and returns the accumulated gradient of the new
    writers only. That is their complete gradient: every later read depends on
    this read's output (through the writers computed from it), so autograd runs
    every later read's backward before this one, and no earlier read touches
    rows ``first:n``. Likewise the mask's gradient is returned, whole, by the
    first read (``r0 == 0``), whose backward runs last.

    ``lookahead`` (one mask for the batch): the next reader, column ``r1`` (a layer's MLP after its heads'
    readers), reads these n writers too. This read then sums them into its input as one more row of the
    same matmul, and that reader's read adds only the writers after them; backward, that read updates
    only its own rows of the writer and mask gradients and leaves rows :n to this one, one more row of
    its matmuls. Each pass over ``stack[:n]`` and the writer gradient's rows :n (a reader with one
    column costs as much memory traffic as one with 36) then serves both. Safe by the ordering above:
    this read's backward runs after the next reader's, and it runs whenever rows :n need a gradient.
    """

    @staticmethod
    def forward(ctx, z, r0, r1, stack, base, n, grads, first, lookahead, *new_blocks):
        ctx.save_for_backward(z)
        ctx.r0, ctx.r1, ctx.n, ctx.first = r0, r1, n, first
        ctx.stack, ctx.grads = stack, grads
        ctx.sizes = [b.shape[0] for b in new_blocks]
        _, B, S, D = stack.shape
        R = r1 - r0
        if z.ndim == 3:  # one mask per example: z [B, W, R_all]
            ctx.lookahead, ctx.done = False, 0
            zz = z[:, :n, r0:r1]
            delta = stack[:n].reshape(n, B, S * D).transpose(0, 1)  # [B, n, SD]
            out = torch.bmm(zz.transpose(1, 2), delta).transpose(0, 1)  # [R, B, SD]
            out = out.reshape(R, B, S, D) if base is None else out.view(R, B, S, D) + base
            return out
        ahead = grads.ahead
        # Rows :done of this read were summed by the read before (lookahead), into ``partial``.
        ctx.done = ahead[1] if ahead is not None and ahead[0] == r0 and R == 1 else 0
        ctx.lookahead = lookahead = bool(lookahead) and r1 < z.shape[1] and not ctx.done
        grads.ahead = None
        if ctx.done:
            partial = ahead[2].view(1, -1)
            out = torch.addmm(partial, z[ctx.done : n, r0:r1].t(), stack[ctx.done : n].reshape(n - ctx.done, -1))
        else:
            out = z[:n, r0 : r1 + lookahead].t() @ stack[:n].reshape(n, -1)  # [R (+ 1), B*S*D]
        if lookahead:
            grads.ahead = (r1, n, out[R])
            out = out[:R]
        out = out.view(R, B, S, D)
        return out if base is None else out.add_(base)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        n, r0, r1, stack, grads = ctx.n, ctx.r0, ctx.r1, ctx.stack, ctx.grads
        R, B, S, D = grad.shape
        per_example = z.ndim == 3
        fresh = r1 == z.shape[-1] or grads.writers is None
        if fresh:  # the last read's backward comes first: start afresh
            grads.start(n)
        g = grad.reshape(R, B, S * D).transpose(0, 1) if per_example else grad.reshape(R, -1)  # [B, R, SD] / [R, BSD]
        lo = 0 if fresh else ctx.done  # rows lo:n here; rows :lo (if any) by the read before, with `behind`
        behind, padded = grads.behind, None
        if lo:
            if behind is not None:  # the lookahead read's backward always runs between two of these
                raise RuntimeError(f"masked read: reader {behind[0]}'s gradient over {behind[1]} writers was left")
            grads.behind = (r0, lo, g[0])
        elif ctx.lookahead and behind is not None:
            if behind[:2] != (r1, n):
                raise RuntimeError(f"masked read: expected reader {r1}'s gradient over {n} writers, "
                                   f"found reader {behind[0]}'s over {behind[1]}")
            # [R + 1, BSD]: the next reader's gradient as one more row, then zero rows to a multiple of 16
            # (with zero mask columns to match): MKL runs these long products faster at 48 columns than at
            # 37, measured on the benchmark's CPU (bench/results/step.md)
            padded = -(-(R + 1) // 16) * 16
            g = torch.cat([g, behind[2][None], g.new_zeros(padded - R - 1, g.shape[1])])
            r1, R = r1 + 1, R + 1
            grads.behind = None
            zz = torch.cat([z[lo:n, r0:r1], z.new_zeros(n - lo, padded - R)], 1)  # [n - lo, padded]
        if padded is None:
            zz = z[:, lo:n, r0:r1] if per_example else z[lo:n, r0:r1]
        if ctx.needs_input_grad[0]:
            if per_example:
                delta = stack[:n].reshape(n, B, S * D).transpose(0, 1)
                grads.mask[:, :n, r0:r1] = torch.bmm(delta, g.transpose(1, 2))  # [B, n, R]
            else:
                grads.mask[lo:n, r0:r1] = (stack[lo:n].reshape(n - lo, -1) @ g.t())[:, :R]
        news = [None] * len(ctx.sizes)
        if any(ctx.needs_input_grad[9:]):
            if per_example:  # writer w of example b gets zz[b, w, :] @ g[b]
                acc = grads.writers[:n].view(n, B, S * D).transpose(0, 1)  # [B, n, SD]
                if R == 1:  # an outer product: a broadcast multiply(-add) is much faster than bmm on CPU
                    torch.mul(zz, g, out=acc) if fresh else acc.addcmul_(zz, g)
                elif fresh:
                    acc.copy_(torch.bmm(zz, g))
                else:  # on CPU, baddbmm_ into this strided view runs one addmm per example (2-4x slower)
                    acc.add_(torch.bmm(zz, g))
            else:
                acc = grads.writers[lo:n].view(n - lo, -1)
                if fresh:
                    torch.outer(zz[:, 0], g[0], out=acc) if R == 1 else torch.mm(zz, g, out=acc)
                elif R == 1:
                    acc.addr_(zz[:, 0], g[0])
                else:
                    acc.addmm_(zz, g)
            news = list(grads.writers[ctx.first : n].split(ctx.sizes))
        grad_mask = grads.mask if r0 == 0 and ctx.needs_input_grad[0] else None
        return (grad_mask, None, None, None, None, None, None, None, None, *news)


def _reread(z, r0, r1, stack, base, fixed, n):
    """The values ``_Residual.read`` gave readers ``r0:r1`` over the first ``n`` writers (``[R, B, S, D]``),
    recomputed without autograd: ``z.T @ stack[:n] + base``, plus the never-ablated part ``fixed``."""
    _, B, S, D = stack.shape
    R = r1 - r0
    with torch.no_grad():
        if z.ndim == 3:  # [B, W, R_all]
            delta = stack[:n].reshape(n, B, S * D).transpose(0, 1)  # [B, n, SD]
            out = torch.bmm(z[:, :n, r0:r1].transpose(1, 2), delta).transpose(0, 1).reshape(R, B, S, D)
        else:
            out = (z[:n, r0:r1].t() @ stack[:n].reshape(n, -1)).view(R, B, S, D)
        if base is not None:
            out += base
        if fixed is not None:
            out += fixed
    return out


def _read_shared(z, readers, stack, ablated, base, n):
    """``_ReadWriters.forward`` for one mask shared by the batch, without gradients (evaluation).

    ``readers``: the columns of ``z`` to read, a slice or ``[R]`` indices;
    ``stack[:n]`` the writers' outputs. A circuit's mask is mostly zeros, so
    only the writers with a non-zero entry in these readers' columns are read;
    with ``base``, the sum of the first n ablated writers, ``(1 - z).T @
    ablated`` is ``base - z.T @ ablated`` over those same writers.
    """
    _, B, S, D = stack.shape
    zz = z[:n, readers] if isinstance(readers, slice) else z[:n].index_select(1, readers)  # [n, R]
    R = zz.shape[1]
    used = zz.ne(0).any(1).nonzero().flatten()

    def rows(t: torch.Tensor) -> torch.Tensor:  # the used writers' rows of t, [u, ...]; no copy when all are
        return t[:n] if len(used) == n else t.index_select(0, used)

    zu = rows(zz).t()  # [R, u]
    out = zu @ rows(stack).reshape(len(used), -1) if len(used) else stack.new_zeros(R, B * S * D)  # [R, B*S*D]
    if ablated is not None:
        Ba = ablated.shape[1]
        ab = base.reshape(1, -1).expand(R, -1)  # [R, B'*S*D]
        if len(used):
            ab = ab - zu @ rows(ablated).reshape(len(used), -1)
        out = (out.view(R, B, -1) + ab.view(R, Ba, -1)).view(R, -1)
    return out.view(R, B, S, D)


class _Residual:
    """The masked residual stream: the writers written so far, read by each reader through the mask.

    ``write(first, out)`` adds writers ``first : first + n`` (``out`` ``[n, B, S, D]``,
    node masks applied here); ``add_fixed(t)`` adds to the stream a part that no
    mask ablates (EAP-IG's conventions: the position embedding, ``b_O``; broadcast
    to ``[B, S, D]``), which every later read takes whole; ``read(readers)`` gives the readers' inputs
    ``[R, B, S, D]`` over the writers written so far, sparsely (``_read_shared``,
    ``sparse``: one mask ``z`` ``[W, R]`` for the batch, no gradients) or densely
    (``_ReadWriters``). Writers must be written in graph order, and each read
    must come after every writer it sees.
    """

    def __init__(self, z, node_mask, ablated, stack: torch.Tensor, sparse: bool):
        self.z, self.node_mask, self.ablated, self.sparse = z, node_mask, ablated, sparse
        # [B', S, D]: the sum of the ablated writers written so far (in float32 at least, as a matmul
        # would add them); a read of the first n writers takes it as they stand.
        self.ablated_sum = None
        if ablated is not None:
            self.ablated_sum = ablated.new_zeros(
                ablated.shape[1:], dtype=torch.promote_types(ablated.dtype, torch.float32))
        # The stack ([W, B, S, D], uninitialised) holds what reads need: the writers' outputs (sparse),
        # or their differences from the ablated writers (dense: one matmul per read, see _ReadWriters).
        self.delta = ablated is not None and not sparse
        self.stack = stack  # writers as written (minus ablated if delta)
        self.grads = _Grads(stack, z)
        self.pending: list[torch.Tensor] = []  # writers' autograd tensors not yet read
        self.written = 0  # writers in the stack so far
        self.fixed: torch.Tensor | None = None  # the never-ablated part so far (autograd tracks it)

    def add_fixed(self, part: torch.Tensor | None) -> None:
        if part is not None:
            self.fixed = part if self.fixed is None else self.fixed + part

    def write(self, first: int, out: torch.Tensor) -> None:  # out [n, B, S, D]
        n = out.shape[0]
        stack, ablated, node_mask = self.stack, self.ablated, self.node_mask
        if node_mask is not None:
            nm = node_mask[..., first : first + n]
            nm = nm.view(n, 1, 1, 1) if nm.ndim == 1 else nm.t().reshape(n, -1, 1, 1)
            abl = 0 if ablated is None else ablated[first : first + n]
            out = nm * out + (1 - nm) * abl
        with torch.no_grad():
            if self.delta:
                torch.sub(out, ablated[first : first + n], out=stack[first : first + n])
            else:
                stack[first : first + n] = out
            if self.ablated_sum is not None:
                self.ablated_sum.add_(ablated[first : first + n].sum(0, dtype=self.ablated_sum.dtype))
        self.pending.append(out)
        self.written = first + n

    def read(self, readers, lookahead: bool = False) -> torch.Tensor:
        """The readers' inputs (a slice or indices of columns) over the writers so far. ``lookahead``: the
        next reader (column ``readers.stop``) is read next, after more writers (see ``_ReadWriters``)."""
        new = list(self.pending)
        self.pending.clear()
        stack, written = self.stack, self.written
        base = None if self.ablated_sum is None else self.ablated_sum.to(stack.dtype)  # a copy when it converts
        if self.sparse:
            out = _read_shared(self.z, readers, stack, self.ablated, base, written)
        else:
            first = written - sum(b.shape[0] for b in new)
            out = _ReadWriters.apply(self.z, readers.start, readers.stop, stack, base, written, self.grads, first,
                                     lookahead, *new)
        # Outside the kernels, so that autograd takes the fixed part's gradient (to W_pos and b_O) itself.
        return out if self.fixed is None else out + self.fixed

    def rereader(self, readers: slice):
        """A function that recomputes what ``read(readers)`` has just returned (its values, without autograd),
        for a backward pass that does not keep the readers' inputs: the stack is never rewritten within a
        forward pass, so it holds the same writers then."""
        base = None if self.ablated_sum is None else self.ablated_sum.to(self.stack.dtype, copy=True)
        fixed = None if self.fixed is None else self.fixed.detach()
        return functools.partial(_reread, self.z.detach(), readers.start, readers.stop, self.stack, base, fixed,
                                 self.written)

    def writers(self) -> torch.Tensor:  # [W, B, S, D], the writers' own outputs (once all are written)
        return self.stack + self.ablated if self.delta else self.stack
