"""Hugging Face GPT-2 and Llama checkpoints converted by :mod:`prune.loaders`.

No weights can be downloaded here, so every model is a tiny random one saved
with ``save_pretrained`` into a temporary folder and loaded back through
``from_hf(path)``: the real path (folder -> AutoModelForCausalLM -> conversion).
Weights are drawn with std 0.3 rather than HF's 0.02 so that norms, attention
patterns and the MLP nonlinearity all matter to the logits.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from prune import loaders
from prune.loaders import check_memory, estimate_bytes, estimate_params, from_hf

# fp32: converted and HF logits differ only by the order of float32 additions
# (we sum heads one by one, HF multiplies one fused matrix). Measured max |diff|
# over 200 random batches per config: 1.6e-5 on logits of magnitude up to ~10,
# i.e. some 16 float32 ulps. 1e-4 leaves a 6x margin and still catches any real
# mapping error (a wrong transpose or head order moves logits by O(1)).
FP32_ATOL = 1e-4

# bf16 (8 mantissa bits, relative step 2^-8 = 0.4%): both models round every
# intermediate, in different orders, so neither is "right"; HF's own bf16 logits
# are off its fp32 ones by up to ~0.5 here. Measured over 200 random batches per
# config, ours (bf16) vs HF (bf16): max |diff| 0.30, mean |diff| 0.027; our mean
# error against the fp32 reference at most 2.4x HF's own. Bounds: max 1.0,
# mean 0.08, and mean error at most 3x HF's (+0.01 for near-zero denominators).
BF16_MAX_ATOL = 1.0
BF16_MEAN_ATOL = 0.08

VOCAB = 61

# name -> HF config. Shapes cover multi-head, grouped-query (4 query / 2 kv
# heads), multi-query (1 kv head), an explicit head_dim != hidden/heads,
# attention biases, tied and untied unembeddings.
CONFIGS = {
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
    ),
    "gpt2-untied-3l": lambda: GPT2Config(
        vocab_size=VOCAB, n_positions=24, n_embd=24, n_layer=3, n_head=2, n_inner=40,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    ),
    "llama-gqa": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0,
        bos_token_id=0, eos_token_id=0,
    ),
    "llama-mqa-headdim": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=12, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0,
    ),
    "llama-bias-tied": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        attention_bias=True, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    ),
}


def _hf_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    model = (GPT2LMHeadModel if config.model_type == "gpt2" else LlamaForCausalLM)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        # Norm gains near 1, as in trained models (random gains would only add noise).
        for n, p in model.named_parameters():
            if "ln_" in n or "norm" in n:
                p.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> folder holding a saved tiny random checkpoint."""
    out = {}
    for name in CONFIGS:
        path = tmp_path_factory.mktemp(name)
        _hf_model(name).save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """name -> (HF model fp32, converted fp32, HF bf16, converted bf16), all from the folder."""
    out = {}
    for name, path in checkpoints.items():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        hf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        out[name] = (hf, from_hf(path), hf16, from_hf(path, dtype=torch.bfloat16))
    return out


@st.composite
def batches(draw):
    """Random ids [B, S] and a right-padded valid mask (every row has >= 1 real token)."""
    B, S = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (B, S), generator=g)
    lengths = torch.tensor([draw(st.integers(1, S)) for _ in range(B)])
    valid = torch.arange(S)[None, :] < lengths[:, None]
    return tokens, valid


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), batch=batches())
def test_fp32_logits_equal_hf_and_masked_model(loaded, name, batch):
    hf, ours, _, _ = loaded[name]
    tokens, valid = batch
    with torch.no_grad():
        want = hf(tokens, attention_mask=valid.long()).logits
        plain = ours(tokens, attention_mask=valid)
        masked = ours(tokens, attention_mask=valid, edge_mask=torch.ones(ours.graph.n_edges))
    # Padding positions are free to differ (HF and we mask padded keys differently
    # for them); real positions must agree.
    torch.testing.assert_close(plain[valid], want[valid], atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(masked[valid], want[valid], atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(masked[valid], plain[valid], atol=FP32_ATOL, rtol=0)


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), batch=batches())
def test_bf16_logits_close_to_hf_bf16(loaded, name, batch):
    hf, _, hf16, ours16 = loaded[name]
    tokens, valid = batch
    with torch.no_grad():
        ref = hf(tokens, attention_mask=valid.long()).logits[valid]
        theirs = hf16(tokens, attention_mask=valid.long()).logits[valid].float()
        mine = ours16(tokens, attention_mask=valid)[valid].float()
    assert (mine - theirs).abs().max() <= BF16_MAX_ATOL
    assert (mine - theirs).abs().mean() <= BF16_MEAN_ATOL
    assert (mine - ref).abs().mean() <= 3 * (theirs - ref).abs().mean() + 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_of_parameters_is_as_asked(checkpoints, dtype):
    model = from_hf(checkpoints["llama-gqa"], dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert not any(p.requires_grad for p in model.parameters())
    tokens = torch.randint(0, VOCAB, (2, 5))
    out = model(tokens)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_loaded_model_object_converts_like_its_folder(checkpoints, loaded):
    hf, from_path, _, _ = loaded["gpt2"]
    from_object = from_hf(hf)
    for (n, a), (_, b) in zip(from_path.named_parameters(), from_object.named_parameters()):
        assert torch.equal(a, b), n


def test_config_mapping():
    gqa = loaders.transformer_config(CONFIGS["llama-gqa"]())
    assert (gqa.n_heads, gqa.kv_heads, gqa.d_head, gqa.rope_theta) == (4, 2, 8, 500.0)
    assert gqa.positional == "rotary" and gqa.gated_mlp and gqa.norm == "rmsnorm"
    assert not (gqa.attn_bias or gqa.mlp_bias or gqa.unembed_bias)
    assert loaders.transformer_config(CONFIGS["llama-mqa-headdim"]()).d_head == 12
    gpt2 = loaders.transformer_config(GPT2Config())  # GPT-2 small's shape
    assert (gpt2.n_layers, gpt2.n_heads, gpt2.d_head, gpt2.d_mlp, gpt2.activation) == (12, 12, 64, 3072, "gelu_tanh")
    # GPT-2 small: 124,439,808 parameters in HF (tied); ours keep W_U apart (+V*D).
    assert estimate_params(GPT2Config()) == 124_439_808 + 50257 * 768


def test_estimate_matches_converted_parameter_count(loaded):
    for name, (_, ours, _, _) in loaded.items():
        assert estimate_params(CONFIGS[name]()) == sum(p.numel() for p in ours.parameters()), name
        assert estimate_bytes(CONFIGS[name](), torch.bfloat16) == 2 * estimate_params(CONFIGS[name]())


# ------------------------------------------------------------------ errors
def test_unknown_model_type_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'bert'.*gpt2, llama"):
        from_hf(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        from_hf(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf(tmp_path)  # exists, but is not a checkpoint


@pytest.mark.parametrize(
    "config, option",
    [
        (GPT2Config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (GPT2Config(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
        (GPT2Config(scale_attn_weights=False), "scale_attn_weights"),
        (GPT2Config(activation_function="gelu_fast"), "gelu_fast"),
        (LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}), "linear"),
        (LlamaConfig(mlp_bias=True), "mlp_bias"),
        (LlamaConfig(hidden_act="gelu"), "hidden_act"),
    ],
)
def test_unsupported_options_are_named(tmp_path, config, option):
    config.save_pretrained(tmp_path)  # config only: the check must come before any weights
    with pytest.raises(NotImplementedError, match=option):
        from_hf(tmp_path)


def test_too_large_model_is_refused_before_loading_weights(tmp_path, monkeypatch):
    # A Llama-2-70B-shaped config with no weights at all: if from_hf tried to
    # load weights it would fail with a missing-file error, not MemoryError.
    LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8,
    ).save_pretrained(tmp_path)
    need = estimate_bytes(tmp_path, torch.bfloat16)
    assert 130e9 < need < 140e9  # ~69B parameters, 2 bytes each

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the memory check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(MemoryError, match=r"needs about \d+\.\d GiB .* only \d+\.\d GiB is available"):
        from_hf(tmp_path, dtype=torch.bfloat16)
    # The check itself, with a stated amount of memory.
    with pytest.raises(MemoryError):
        check_memory(tmp_path, torch.float32, available=2 * need - 1)
    assert check_memory(tmp_path, torch.bfloat16, available=2 * need) == 2 * need


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        from_hf(_hf_model("gpt2"), dtype=torch.int8)
    with pytest.raises(TypeError, match="int"):
        from_hf(3)
