"""Hugging Face GPT-2 and Llama checkpoints as :class:`prune.model.Transformer`.

``from_hf`` takes a loaded model (``GPT2LMHeadModel``, ``LlamaForCausalLM``), a
local checkpoint folder, or a hub name, and copies its weights into the
project's one generic transformer, so plain and masked runs of the converted
model give the Hugging Face model's logits (see ``tests/test_loaders.py`` for
the measured agreement).

Supported architectures and how they map:

- ``gpt2``: pre-LayerNorm, ``gelu_new`` (our ``gelu_tanh``), learned positions,
  biases everywhere, unembedding tied to the token embedding, no unembedding
  bias. Hugging Face's ``Conv1D`` stores weights ``[in, out]``.
- ``llama`` (and CodeLlama, which is a Llama checkpoint): RMSNorm, SwiGLU
  (``down(silu(gate(x)) * up(x))``: our ``W_gate``, ``W_in``, ``W_out``), rotary
  positions with the default rope (rotate-half), grouped-query attention, no
  biases unless ``attention_bias`` is set. ``nn.Linear`` stores ``[out, in]``.

Grouped-query attention is counted *ungrouped*. Every query head has its own
query, key and value readers in the graph (``a{l}.h{h}<q|k|v>``), exactly as
EAP-IG's ``ungroup_grouped_query_attention`` exports them, so edge names and
counts depend only on the number of layers and query heads. In masked mode
each query head gets its own key and value *inputs* (a mix of clean and ablated
writers chosen by that head's edges) and projects them with the K/V weights
its group shares; with all masks 1 every head in a group sees the same input
and the result equals ordinary grouped attention.

Before loading weights from a path or a name, the loader reads only the config,
estimates the memory the conversion needs and refuses (``MemoryError``) a model
that does not fit in the memory available (:func:`check_memory`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from prune.model import Transformer, TransformerConfig

__all__ = [
    "SUPPORTED", "from_hf", "convert", "transformer_config", "model_type_of",
    "estimate_params", "estimate_bytes", "check_memory", "available_bytes",
]

SUPPORTED: tuple[str, ...] = ("gpt2", "llama")

# float64 too: exact comparisons in tests and debugging.
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# HF activation names that our model computes exactly.
_GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

_GIB = 1024**3


# ------------------------------------------------------------------ configs
def _model_type(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ValueError(
            f"unsupported model type {model_type!r}; supported: {', '.join(SUPPORTED)} "
            f"(CodeLlama checkpoints are model_type 'llama')"
        )
    return model_type


def _rope(config) -> tuple[str, float]:
    """(rope type, theta) from a Llama config, in transformers 4.x or 5.x form.

    5.x keeps both in ``config.rope_parameters``; 4.x has ``config.rope_theta``
    and ``config.rope_scaling`` (None for the default rope).
    """
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        theta = 10000.0  # Llama's default when a config names none
    return rope_type, float(theta)


def _gpt2_config(config) -> TransformerConfig:
    # Options that change GPT-2's attention in ways our model does not compute.
    wanted = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    for option, value in wanted.items():
        got = getattr(config, option, value)
        if got != value:
            raise NotImplementedError(
                f"GPT-2 option {option}={got!r} is not supported (only {option}={value!r}); "
                f"the converted model would not reproduce this checkpoint's attention"
            )
    act = config.activation_function
    if act not in _GPT2_ACTIVATIONS:
        raise NotImplementedError(
            f"GPT-2 activation_function={act!r} is not supported; supported: {sorted(_GPT2_ACTIVATIONS)}"
        )
    D, H = config.n_embd, config.n_head
    if D % H:
        raise ValueError(f"GPT-2 n_embd={D} is not a multiple of n_head={H}")
    return TransformerConfig(
        vocab_size=config.vocab_size, d_model=D, n_layers=config.n_layer, n_heads=H,
        d_head=D // H, d_mlp=config.n_inner or 4 * D, n_positions=config.n_positions,
        norm="layernorm", norm_eps=config.layer_norm_epsilon, activation=_GPT2_ACTIVATIONS[act],
        positional="learned", causal=True,
        attn_bias=True, attn_out_bias=True, mlp_bias=True, unembed_bias=False,
    )


def _llama_config(config) -> TransformerConfig:
    rope_type, theta = _rope(config)
    if rope_type != "default":
        raise NotImplementedError(
            f"Llama rope scaling {rope_type!r} is not supported (only the default rope); "
            f"the converted model would place positions differently"
        )
    if config.hidden_act != "silu":
        raise NotImplementedError(f"Llama hidden_act={config.hidden_act!r} is not supported (only 'silu')")
    if getattr(config, "mlp_bias", False):
        # Our gated MLP has no bias on the gate projection (act(x W_gate) * (x W_in + b_in)).
        raise NotImplementedError(
            "Llama mlp_bias=True is not supported: the model has no gate-projection bias; "
            "add one to prune.model.Block before converting such a checkpoint"
        )
    D, H = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or D // H
    bias = bool(getattr(config, "attention_bias", False))
    return TransformerConfig(
        vocab_size=config.vocab_size, d_model=D, n_layers=config.num_hidden_layers, n_heads=H,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or H, d_head=head_dim,
        d_mlp=config.intermediate_size, n_positions=config.max_position_embeddings,
        norm="rmsnorm", norm_eps=config.rms_norm_eps, activation="silu", gated_mlp=True,
        positional="rotary", rope_theta=theta, causal=True,
        attn_bias=bias, attn_out_bias=bias, mlp_bias=False, unembed_bias=False,
    )


def transformer_config(config) -> TransformerConfig:
    """Our :class:`TransformerConfig` for a Hugging Face config (raises on what we can't compute)."""
    return {"gpt2": _gpt2_config, "llama": _llama_config}[_model_type(config)](config)


# ------------------------------------------------------------------- memory
def estimate_params(config) -> int:
    """Parameters of the converted model, from a HF config (or our own config)."""
    cfg = config if isinstance(config, TransformerConfig) else transformer_config(config)
    D, H, G, E, Fh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    norm = {"none": 0, "rmsnorm": D, "layernorm": 2 * D}[cfg.norm]
    attn = (H + 2 * G) * D * E + H * E * D
    attn += (H + 2 * G) * E * cfg.attn_bias + D * cfg.attn_out_bias
    mlp = (2 + cfg.gated_mlp) * D * Fh + (Fh + D) * cfg.mlp_bias
    per_layer = 2 * norm + attn + mlp
    total = cfg.vocab_size * D + cfg.n_layers * per_layer + norm
    total += cfg.n_positions * D if cfg.positional == "learned" else 0
    total += D * cfg.out_size + cfg.out_size * cfg.unembed_bias
    return total


def model_type_of(config_or_path) -> str:
    """``"gpt2"`` or ``"llama"`` for a config, a checkpoint folder or a hub name (config only)."""
    return _model_type(_load_config(config_or_path))


def _load_config(config_or_path):
    if isinstance(config_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        local = _local_folder(config_or_path)
        return AutoConfig.from_pretrained(str(local or config_or_path), local_files_only=local is not None)
    return config_or_path


def estimate_bytes(config_or_path, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one copy of the converted model's weights in ``dtype``.

    ``config_or_path``: a HF config, our :class:`TransformerConfig`, a local
    folder or a hub name (only the config is read). Converting holds two copies
    at its peak (the HF model and ours); :func:`check_memory` accounts for that.
    """
    _check_dtype(dtype)
    config = _load_config(config_or_path)
    return estimate_params(config) * torch.empty((), dtype=dtype).element_size()


def available_bytes() -> int:
    """Memory available for new allocations (psutil if installed, else /proc/meminfo)."""
    try:
        import psutil  # optional: not a dependency of this project

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    # No way to tell (not Linux, no psutil): don't refuse on a guess.
    return 2**63 - 1


def check_memory(config_or_path, dtype: torch.dtype = torch.float32, *, copies: int = 2, available: int | None = None) -> int:
    """Raise ``MemoryError`` if ``copies`` copies of the model don't fit; return the bytes needed.

    Reads only the config. ``copies=2``: the HF model and the converted one are
    both alive while weights are copied.
    """
    needed = copies * estimate_bytes(config_or_path, dtype)
    have = available_bytes() if available is None else available
    if needed > have:
        params = needed // copies // torch.empty((), dtype=dtype).element_size()
        raise MemoryError(
            f"converting this model needs about {needed / _GIB:.1f} GiB ({params / 1e9:.2f}B parameters, "
            f"{copies} copies in {dtype}) but only {have / _GIB:.1f} GiB is available; use a "
            f"smaller model, a 16-bit dtype, or a machine with more memory"
        )
    return needed


# ---------------------------------------------------------------- weights
def _check_dtype(dtype):
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {_DTYPES}")


def _copy(param: torch.nn.Parameter, value: torch.Tensor, name: str, done: set):
    if param.shape != value.shape:
        raise ValueError(f"{name}: converted weight has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    param.copy_(value)
    done.add(name)


def _convert_gpt2(hf, cfg: TransformerConfig, model: Transformer, done: set):
    H, E, D = cfg.n_heads, cfg.d_head, cfg.d_model
    t = hf.transformer
    _copy(model.W_E, t.wte.weight, "W_E", done)
    _copy(model.W_pos, t.wpe.weight[: cfg.n_positions], "W_pos", done)
    for l, (ours, theirs) in enumerate(zip(model.blocks, t.h)):
        p = f"blocks.{l}."
        w, b = theirs.attn.c_attn.weight, theirs.attn.c_attn.bias  # [D, 3D], [3D]; columns q|k|v, head-major
        for i, (W, B) in enumerate([(ours.W_Q, ours.b_Q), (ours.W_K, ours.b_K), (ours.W_V, ours.b_V)]):
            n = "QKV"[i]
            _copy(W, w[:, i * D : (i + 1) * D].reshape(D, H, E).permute(1, 0, 2), p + f"W_{n}", done)
            _copy(B, b[i * D : (i + 1) * D].reshape(H, E), p + f"b_{n}", done)
        _copy(ours.W_O, theirs.attn.c_proj.weight.reshape(H, E, D), p + "W_O", done)  # rows head-major
        _copy(ours.b_O, theirs.attn.c_proj.bias, p + "b_O", done)
        for mine, hf_ln, name in [(ours.ln1, theirs.ln_1, "ln1"), (ours.ln2, theirs.ln_2, "ln2")]:
            _copy(mine.weight, hf_ln.weight, p + name + ".weight", done)
            _copy(mine.bias, hf_ln.bias, p + name + ".bias", done)
        _copy(ours.W_in, theirs.mlp.c_fc.weight, p + "W_in", done)
        _copy(ours.b_in, theirs.mlp.c_fc.bias, p + "b_in", done)
        _copy(ours.W_out, theirs.mlp.c_proj.weight, p + "W_out", done)
        _copy(ours.b_out, theirs.mlp.c_proj.bias, p + "b_out", done)
    _copy(model.ln_f.weight, t.ln_f.weight, "ln_f.weight", done)
    _copy(model.ln_f.bias, t.ln_f.bias, "ln_f.bias", done)
    # lm_head is wte itself when tied (GPT-2's checkpoints), its own weight otherwise.
    _copy(model.W_U, hf.lm_head.weight.T, "W_U", done)


def _convert_llama(hf, cfg: TransformerConfig, model: Transformer, done: set):
    H, G, E, D = cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
    m = hf.model
    _copy(model.W_E, m.embed_tokens.weight, "W_E", done)
    for l, (ours, theirs) in enumerate(zip(model.blocks, m.layers)):
        p, a, mlp = f"blocks.{l}.", theirs.self_attn, theirs.mlp
        # nn.Linear weights are [out, in] with out head-major: [n*E, D] -> [n, D, E].
        for n, (W, B, proj, heads) in zip("QKV", [(ours.W_Q, ours.b_Q, a.q_proj, H),
                                                   (ours.W_K, ours.b_K, a.k_proj, G),
                                                   (ours.W_V, ours.b_V, a.v_proj, G)]):
            _copy(W, proj.weight.reshape(heads, E, D).transpose(1, 2), p + f"W_{n}", done)
            if cfg.attn_bias:
                _copy(B, proj.bias.reshape(heads, E), p + f"b_{n}", done)
        _copy(ours.W_O, a.o_proj.weight.T.reshape(H, E, D), p + "W_O", done)
        if cfg.attn_out_bias:
            _copy(ours.b_O, a.o_proj.bias, p + "b_O", done)
        _copy(ours.ln1.weight, theirs.input_layernorm.weight, p + "ln1.weight", done)
        _copy(ours.ln2.weight, theirs.post_attention_layernorm.weight, p + "ln2.weight", done)
        _copy(ours.W_gate, mlp.gate_proj.weight.T, p + "W_gate", done)
        _copy(ours.W_in, mlp.up_proj.weight.T, p + "W_in", done)
        _copy(ours.W_out, mlp.down_proj.weight.T, p + "W_out", done)
    _copy(model.ln_f.weight, m.norm.weight, "ln_f.weight", done)
    _copy(model.W_U, hf.lm_head.weight.T, "W_U", done)


def convert(hf_model, *, dtype: torch.dtype = torch.float32) -> Transformer:
    """Our :class:`Transformer` with ``hf_model``'s weights, cast to ``dtype``, frozen, in eval mode.

    The result lives on the HF model's device.
    """
    _check_dtype(dtype)
    model_type = _model_type(hf_model.config)
    cfg = transformer_config(hf_model.config)
    # Build on the meta device and allocate once in the target dtype: no
    # full-size float32 zeros for a 16-bit model.
    with torch.device("meta"):
        model = Transformer(cfg)
    device = next(hf_model.parameters()).device  # stay where the HF model is
    model = model.to(dtype=dtype).to_empty(device=device)
    done: set[str] = set()
    converter = {"gpt2": _convert_gpt2, "llama": _convert_llama}[model_type]
    with torch.no_grad():
        converter(hf_model, cfg, model, done)
    missing = {name for name, _ in model.named_parameters()} - done
    if missing:  # to_empty leaves garbage: a missed weight must not pass silently
        raise RuntimeError(f"conversion left parameters unset: {sorted(missing)}")
    return model.requires_grad_(False).eval()


# ----------------------------------------------------------------- loading
def _local_folder(path) -> Path | None:
    """The folder ``path`` names, None for a hub name; raise if a path names nothing usable."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint folder {str(p)!r} has no config.json; is it a Hugging Face checkpoint?")
        return p
    text = os.fspath(path)
    looks_local = isinstance(path, os.PathLike) or p.is_absolute() or text.startswith((".", "~")) or p.exists()
    # Hub names are "name" or "owner/name"; anything else is meant as a path.
    if looks_local or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise FileNotFoundError(f"no checkpoint folder at {text!r}; pass an existing folder with config.json, or a hub name")
    return None


def _from_pretrained_kwargs(dtype) -> dict[str, Any]:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    # transformers 4.56 renamed torch_dtype to dtype (5.x warns on the old name).
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def from_hf(model_or_path_or_name, *, dtype: torch.dtype = torch.float32) -> Transformer:
    """Convert a Hugging Face GPT-2 or Llama model to :class:`Transformer` in ``dtype``.

    ``model_or_path_or_name``: a loaded ``GPT2LMHeadModel``/``LlamaForCausalLM``;
    a local checkpoint folder; or a hub name (``"gpt2"``,
    ``"codellama/CodeLlama-7b-hf"``), which needs a network. For paths and
    names, the memory needed is checked from the config before any weights load.
    """
    _check_dtype(dtype)
    source = model_or_path_or_name
    if isinstance(source, torch.nn.Module):
        if not hasattr(source, "config"):
            raise TypeError(f"expected a Hugging Face model with a .config, got {type(source).__name__}")
        _model_type(source.config)
        return convert(source, dtype=dtype)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"from_hf takes a Hugging Face model, a checkpoint folder or a hub name, got {type(source).__name__}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM

    local = _local_folder(source)
    where = str(local or source)
    config = AutoConfig.from_pretrained(where, local_files_only=local is not None)
    _model_type(config)
    transformer_config(config)  # unsupported options fail here, before the weights load
    check_memory(config, dtype)
    hf = AutoModelForCausalLM.from_pretrained(
        where, local_files_only=local is not None, **_from_pretrained_kwargs(dtype)
    )
    return convert(hf, dtype=dtype)
