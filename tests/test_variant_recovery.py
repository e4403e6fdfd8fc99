"""Exact recovery on the compressed and perturbed variants (compiled_variants/, docs/superposition.md).

``make test-slow`` runs Edge Pruning's default (``groundtruth recover``'s pruner) on every variant, zero and
resample ablation, seeds 0-9, and asserts the final circuit equals the variant's verified functional ground
truth, except the known misses below, measured in bench/results/variant-seeds.md. The default run checks a
small subset at seed 0 (``test_variant_recovery_seed_0``), the thresholded circuit included.
``pytest --pruner package.module:function`` runs the same tests against another pruner, judged on its final
circuit with no known misses.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from conftest import library_names
from groundtruth.recovery import DEFAULT_PRUNER, recover

KINDS = ("compressed", "perturbed", "compressed+perturbed")
VARIANTS = [f"{name}@{kind}" for name in library_names() for kind in KINDS]
SEEDS = range(10)
RESULTS = Path(__file__).resolve().parent.parent / "bench/results/variant-seeds.json"

# (variant, ablation) -> the seeds at which the default pruner's final circuit is not the ground truth
# (bench/results/variant-seeds.md, commit 109882e; sort, sort_unique, shuffle_dyck and prefix_count_a_causal
# at db610f9, where their compressed variants were rebuilt narrower). Every one of these final circuits was verified to be
# another minimal circuit of the variant (it reproduces every decoded output, every edge of it is
# necessary), so these are circuits the ground truth's ordered removal did not pick, not unfaithful ones.
# Strict both ways: a known miss that becomes exact fails the test, so its seed must go.
KNOWN_MISSES: dict[tuple[str, str], set[int]] = {
    # 11-14 edges against 12: input->a1.h0<k> (or <v>) extra, a0.h0->a1.h0<k> and m0->m1 missing.
    ("count_less_freq@compressed", "resample"): {1, 2, 3, 5, 7, 8},
    # 11-12 edges against 12: input->a1.h0<k>/<v> or a0.h0->m1 extra, a0.h0->a1.h0<k> and m0->m1 missing.
    ("count_less_freq@compressed+perturbed", "resample"): {2, 6},
    # 13-17 edges against 15: m0->m1, m0->logits, m1->m2 or input->a1.h1<v> extra; m0->a1.h0<v>,
    # m0->a1.h1<v> or m1->logits missing (1-4 extra, 1-3 missing).
    ("detect_pattern@compressed", "zero"): set(SEEDS),
    # 15-19 edges against 14: input->m1, a1.h0->m1, a1.h1->m1 (and m0->m1) extra; a1.h1->m2, a1.h0->m2 or a
    # layer-1 value edge missing (4-7 extra, 2-3 missing).
    ("detect_pattern@compressed+perturbed", "zero"): set(SEEDS) - {8},
    # 12 edges against 13: a0.h0->m1 extra, input->a0.h1<q> and input->a0.h1<k> missing.
    ("is_majority@compressed", "zero"): {6},
    # 5 edges against 4: m1->m2 and m2->logits extra, m0->logits missing.
    ("nary_sequencemap@compressed", "resample"): {2, 5, 6, 8},
    # 5 edges against 4: m1->m2 and m2->logits extra, m1->logits missing.
    ("nary_sequencemap@compressed", "zero"): {4, 8},
    # 6 edges against 4: m1->m2, m0->logits and m2->logits extra, m1->logits missing.
    ("nary_sequencemap@compressed+perturbed", "zero"): {4},
    # 67-76 edges against 87: 3-9 extra (m4->a6.h0<k>, a6.h0->logits, m2->m4), 18-25 missing (mostly
    # a0.h0 into the layer-1 heads and a0.h0->m2).
    ("shuffle_dyck2@compressed", "resample"): set(SEEDS),
    # 75-92 edges against 69: 12-27 extra (m0->m1, a0.h0->m3, m1->a5.h0<q>, ...), 2-6 missing
    # (a1.h0->a5.h0<q> every seed).
    ("shuffle_dyck2@compressed", "zero"): set(SEEDS),
    # 69-80 edges against 78: 2-10 extra (m2->a6.h0<k>, m3->logits, a0.h0->m0), 8-12 missing (a1.h2->m4,
    # a0.h0->a1.h3<k>, m1->m2, input->a5.h0<k>, m1->m4).
    ("shuffle_dyck2@compressed+perturbed", "resample"): set(SEEDS),
    # 77-92 edges against 69: 17-26 extra (a path through m4, m5 and m6 to the logits), 3-9 missing
    # (a0.h0->a6.h0<q> and a6.h0->logits every seed).
    ("shuffle_dyck2@compressed+perturbed", "zero"): set(SEEDS),
    # 51-95 edges against 87 (zero) and 58 (resample): a different set of query edges into a4.h0 and of
    # MLP-to-MLP edges each seed (1-14 extra, 2-19 missing), compressed to 10 of 41 dimensions.
    ("shuffle_dyck@compressed", "zero"): set(SEEDS),
    ("shuffle_dyck@compressed", "resample"): set(SEEDS),
    ("shuffle_dyck@compressed+perturbed", "zero"): set(SEEDS),
    ("shuffle_dyck@compressed+perturbed", "resample"): set(SEEDS),
    # 36 and 34 edges against 35: input->a0.h0<v> and a0.h0->m0 missing, 1-3 others extra.
    ("shuffle_dyck2@perturbed", "zero"): {0, 7},
    # 28 edges against 31: a0.h0->a2.h0<q>, a1.h0->a2.h0<v> and a0.h0->m0 (or m0->logits) missing.
    ("sort@compressed", "zero"): {5, 7, 8},
    # 26-27 edges against 27: m0->a1.h0<v> extra; a0.h0->a1.h0<v> and a1.h0->a2.h0<q> missing (or
    # a0.h0->a2.h0<q> extra, a1.h0->a2.h0<q> and a1.h0->logits missing).
    ("sort@compressed+perturbed", "zero"): {0, 1, 2, 3, 4, 6, 7},
    # 15 edges against 15: m0->logits extra, m0->a1.h0<q> missing.
    ("sort_unique@compressed", "zero"): {8},
    # 16 edges against 15: a0.h0->logits and m0->logits (zero) or input->a0.h0<v> and a0.h0->logits
    # (resample) extra, m0->a1.h0<q> missing.
    ("sort_unique@compressed+perturbed", "zero"): set(SEEDS) - {4},
    ("sort_unique@compressed+perturbed", "resample"): {0, 2, 3, 5, 8},
    # 20 edges against 20: a1.h0->m1 missing, one other edge (m0->a3.h0<q>, a0.h0->m2, a2.h0->m2 or
    # a0.h0->a3.h0<q>) extra.
    ("sort_freq@perturbed", "zero"): {1, 2, 3, 4, 6, 7, 8, 9},
}

# The default run's subset, seed 0: all of seed 0 costs ~4-8 minutes on 2 loaded cores, over the default
# suite's budget, so five of the cheapest programs (about 0.5-1 s a run) on every kind and both ablations,
# thresholded exact and not in equal numbers, plus detect_pattern@compressed under zero ablation, a known
# final miss at seed 0 (so the strict check of KNOWN_MISSES runs by default too). About 15-30 s.
FAST = [(f"{name}@{kind}", ablation) for name in ("count", "hist", "shift_by", "first_token_causal",
                                                  "xor_prev_causal")
        for kind in KINDS for ablation in ("zero", "resample")] + [("detect_pattern@compressed", "zero")]

# (variant, ablation) of FAST whose thresholded circuit (log_alpha > 0, before the shared exact finalizer) is
# not the ground truth at seed 0; in every case it keeps extra edges that the finalizer then removes:
THRESHOLD_MISSES = {
    ("count@perturbed", "resample"),  # extra input->m0
    ("count@compressed+perturbed", "resample"),  # extra input->m0
    ("hist@perturbed", "resample"),  # extra input->m0
    ("shift_by@perturbed", "zero"),  # extra a0.h0->m0, input->m0, m0->logits
    ("shift_by@perturbed", "resample"),  # extra a0.h0->m0, input->m0, m0->logits
    ("first_token_causal@compressed", "zero"),  # extra input->logits
    ("first_token_causal@perturbed", "zero"),  # extra a0.h0->m0, m0->logits
    ("first_token_causal@perturbed", "resample"),  # extra a0.h0->m0, m0->logits
    ("first_token_causal@compressed+perturbed", "zero"),  # extra input->logits, m0->logits
    ("xor_prev_causal@compressed", "zero"),  # extra a0.h0->logits, input->logits
    ("xor_prev_causal@compressed", "resample"),  # extra a0.h0->logits
    ("xor_prev_causal@perturbed", "zero"),  # extra a0.h0->logits
    ("xor_prev_causal@compressed+perturbed", "zero"),  # extra a0.h0->logits, input->logits
    ("xor_prev_causal@compressed+perturbed", "resample"),  # extra input->logits
    # 9 extra edges (m0->m1, m1->m2, a1.h0/a1.h1 into m2 and the logits, ...); its final circuit misses too.
    ("detect_pattern@compressed", "zero"),
}

# (variant, ablation) of FAST whose thresholded circuit at seed 0 depends on the machine: one edge ends its
# training close to the threshold, and float64 matmuls round differently on different CPUs (MKL picks its
# kernels by CPU). Their final circuit is still required to be exact; the thresholded one is not asserted.
THRESHOLD_MACHINE_DEPENDENT = {
    # extra a0.h0->logits on the machine THRESHOLD_MISSES was measured on and in CI at commit dce53e1;
    # exact on an AMD EPYC with AVX-512 (2026-12-07), with the same code.
    ("count@compressed+perturbed", "zero"),
}


@functools.cache
def variant(name: str):
    """A committed variant, loaded once (cached: deepcopy before mutating)."""
    from groundtruth.artifacts import load_artifact

    return load_artifact(name)


def check(name, ablation, seed, pruner, request):
    art = variant(name)
    gt = art.functional(ablation)
    if not gt:
        pytest.skip(f"{name}: the {ablation} ground truth is empty (the output does not depend on anything the "
                    f"corruption changes), so there is nothing to recover")
    result = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed, pruner=pruner)
    default = request.config.getoption("--pruner") == DEFAULT_PRUNER
    if default and seed in KNOWN_MISSES.get((name, ablation), ()):
        assert not result.exact, (f"{name} {ablation} seed {seed} is now recovered exactly; drop the seed from "
                                  f"KNOWN_MISSES")
    else:
        assert result.exact, (
            f"{name} {ablation} seed {seed}: extra {list(result.only_found)}, missed "
            f"{list(result.only_ground_truth)}, reproduces {result.reproduces:.3f} of the outputs")
    return result


@pytest.mark.parametrize(("name", "ablation"), FAST)
def test_variant_recovery_seed_0(name, ablation, pruner, request):
    result = check(name, ablation, 0, pruner, request)
    if request.config.getoption("--pruner") != DEFAULT_PRUNER:
        return  # another pruner is judged by its final circuit only
    if (name, ablation) in THRESHOLD_MACHINE_DEPENDENT:
        return
    if (name, ablation) in THRESHOLD_MISSES:
        assert not result.own_exact, (f"{name} {ablation}: the thresholded circuit is now exact; drop it from "
                                      f"THRESHOLD_MISSES")
    else:
        assert result.own_exact, (f"{name} {ablation} seed 0: the thresholded circuit differs from the ground "
                                  f"truth (the final one is exact only thanks to the exact finalizer)")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ablation", ["zero", "resample"])
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recovery_every_seed(name, ablation, seed, pruner, request):
    check(name, ablation, seed, pruner, request)


def test_known_misses_are_the_committed_measurement():
    """KNOWN_MISSES and THRESHOLD_MISSES (with the machine-dependent pairs) are what
    bench/results/variant-seeds.json records (and name real variants), so the test and the committed
    result cannot drift apart."""
    rows = {(r["variant"], r["ablation"]): r for r in json.loads(RESULTS.read_text())["rows"]}
    measured = {key: {int(s) for s in r["final misses"]} for key, r in rows.items()
                if r["kind"] != "compiled" and r["final misses"]}
    assert KNOWN_MISSES == measured
    assert set(FAST) <= set(rows) and all(n in VARIANTS for n, _ in KNOWN_MISSES)
    assert {key for key in FAST if not rows[key]["thresholded exact seed 0"]} == (
        THRESHOLD_MISSES | THRESHOLD_MACHINE_DEPENDENT)
