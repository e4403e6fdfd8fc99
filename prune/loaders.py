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
    "estimate_params", "estimate_bytes", "check_memory", "available_bytes", "has_tokenizer", "trained_tasks",
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


def _check_sizes(config, positive: tuple[str, ...], optional: tuple[str, ...] = (), eps: tuple[str, ...] = ()):
    """Refuse sizes no model can have (``n_head: 0``, a string, a negative count) with the field's name."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for name in (*positive, *optional):
        value = getattr(config, name, None)
        if value is None and name in optional:
            continue
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} = {value!r} in the config; it must be a positive integer (fix config.json)")
    for name in eps:
        value = getattr(config, name, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise ValueError(f"{name} = {value!r} in the config; it must be a positive number (fix config.json)")


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
    _check_sizes(config, ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"), ("n_inner",),
                 ("layer_norm_epsilon",))
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
    _check_sizes(config, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings"), ("num_key_value_heads", "head_dim"),
                 ("rms_norm_eps",))
    D, H = config.hidden_size, config.num_attention_heads
    G = getattr(config, "num_key_value_heads", None) or H
    if H % G:
        raise ValueError(f"num_attention_heads={H} is not a multiple of num_key_value_heads={G} in the config "
                         f"(fix config.json)")
    head_dim = getattr(config, "head_dim", None) or D // H
    if head_dim < 1:
        raise ValueError(f"hidden_size={D} over num_attention_heads={H} leaves no head dimension (fix config.json)")
    bias = bool(getattr(config, "attention_bias", False))
    return TransformerConfig(
        vocab_size=config.vocab_size, d_model=D, n_layers=config.num_hidden_layers, n_heads=H,
        n_kv_heads=G, d_head=head_dim,
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
        if local is None:
            return AutoConfig.from_pretrained(os.fspath(config_or_path))
        try:
            return AutoConfig.from_pretrained(str(local), local_files_only=True)
        except Exception as err:  # noqa: BLE001 (a broken config.json makes transformers raise anything)
            raise ValueError(f"{local / 'config.json'} is not a usable config ({type(err).__name__}: "
                             f"{_one_line(err)}); fix it or re-save the checkpoint") from None
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


def check_memory(config_or_path, dtype: torch.dtype = torch.float32, *, copies: int = 2,
                 available: int | None = None) -> int:
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
    for l, (ours, theirs) in enumerate(zip(model.blocks, t.h, strict=True)):
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
        fc, proj = theirs.mlp.c_fc, theirs.mlp.c_proj  # Conv1D: weights already [in, out]
        for name, value in (("W_in", fc.weight), ("b_in", fc.bias), ("W_out", proj.weight), ("b_out", proj.bias)):
            _copy(getattr(ours, name), value, p + name, done)
    _copy(model.ln_f.weight, t.ln_f.weight, "ln_f.weight", done)
    _copy(model.ln_f.bias, t.ln_f.bias, "ln_f.bias", done)
    # lm_head is wte itself when tied (GPT-2's checkpoints), its own weight otherwise.
    _copy(model.W_U, hf.lm_head.weight.T, "W_U", done)


def _convert_llama(hf, cfg: TransformerConfig, model: Transformer, done: set):
    H, G, E, D = cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model
    m = hf.model
    _copy(model.W_E, m.embed_tokens.weight, "W_E", done)
    for l, (ours, theirs) in enumerate(zip(model.blocks, m.layers, strict=True)):
        p, a, mlp = f"blocks.{l}.", theirs.self_attn, theirs.mlp
        # nn.Linear weights are [out, in] with out head-major: [n*E, D] -> [n, D, E].
        for n, (W, B, proj, heads) in zip("QKV", [(ours.W_Q, ours.b_Q, a.q_proj, H),
                                                   (ours.W_K, ours.b_K, a.k_proj, G),
                                                   (ours.W_V, ours.b_V, a.v_proj, G)], strict=True):
            _copy(W, proj.weight.reshape(heads, E, D).transpose(1, 2), p + f"W_{n}", done)
            if cfg.attn_bias:
                _copy(B, proj.bias.reshape(heads, E), p + f"b_{n}", done)
        _copy(ours.W_O, a.o_proj.weight.T.reshape(H, E, D), p + "W_O", done)
        if cfg.attn_out_bias:
            _copy(ours.b_O, a.o_proj.bias, p + "b_O", done)
        _copy(ours.ln1.weight, theirs.input_layernorm.weight, p + "ln1.weight", done)
        _copy(ours.ln2.weight, theirs.post_attention_layernorm.weight, p + "ln2.weight", done)
        for name, linear in (("W_gate", mlp.gate_proj), ("W_in", mlp.up_proj), ("W_out", mlp.down_proj)):
            _copy(getattr(ours, name), linear.weight.T, p + name, done)  # nn.Linear: [out, in]
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
# Files Hugging Face reads from a checkpoint folder: a dangling link by such a name is refused.
_READ_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".pt", ".pth", ".msgpack", ".h5", ".tiktoken")


def _check_entries(folder: Path) -> None:
    """Refuse a checkpoint folder holding a FIFO, socket or device (reading one blocks or fails) or a dangling
    link by a name Hugging Face would read: checked with ``os.stat``, before any file is opened."""
    import stat

    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode  # follows links: the hub's cache links files to blobs
            except OSError as err:
                if entry.name.endswith(_READ_SUFFIXES):
                    raise FileNotFoundError(
                        f"{path} cannot be read ({err.strerror or err}): a dangling or looping link? "
                        f"replace it with the file itself") from None
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
                raise ValueError(f"{path} is not a regular file ({kind}): reading it would block or fail; "
                                 f"replace it with the file itself")


def _looks_local(text: str) -> bool:
    """Whether a model spec that names nothing on disk was meant as a path rather than a hub name.

    Hub names are ``name`` or ``owner/name``. Anything absolute, starting with
    ``.`` or ``~``, with more than one ``/``, or whose first component is an
    existing folder (``models/gpt2-typo`` beside ``models/``) is a path.
    """
    if not text or os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1:
        return True
    seps = {"/", os.sep, *(os.altsep or "")}
    if any(sep in text for sep in seps):
        first = text.replace(os.sep, "/").replace(os.altsep or "/", "/").split("/")[0]
        return os.path.isdir(first) or os.sep != "/" and os.sep in text
    return False


def _local_folder(path) -> Path | None:
    """The folder ``path`` names, None for a hub name; raise if a path names nothing usable.

    Decided from the file system alone, before any network access: a spec that
    looks like a path (see :func:`_looks_local`) but is no folder is an error,
    not a hub name to look up.
    """
    text = os.fspath(path)
    if not text.strip():
        raise FileNotFoundError("the model is an empty string; pass a checkpoint folder or a hub name")
    p = Path(os.path.expanduser(text))
    if p.is_dir():
        _check_entries(p)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"checkpoint folder {str(p)!r} has no config.json; is it a Hugging Face checkpoint?")
        return p
    if os.path.lexists(p):  # a file, or a link to nothing
        what = "a file" if p.exists() else "a link to nothing (or a loop of links)"
        raise FileNotFoundError(f"no checkpoint folder at {text!r}: it is {what}; pass the checkpoint's folder")
    if isinstance(path, os.PathLike) or _looks_local(text):
        raise FileNotFoundError(f"no checkpoint folder at {text!r}; check the path "
                                f"(a hub name is 'name' or 'owner/name')")
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def has_tokenizer(spec) -> bool:
    """Whether ``spec`` is a local checkpoint folder that carries its own tokenizer files."""
    local = _local_folder(spec)
    return local is not None and any((local / f).is_file() for f in TOKENIZER_FILES)


def trained_tasks(spec) -> tuple[str, ...] | None:
    """The tasks a model was trained on, from ``training.json`` in its folder (None: no such record).

    The models in ``models/`` carry one (``models/train.py`` writes it); other checkpoints do not.
    """
    import json

    local = _local_folder(spec)
    if local is None or not (local / "training.json").is_file():
        return None
    path = local / "training.json"
    try:
        tasks = json.loads(path.read_text())["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} has no readable list of tasks ({_one_line(err)}); restore it from the "
                         f"repository or delete it") from None
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{path}: 'tasks' must be a list of task names, got {tasks!r}")
    return tuple(tasks)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _weight_files(folder: Path) -> dict[str, Path]:
    """The safetensors files of a checkpoint folder: tensor name -> file (``""`` -> the single file)."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return {str(k): folder / str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{index} is not a safetensors index ({_one_line(err)}); re-save or re-download "
                             f"the checkpoint") from None
    single = folder / "model.safetensors"
    return {"": single} if single.exists() else {}


def _check_safetensors(path: Path) -> None:
    """Refuse a safetensors file that is not a regular file, has no valid header, or is shorter than its
    header says (a copy or download cut short), before the library maps it."""
    import json
    import stat

    try:
        st = os.stat(path)
    except OSError as err:
        raise FileNotFoundError(f"{path} cannot be read ({err.strerror or err}); the checkpoint lists it") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file: reading it would block or fail; "
                         f"replace it with the file itself")
    size, fix = st.st_size, "re-save or re-download the checkpoint"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated: {size} bytes, too short for a safetensors header; {fix}")
        n = int.from_bytes(head, "little")
        if n > 100 * 1024**2:
            raise ValueError(f"{path} is not a safetensors file (its header would be {n} bytes); {fix}")
        if 8 + n > size:
            raise ValueError(f"{path} is truncated: its header needs {8 + n} bytes, the file has {size}; {fix}")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"{path} is not a safetensors file (bad header: {_one_line(err)}); {fix}") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ValueError(f"{path} is truncated: its header describes {need} bytes of tensors, the file has {size}; "
                         f"{fix}")


def _load_weights(where: str, local: Path | None, dtype):
    """``AutoModelForCausalLM.from_pretrained``, refusing weights that do not fit the config.

    Transformers would log a table and re-initialise tensors whose shapes
    differ from the config's, or that are missing; here either is an error
    naming the file and the tensor.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    files = _weight_files(local) if local is not None else {}
    if local is not None and not files:
        pickles = sorted(f.name for f in local.glob("*.bin")) + sorted(f.name for f in local.glob("*.pt*"))
        found = f" (it has {', '.join(pickles)}: pickles, which are never loaded)" if pickles else ""
        raise FileNotFoundError(
            f"{local} has no model.safetensors or model.safetensors.index.json{found}; save the checkpoint "
            f"with save_pretrained(folder, safe_serialization=True)")
    for f in sorted(set(files.values())):
        _check_safetensors(f)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: refused below, as one line
    try:
        hf, info = AutoModelForCausalLM.from_pretrained(
            where, local_files_only=local is not None, ignore_mismatched_sizes=True, output_loading_info=True,
            use_safetensors=True,
            **_from_pretrained_kwargs(dtype))
    except (OSError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 (a broken checkpoint makes transformers raise anything)
        if local is None:
            raise
        raise ValueError(f"cannot load the weights in {local}: {type(err).__name__}: {_one_line(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)

    def file_of(key: str) -> str:
        if "" in files:
            return str(files[""])
        for k, f in files.items():
            if key == k or key.endswith("." + k) or k.endswith("." + key):
                return str(f)
        return str(local or where)

    order = {k: i for i, k in enumerate(hf.state_dict())}
    config_file = f"{local / 'config.json'}" if local is not None else f"the config of {where}"
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: (order.get(m[0], len(order)), m[0]))
    if mismatched:
        key, theirs, ours = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        raise ValueError(
            f"{file_of(key)}: tensor {key} has shape {tuple(theirs)} but {config_file} makes it {tuple(ours)}{more}; "
            f"the weights and config.json are of different models: use the config.json saved with these weights")
    missing = sorted(info.get("missing_keys") or (), key=lambda k: (order.get(k, len(order)), k))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{local or where} has no weights for {missing[0]}{more}, which {config_file} needs; "
                         f"re-save or re-download the checkpoint")
    return hf


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
    local = _local_folder(source)
    where = str(local or source)
    config = _load_config(source)
    try:
        _model_type(config)
        transformer_config(config)  # unsupported options and impossible sizes fail here, before the weights load
    except (ValueError, NotImplementedError) as err:
        raise type(err)(f"{local / 'config.json' if local is not None else where}: {err}") from None
    check_memory(config, dtype)
    return convert(_load_weights(where, local, dtype), dtype=dtype)
