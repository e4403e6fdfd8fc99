"""Convert a compiled Tracr model into the project's one PyTorch transformer.

Tracr's model is a transformer without norms, with ReLU MLPs, learned positions
(row 0, the BOS position, all zeros) and zero biases. Its Haiku parameters map
one to one onto :class:`prune.model.Transformer`; the whole bilinear form of a
head sits in its query weights, which is fine because the masked model never
mixes heads. Tracr has no unembedding parameter: we build ``W_U`` from the
residual labels of the output space, in the output encoder's order (categorical),
or as the single numerical output direction.
"""

from __future__ import annotations

import numpy as np
import torch

from groundtruth.compiler import Compiled
from prune.model import Transformer, TransformerConfig

__all__ = ["to_torch", "unembedding"]


def unembedding(compiled: Compiled) -> np.ndarray:
    """``[d_model, n_outputs]``: column j reads output value j (or the numerical direction)."""
    labels = compiled.residual_labels
    index = {label: i for i, label in enumerate(labels)}
    out_label = compiled.sop.label
    if compiled.numerical:
        wanted = [out_label]
    else:
        wanted = [f"{out_label}:{value}" for value in compiled.output_values]
    missing = [w for w in wanted if w not in index]
    if missing:
        raise ValueError(
            f"program {compiled.program.name!r}: output directions {missing} are not in the "
            f"residual stream {labels}"
        )
    W_U = np.zeros((len(labels), len(wanted)), dtype=np.float32)
    for j, label in enumerate(wanted):
        W_U[index[label], j] = 1.0
    return W_U


def to_torch(compiled: Compiled) -> Transformer:
    """The compiled model as a :class:`Transformer` (float32, eval mode, no gradients)."""
    asm = compiled.assembled
    mc = asm.model_config
    params = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in asm.params.items()}
    W_E = params["token_embed"]["embeddings"]
    V, D = W_E.shape
    H = mc.num_heads
    E = mc.key_size
    W_U = unembedding(compiled)
    cfg = TransformerConfig(
        vocab_size=V,
        d_model=D,
        n_layers=mc.num_layers,
        n_heads=H,
        d_head=E,
        d_mlp=mc.mlp_hidden_size,
        n_positions=params["pos_embed"]["embeddings"].shape[0],
        d_out=W_U.shape[1],
        norm="none",
        activation="relu",
        positional="learned",
        causal=bool(mc.causal),
    )
    model = Transformer(cfg)

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))  # a writable copy

    with torch.no_grad():
        model.W_E.copy_(t(W_E))
        model.W_pos.copy_(t(params["pos_embed"]["embeddings"]))
        model.W_U.copy_(t(W_U))
        for l, block in enumerate(model.blocks):
            attn = f"transformer/layer_{l}/attn"
            for name, W, b in (("query", block.W_Q, block.b_Q), ("key", block.W_K, block.b_K),
                               ("value", block.W_V, block.b_V)):
                w = params[f"{attn}/{name}"]["w"]  # [D, H * E]
                W.copy_(t(w.reshape(D, H, E).transpose(1, 0, 2)))
                b.copy_(t(params[f"{attn}/{name}"]["b"].reshape(H, E)))
            block.W_O.copy_(t(params[f"{attn}/linear"]["w"].reshape(H, E, D)))
            block.b_O.copy_(t(params[f"{attn}/linear"]["b"]))
            mlp = f"transformer/layer_{l}/mlp"
            block.W_in.copy_(t(params[f"{mlp}/linear_1"]["w"]))
            block.b_in.copy_(t(params[f"{mlp}/linear_1"]["b"]))
            block.W_out.copy_(t(params[f"{mlp}/linear_2"]["w"]))
            block.b_out.copy_(t(params[f"{mlp}/linear_2"]["b"]))
    model.requires_grad_(False)
    return model.eval()
