"""Compilation, conversion and ground truth of every library program, plus golden cases."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import library_case, library_names
from groundtruth.case import make_examples
from groundtruth.circuits import functional_edges
from groundtruth.compiler import check_against_rasp
from groundtruth.registry import library

NAMES = library_names()

# Residual entries of Tracr models are O(1), but they pass through MLP hidden
# units of O(100) (mlp_exactness=100 times value gaps) and softmax logits of the
# same order; float32 sums in XLA's and torch's orders then differ by a few
# ulps of that scale. Observed max |diff| over the library: 3.8e-6 (shuffle_dyck);
# we allow 1e-5 relative to max(1, largest entry).
RESIDUAL_RTOL = 1e-5


def tracr_residuals(compiled, ids):
    out = compiled.run_tracr(ids)
    return [np.asarray(r) for r in out.transformer_output.residuals], np.asarray(out.unembedded_output)


def torch_residuals(model, ids):
    """The residual stream after every sublayer: partial sums of the writers."""
    g = model.graph
    logits, writers = model(torch.from_numpy(ids), return_writers=True)
    partial = torch.cumsum(writers, 0)
    ends = []
    for l in range(g.n_layers):
        ends += [g.head_writer(l, g.n_heads - 1), g.mlp_writer(l)]
    return [partial[i].numpy() for i in ends], logits


@pytest.mark.parametrize("name", NAMES)
def test_torch_model_equals_tracr(name):
    case = library_case(name)
    prog = case.program
    vocab = prog.sorted_vocab

    @settings(max_examples=15)
    @given(st.lists(st.lists(st.sampled_from(vocab), min_size=1, max_size=prog.max_seq_len), min_size=1, max_size=8))
    def check(seqs):
        # Tracr runs unpadded (it has no padding mask): one length per batch.
        n = len(seqs[0])
        seqs = [s[:n] + [s[0]] * (n - len(s)) for s in seqs]
        ids = case.compiled.encode(seqs, width=n + 1)
        want, want_decoded = tracr_residuals(case.compiled, ids)
        got, logits = torch_residuals(case.model, ids)
        assert len(got) == len(want)
        for k, (a, b) in enumerate(zip(got, want)):
            scale = max(1.0, float(np.abs(b).max()))
            assert np.abs(a - b).max() <= RESIDUAL_RTOL * scale, f"sublayer {k}"
        decoded = case.examples.decode(logits).numpy()
        mask = np.ones_like(ids, dtype=bool)
        mask[:, 0] = False
        if case.compiled.numerical:
            assert np.all(np.abs(decoded - want_decoded)[mask] <= case.examples.atol)
        else:
            assert np.array_equal(decoded[mask], want_decoded[mask])

    check()


@pytest.mark.parametrize("name", NAMES)
def test_compiled_model_equals_rasp_on_every_input(name):
    case = library_case(name)
    assert check_against_rasp(case.compiled) == len(case.program.inputs())


@pytest.mark.parametrize("name", NAMES)
def test_padded_batches_equal_unpadded_runs(name):
    # The torch model masks padding keys, so a padded batch decodes like Tracr
    # run on each input alone.
    from groundtruth.case import check_conversion

    case = library_case(name)
    check_conversion(case.compiled, case.model, case.examples, case.program.inputs())


@pytest.mark.parametrize("name", NAMES)
def test_ground_truth_is_verified(name):
    case = library_case(name)
    structural = set(case.circuits["structural"])
    assert set(case.circuits["semantic"]) <= structural
    for ablation, v in case.verifications.items():
        edges = case.functional(ablation)
        assert set(edges) <= structural
        assert v.sufficient, f"{ablation}: circuit reproduces {v.n_reproduced}/{v.n_examples}"
        assert v.inert == [], f"{ablation}: inert edges {v.inert}"


@pytest.mark.parametrize("name", NAMES)
def test_inputs_cover_every_length(name):
    prog = library()[name]
    lengths = {len(s) for s in prog.inputs()}
    assert lengths == set(range(prog.min_len, prog.max_seq_len + 1))


# ----------------------------------------------------------------- golden cases
def test_golden_shapes_reverse_and_frac_prevs():
    rev = library_case("reverse")
    assert rev.model.cfg.n_layers == 4 and rev.model.cfg.d_model == 41
    frac = library_case("frac_prevs")
    assert frac.model.cfg.d_model == 14


def _fixed_length_examples(case, inputs):
    ex = make_examples(case.compiled, inputs)
    S = len(inputs[0]) + 1  # no padding, as ACDC and auto-circuit feed them
    return dataclasses.replace(ex, clean=ex.clean[:, :S], corrupted=ex.corrupted[:, :S],
                               valid=ex.valid[:, :S], answer=ex.answer[:, :S])


def test_golden_reverse_zero_ablation_matches_acdc():
    # ACDC's tracr "reverse" task: the 6 permutations of [1, 2, 3], zero ablation.
    # Its ground truth (ACDC's repository, acdc/tracr_task/utils.py), with auto-circuit's names
    # mapped to ours (Resid Start -> input, A3.0.Q -> a3.h0<q>, Resid End -> logits).
    acdc = {
        "a3.h0->logits", "m2->a3.h0<q>", "input->a3.h0<k>", "input->a3.h0<v>", "m1->m2",
        "m0->m1", "input->m1", "a0.h0->m0", "input->m0", "input->a0.h0<v>",
    }
    case = library_case("reverse")
    ex = _fixed_length_examples(case, list(itertools.permutations([1, 2, 3])))
    assert set(functional_edges(case.model, ex, "zero")) == acdc


def test_golden_reverse_resample_matches_auto_circuit():
    # auto-circuit's official reverse circuit (resample, all length-5 inputs):
    # Resid Start -> A3.0.V and A3.0 -> Resid End.
    case = library_case("reverse")
    ex = _fixed_length_examples(case, list(itertools.product([1, 2, 3], repeat=5)))
    assert set(functional_edges(case.model, ex, "resample")) == {"input->a3.h0<v>", "a3.h0->logits"}


def test_unembedding_is_built_from_output_labels():
    case = library_case("reverse")
    labels = case.compiled.residual_labels
    W_U = case.model.W_U.numpy()
    for j, value in enumerate(case.compiled.output_values):
        assert labels[int(np.argmax(W_U[:, j]))] == f"{case.compiled.sop.label}:{value}"
    assert W_U.sum() == len(case.compiled.output_values)


@pytest.mark.parametrize("name", NAMES)
def test_node_labels_name_what_each_module_writes(name):
    """compile_program's map from graph nodes to RASP expressions, checked against the weights: every head
    and MLP that writes anything is labelled, and what it is labelled with is what it writes (its output
    weights reach exactly the residual directions of those SOps). The attention half of a SelectorWidth
    writes a hidden direction of Tracr's, not its SOp's, and is checked only for being labelled; its MLP writes
    the SOp and clears that hidden direction."""
    case = library_case(name)
    model, labels = case.model, case.compiled.node_labels()
    residual = [lab.split(":")[0] for lab in case.compiled.residual_labels]
    g = model.graph
    for layer, block in enumerate(model.blocks):
        outputs = {f"a{layer}.h{h}": block.W_O[h] for h in range(g.n_heads)}  # [E, D] each
        outputs[f"m{layer}"] = block.W_out  # [hidden, D]
        for node, w in outputs.items():
            written = {residual[d] for d in torch.nonzero(w.abs().sum(0)).flatten().tolist()}
            if not written:
                assert node not in labels, (node, labels.get(node))
                continue
            assert node in labels, (node, sorted(written))
            if labels[node].endswith("(its attention)"):
                continue
            sops = {line.split(" = ")[0] for line in labels[node].splitlines()}
            # A SelectorWidth's MLP also subtracts what its attention wrote into the hidden direction.
            cleaned = {f"{line.split(' = ')[0]}_selector_width_attn_output" for line in labels[node].splitlines()
                       if line.endswith("(its MLP)")}
            assert written - cleaned == sops, (node, sorted(written), sorted(sops))
