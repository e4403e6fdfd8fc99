"""TransformerLens models, and InterpBench's models and ground truth, as :class:`prune.model.Transformer`.

:func:`from_transformer_lens` reads a ``HookedTransformer`` state dict (a dict of
tensors, a ``.safetensors`` file, or a ``.pt``/``.pth`` file read with
``torch.load(weights_only=True)``) and its ``HookedTransformerConfig`` (a dict, a
JSON file, or a pickle read without executing anything: :func:`load_config`), and
returns our one masked transformer with the same logits. TransformerLens itself
is neither imported nor needed. :func:`to_transformer_lens` goes the other way.

What maps, and how (TransformerLens's equations, read in its code, below):

- ``normalization_type``: ``None`` (no norm), ``"LN"`` (``ln*.w``/``ln*.b``),
  ``"LNPre"`` (LayerNorm without weights: our layernorm with gain 1, bias 0),
  ``"RMS"`` (``ln*.w``), ``"RMSPre"`` (gain 1). ``eps`` is the norm's epsilon,
  inside the square root as in ``torch.nn.functional.layer_norm``.
- ``act_fn``: ``relu``, ``gelu`` (exact, erf), ``silu``, ``gelu_new`` and
  ``gelu_pytorch_tanh`` (the tanh approximation, our ``gelu_tanh``), ``gelu_fast``
  (the same formula with sqrt(2/pi) written as 0.7978845608, 4e-11 off in
  relative terms: far below float32's resolution). ``gated_mlp``: TransformerLens
  computes ``act(x W_gate) * (x W_in) + b_in``, we ``act(x W_gate) * (x W_in + b_in)``,
  so a gated MLP's ``b_in`` must be zero (it is for every gated model TransformerLens
  loads); a non-zero one is refused.
- ``positional_embedding_type``: ``"standard"`` (``pos_embed.W_pos``, ``n_ctx`` rows)
  or ``"rotary"`` with ``rotary_base`` (our ``rope_theta``), the GPT-NeoX rotate-half
  pairing and ``rotary_dim == d_head``.
- ``n_key_value_heads``: grouped-query attention, ``_W_K``/``_W_V``/``_b_K``/``_b_V``
  ``[G, ...]`` (``W_K``/``W_V``/``b_K``/``b_V`` with ``G`` rows are read too).
- ``attention_dir``: ``"causal"`` or ``"bidirectional"``.
- ``d_vocab_out`` (``unembed.W_U [d_model, d_vocab_out]``, ``b_U``): our ``d_out``.
- Attention scale: TransformerLens divides scores by ``attn_scale`` (``sqrt(d_head)``
  unless set; 1 when ``use_attn_scale`` is false; times ``layer + 1`` with
  ``scale_attn_by_inverse_layer_idx``); our attention divides by ``sqrt(d_head)``.
  Any other scale is refused unless ``fold_attn_scale=True``, which multiplies
  ``W_Q`` and ``b_Q`` by ``sqrt(d_head) / attn_scale`` (exact up to rounding: the
  scores are linear in the query, rotary included; the query weights then differ
  from the file's).
- ``attn_only``: our transformer has an MLP in every layer, so it gets one with
  zero weights (``d_mlp`` 1, no biases), which writes exactly zero: its graph
  edges (into and out of ``m{l}``) are inert, and a circuit method should find
  none of them.
- Biases: TransformerLens always has ``b_Q``/``b_K``/``b_V``/``b_O``, ``b_in``/``b_out``
  and ``b_U`` (zeros where the source model has none); they are all read.

Refused with :class:`UnsupportedConfigError` (the model would not reproduce the
logits): ``parallel_attn_mlp`` (our graph reads each MLP after its layer's
attention), shortformer/alibi/relative positions, partial or adjacent-pair rotary,
NTK-by-parts, YaRN or scaled rotary, local attention, ``post_embedding_ln``,
``final_rms`` with a LayerNorm model, ``use_qk_norm``, norms after blocks
(Gemma 2), soft caps, mixtures of experts, 4-bit weights, OLMo's post-norm
architectures, and config fields this module does not know (a newer
TransformerLens; drop the field if it does not change the forward pass). Fields
that change nothing in the forward pass (hooks, device, seed, initialisation,
tokenizer, ``default_prepend_bos``, ``dtype``, ...) are ignored. Positions count
from 0 at the first token, as in TransformerLens without an ``attention_mask``
(TransformerLens shifts positions under left padding; this model does not).

TransformerLens versions read (github.com/TransformerLensOrg/TransformerLens):
tag ``v1.19.0`` (``transformer_lens/HookedTransformerConfig.py``,
``components.py``, ``HookedTransformer.py``), which InterpBench pins, and commit
``4cd36aae`` (2026-07-22; ``config/hooked_transformer_config.py``,
``config/transformer_lens_config.py``, ``components/abstract_attention.py``,
``grouped_query_attention.py``, ``transformer_block.py``, ``mlps/gated_mlp.py``,
``utilities/activation_functions.py``); config field names checked across every
tag from v1.0 to v4.0.0b1.

InterpBench (Gupta et al. 2024; code github.com/FlyingPumba/circuits-benchmark at
commit ``0cfd8313``, 2024-10-02; models at huggingface.co/cybershiptrooper/InterpBench).
:func:`load_interpbench` reads one case folder as the hub releases it:

- ``ll_model.pth``: the ``HookedTransformer`` state dict (``torch.save``); or
  ``ll_model_<w>.pth``, as training writes it (``commands/train/iit/iit_train.py``,
  ``w`` the loss weights as an int, e.g. ``510``) and as the hub's
  ``benchmark_metadata.json`` lists it;
- ``ll_model_cfg.pkl`` (or ``ll_model_cfg_<w>.pkl``): a pickled config, either a dict
  (``HookedTransformerConfig.to_dict()``, as ``iit_train.py`` writes it) or a pickled
  ``HookedTransformerConfig`` (``utils/ll_model_loader/interp_bench_model_loader.py``:
  "some cases ... have the config as a HookedTransformerConfig object"), both read
  by a restricted unpickler (:func:`load_config`); a ``.json`` config is read too;
- ``edges.pkl``: the ground truth, a list of ``(source, destination)`` pairs of
  TransformerLens hook names, a head's index in brackets (``utils/circuit/edges_list.py``,
  ``circuit_to_edges_list``; e.g. the case-3 file printed in ``DEMO_InterpBench.ipynb``:
  ``('blocks.0.hook_mlp_out', 'blocks.1.hook_q_input[2]')``,
  ``('blocks.1.hook_q_input[2]', 'blocks.1.attn.hook_q[2]')``,
  ``('blocks.1.attn.hook_result[2]', 'blocks.1.hook_resid_post')``), in the layout
  the hub adopted when it made "edge files ... independent of interpbench classes";
  an older edge file that pickles InterpBench's own classes is refused;
- ``meta.json`` (or ``meta_<w>.json``): training hyperparameters, kept in the
  circuit's metadata.

:func:`interpbench_circuit` maps those edges into EAP-IG names (see its docstring).
InterpBench's models are trained to its circuit at the level of heads, not of
their query, key and value inputs (its hub README warns of this); the edges keep
the ports the file names.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import json
import math
import os
import pickle
import re
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from prune.circuit import Circuit
from prune.graph import Graph
from prune.loaders import _check_dtype, _check_safetensors, _copy, _one_line
from prune.model import Transformer, TransformerConfig

__all__ = [
    "TransformerLensError", "UnsupportedConfigError", "UnsafePickleError", "InterpBenchError",
    "from_transformer_lens", "config_from_transformer_lens", "to_transformer_lens",
    "load_config", "load_state_dict",
    "load_interpbench", "interpbench_circuit", "load_interpbench_edges",
]


class TransformerLensError(ValueError):
    """A TransformerLens state dict, config or file that cannot be read as this model."""


class UnsupportedConfigError(TransformerLensError, NotImplementedError):
    """A config value this model does not compute (also a ``NotImplementedError``, as in :mod:`prune.loaders`)."""


class UnsafePickleError(TransformerLensError):
    """A pickle that needs a global this reader does not admit: it is refused, and nothing in it runs."""


class InterpBenchError(TransformerLensError):
    """An InterpBench case folder or ground-truth edge list that cannot be read or has no counterpart here."""


class _MissingFile(TransformerLensError, FileNotFoundError):
    """A path that names no file (both a ``TransformerLensError`` and a ``FileNotFoundError``)."""


PathLike = str | os.PathLike

# ----------------------------------------------------------------- pickles
# A pickle runs whatever callables it names. These readers admit only the globals a
# config or edge pickle needs, each mapped to something inert, and refuse every other.


class _PickledConfig:
    """What a pickled ``HookedTransformerConfig`` becomes: its fields as attributes, no behaviour."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slot state) from copyreg
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsafePickleError(f"a pickled config holds {type(state).__name__} state, not its fields")
        self.__dict__.update(state)


class _NumpyDtype:
    """``numpy.dtype`` as pickled beside a numpy scalar: its kind, size and byte order, nothing more."""

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise UnsafePickleError(f"a pickled numpy dtype {spec!r} is not a plain type code")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
            self.byteorder = state[1]


_NUMPY_CODES = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
                "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?"}


def _numpy_scalar(dtype, data=None):
    """A numpy scalar (``np.float64(0.14)``, as TransformerLens stores ``initializer_range``) as a Python number."""
    if not isinstance(dtype, _NumpyDtype) or dtype.spec not in _NUMPY_CODES or not isinstance(data, bytes):
        raise UnsafePickleError(f"a pickled numpy scalar of type {getattr(dtype, 'spec', dtype)!r} is not a plain "
                                f"number")
    order = ">" if dtype.byteorder == ">" else "<"
    return struct.unpack(order + _NUMPY_CODES[dtype.spec], data)[0]


def _latin1(text, encoding="latin1"):  # how protocol 2 pickles bytes: _codecs.encode(text, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"a pickle calls _codecs.encode({text!r:.40}, {encoding!r}), not a bytes literal")
    return text.encode("latin1")


def _reconstructor(cls, base, state=None):  # copyreg._reconstructor, protocols 0 and 1
    if cls is not _PickledConfig or base is not object or state is not None:
        raise UnsafePickleError(f"a pickle reconstructs {cls!r} from {base!r}, not a config")
    return _PickledConfig()


def _device(kind, index=None):  # torch.device('cuda', 0) as its string: the device is ignored
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise UnsafePickleError(f"a pickled torch.device({kind!r}, {index!r}) is not a device name")
    return kind if index is None else f"{kind}:{index}"


# Where HookedTransformerConfig has lived: v1.x-v2.x, v3.0, v3.5 on (and TransformerLensConfig, its base).
_CONFIG_CLASSES = {
    ("transformer_lens.HookedTransformerConfig", "HookedTransformerConfig"),
    ("transformer_lens.config.HookedTransformerConfig", "HookedTransformerConfig"),
    ("transformer_lens.config.hooked_transformer_config", "HookedTransformerConfig"),
    ("transformer_lens.config.TransformerLensConfig", "TransformerLensConfig"),
    ("transformer_lens.config.transformer_lens_config", "TransformerLensConfig"),
    ("transformer_lens", "HookedTransformerConfig"),
}
_PLAIN = {("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
          ("collections", "OrderedDict"): OrderedDict, ("_codecs", "encode"): _latin1}
_CONFIG_GLOBALS = {
    **_PLAIN,
    ("builtins", "object"): object,  # only as copyreg._reconstructor's base
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch", "device"): _device,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
    **{key: _PickledConfig for key in _CONFIG_CLASSES},
}


def _config_global(module: str, name: str):
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)  # torch.float32 and the like: plain values
    return _CONFIG_GLOBALS.get((module, name))


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers from an allow-list and refuses everything else."""

    def __init__(self, file, *, what: str, lookup, fix: str):
        super().__init__(file)
        self._what, self._lookup, self._fix = what, lookup, fix

    def find_class(self, module, name):
        # Protocols 0-2 write Python 2 names (copy_reg, __builtin__); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._lookup(module, name)
        if found is None:
            raise UnsafePickleError(f"{self._what} needs the global {module}.{name}, which this reader does not admit "
                                    f"(a pickle can run any callable it names, so nothing was run); {self._fix}")
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._what} holds a persistent id {pid!r:.60}; {self._fix}")


def _unpickle(path: Path, *, what: str, lookup, fix: str):
    data = _read_bytes(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), what=f"{path} ({what})", lookup=lookup, fix=fix).load()
    except TransformerLensError:
        raise
    except Exception as err:  # noqa: BLE001 (a corrupt pickle raises anything: EOFError, UnpicklingError, ...)
        raise TransformerLensError(f"{path} is not a readable pickle ({type(err).__name__}: {_one_line(err)}); "
                                   f"{fix}") from None


def _read_bytes(path: Path) -> bytes:
    _check_regular(path)
    return path.read_bytes()


def _check_regular(path: Path) -> None:
    if not path.exists():
        raise _MissingFile(f"no file at {path}")
    if not path.is_file():  # a FIFO would block the read forever
        raise TransformerLensError(f"{path} is not a regular file; give the file itself")


# ----------------------------------------------------------------- configs
def load_config(config) -> dict[str, Any]:
    """A ``HookedTransformerConfig`` as a plain dict of its fields.

    ``config``: a dict; an object with ``to_dict()`` (a live ``HookedTransformerConfig``);
    a ``.json`` file of the fields; or a ``.pkl``/``.pickle`` file holding a dict of
    them or a pickled ``HookedTransformerConfig`` (InterpBench's ``ll_model_cfg.pkl``).
    A pickle is read by a restricted unpickler that admits only the config class
    (mapped to an inert attribute holder), copyreg's reconstructor, torch dtypes and
    devices, numpy scalars (as Python numbers), ``set``/``frozenset``/``OrderedDict``
    and ``_codecs.encode`` of latin-1 text; any other global is refused with
    :class:`UnsafePickleError` before anything is called.
    """
    if isinstance(config, Mapping):
        out = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        path = Path(config)
        fix = "give the HookedTransformerConfig as a dict, a JSON file or the pickle TransformerLens users write"
        if path.suffix == ".json":
            try:
                out = json.loads(_read_bytes(path))
            except (ValueError, UnicodeDecodeError) as err:
                raise TransformerLensError(f"{path} is not JSON ({_one_line(err)}); {fix}") from None
        elif path.suffix in (".pkl", ".pickle"):
            out = _unpickle(path, what="a TransformerLens config", lookup=_config_global, fix=fix)
            if isinstance(out, _PickledConfig):
                out = dict(vars(out))
        else:
            raise TransformerLensError(f"config file {path} is neither .json nor .pkl; {fix}")
        if not isinstance(out, dict):
            raise TransformerLensError(f"{path} holds a {type(out).__name__}, not a config's fields; {fix}")
    elif callable(getattr(config, "to_dict", None)):
        out = dict(config.to_dict())
    else:
        raise TransformerLensError(f"config must be a dict, a JSON or pickle file, or a HookedTransformerConfig; "
                                   f"got {type(config).__name__}")
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        raise TransformerLensError(f"config field names must be strings, got {bad[0]!r}")
    return out


# Fields that do not change the forward pass of a HookedTransformer on token ids.
_IGNORED = frozenset({
    "model_name", "tokenizer_name", "tokenizer_prepends_bos", "default_prepend_bos", "add_special_tokens",
    "device", "n_devices", "dtype", "seed", "init_mode", "initializer_range", "init_weights", "n_params",
    "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
    "ungroup_grouped_query_attention", "from_checkpoint", "checkpoint_index", "checkpoint_label_type",
    "checkpoint_value", "trust_remote_code", "tie_word_embeddings", "decoder_start_token_id",
    "uses_rms_norm", "layer_norm_folding",  # TransformerBridge bookkeeping
    "window_size", "attn_types", "rotary_base_local",  # used only with use_local_attn (refused)
    "experts_per_token", "norm_topk_prob",  # used only with num_experts (refused)
    "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor",
    "NTK_original_ctx_len",  # used only with use_NTK_by_parts_rope (refused)
    "yarn_factor", "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow",
    "yarn_original_max_position_embeddings",  # used only with use_yarn_rope (refused)
})

# Fields that must keep a value our model computes: (field, the values accepted, why another is refused).
_MUST = (
    ("parallel_attn_mlp", (False,), "the graph reads each layer's MLP after its attention (GPT-J's parallel "
                                    "blocks are not this model)"),
    ("use_local_attn", (False,), "local (windowed) attention is not implemented"),
    ("post_embedding_ln", (False,), "there is no norm after the embedding"),
    ("use_qk_norm", (False,), "there is no norm on queries and keys"),
    ("use_normalization_before_and_after", (False,), "there are no norms after attention and MLP (Gemma 2)"),
    ("num_experts", (None,), "mixtures of experts are not implemented"),
    ("load_in_4bit", (False,), "4-bit weights are not read; load a float checkpoint"),
    ("rotary_adjacent_pairs", (False,), "rotary pairs are rotate-half (GPT-NeoX, Llama), not adjacent (GPT-J)"),
    ("use_NTK_by_parts_rope", (False,), "rotary frequencies are the plain ones"),
    ("use_yarn_rope", (False,), "rotary frequencies are the plain ones"),
    ("rotary_scaling_factor", (1, 1.0), "rotary positions are not scaled"),
    ("relative_attention_max_distance", (None,), "there is no relative attention bias (T5)"),
    ("relative_attention_num_buckets", (None,), "there is no relative attention bias (T5)"),
)
_SOFT_CAPS = ("attn_scores_soft_cap", "output_logits_soft_cap")
_POST_NORM_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM")
_REQUIRED = ("d_model", "d_head", "n_layers", "n_ctx")
_NORMS = {None: "none", "LN": "layernorm", "LNPre": "layernorm", "RMS": "rmsnorm", "RMSPre": "rmsnorm"}
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "silu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
_OPTIONAL_DEFAULTS = {
    "n_heads": -1, "d_mlp": None, "d_vocab": -1, "d_vocab_out": -1, "act_fn": "relu", "eps": 1e-5,
    "normalization_type": "LN", "attention_dir": "causal", "attn_only": False, "gated_mlp": False,
    "positional_embedding_type": "standard", "rotary_dim": None, "rotary_base": 10000, "n_key_value_heads": None,
    "final_rms": False, "use_attn_scale": True, "attn_scale": -1.0, "scale_attn_by_inverse_layer_idx": False,
    "original_architecture": None, **{f: -1.0 for f in _SOFT_CAPS}, **{f: v[0] for f, v, _ in _MUST},
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
    """How a TransformerLens config maps: our config plus what the weights need."""

    config: TransformerConfig
    normalization: str | None  # TransformerLens's normalization_type
    attn_only: bool
    grouped: bool  # n_key_value_heads set: _W_K/_W_V [G, ...]
    q_scale: tuple[float, ...]  # per layer: what W_Q and b_Q are multiplied by (1.0: nothing)


def _plan(cfg: Mapping[str, Any], *, fold_attn_scale: bool) -> _Plan:
    unknown = sorted(set(cfg) - _IGNORED - set(_OPTIONAL_DEFAULTS) - set(_REQUIRED))
    if unknown:
        raise UnsupportedConfigError(
            f"config fields {unknown} are unknown to this reader (read against TransformerLens v1.19.0 to 4cd36aae); "
            f"if they do not change the forward pass, drop them from the config")
    missing = [f for f in _REQUIRED if f not in cfg]
    if missing:
        raise TransformerLensError(f"the config has no {missing}; a HookedTransformerConfig needs {list(_REQUIRED)}")
    c = {**_OPTIONAL_DEFAULTS, **cfg}
    # What HookedTransformerConfig.__post_init__ fills in (v1.19.0 and 4cd36aae alike).
    if c["n_heads"] == -1 and _is_int(c["d_model"]) and _is_int(c["d_head"]) and c["d_head"] > 0:
        c["n_heads"] = c["d_model"] // c["d_head"]
    if c["d_mlp"] is None and not c["attn_only"] and _is_int(c["d_model"]):
        c["d_mlp"] = 4 * c["d_model"]
    if c["d_vocab_out"] == -1:
        c["d_vocab_out"] = c["d_vocab"]
    sizes = ["d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_vocab", "d_vocab_out"]
    sizes += [] if c["attn_only"] else ["d_mlp"]
    for name in sizes:
        if not _is_int(c[name]) or c[name] < 1:
            hint = " (-1: unset; set it to the vocabulary size)" if name == "d_vocab" and c[name] == -1 else ""
            raise TransformerLensError(f"config {name}={c[name]!r}; it must be a positive integer{hint}")
    for name in ("attn_only", "gated_mlp", "final_rms", "use_attn_scale", "scale_attn_by_inverse_layer_idx"):
        if not isinstance(c[name], bool):
            raise TransformerLensError(f"config {name}={c[name]!r}; it must be true or false")
    for name, accepted, why in _MUST:
        if c[name] not in accepted or isinstance(c[name], bool) != isinstance(accepted[0], bool):
            raise UnsupportedConfigError(f"config {name}={c[name]!r} is not supported ({why}); "
                                         f"only {name}={accepted[0]!r} is")
    for name in _SOFT_CAPS:
        if not isinstance(c[name], (int, float)) or isinstance(c[name], bool) or c[name] > 0:
            raise UnsupportedConfigError(f"config {name}={c[name]!r} is not supported (no soft cap is applied); "
                                         f"only values <= 0 (off) are")
    if c["original_architecture"] in _POST_NORM_ARCHITECTURES:
        raise UnsupportedConfigError(f"original_architecture={c['original_architecture']!r} is not supported "
                                     f"(OLMo's post-norm blocks and query/key norms are not this model)")
    eps = c["eps"]
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < math.inf:
        raise TransformerLensError(f"config eps={eps!r}; it must be a positive number")

    norm = c["normalization_type"]
    if norm not in _NORMS:
        raise UnsupportedConfigError(f"config normalization_type={norm!r} is not supported; choose one of "
                                     f"{list(_NORMS)}")
    if c["final_rms"] and norm in ("LN", "LNPre"):
        raise UnsupportedConfigError(f"config final_rms=True with normalization_type={norm!r} is not supported "
                                     f"(one norm kind for every layer here)")
    attn_only = c["attn_only"]
    act = c["act_fn"]
    if not attn_only and act not in _ACTIVATIONS:
        raise UnsupportedConfigError(f"config act_fn={act!r} is not supported; choose one of {list(_ACTIVATIONS)} "
                                     f"(solu, solu_ln and xielu are not implemented)")
    direction = c["attention_dir"]
    if direction not in ("causal", "bidirectional"):
        raise UnsupportedConfigError(f"config attention_dir={direction!r}; choose 'causal' or 'bidirectional'")
    positional = c["positional_embedding_type"]
    if positional not in ("standard", "rotary"):
        raise UnsupportedConfigError(f"config positional_embedding_type={positional!r} is not supported; choose "
                                     f"'standard' or 'rotary' (shortformer, alibi and relative positions are not "
                                     f"implemented)")
    E, H, G = c["d_head"], c["n_heads"], c["n_key_value_heads"]
    if positional == "rotary":
        rotary_dim = E if c["rotary_dim"] is None else c["rotary_dim"]
        if rotary_dim != E:
            raise UnsupportedConfigError(f"config rotary_dim={rotary_dim!r} with d_head={E}: partial rotary is not "
                                         f"supported (every dimension of a head is rotated here)")
        base = c["rotary_base"]
        if not isinstance(base, (int, float)) or isinstance(base, bool) or not 0 < base < math.inf:
            raise TransformerLensError(f"config rotary_base={base!r}; it must be a positive number")
    if G is not None and (not _is_int(G) or G < 1 or H % G):
        raise TransformerLensError(f"config n_key_value_heads={G!r} with n_heads={H}; it must be a positive divisor "
                                   f"of n_heads")

    # Attention scale: TransformerLens divides the scores by attn_scale (times layer + 1 when asked).
    scale = c["attn_scale"] if c["use_attn_scale"] else 1.0
    if c["use_attn_scale"] and scale == -1.0:
        scale = math.sqrt(E)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < math.inf:
        raise TransformerLensError(f"config attn_scale={c['attn_scale']!r}; it must be a positive number")
    scales = [scale * (l + 1) if c["scale_attn_by_inverse_layer_idx"] else scale for l in range(c["n_layers"])]
    q_scale = tuple(1.0 if math.isclose(s, math.sqrt(E), rel_tol=1e-12) else math.sqrt(E) / s for s in scales)
    if any(f != 1.0 for f in q_scale) and not fold_attn_scale:
        what = (f"attn_scale={c['attn_scale']!r}" if c["use_attn_scale"] else "use_attn_scale=False")
        if c["scale_attn_by_inverse_layer_idx"]:
            what += " with scale_attn_by_inverse_layer_idx=True"
        raise UnsupportedConfigError(
            f"config {what} divides attention scores by {scales[0]:g} (layer 0), not sqrt(d_head)={math.sqrt(E):g} "
            f"as this model does; pass fold_attn_scale=True to fold the difference into W_Q and b_Q")
    try:
        config = TransformerConfig(
            vocab_size=c["d_vocab"], d_model=c["d_model"], n_layers=c["n_layers"], n_heads=H, d_head=E,
            d_mlp=1 if attn_only else c["d_mlp"], n_positions=c["n_ctx"], n_kv_heads=G,
            d_out=None if c["d_vocab_out"] == c["d_vocab"] else c["d_vocab_out"],
            norm=_NORMS[norm], norm_eps=float(eps), activation="relu" if attn_only else _ACTIVATIONS[act],
            gated_mlp=c["gated_mlp"] and not attn_only,
            positional="rotary" if positional == "rotary" else "learned",
            rope_theta=float(c["rotary_base"]), causal=direction == "causal",
            attn_bias=True, attn_out_bias=True, mlp_bias=not attn_only, unembed_bias=True,
        )
    except ValueError as err:
        raise TransformerLensError(f"the config maps to no model here: {err}") from None
    return _Plan(config=config, normalization=norm, attn_only=attn_only, grouped=G is not None, q_scale=q_scale)


def config_from_transformer_lens(config, *, fold_attn_scale: bool = False) -> TransformerConfig:
    """Our :class:`TransformerConfig` for a ``HookedTransformerConfig`` (any form :func:`load_config` reads).

    Raises :class:`UnsupportedConfigError` for what this model does not compute and
    :class:`TransformerLensError` for impossible values; see the module docstring.
    """
    return _plan(load_config(config), fold_attn_scale=fold_attn_scale).config


# ----------------------------------------------------------------- weights
def load_state_dict(state_dict) -> dict[str, torch.Tensor]:
    """A TransformerLens state dict: a dict of tensors, a ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin``
    file read with ``torch.load(weights_only=True)`` (tensors and plain containers only; nothing else runs)."""
    if isinstance(state_dict, Mapping):
        out, where = dict(state_dict), "the state dict"
    elif isinstance(state_dict, (str, os.PathLike)):
        path, where = Path(state_dict), str(state_dict)
        _check_regular(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                _check_safetensors(path)  # truncated or not safetensors at all: refused before mapping
            except ValueError as err:
                raise TransformerLensError(str(err)) from None
            try:
                out = load_file(path)
            except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
                raise TransformerLensError(f"{path} cannot be read as safetensors ({_one_line(err)})") from None
        elif path.suffix in (".pt", ".pth", ".bin"):
            try:
                out = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise UnsafePickleError(f"{path} is not a plain state dict: torch.load(weights_only=True) refused it "
                                        f"({_one_line(err)[:300]}); save the model's state_dict() alone") from None
            except Exception as err:  # noqa: BLE001 (a truncated file raises EOFError, RuntimeError, ...)
                raise TransformerLensError(f"{path} cannot be read by torch.load ({type(err).__name__}: "
                                           f"{_one_line(err)[:300]}); re-save the state dict") from None
            if not isinstance(out, Mapping):
                raise TransformerLensError(f"{path} holds a {type(out).__name__}, not a state dict of tensors")
            out = dict(out)
        else:
            raise TransformerLensError(f"weights file {path} is neither .safetensors nor .pt/.pth/.bin")
    else:
        raise TransformerLensError(f"state_dict must be a dict of tensors or a .safetensors/.pt/.pth file, got "
                                   f"{type(state_dict).__name__}")
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TransformerLensError(f"{where}: entry {key!r} is a {type(value).__name__}; a state dict maps names "
                                       f"to tensors")
    return out


# Buffers a HookedTransformer's state dict holds that carry no weights (masks, -inf, rotary tables).
_BUFFER = re.compile(r"^blocks\.\d+\.attn\.(mask|IGNORE|rotary_sin|rotary_cos)$")


def _expected(plan: _Plan, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every weight this config needs, TransformerLens name -> shape."""
    cfg = plan.config
    D, H, G, E, Fh, V = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp, cfg.vocab_size
    want = {"embed.W_E": (V, D)}
    if cfg.positional == "learned":
        want["pos_embed.W_pos"] = (cfg.n_positions, D)
    norms = ["ln1"] + ([] if plan.attn_only else ["ln2"])
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        for ln in norms:
            if plan.normalization in ("LN", "RMS"):
                want[f"{p}{ln}.w"] = (D,)
            if plan.normalization == "LN":
                want[f"{p}{ln}.b"] = (D,)
        want[f"{p}attn.W_Q"], want[f"{p}attn.b_Q"] = (H, D, E), (H, E)
        for n in "KV":  # grouped: TransformerLens's _W_K; a plain W_K with G rows is read too
            name = f"{p}attn._W_{n}" if plan.grouped and f"{p}attn.W_{n}" not in state else f"{p}attn.W_{n}"
            bias = f"{p}attn._b_{n}" if plan.grouped and f"{p}attn.b_{n}" not in state else f"{p}attn.b_{n}"
            want[name], want[bias] = (G, D, E), (G, E)
        want[f"{p}attn.W_O"], want[f"{p}attn.b_O"] = (H, E, D), (D,)
        if not plan.attn_only:
            want[f"{p}mlp.W_in"], want[f"{p}mlp.b_in"] = (D, Fh), (Fh,)
            if cfg.gated_mlp:
                want[f"{p}mlp.W_gate"] = (D, Fh)
            want[f"{p}mlp.W_out"], want[f"{p}mlp.b_out"] = (Fh, D), (D,)
    if plan.normalization in ("LN", "RMS"):
        want["ln_final.w"] = (D,)
    if plan.normalization == "LN":
        want["ln_final.b"] = (D,)
    want["unembed.W_U"], want["unembed.b_U"] = (D, cfg.out_size), (cfg.out_size,)
    return want


def _first(names: Iterable[str], n: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _check_weights(plan: _Plan, state: Mapping[str, torch.Tensor], where: str) -> dict[str, tuple[int, ...]]:
    want = _expected(plan, state)
    missing = [k for k in want if k not in state]
    if missing:
        raise TransformerLensError(f"{where} has no {_first(missing)}, which the config needs; are the weights and "
                                   f"the config from the same model?")
    extra = [k for k in state if k not in want and not _BUFFER.match(k)]
    if extra:
        raise TransformerLensError(f"{where} has weights the config does not use: {_first(extra)}; are the weights "
                                   f"and the config from the same model (normalization_type, attn_only, gated_mlp, "
                                   f"n_key_value_heads, positional_embedding_type)?")
    for key, shape in want.items():
        value = state[key]
        if tuple(value.shape) != shape:
            raise TransformerLensError(f"{where}: {key} has shape {tuple(value.shape)}, but the config makes it "
                                       f"{shape}; are the weights and the config from the same model?")
        if not value.is_floating_point():
            raise TransformerLensError(f"{where}: {key} is {value.dtype}, not a floating-point tensor")
        if not bool(torch.isfinite(value).all()):
            raise TransformerLensError(f"{where}: {key} has NaN or infinite values; the weights are broken")
    if plan.config.gated_mlp:
        for l in range(plan.config.n_layers):
            b_in = state[f"blocks.{l}.mlp.b_in"]
            if bool(b_in.ne(0).any()):
                raise UnsupportedConfigError(
                    f"{where}: blocks.{l}.mlp.b_in is not zero (max |b_in| {b_in.abs().max().item():.3g}); "
                    f"TransformerLens adds a gated MLP's b_in after the gate, this model before it, so the two "
                    f"differ unless b_in is zero")
    return want


def from_transformer_lens(state_dict, config, *, dtype: torch.dtype = torch.float32,
                          fold_attn_scale: bool = False) -> Transformer:
    """Our :class:`Transformer` with a ``HookedTransformer``'s weights, in ``dtype``, frozen, in eval mode.

    ``state_dict``: what :func:`load_state_dict` reads; ``config``: what :func:`load_config`
    reads. Every weight the config needs must be present with its TransformerLens shape,
    finite, and nothing else may be (besides the attention masks and rotary tables
    TransformerLens keeps as buffers). ``fold_attn_scale``: see the module docstring.
    """
    _check_dtype(dtype)
    where = str(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "the state dict"
    cfg_dict = load_config(config)
    state = load_state_dict(state_dict)
    if cfg_dict.get("d_vocab", -1) == -1 and "embed.W_E" in state:  # TransformerLens fills it from the tokenizer
        cfg_dict["d_vocab"] = int(state["embed.W_E"].shape[0])
    try:
        plan = _plan(cfg_dict, fold_attn_scale=fold_attn_scale)
    except TransformerLensError as err:
        if isinstance(config, (str, os.PathLike)):
            raise type(err)(f"{config}: {err}") from None
        raise
    _check_weights(plan, state, where)
    cfg = plan.config
    with torch.device("meta"):  # allocate once, in the target dtype
        model = Transformer(cfg)
    model = model.to(dtype=dtype).to_empty(device="cpu")
    done: set[str] = set()

    def get(key: str) -> torch.Tensor:
        return state[key]

    with torch.no_grad():
        _copy(model.W_E, get("embed.W_E"), "W_E", done)
        if model.W_pos is not None:
            _copy(model.W_pos, get("pos_embed.W_pos"), "W_pos", done)
        for l, block in enumerate(model.blocks):
            p = f"blocks.{l}."
            for ours, theirs in ((block.ln1, "ln1"), (block.ln2, "ln2")):
                _copy_norm(ours, state, p + theirs, plan, f"{p}{theirs}", done)
            scale = plan.q_scale[l]
            W_Q, b_Q = get(p + "attn.W_Q").double(), get(p + "attn.b_Q").double()
            _copy(block.W_Q, W_Q * scale, p + "W_Q", done)
            _copy(block.b_Q, b_Q * scale, p + "b_Q", done)
            for n, W, B in (("K", block.W_K, block.b_K), ("V", block.W_V, block.b_V)):
                plain = p + f"attn.W_{n}" in state or not plan.grouped
                _copy(W, get(p + (f"attn.W_{n}" if plain else f"attn._W_{n}")), p + f"W_{n}", done)
                plain = p + f"attn.b_{n}" in state or not plan.grouped
                _copy(B, get(p + (f"attn.b_{n}" if plain else f"attn._b_{n}")), p + f"b_{n}", done)
            _copy(block.W_O, get(p + "attn.W_O"), p + "W_O", done)
            _copy(block.b_O, get(p + "attn.b_O"), p + "b_O", done)
            if plan.attn_only:  # an MLP that writes exactly zero (see the module docstring)
                for name in ("W_in", "W_out"):
                    _copy(getattr(block, name), torch.zeros_like(getattr(block, name)), p + name, done)
                continue
            for name in ("W_in", "b_in", "W_out", "b_out") + (("W_gate",) if cfg.gated_mlp else ()):
                _copy(getattr(block, name), get(f"{p}mlp.{name}"), p + name, done)
        _copy_norm(model.ln_f, state, "ln_final", plan, "ln_f", done)
        _copy(model.W_U, get("unembed.W_U"), "W_U", done)
        _copy(model.b_U, get("unembed.b_U"), "b_U", done)
    missing = {name for name, _ in model.named_parameters()} - done
    if missing:  # to_empty leaves garbage: a missed weight must not pass silently
        raise RuntimeError(f"conversion left parameters unset: {sorted(missing)}")
    return model.requires_grad_(False).eval()


def _copy_norm(norm, state, theirs: str, plan: _Plan, ours: str, done: set) -> None:
    """ln1/ln2/ln_final: the file's gain and bias (LN, RMS), or gain 1 and bias 0 (LNPre, RMSPre)."""
    if norm.kind == "none":
        return
    weight = state[theirs + ".w"] if plan.normalization in ("LN", "RMS") else torch.ones_like(norm.weight)
    _copy(norm.weight, weight, ours + ".weight", done)
    if norm.kind == "layernorm":
        bias = state[theirs + ".b"] if plan.normalization == "LN" else torch.zeros_like(norm.bias)
        _copy(norm.bias, bias, ours + ".bias", done)


def to_transformer_lens(model: Transformer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Our model as a TransformerLens state dict and ``HookedTransformerConfig`` fields (``HookedTransformer(cfg)``
    then ``load_state_dict(state)`` runs it in TransformerLens; :func:`from_transformer_lens` reads both back).

    Absent biases are written as zeros and norms as ``LN``/``RMS`` with their gains.
    A gated MLP with a non-zero ``b_in`` has no TransformerLens counterpart (see the
    module docstring) and is refused.
    """
    cfg = model.cfg
    if cfg.gated_mlp and any(b.b_in is not None and bool(b.b_in.ne(0).any()) for b in model.blocks):
        raise UnsupportedConfigError("a gated MLP with a non-zero b_in has no TransformerLens counterpart "
                                     "(TransformerLens adds b_in after the gate)")
    act = {"relu": "relu", "gelu": "gelu", "silu": "silu", "gelu_tanh": "gelu_new"}[cfg.activation]
    norm = {"none": None, "layernorm": "LN", "rmsnorm": "RMS"}[cfg.norm]
    tl = {
        "d_model": cfg.d_model, "d_head": cfg.d_head, "n_layers": cfg.n_layers, "n_ctx": cfg.n_positions,
        "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "d_vocab": cfg.vocab_size, "d_vocab_out": cfg.out_size,
        "act_fn": act, "eps": cfg.norm_eps, "normalization_type": norm, "gated_mlp": cfg.gated_mlp,
        "attention_dir": "causal" if cfg.causal else "bidirectional",
        "positional_embedding_type": "rotary" if cfg.positional == "rotary" else "standard",
        "n_key_value_heads": cfg.n_kv_heads if cfg.kv_heads != cfg.n_heads else None,
    }
    if cfg.positional == "rotary":
        tl.update(rotary_dim=cfg.d_head, rotary_base=cfg.rope_theta)
    grouped = tl["n_key_value_heads"] is not None

    def t(x: torch.Tensor | None, *shape: int) -> torch.Tensor:  # a copy; zeros for an absent bias
        return torch.zeros(shape, dtype=model.W_E.dtype) if x is None else x.detach().cpu().clone()

    D, H, G, E, Fh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    sd = {"embed.W_E": t(model.W_E)}
    if model.W_pos is not None:
        sd["pos_embed.W_pos"] = t(model.W_pos)
    kv = "attn._" if grouped else "attn."  # TransformerLens's grouped-query names
    for l, b in enumerate(model.blocks):
        p = f"blocks.{l}."
        for ours, theirs in ((b.ln1, "ln1"), (b.ln2, "ln2")):
            if ours.kind != "none":
                sd[f"{p}{theirs}.w"] = t(ours.weight)
            if ours.kind == "layernorm":
                sd[f"{p}{theirs}.b"] = t(ours.bias)
        sd[p + "attn.W_Q"], sd[p + "attn.b_Q"] = t(b.W_Q), t(b.b_Q, H, E)
        sd[p + kv + "W_K"], sd[p + kv + "b_K"] = t(b.W_K), t(b.b_K, G, E)
        sd[p + kv + "W_V"], sd[p + kv + "b_V"] = t(b.W_V), t(b.b_V, G, E)
        sd[p + "attn.W_O"], sd[p + "attn.b_O"] = t(b.W_O), t(b.b_O, D)
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = t(b.W_in), t(b.b_in, Fh)
        if cfg.gated_mlp:
            sd[p + "mlp.W_gate"] = t(b.W_gate)
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = t(b.W_out), t(b.b_out, D)
    if model.ln_f.kind != "none":
        sd["ln_final.w"] = t(model.ln_f.weight)
    if model.ln_f.kind == "layernorm":
        sd["ln_final.b"] = t(model.ln_f.bias)
    sd["unembed.W_U"], sd["unembed.b_U"] = t(model.W_U), t(model.b_U, cfg.out_size)
    return sd, tl


# -------------------------------------------------------------- InterpBench
def load_interpbench_edges(path: PathLike) -> list[tuple[str, str]]:
    """InterpBench's ``edges.pkl``: a list of ``(source, destination)`` hook-name pairs, read with an unpickler
    that admits no callable at all (the file's lists, tuples and strings need none)."""
    path = Path(path)
    fix = ("InterpBench's current edge files are lists of (source, destination) string pairs; download the case "
           "again from huggingface.co/cybershiptrooper/InterpBench")
    edges = _unpickle(path, what="an InterpBench edge list", lookup=lambda m, n: _PLAIN.get((m, n)), fix=fix)
    return _edge_pairs(edges, str(path))


def _edge_pairs(edges, where: str) -> list[tuple[str, str]]:
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
        raise InterpBenchError(f"{where} is a {type(edges).__name__}, not a list of (source, destination) pairs")
    out = []
    for i, edge in enumerate(edges):
        if not (isinstance(edge, (tuple, list)) and len(edge) == 2 and all(isinstance(e, str) for e in edge)):
            raise InterpBenchError(f"{where}: edge {i} is {edge!r:.80}, not a (source, destination) pair of hook names")
        out.append((edge[0], edge[1]))
    return out


_NODE = re.compile(r"^(?:blocks\.(\d+)\.)?([A-Za-z_.]+?)(?:\[(\d+)\])?$")
# Hook name (after "blocks.{l}.") -> node kind; a head's hooks carry its index in brackets.
_KINDS = {
    "hook_embed": "embed", "hook_pos_embed": "embed", "hook_resid_pre": "resid_pre",
    "hook_q_input": "q_input", "hook_k_input": "k_input", "hook_v_input": "v_input",
    "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v", "attn.hook_result": "result",
    "hook_mlp_in": "mlp_in", "hook_mlp_out": "mlp_out", "hook_resid_post": "resid_post",
}
_HEAD_KINDS = {"q_input", "k_input", "v_input", "q", "k", "v", "result"}


@dataclasses.dataclass(frozen=True)
class _Node:
    kind: str
    layer: int | None
    head: int | None


def _parse_node(name: str, edge, graph: Graph) -> _Node:
    m = _NODE.match(name)
    kind = _KINDS.get(m.group(2)) if m else None
    layer = int(m.group(1)) if m and m.group(1) is not None else None
    head = int(m.group(3)) if m and m.group(3) is not None else None
    blockless = kind == "embed"
    if (kind is None or blockless != (layer is None) or (kind in _HEAD_KINDS) != (head is not None)
            or (kind == "resid_pre" and layer != 0)):
        raise InterpBenchError(
            f"InterpBench edge {edge!r}: node {name!r} has no counterpart in this graph (known: hook_embed, "
            f"hook_pos_embed, blocks.0.hook_resid_pre, blocks.L.hook_q|k|v_input[H], blocks.L.attn.hook_q|k|v[H], "
            f"blocks.L.attn.hook_result[H], blocks.L.hook_mlp_in, blocks.L.hook_mlp_out, blocks.L.hook_resid_post)")
    if layer is not None and layer >= graph.n_layers or head is not None and head >= graph.n_heads:
        raise InterpBenchError(f"InterpBench edge {edge!r}: node {name!r} is outside this {graph.n_layers}-layer, "
                               f"{graph.n_heads}-head model")
    return _Node("embed" if kind == "resid_pre" else kind, layer, head)


def _writer(node: _Node) -> str | None:
    if node.kind == "embed":
        return "input"  # token and position embeddings are one writer here
    if node.kind == "result":
        return f"a{node.layer}.h{node.head}"
    if node.kind == "mlp_out":
        return f"m{node.layer}"
    return None


def _internal(src: _Node, dst: _Node) -> bool:
    """An edge inside one of our nodes (a head's input to its q/k/v or result; an MLP's input to its output)."""
    if src.layer != dst.layer or src.head != dst.head:
        return False
    port = src.kind[0]
    return ((src.kind in ("q_input", "k_input", "v_input") and dst.kind in (port, "result"))
            or (src.kind in ("q", "k", "v") and dst.kind == "result")
            or (src.kind == "mlp_in" and dst.kind == "mlp_out"))


def interpbench_circuit(edges, graph: Graph, *, node_level: bool = False, model: str = "", d_model: int = 0,
                        ablation: str = "", metadata: dict | None = None) -> Circuit:
    """InterpBench ground-truth edges as a :class:`Circuit` of ``graph`` (EAP-IG names).

    ``edges``: ``(source, destination)`` pairs of TransformerLens hook names, as in
    ``edges.pkl`` (:func:`load_interpbench_edges`). Sources: ``hook_embed``,
    ``hook_pos_embed`` and ``blocks.0.hook_resid_pre`` are ``input`` (our one embedding
    writer, so an edge from the token and one from the position embedding become one
    edge); ``blocks.{l}.attn.hook_result[h]`` is ``a{l}.h{h}``; ``blocks.{l}.hook_mlp_out``
    is ``m{l}``. Destinations: ``blocks.{l}.hook_q_input[h]`` is ``a{l}.h{h}<q>`` (``k``,
    ``v`` alike), ``blocks.{l}.hook_mlp_in`` is ``m{l}``, and the last layer's
    ``hook_resid_post`` is ``logits``. Edges inside one of our nodes
    (``hook_q_input[h] -> attn.hook_q[h]``, ``attn.hook_q[h] -> attn.hook_result[h]``,
    ``hook_mlp_in -> hook_mlp_out``) are dropped. An edge into a head's or MLP's
    *output* (``attn.hook_result[h]``, ``hook_mlp_out``: InterpBench's IOI ground truth
    is written so) names no input port: with ``node_level=True`` it stands for edges into
    every input of that node (the head's q, k and v), otherwise it is refused. Any
    other edge, or one our graph does not have (a reader of an earlier layer, an earlier
    layer's ``hook_resid_post``), raises :class:`InterpBenchError` naming it.

    ``ablation`` is ``""`` by default: InterpBench's circuit is the one its models were
    trained to implement, not a functional ground truth under an ablation.
    """
    pairs = _edge_pairs(edges, "the edge list")
    found: set[str] = set()
    for edge in pairs:
        src, dst = (_parse_node(name, edge, graph) for name in edge)
        if _internal(src, dst):
            continue
        writer = _writer(src)
        if writer is None:
            raise InterpBenchError(f"InterpBench edge {edge!r} leaves {edge[0]!r}, which writes nothing to the "
                                   f"residual stream outside its own node: it has no counterpart in this graph")
        if dst.kind in ("q_input", "k_input", "v_input"):
            readers = [f"a{dst.layer}.h{dst.head}<{dst.kind[0]}>"]
        elif dst.kind == "mlp_in":
            readers = [f"m{dst.layer}"]
        elif dst.kind == "resid_post":
            if dst.layer != graph.n_layers - 1:
                raise InterpBenchError(
                    f"InterpBench edge {edge!r}: only the last layer's hook_resid_post "
                    f"(blocks.{graph.n_layers - 1}.hook_resid_post) is the output here (logits); "
                    f"blocks.{dst.layer}.hook_resid_post has no counterpart")
            readers = ["logits"]
        elif dst.kind in ("result", "mlp_out"):
            if not node_level:
                raise InterpBenchError(
                    f"InterpBench edge {edge!r} enters {edge[1]!r}, a node's output, and names no input port "
                    f"(query, key, value or MLP input); pass node_level=True to read it as an edge into every input "
                    f"of that node")
            readers = ([f"a{dst.layer}.h{dst.head}<{p}>" for p in "qkv"] if dst.kind == "result"
                       else [f"m{dst.layer}"])
        else:  # into a head's q/k/v projection from outside, or into an embedding
            raise InterpBenchError(f"InterpBench edge {edge!r} enters {edge[1]!r}, which reads nothing from "
                                   f"{edge[0]!r} here: it has no counterpart in this graph")
        for reader in readers:
            name = f"{writer}->{reader}"
            try:
                graph.edge_position(name)
            except KeyError:
                raise InterpBenchError(f"InterpBench edge {edge!r} would be {name!r}, which this graph does not have "
                                       f"(a reader only reads writers of earlier layers, an MLP also its own "
                                       f"layer's heads)") from None
            found.add(name)
    meta = {"source": "interpbench", "interpbench_edges": [list(e) for e in pairs], "node_level": node_level,
            **(metadata or {})}
    return Circuit(graph=graph, edges=tuple(found), ablation=ablation, model=model, d_model=d_model,
                   method="interpbench", metadata=meta)


def _case_file(folder: Path, stem: str, suffixes: tuple[str, ...], weights: str | None, *, required: bool):
    """``{stem}_{weights}.{suffix}`` (training's names) or ``{stem}.{suffix}`` (the hub's) in a case folder."""
    stems = ([f"{stem}_{weights}"] if weights is not None else []) + [stem]
    names = [f"{st}{s}" for st in stems for s in suffixes]
    for name in names:
        if (folder / name).exists():
            return folder / name
    if required:
        raise InterpBenchError(f"{folder} has no {' or '.join(names)}; is it an InterpBench case folder?")
    return None


def load_interpbench(folder: PathLike, *, dtype: torch.dtype = torch.float32, weights: str | None = None,
                     node_level: bool = False, fold_attn_scale: bool = False) -> tuple[Transformer, Circuit]:
    """An InterpBench case folder (layout in the module docstring) as our model and its ground-truth circuit.

    ``weights``: which ``ll_model_<weights>.pth`` to read where a folder has
    training's suffixed names (found by itself when there is exactly one);
    ``node_level``: see :func:`interpbench_circuit`; ``fold_attn_scale``: see
    :func:`from_transformer_lens`.
    """
    _check_dtype(dtype)
    folder = Path(folder)
    if not folder.is_dir():
        raise InterpBenchError(f"no InterpBench case folder at {folder}")
    if weights is None and not (folder / "ll_model.pth").exists():
        found = sorted(p.name[len("ll_model_"):-len(".pth")] for p in folder.glob("ll_model_*.pth"))
        if len(found) > 1:
            raise InterpBenchError(f"{folder} has several models ({', '.join(f'll_model_{w}.pth' for w in found)}); "
                                   f"choose one with weights=")
        weights = found[0] if found else None
    model_file = _case_file(folder, "ll_model", (".pth",), weights, required=True)
    config_file = _case_file(folder, "ll_model_cfg", (".pkl", ".json"), weights, required=True)
    edges_file = _case_file(folder, "edges", (".pkl",), None, required=True)
    meta_file = _case_file(folder, "meta", (".json",), weights, required=False)
    model = from_transformer_lens(model_file, config_file, dtype=dtype, fold_attn_scale=fold_attn_scale)
    metadata: dict[str, Any] = {"folder": str(folder), "files": [p.name for p in (model_file, config_file, edges_file)]}
    if meta_file is not None:
        try:
            metadata["meta"] = json.loads(_read_bytes(meta_file))
        except (ValueError, UnicodeDecodeError) as err:
            raise InterpBenchError(f"{meta_file} is not JSON ({_one_line(err)})") from None
    edges = load_interpbench_edges(edges_file)
    try:
        circuit = interpbench_circuit(edges, model.graph, node_level=node_level, model=f"interpbench:{folder.name}",
                                      d_model=model.cfg.d_model, metadata=metadata)
    except InterpBenchError as err:
        raise InterpBenchError(f"{edges_file}: {err}") from None
    return model, circuit

