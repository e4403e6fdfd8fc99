"""Compressed and perturbed variants (groundtruth.variants, groundtruth.variant_case): the folded model is
the model that reads through W and writes through W^T; the residual and read bases lose nothing; compression
below the read basis decodes exactly and deterministically; noise at the bisected scale keeps every output;
a variant's ground truth is derived and verified on the variant, stored, loaded and refused when bad."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import artifact
from groundtruth.registry import library
from groundtruth.variants import fold, perturb, read_basis, read_through, residual_basis


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["reverse", "frac_prevs", "sort", "pair_balance", "shuffle_dyck"]),
       fraction=st.floats(0.2, 1.0), seed=st.integers(0, 2**32 - 1))
def test_the_folded_model_reads_through_w_and_writes_through_w_transposed(name, fraction, seed):
    art = artifact(name)
    model, ex = art.model, art.examples
    D = model.cfg.d_model
    d = max(1, round(fraction * D))
    W = torch.randn(d, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / D**0.5
    model64 = copy.deepcopy(model).double()  # artifact() is cached: .double() in place would change it for all
    folded = fold(model64, W)
    assert folded.cfg.d_model == d and folded.W_E.dtype == torch.float64
    with torch.no_grad():
        got = folded(ex.clean[:16], attention_mask=ex.valid[:16])
    with torch.no_grad():  # the compiled blocks on h @ W, their outputs through W^T: another computation
        want, _ = read_through(model64, W, ex.clean[:16], ex.valid[:16])
    # float64 both ways, the same products in another association: rounding only.
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(library()))
def test_the_residual_and_read_bases_compress_without_loss(name):
    art = artifact(name)
    model, ex = art.model, art.examples
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
    widths = []
    for W in (residual_basis(model, ex), read_basis(model, ex)):
        folded = fold(model, W)
        with torch.no_grad():
            small = folded(ex.clean, attention_mask=ex.valid)
        assert folded.cfg.d_model == W.shape[0] <= model.cfg.d_model
        assert bool(ex.agree(small, full).all())  # every decoded output, every example
        assert folded.graph.edge_names == model.graph.edge_names  # the same graph: every method runs on it
        widths.append(W.shape[0])
    assert widths[1] <= widths[0]  # the read part of the span is inside the span


def test_read_through_the_identity_is_the_compiled_model():
    art = artifact("sort")
    model, ex = art.model, art.examples
    D = model.cfg.d_model
    with torch.no_grad():
        logits, states = read_through(model, torch.eye(D), ex.clean, ex.valid)
        _, writers = model(ex.clean, attention_mask=ex.valid, return_writers=True)
        want = model(ex.clean, attention_mask=ex.valid)
    assert torch.allclose(logits, want, atol=1e-5)  # float32, summed in another order
    assert len(states) == 2 * model.cfg.n_layers + 1
    # The state before the unembedding is the sum of every writer.
    assert torch.allclose(states[-1], writers.sum(0), atol=1e-4 * float(writers.abs().max()))


def test_fold_refusals():
    art = artifact("reverse")
    D = art.model.cfg.d_model
    with pytest.raises(ValueError, match=rf"W must be \[d, {D}\]"):
        fold(art.model, torch.zeros(3, D + 1))
    with pytest.raises(ValueError, match=rf"must be in \[1, {D}\]"):
        fold(art.model, torch.zeros(D + 1, D))
    from prune.model import Transformer, TransformerConfig

    normed = Transformer(TransformerConfig(vocab_size=4, d_model=4, n_layers=1, n_heads=1, d_head=2, d_mlp=2,
                                           n_positions=4, norm="layernorm"))
    with pytest.raises(ValueError, match="does not commute"):
        fold(normed, torch.eye(4))


def test_compress_decodes_exactly_below_the_read_basis_and_deterministically():
    """``length`` reads 10 of its 18 dimensions; at width 9 two of its features must share a direction."""
    from groundtruth.variants import compress

    art = artifact("length")
    model, ex = art.model, art.examples
    assert read_basis(model, ex).shape[0] == 10
    one = compress(model, ex, 9)
    assert one.width == one.model.cfg.d_model == 9 == one.W.shape[0] and one.agreement == 1.0
    with torch.no_grad():
        assert bool(ex.agree(one.model(ex.clean, attention_mask=ex.valid), model(ex.clean, attention_mask=ex.valid))
                    .all())
    assert one.recipe["stage"] in ("frozen", "fine-tuned") and one.recipe["steps"] >= 0
    if one.recipe["stage"] == "frozen":  # Tracr's method: the compiled weights, only read through W
        assert torch.allclose(one.model.W_U, one.W @ model.W_U)
    labels = art.config["residual_labels"]
    assert list(one.directions(labels)) == labels and all(v.shape == (9,) for v in one.directions(labels).values())
    two = compress(model, ex, 9)  # full-batch Adam, no sampling: the same weights again
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(),
                                                 strict=True))


def test_compress_refusals_name_the_value():
    from groundtruth.variants import compress

    art = artifact("frac_prevs")
    D = art.model.cfg.d_model
    with pytest.raises(ValueError, match=rf"width {D + 1} must be a whole number in \[1, {D}\]"):
        compress(art.model, art.examples, D + 1)
    with pytest.raises(ValueError, match="steps must be"):
        compress(art.model, art.examples, 3, steps=0)
    with pytest.raises(ValueError, match="patience must be"):
        compress(art.model, art.examples, 3, patience=True)
    with pytest.raises(ValueError, match=r"no compression to width 3 of 14 decodes every example: the best agreement"):
        compress(art.model, art.examples, 3, steps=5)



@pytest.mark.parametrize("name", sorted(library()))
def test_live_sharing_gives_a_dimension_to_directions_whose_live_ranges_do_not_overlap(name):
    """Read off the weights: two directions share a dimension only when the first is read for the last time
    no later than the second is first written; as many dimensions as directions live at once, at most."""
    from groundtruth.variants import live_intervals, live_sharing

    model = artifact(name).model
    live = live_intervals(model)
    dim, rank = live_sharing(model)
    assert [k is None for k in dim] == [v is None for v in live]
    points = range(1, 2 * len(model.blocks) + 2)  # every reader: attention and MLP of each layer, the unembedding
    most = max(sum(1 for v in live if v is not None and v[0] < p <= v[1]) for p in points)
    assert 1 + max(k for k in dim if k is not None) == most  # greedy colouring of intervals is optimal
    for k in set(dim) - {None}:
        held = sorted((rank[i], live[i]) for i in range(len(dim)) if dim[i] == k)
        assert [r for r, _ in held] == list(range(len(held)))  # each later holder one rank up
        assert all(a[1] <= b[0] for (_, a), (_, b) in zip(held, held[1:]))  # dead before the next is written


def test_live_sharing_named_values():
    """prefix_count_a_causal: MLP 0 reads the tokens and writes with_index (15 values), attention 1 reads
    with_index and writes the selector width, MLP 1 reads that and writes prefix_count_a (6 values), which
    only the unembedding reads: 22 directions are live at attention 1, 22 dimensions."""
    from groundtruth.variants import live_intervals, live_sharing

    art = artifact("prefix_count_a_causal")
    live = dict(zip(art.config["residual_labels"], live_intervals(art.model), strict=True))
    assert live["tokens:a"] == (0, 2) and live["with_index_3:('a', 0)"] == (2, 3) and live["one"] == (0, 4)
    assert live["prefix_count_a_1_selector_width_attn_output"] == (3, 4) and live["prefix_count_a_1:5"] == (4, 5)
    assert live["tokens:compiler_pad"] is None  # written by the embedding, read by nobody
    dim, rank = live_sharing(art.model)
    assert 1 + max(k for k in dim if k is not None) == 22 and max(rank) == 1


def test_compress_by_live_sharing_where_training_does_not_decode():
    """prefix_count_a_causal at 22 of 33 (its read basis is 30): a step of training decodes nothing, live
    sharing does, at the smallest scale that decodes; one dimension fewer than the live width is refused."""
    from groundtruth.variants import compress

    art = artifact("prefix_count_a_causal")
    model, ex = art.model, art.examples
    assert read_basis(model, ex).shape[0] == 30
    one = compress(model, ex, 22, steps=1)
    assert one.recipe["stage"] == "live sharing" and one.recipe["live_width"] == 22 and one.agreement == 1.0
    assert one.recipe["alpha"] == 1000.0  # scales 10 and 100 leave some example wrong
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
        assert bool(ex.agree(one.model(ex.clean, attention_mask=ex.valid), full).all())
    # Every column of W a unit vector on one dimension (a direction of some reader) or zero (read by none).
    assert set(one.W.abs().sum(0).tolist()) <= {0.0, 1.0} and bool((one.W.ne(0).sum(0) <= 1).all())
    shared = one.W.ne(0).sum(1)
    assert int(shared.max()) > 1  # some dimension holds more than one direction: they interfere
    two = compress(model, ex, 22, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(),
                                                 strict=True))
    with pytest.raises(ValueError, match=r"width 21 of 33 decodes every example.*live sharing needs 22 dimensions"):
        compress(model, ex, 21, steps=1)


@pytest.mark.slow
def test_compress_with_an_annealed_rate_where_constant_rates_plateau():
    """sort_unique at 15 of 21 (read basis 17): neither the frozen nor the fine-tuned stage decodes at any
    rate (best 0.906); W and every weight on the annealed rate do. About 30 s."""
    from groundtruth.variants import compress

    art = artifact("sort_unique")
    one = compress(art.model, art.examples, 15)
    assert one.recipe["stage"] == "annealed" and 0 < one.recipe["steps"] <= one.recipe["annealed_steps"]
    with torch.no_grad():
        assert bool(art.examples.agree(one.model(art.examples.clean, attention_mask=art.examples.valid),
                                       art.model(art.examples.clean, attention_mask=art.examples.valid)).all())

def test_perturbation_keeps_every_output_and_reaches_every_edge():
    from groundtruth.circuits import structural_edges

    art = artifact("sort")
    model, ex = art.model, art.examples
    p = perturb(model, ex, seed=3)
    assert p.scale == p.margin * p.critical_scale > 0 and p.margin == 0.5
    with torch.no_grad():
        full = model(ex.clean, attention_mask=ex.valid)
        assert bool(ex.agree(p.model(ex.clean, attention_mask=ex.valid), full).all())
    for a, b in zip(p.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert not torch.equal(a, b)  # every weight moved
        assert bool(a[b == 0].ne(0).all())  # and every zero in it (a large entry may absorb noise below its ulp)
    assert structural_edges(p.model) == list(p.model.graph.edge_names)  # every edge carries some signal
    again = perturb(model, ex, seed=3)
    assert again.scale == p.scale and all(torch.equal(a, b) for a, b in zip(
        again.model.state_dict().values(), p.model.state_dict().values(), strict=True))
    other = perturb(model, ex, seed=4)
    assert not torch.equal(other.model.W_U, p.model.W_U)
    fixed = perturb(model, ex, seed=3, scale=p.scale)
    assert torch.equal(fixed.model.W_U, p.model.W_U)


def test_perturbation_refusals_name_the_value():
    art = artifact("sort")
    with pytest.raises(ValueError, match=r"noise scale -0.1 must be a number >= 0"):
        perturb(art.model, art.examples, scale=-0.1)
    with pytest.raises(ValueError, match=r"margin 0 must be in \(0, 1\]"):
        perturb(art.model, art.examples, margin=0)
    with pytest.raises(ValueError, match=r"at noise scale 10 \(seed 0\) only 0\.\d+ of the examples decode"):
        perturb(art.model, art.examples, scale=10.0)


def test_a_variant_has_its_own_verified_ground_truth_and_round_trips(tmp_path):
    from groundtruth.artifacts import load_artifact, save_variant
    from groundtruth.circuits import verify
    from groundtruth.variant_case import build_variant

    parent = artifact("length")
    v = build_variant(parent, "compressed", width=9)
    assert v.name == "length@compressed" and v.info["width"] == 9 < v.info["read_basis_width"] == 10
    for ablation, check in v.verifications.items():
        assert check.ok  # sufficient, and every edge needed on some input
        assert verify(v.model, v.examples, v.functional(ablation), ablation).ok  # again, independently
        d = v.differences[ablation]
        assert set(d.added) == set(v.functional(ablation)) - set(parent.functional(ablation))
        assert d.why
    folder = save_variant(v, parent, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.safetensors", "examples.safetensors", "config.json", "circuits.json", "provenance.json",
         "directions.safetensors"])
    back = load_artifact(folder)
    assert back.name == "length@compressed" and back.model.cfg.d_model == 9
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), v.model.state_dict().values(),
                                                 strict=True))
    assert back.functional("zero") == v.functional("zero") and torch.equal(back.W, v.W)
    labels = parent.config["residual_labels"]
    assert list(back.directions()) == labels and back.directions()[labels[0]].shape == (9,)
    assert back.provenance["parent_files_sha256"] == parent.provenance["files_sha256"]
    assert back.config["variant"]["recipe"]["stage"] in ("frozen", "fine-tuned")


def test_a_tampered_variant_is_refused(tmp_path):
    from safetensors.torch import save_file

    from groundtruth.artifacts import ArtifactError, load_artifact, save_variant
    from groundtruth.variant_case import build_variant

    parent = artifact("count")
    folder = save_variant(build_variant(parent, "perturbed", ablations=("zero",)), parent, tmp_path)
    save_file({"W": torch.zeros(3, 3)}, str(folder / "directions.safetensors"))
    with pytest.raises(ArtifactError, match="directions.safetensors does not match its hash"):
        load_artifact(folder)


def test_variant_refusals_name_the_value():
    from groundtruth.artifacts import ArtifactError, load_artifact
    from groundtruth.variant_case import build_variant, parse_variant_name

    parent = artifact("count")
    with pytest.raises(ValueError, match="unknown variant kind 'squashed'"):
        build_variant(parent, "squashed")
    with pytest.raises(ValueError, match="a width applies to a compressed variant"):
        build_variant(parent, "perturbed", width=3)
    with pytest.raises(ValueError, match="a noise scale applies to a perturbed variant"):
        build_variant(parent, "compressed", noise=0.1)
    with pytest.raises(ValueError, match=r"'count@big' is not a variant name"):
        parse_variant_name("count@big")
    with pytest.raises(ArtifactError, match=r"no variant named 'nope@compressed' in .*; build it with "
                                            r"`groundtruth variant nope --kind compressed`"):
        load_artifact("nope@compressed")
    with pytest.raises(ArtifactError, match=r"'count@bogus' is not a variant name"):
        load_artifact("count@bogus")


def test_the_variant_command_writes_only_what_verified(tmp_path, capsys):
    from groundtruth.cli import main

    out = tmp_path / "v"
    for argv, message in (
        (["variant", "count", "--kind", "compressed", "--noise", "0.1"], "--noise applies to a perturbed variant"),
        (["variant", "count", "--kind", "perturbed", "--width", "3"], "--width applies to a compressed variant"),
        (["variant", "nope", "--kind", "perturbed"], "no library program 'nope'"),
        (["variant", "count", "hist", "--kind", "compressed", "--width", "9"], "names one width for 2 programs"),
        (["variant", "count", "--kind", "perturbed", "--noise", "-1"], "must be a finite scale >= 0"),
        (["variant", "count", "--kind", "perturbed", "--noise", "10"], "only 0."),
        (["variant", "count", "--kind", "compressed", "--width", "19"], "width 19 must be a whole number in"),
    ):
        assert main([*argv, "--out", str(out), "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() or not any(out.iterdir())  # nothing written for a refused variant
    assert main(["variant", "count", "--kind", "perturbed", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    assert "count@perturbed: width 18 of 18, noise scale" in capsys.readouterr().out
    assert main(["recover", str(out / "count@perturbed"), "--quiet"]) == 0  # recover takes a variant's folder
    assert "exact recovery: 2/2 runs" in capsys.readouterr().out
    assert main(["compare", "--variant", "perturbed", "--programs", "count,nope", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "--programs: no library program 'nope'" in capsys.readouterr().err and not (tmp_path / "c").exists()


def _committed_variants() -> list[str]:
    from groundtruth.artifacts import VARIANT_ROOT

    return sorted(p.name for p in VARIANT_ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_every_library_program_has_each_kind_of_variant_and_nothing_else_is_there():
    from groundtruth.variant_case import KINDS

    assert _committed_variants() == sorted(f"{n}@{k}" for n in library() for k in KINDS)


@pytest.mark.parametrize("name", _committed_variants())
def test_a_committed_variant_is_current_decodes_as_compiled_and_its_ground_truth_verifies(name):
    """Drift: built from today's program artifact; every example decoded as the compiled model does; every
    stored functional circuit verified again on the stored model (sufficient, every edge necessary)."""
    from groundtruth.artifacts import load_artifact
    from groundtruth.circuits import verify
    from groundtruth.variant_case import parse_variant_name

    program, kind = parse_variant_name(name)
    v, parent = load_artifact(name), artifact(program)
    assert v.provenance["parent_files_sha256"] == parent.provenance["files_sha256"], (
        f"{name} was built from another version of {program}; run `groundtruth variant {program} --kind {kind}`")
    with torch.no_grad():
        assert bool(v.examples.agree(v.model(v.examples.clean, attention_mask=v.examples.valid),
                                     parent.model(parent.examples.clean, attention_mask=parent.examples.valid)).all())
    assert torch.equal(v.examples.clean, parent.examples.clean)
    info = v.config["variant"]
    assert info["kind"] == kind and v.W.shape == (info["width"], parent.model.cfg.d_model)
    for ablation in ("zero", "mean", "resample"):
        assert verify(v.model, v.examples, v.functional(ablation), ablation).ok, f"{name} {ablation}"


def test_check_builds_a_variant_of_any_program_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from groundtruth.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["check", "count", "--variant", "perturbed", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "count@perturbed: width 18 of 18, noise scale" in out and "functional:resample" in out
    assert list(tmp_path.iterdir()) == []
    assert main(["check", "count", "--width", "3", "--quiet"]) == 2
    assert "--width describes a variant; add --variant" in capsys.readouterr().err
