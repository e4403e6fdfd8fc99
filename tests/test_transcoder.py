"""prune.transcoder: shapes, training, circuit-tracer's file layout, the replacement model, matching."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import artifact, random_model
from prune.model import TransformerConfig
from prune.transcoder import (
    Transcoder,
    TranscoderConfig,
    TranscoderFileError,
    fit_transcoder,
    load_transcoder,
    load_transcoders,
    match_features,
    mlp_activations,
    replace_mlps,
    replacement_faithfulness,
    save_transcoders,
    train_transcoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=300, batch=256, progress=False)


def small_model(seed=0, norm="layernorm"):
    cfg = TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=6, n_positions=5,
                            norm=norm)
    return random_model(cfg, seed).float()


def random_transcoder(D=8, T=12, layer=1, seed=0, activation="relu", k=None):
    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_model=D, d_transcoder=T, layer=layer, activation=activation, k=k))
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_()
    return tc.requires_grad_(False)


# ------------------------------------------------------------------ module
def test_shapes_and_activations():
    tc = random_transcoder()
    x = torch.randn(3, 4, 8)
    assert tc.encode(x).shape == (3, 4, 12) and tc(x).shape == (3, 4, 8)
    assert bool((tc.encode(x) >= 0).all())
    top = random_transcoder(activation="topk", k=2)
    assert bool(((top.encode(x) > 0).sum(-1) <= 2).all())
    jump = random_transcoder(activation="jumprelu")
    pre = jump.pre_activations(x)
    assert torch.equal(jump.encode(x), pre * (pre > jump.threshold))


@pytest.mark.parametrize("kw, match", [
    (dict(d_transcoder=0), "d_transcoder must be a positive int, got 0"),
    (dict(layer=-1), "layer must be a non-negative int, got -1"),
    (dict(activation="gelu"), "activation='gelu'"),
    (dict(activation="topk", k=13), "k=13"),
    (dict(k=3), "k=3 is only for activation='topk'"),
])
def test_config_refusals(kw, match):
    base = dict(d_model=8, d_transcoder=12, layer=0)
    with pytest.raises(ValueError, match=match):
        TranscoderConfig(**{**base, **kw})


def test_mlp_activations_are_the_mlps_own():
    model = small_model()
    tokens = torch.randint(0, 11, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    x, y = mlp_activations(model, 1, tokens, mask)
    assert x.shape == (13, 8) and y.shape == (13, 8)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert torch.allclose(y, cache["m1"][mask], atol=1e-6)  # the MLP writer's output at the valid positions
    with pytest.raises(ValueError, match=r"MLP layer 2 is out of range: this model's MLP layers are 0\.\.1"):
        mlp_activations(model, 2, tokens)


# ---------------------------------------------------------------- training
def test_training_reduces_loss_and_is_deterministic():
    model = small_model()
    tokens = torch.randint(0, 11, (64, 5))
    a = train_transcoder(model, 0, tokens, expansion=2.0, seed=3, **FAST)
    b = train_transcoder(model, 0, tokens, expansion=2.0, seed=3, **FAST)
    c = train_transcoder(model, 0, tokens, expansion=2.0, seed=4, **FAST)
    assert a.cfg.d_transcoder == 12 and a.layer == 0
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name  # bit for bit
    assert not torch.equal(a.W_enc, c.W_enc)
    assert a.log.history[-1] < 0.5 * a.log.history[0]
    assert a.log.nmse < 0.5


def test_nan_names_the_step():
    # Finite activations; a learning rate that makes the weights overflow after the first step.
    x = torch.randn(50, 4)
    with pytest.raises(FloatingPointError, match=r"transcoder loss is (nan|inf) at step [0-4] of 5 \(layer 0, lr 1e\+38"):
        fit_transcoder(x, x * 1e20, layer=0, d_transcoder=4, steps=5, progress=False, l1=0.0, lr=1e38,
                       weight_decay=0.0)


def test_training_refuses_nan_inputs():
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_transcoder(x, x, layer=0, d_transcoder=4, progress=False)


def test_training_recovers_a_compiled_one_to_one_map():
    """reverse's layer-2 MLP maps each opp_idx value to opp_idx - 1 (one unit per value): a trained
    transcoder (the default recipe) finds all five units, encoders included (measured: 5 of 5; the first
    recipe, L1 with a constant lr from sampled inputs, found 3)."""
    art = artifact("reverse")
    x, y = mlp_activations(art.model, 2, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=2, d_transcoder=20, steps=1500, progress=False)
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[2], 2), x)
    assert len(m.evaluable) == 5
    assert len(m.functional) == 5  # decoder cosine and activation correlation >= 0.9
    assert len(m.recovered) == 5
    assert tc.log.nmse < 1e-6


# ------------------------------------------------------------------ files
def test_round_trip_in_circuit_tracers_layout(tmp_path):
    model = small_model()
    tcs = {0: random_transcoder(layer=0), 1: random_transcoder(layer=1, activation="jumprelu", seed=1)}
    folder = save_transcoders(tmp_path / "set", tcs, model=model, model_name="tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "layer_0.safetensors", "layer_1.safetensors"]
    config = json.loads((folder / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    # circuit-tracer's SingleLayerTranscoder: W_enc [T, D] (F.linear), W_dec [T, D], b_enc [T], b_dec [D],
    # and activation_function.threshold [T] for JumpReLU (its load_relu_transcoder reads exactly these keys)
    t0, t1 = load_file(folder / "layer_0.safetensors"), load_file(folder / "layer_1.safetensors")
    assert {k: tuple(v.shape) for k, v in t0.items()} == {"W_enc": (12, 8), "W_dec": (12, 8), "b_enc": (12,),
                                                           "b_dec": (8,)}
    assert tuple(t1["activation_function.threshold"].shape) == (12,)
    x = torch.randn(5, 8)
    assert torch.equal(torch.relu(torch.nn.functional.linear(x, t0["W_enc"], t0["b_enc"])) @ t0["W_dec"]
                       + t0["b_dec"], tcs[0](x))
    back = load_transcoders(folder, model=model)
    for layer, tc in tcs.items():
        assert back[layer].cfg == tc.cfg
        for name, p in tc.state_dict().items():
            assert torch.equal(p, back[layer].state_dict()[name])


def test_loads_a_set_circuit_tracer_wrote(tmp_path):
    """Its cache layout: a YAML config without our fields, the sizes read off the tensors."""
    pytest.importorskip("yaml")
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "config.yaml").write_text("feature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n"
                                        "model_kind: transcoder_set\nscan: x\n")
    tc = random_transcoder(layer=0)
    save_file({"W_enc": tc.W_enc.T.contiguous(), "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec},
              str(folder / "layer_0.safetensors"))
    back = load_transcoder(folder, 0)
    assert back.cfg == tc.cfg and torch.equal(back.W_enc, tc.W_enc)


def _saved(tmp_path, **kw):
    return save_transcoders(tmp_path / "set", {1: random_transcoder(layer=1, **kw)})


def test_refusals(tmp_path):
    model = small_model()
    folder = _saved(tmp_path)
    f = folder / "layer_1.safetensors"
    with pytest.raises(TranscoderFileError, match=r"has no transcoder for layer 0; it has layers \[1\]"):
        load_transcoder(folder, 0)
    wide = small_model()
    object.__setattr__(wide, "cfg", TransformerConfig(**{**model.cfg.to_dict(), "d_model": 16}))
    with pytest.raises(TranscoderFileError, match="width d_model=8, this model's is 16"):
        load_transcoder(folder, 1, model=wide)
    with pytest.raises(ValueError, match="MLP layer 5 is out of range"):
        load_transcoder(folder, 5, model=model)
    t = load_file(f)
    save_file({k: v for k, v in t.items() if k != "W_dec"}, str(f))
    with pytest.raises(TranscoderFileError, match="has no tensor 'W_dec'"):
        load_transcoder(folder, 1)
    save_file({**t, "W_dec": torch.zeros(12, 7)}, str(f))
    with pytest.raises(TranscoderFileError, match=r"tensor W_dec is \[12, 7\], expected \[12, 8\]"):
        load_transcoder(folder, 1)
    f.write_bytes(b"not safetensors")
    with pytest.raises(TranscoderFileError, match="not a readable safetensors file"):
        load_transcoder(folder, 1)
    (folder / "config.yaml").write_text("{ not: [json")
    with pytest.raises(TranscoderFileError, match="config.yaml does not parse"):
        load_transcoder(folder, 1)
    (folder / "config.yaml").unlink()
    with pytest.raises(TranscoderFileError, match="config.yaml is missing"):
        load_transcoders(folder)


def test_refuses_a_file_of_another_layer(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.yaml").read_text())
    config["layers"]["1"]["layer"] = 0
    (folder / "config.yaml").write_text(json.dumps(config))
    with pytest.raises(TranscoderFileError, match="holds the transcoder of layer 0 by its config, not 1"):
        load_transcoder(folder, 1)


def test_saving_is_atomic(tmp_path, monkeypatch):
    import prune.transcoder as mod

    folder = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        mod.save_transcoders(folder, {1: random_transcoder(layer=1, seed=5)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old set, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folder left
    with pytest.raises(ValueError, match=r"transcoders\[0\] must be a Transcoder for layer 0, got 1"):
        save_transcoders(tmp_path / "other", {0: random_transcoder(layer=1)})
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------ replacement model
def test_error_terms_make_the_replacement_exact():
    model = small_model()
    tokens = torch.randint(0, 11, (16, 5))
    tcs = {0: random_transcoder(layer=0), 1: random_transcoder(layer=1, seed=2)}
    with torch.no_grad():
        full = model(tokens)
        kept = replace_mlps(model, tcs, keep_error=True)(tokens)
        dropped = replace_mlps(model, tcs)(tokens)
        masked = replace_mlps(model, tcs, keep_error=True)(tokens, edge_mask=torch.ones(model.graph.n_edges))
    assert (kept - full).abs().max().item() <= 1e-5 * full.abs().max().item()  # rounding only: a + (b - a)
    assert torch.allclose(masked, kept, atol=1e-5)  # the masked mode runs it too
    assert not torch.allclose(dropped, full, atol=1e-2)
    assert torch.equal(model(tokens), full)  # the original is untouched
    with pytest.raises(ValueError, match=r"transcoders\[0\] is the transcoder of layer 1, not 0"):
        replace_mlps(model, {0: tcs[1]})


def test_the_ideal_transcoder_reproduces_a_compiled_program_exactly():
    art = artifact("sort")  # two MLP layers
    model, ex = art.model, art.examples
    ideal = {l: Transcoder.from_mlp(model.blocks[l], l) for l in range(model.cfg.n_layers)}
    replaced = replace_mlps(model, ideal)
    with torch.no_grad():
        assert torch.equal(replaced(ex.clean, attention_mask=ex.valid), model(ex.clean, attention_mask=ex.valid))
    f = replacement_faithfulness(model, replaced, ex)
    assert f.agreement == 1.0 and f.max_abs_logit_diff == 0.0


def test_from_mlp_refuses_a_gated_mlp():
    cfg = TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_head=4, d_mlp=6, n_positions=3,
                            activation="silu", gated_mlp=True)
    with pytest.raises(ValueError, match="layer 0's MLP is gated silu, not a plain ReLU MLP"):
        Transcoder.from_mlp(random_model(cfg, 0).blocks[0], 0)


# ---------------------------------------------------------------- matching
def _inputs(tc, n=400, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, tc.cfg.d_model)


def test_a_permuted_rescaled_copy_is_fully_recovered():
    true = random_transcoder(D=32, T=10)
    perm = torch.randperm(10)
    scale = torch.rand(10) + 0.5
    copy = random_transcoder(D=32, T=10, seed=9)
    with torch.no_grad():
        copy.W_enc.copy_(true.W_enc[:, perm] * scale)
        copy.b_enc.copy_(true.b_enc[perm] * scale)
        copy.W_dec.copy_(true.W_dec[perm] / scale[:, None])
        copy.b_dec.copy_(true.b_dec)
    m = match_features(copy, true, _inputs(true))
    assert m.recovered == tuple(range(10)) and m.recovered_fraction == 1.0
    assert list(m.recovered_by) == torch.argsort(perm).tolist()
    assert m.split == () and m.merged == () and m.dead == ()


def _one_hot_world(T=6, D=32, n=600):
    """True features reading and writing orthogonal directions (bias -0.5); each input is one of them plus noise,
    so exactly one true feature fires on it."""
    true = random_transcoder(D=D, T=T)
    with torch.no_grad():
        true.W_enc.copy_(torch.eye(D)[:, :T])
        true.b_enc.fill_(-0.5)
        true.W_dec.copy_(torch.eye(D)[T : 2 * T] * 2)  # orthogonal decoders
    g = torch.Generator().manual_seed(0)
    which = torch.randint(0, T, (n,), generator=g)
    x = torch.eye(D)[which] * (1 + torch.rand(n, 1, generator=g)) + 0.01 * torch.randn(n, D, generator=g)
    return true, x


def test_merged_and_dead_features():
    true, x = _one_hot_world()
    trained = random_transcoder(D=32, T=6, seed=3)
    trained.load_state_dict(true.state_dict())
    with torch.no_grad():
        trained.W_enc[:, 0] = true.W_enc[:, 0] + true.W_enc[:, 1]  # feature 0: true features 0 and 1 summed
        trained.W_dec[0] = true.W_dec[0] + true.W_dec[1]
        trained.W_enc[:, 1] = 0  # feature 1: zeroed (feature 0 does its work)
        trained.b_enc[1] = 0
    m = match_features(trained, true, x)
    assert m.merged == (0,)
    assert m.dead == (1,)
    assert m.recovered == (2, 3, 4, 5) and m.evaluable == tuple(range(6))
    assert m.split == () and m.dense == ()


def test_split_features():
    true, x = _one_hot_world()
    trained = random_transcoder(D=32, T=7, seed=3)
    with torch.no_grad():
        trained.W_enc[:, :6] = true.W_enc
        trained.b_enc[:6] = true.b_enc
        trained.W_dec[:6] = true.W_dec
        # feature 6 copies true feature 2 but fires only on its stronger half: feature 2 is split over 2 and 6
        trained.W_enc[:, 6] = true.W_enc[:, 2]
        trained.b_enc[6] = -1.5
        trained.W_dec[6] = true.W_dec[2]
    m = match_features(trained, true, x)
    assert m.split == (2,) and m.recovered == tuple(range(6)) and m.merged == ()


def test_true_features_that_never_fire_are_apart():
    true = random_transcoder(D=16, T=4)
    with torch.no_grad():
        true.b_enc[2] = -1e6  # never fires on the inputs
        true.W_enc[:, 3] = 0
        true.b_enc[3] = 1.0  # fires with one value everywhere: a bias
    m = match_features(true, true, _inputs(true))
    assert m.never_fire == (2,) and m.constant == (3,)
    assert m.evaluable == (0, 1) and m.recovered == (0, 1)


def test_true_features_that_write_nothing_are_apart():
    """A hidden unit that fires and varies but has a zero decoder row writes nothing: no decoder cosine is
    defined for it, so not even the ideal transcoder recovers it from itself. Before `silent`, it counted as
    evaluable and unrecovered (the bug: on shuffle_dyck's layer 3, the compiled MLP matched against itself
    recovered 6 of 144 "evaluable" units; 138 are Tracr's breakpoint pairs where the output does not change)."""
    true = random_transcoder(D=16, T=4)
    with torch.no_grad():
        true.W_dec[1] = 0  # fires and varies, writes nothing
    m = match_features(true, true, _inputs(true))
    assert m.silent == (1,) and m.evaluable == (0, 2, 3)
    assert m.recovered == (0, 2, 3) and m.recovered_fraction == 1.0
    assert m.summary()["silent"] == 1


def test_the_compiled_mlp_recovers_itself():
    """Every evaluable unit of a compiled discretising MLP is recovered by the MLP itself; the silent ones
    (zero decoder rows) are listed apart."""
    art = artifact("shuffle_dyck")
    x, _ = mlp_activations(art.model, 3, art.examples.clean, art.examples.valid)
    ideal = Transcoder.from_mlp(art.model.blocks[3], 3)
    m = match_features(ideal, ideal, x)
    assert (len(m.evaluable), len(m.silent)) == (6, 138)
    assert m.recovered == m.evaluable
    assert all(float(ideal.W_dec[i].abs().sum()) == 0 for i in m.silent)


def _lookup_table(outputs: list[int], D_out: int = 3) -> tuple[Transcoder, torch.Tensor]:
    """A lookup table over one-hot inputs: unit v fires (with 1) on input value v and writes e_{outputs[v]}."""
    V = len(outputs)
    tc = Transcoder(TranscoderConfig(d_model=V + D_out, d_transcoder=V, layer=0))
    with torch.no_grad():
        tc.W_enc.zero_()
        tc.b_enc.zero_()
        tc.W_dec.zero_()
        tc.b_dec.zero_()
        for v, out in enumerate(outputs):
            tc.W_enc[v, v] = 1.0
            tc.W_dec[v, V + out] = 1.0
    x = torch.eye(V, V + D_out).repeat(5, 1)  # every value, five times
    return tc, x


def test_confounded_features_are_those_one_feature_computes_with_another():
    """Two input values that a lookup table maps to one output are computed exactly by one feature reading both
    (the inputs cannot tell it from the two): both are confounded, the third unit not. Moving one decoder off the
    shared direction, or an activation off the single ReLU, unconfounds them."""
    tc, x = _lookup_table([0, 0, 1])
    m = match_features(tc, tc, x)
    assert m.evaluable == (0, 1, 2) and m.recovered == (0, 1, 2)
    assert m.confounded == (0, 1)
    assert m.summary()["confounded"] == 2 and m.summary()["recovered_unconfounded"] == 1
    apart, _ = _lookup_table([0, 0, 1])
    with torch.no_grad():
        apart.W_dec[1, 3:] = torch.tensor([1.0, 0.01, 0.0])
    assert match_features(apart, apart, x).confounded == ()
    with torch.no_grad():  # unit 1 also fires (at 0.5) on value 0: the sum is no longer one ReLU of the summed inputs
        apart.W_dec[1, 3:] = torch.tensor([1.0, 0.0, 0.0])
        apart.W_enc[0, 1], apart.b_enc[0] = 0.5, 0.0
        apart.W_enc[1, 0] = -1.0
    assert match_features(apart, apart, x).confounded == ()


def test_selector_widths_bos_units_are_confounded():
    """length's SelectorWidth MLP: the BOS unit and the pair of the last breakpoint fire on the BOS position only,
    with proportional activations, so one feature computes the three; the other 8 units are told apart."""
    art = artifact("length")
    x, _ = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    ideal = Transcoder.from_mlp(art.model.blocks[0], 0)
    m = match_features(ideal, ideal, x)
    assert len(m.evaluable) == 11 and m.confounded == (0, 9, 10)
    assert m.summary()["recovered_unconfounded"] == 8


def test_distinct_inputs_recover_a_compiled_lookup_table():
    """sort's layer-0 MLP is a lookup table (one unit per distinct input, 15 of them): the "distinct"
    initialisation places one feature per distinct input as the output sees it, and every unit is recovered."""
    art = artifact("sort")
    x, y = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=0, d_transcoder=30, init="distinct", steps=200, progress=False)
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[0], 0), x)
    assert len(m.evaluable) == 15 and len(m.recovered) == 15
    assert tc.log.init == "distinct" and tc.log.nmse < 1e-6


def test_steps_recover_a_compiled_discretising_mlp():
    """length's layer-0 MLP (a SelectorWidth) discretises one numerical coordinate with pairs of steep ReLUs:
    the "steps" initialisation builds a pair at each change of the mean output between neighbouring values, from
    the data; 8 of the 11 evaluable units are recovered (the other pairs carry the BOS position) and the
    replacement model decodes every example."""
    art = artifact("length")
    x, y = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=0, d_transcoder=24, init="steps", steps=200, progress=False)
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[0], 0), x)
    assert len(m.evaluable) == 11 and len(m.recovered) == 8
    assert replacement_faithfulness(art.model, replace_mlps(art.model, {0: tc}), art.examples).agreement == 1.0


def test_steps_follow_every_numerical_mlp_of_a_layer():
    """is_majority's layer 0 holds two SelectorWidth MLPs side by side (hist and length), each discretising its own
    coordinate: the "steps" initialisation takes a second round along the coordinate that best explains what the
    first left, so its start reconstructs the layer (normalised MSE 7e-6; one round alone: 0.036 after training)
    and recovers 16 of its 21 evaluable units (one round: 8); the replacement model decodes every example."""
    art = artifact("is_majority")
    x, y = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=0, d_transcoder=46, init="steps", steps=200, progress=False)
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[0], 0), x)
    assert len(m.evaluable) == 21 and len(m.recovered) >= 16
    assert tc.log.nmse < 1e-4
    assert replacement_faithfulness(art.model, replace_mlps(art.model, {0: tc}), art.examples).agreement == 1.0


def test_steps_leave_what_is_not_numerical_to_distinct_inputs():
    """shuffle_dyck's layer 0 holds a SelectorWidth and two categorical maps (bools_open, bools_close): after the
    steps, the features left start as one per distinct input of the residual, so the start is exact (normalised
    MSE 1e-10, kept at step 0; steps alone: 2e-5 after training)."""
    art = artifact("shuffle_dyck")
    x, y = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=0, d_transcoder=32, init="steps", steps=200, progress=False)
    assert tc.log.nmse < 1e-8 and tc.log.best_step == 0
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[0], 0), x)
    assert len(m.evaluable) == 15 and len(m.recovered) >= 10


def test_steps_of_one_slope_make_one_ramp():
    """frac_a_minus_b's layer-1 MLP is linear in each of its two numerical inputs: neighbouring steps of one slope
    merge into one ramp per input, one pair of features as the compiled MLP has, and both of its evaluable units
    are recovered (a pair per step instead: 1 of 2, normalised MSE 0.022 against 0.0013 after 200 steps)."""
    art = artifact("frac_a_minus_b")
    x, y = mlp_activations(art.model, 1, art.examples.clean, art.examples.valid)
    tc = fit_transcoder(x, y, layer=1, d_transcoder=8, init="steps", steps=200, progress=False)
    m = match_features(tc, Transcoder.from_mlp(art.model.blocks[1], 1), x)
    assert len(m.evaluable) == 2 and len(m.recovered) == 2


def test_best_keeps_the_lowest_loss_and_is_deterministic():
    art = artifact("sort")
    x, y = mlp_activations(art.model, 0, art.examples.clean, art.examples.valid)
    runs = {init: fit_transcoder(x, y, layer=0, d_transcoder=30, init=init, steps=200, progress=False)
            for init in ("sample", "distinct", "steps", "best")}
    assert runs["best"].log.loss <= min(runs[i].log.loss for i in ("sample", "distinct", "steps")) + 1e-6
    again = fit_transcoder(x, y, layer=0, d_transcoder=30, steps=200, progress=False)
    for name, p in runs["best"].state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name
    with pytest.raises(ValueError, match="init='kmeans'"):
        fit_transcoder(x, y, layer=0, d_transcoder=4, init="kmeans", progress=False)
    with pytest.raises(ValueError, match="schedule='linear'"):
        fit_transcoder(x, y, layer=0, d_transcoder=4, schedule="linear", progress=False)
