"""TransformerLens state dicts and InterpBench case folders into the one Transformer.

The reference forward pass below is written from TransformerLens's own equations (``components``:
``Embed``, ``PosEmbed``, ``LayerNorm``/``LayerNormPre``/``RMSNorm``, ``Attention`` with grouped
key/value heads and rotate-half rotary, ``MLP``/``GatedMLP``, ``Unembed``), in plain torch and
float64, independent of prune/model.py.
"""

import math
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from prune.transformer_lens import (
    InterpBenchError,
    TransformerLensError,
    UnsafePickleError,
    UnsupportedConfigError,
    from_transformer_lens,
    interpbench_circuit,
    load_config,
    load_interpbench,
)

# Our model runs in float32 and the reference in float64: each logit is a sum over d_model <= 16 terms of
# O(1) products after two layers, so float32 rounding (6e-8 relative) puts it within ~1e-5; 1e-4 leaves
# an order of magnitude and still fails on any mis-mapped weight (those move logits by O(0.1)).
ATOL = 1e-4

CONFIGS = {
    "gpt2": dict(d_model=16, n_layers=2, n_heads=4, d_head=4, d_mlp=32, d_vocab=11, n_ctx=8, act_fn="gelu_new",
                 normalization_type="LN", positional_embedding_type="standard", eps=1e-5),
    "llama": dict(d_model=16, n_layers=2, n_heads=4, d_head=4, d_mlp=24, d_vocab=11, n_ctx=8, act_fn="silu",
                  normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, rotary_base=500.0,
                  n_key_value_heads=2, gated_mlp=True, eps=1e-6),
    "interpbench": dict(d_model=12, n_layers=2, n_heads=2, d_head=3, d_mlp=1, d_vocab=7, n_ctx=6, act_fn="relu",
                        normalization_type="LNPre", positional_embedding_type="standard", attn_only=True,
                        d_vocab_out=5),
}


def tl_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in TransformerLens's names and shapes (float32, as TransformerLens saves them)."""
    g = torch.Generator().manual_seed(seed)
    D, H, E, F, V = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"], cfg["d_vocab"]
    G = cfg.get("n_key_value_heads") or H
    Vout = cfg.get("d_vocab_out", V)

    def r(*shape, scale=0.4):
        return torch.randn(*shape, generator=g) * scale

    sd = {"embed.W_E": r(V, D), "unembed.W_U": r(D, Vout), "unembed.b_U": r(Vout, scale=0.1)}
    if cfg["positional_embedding_type"] == "standard":
        sd["pos_embed.W_pos"] = r(cfg["n_ctx"], D)
    norms = {"LN": ("w", "b"), "RMS": ("w",)}.get(cfg["normalization_type"], ())
    for l in range(cfg["n_layers"]):
        p = f"blocks.{l}."
        kv = "_" if G != H else ""
        sd.update({p + "attn.W_Q": r(H, D, E), p + f"attn.{kv}W_K": r(G, D, E), p + f"attn.{kv}W_V": r(G, D, E),
                   p + "attn.W_O": r(H, E, D), p + "attn.b_Q": r(H, E, scale=0.1),
                   p + f"attn.{kv}b_K": r(G, E, scale=0.1), p + f"attn.{kv}b_V": r(G, E, scale=0.1),
                   p + "attn.b_O": r(D, scale=0.1)})
        if not cfg.get("attn_only"):
            sd.update({p + "mlp.W_in": r(D, F), p + "mlp.W_out": r(F, D), p + "mlp.b_out": r(D, scale=0.1),
                       p + "mlp.b_in": torch.zeros(F) if cfg.get("gated_mlp") else r(F, scale=0.1)})
            if cfg.get("gated_mlp"):
                sd[p + "mlp.W_gate"] = r(D, F)
        for ln in ("ln1", "ln2") if not cfg.get("attn_only") else ("ln1",):
            for k in norms:
                sd[p + f"{ln}.{k}"] = 1 + r(D, scale=0.2) if k == "w" else r(D, scale=0.1)
    for k in norms:
        sd[f"ln_final.{k}"] = 1 + r(D, scale=0.2) if k == "w" else r(D, scale=0.1)
    return sd


def tl_reference(cfg: dict, sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    """TransformerLens's forward pass, float64, written from its components' equations."""
    w = {k: v.double() for k, v in sd.items()}
    H, E = cfg["n_heads"], cfg["d_head"]
    G = cfg.get("n_key_value_heads") or H
    S = tokens.shape[1]
    kind, eps = cfg["normalization_type"], cfg.get("eps", 1e-5)

    def norm(x, prefix):
        if kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
            x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            return x * w[prefix + ".w"] + w[prefix + ".b"] if kind == "LN" else x
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return x * w[prefix + ".w"] if kind == "RMS" else x

    def rotate(x):  # [B, S, H, E], GPT-NeoX rotate-half over the first rotary_dim dims (all, here)
        half = E // 2
        freq = cfg["rotary_base"] ** (-torch.arange(half, dtype=torch.float64) / half)
        ang = torch.arange(S, dtype=torch.float64)[:, None] * freq[None]  # [S, E/2]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos[None, :, None] + rot * sin[None, :, None]

    act = {"gelu_new": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
           "silu": lambda t: t * torch.sigmoid(t), "relu": torch.relu}[cfg["act_fn"]]
    resid = w["embed.W_E"][tokens]
    if cfg["positional_embedding_type"] == "standard":
        resid = resid + w["pos_embed.W_pos"][:S]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for l in range(cfg["n_layers"]):
        p = f"blocks.{l}."
        kv = "_" if G != H else ""
        x = norm(resid, p + "ln1")
        q = torch.einsum("bsd,hde->bshe", x, w[p + "attn.W_Q"]) + w[p + "attn.b_Q"]
        k = torch.einsum("bsd,gde->bsge", x, w[p + f"attn.{kv}W_K"]) + w[p + f"attn.{kv}b_K"]
        v = torch.einsum("bsd,gde->bsge", x, w[p + f"attn.{kv}W_V"]) + w[p + f"attn.{kv}b_V"]
        k, v = k.repeat_interleave(H // G, dim=2), v.repeat_interleave(H // G, dim=2)
        if cfg["positional_embedding_type"] == "rotary":
            q, k = rotate(q), rotate(k)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(E)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        resid = resid + torch.einsum("bqhe,hed->bqd", z, w[p + "attn.W_O"]) + w[p + "attn.b_O"]
        if cfg.get("attn_only"):
            continue
        x = norm(resid, p + "ln2")
        if cfg.get("gated_mlp"):
            post = act(x @ w[p + "mlp.W_gate"]) * (x @ w[p + "mlp.W_in"]) + w[p + "mlp.b_in"]
        else:
            post = act(x @ w[p + "mlp.W_in"] + w[p + "mlp.b_in"])
        resid = resid + post @ w[p + "mlp.W_out"] + w[p + "mlp.b_out"]
    return norm(resid, "ln_final") @ w["unembed.W_U"] + w["unembed.b_U"]


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("fmt", ["dict", "safetensors", "torch.save"])
def test_logits_equal_transformer_lens_s_equations(arch, fmt, tmp_path):
    cfg = CONFIGS[arch]
    sd = tl_state_dict(cfg, seed=len(arch))
    source = sd
    if fmt == "safetensors":
        source = tmp_path / "model.safetensors"
        save_file(sd, str(source))
    elif fmt == "torch.save":
        source = tmp_path / "model.pth"
        torch.save(sd, source)
    model = from_transformer_lens(source, dict(cfg))
    tokens = torch.randint(0, cfg["d_vocab"], (3, cfg["n_ctx"]), generator=torch.Generator().manual_seed(1))
    want = tl_reference(cfg, sd, tokens)
    torch.testing.assert_close(model(tokens).double(), want, atol=ATOL, rtol=0)
    assert model.graph.n_layers == cfg["n_layers"] and model.graph.n_heads == cfg["n_heads"]


def test_bad_state_dicts_and_configs_are_refused_naming_the_value():
    cfg = CONFIGS["gpt2"]
    sd = tl_state_dict(cfg, 0)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.W_O"}
    with pytest.raises(TransformerLensError, match=r"blocks\.1\.attn\.W_O"):
        from_transformer_lens(missing, dict(cfg))
    wrong = {**sd, "blocks.0.attn.W_Q": torch.zeros(4, 16, 5)}
    with pytest.raises(TransformerLensError, match=r"blocks\.0\.attn\.W_Q"):
        from_transformer_lens(wrong, dict(cfg))
    with pytest.raises(UnsupportedConfigError, match="parallel_attn_mlp"):
        from_transformer_lens(sd, {**cfg, "parallel_attn_mlp": True})
    with pytest.raises(TransformerLensError, match="swish_plus"):
        from_transformer_lens(sd, {**cfg, "act_fn": "swish_plus"})


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch boom-was-run",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps({"d_model": 4, "evil": _Boom()}))
    with pytest.raises(UnsafePickleError, match="system"):
        load_config(tmp_path / "cfg.pkl")
    assert not (tmp_path / "boom-was-run").exists()


def test_an_interpbench_folder_loads_as_a_model_and_its_ground_truth(tmp_path):
    cfg = CONFIGS["interpbench"]
    sd = tl_state_dict(cfg, 3)
    torch.save(sd, tmp_path / "ll_model.pth")
    (tmp_path / "ll_model_cfg.pkl").write_bytes(pickle.dumps(dict(cfg)))
    edges = [("hook_embed", "blocks.0.hook_q_input[1]"),
             ("blocks.0.hook_q_input[1]", "blocks.0.attn.hook_q[1]"),  # inside a0.h1: dropped
             ("blocks.0.attn.hook_result[1]", "blocks.1.hook_v_input[0]"),
             ("blocks.1.attn.hook_result[0]", "blocks.1.hook_resid_post")]
    (tmp_path / "edges.pkl").write_bytes(pickle.dumps(edges))
    model, circuit = load_interpbench(tmp_path)
    assert circuit.edges == ("input->a0.h1<q>", "a0.h1->a1.h0<v>", "a1.h0->logits")
    assert circuit.graph == model.graph
    tokens = torch.randint(0, cfg["d_vocab"], (2, cfg["n_ctx"]), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(tokens).double(), tl_reference(cfg, sd, tokens), atol=ATOL, rtol=0)
    with pytest.raises(InterpBenchError, match="blocks.1.hook_q_input"):
        interpbench_circuit([("blocks.1.attn.hook_result[0]", "blocks.1.hook_q_input[0]")], model.graph)
