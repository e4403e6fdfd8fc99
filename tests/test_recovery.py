"""Exact recovery: the pruner finds every library program's functional ground truth.

Runs Edge Pruning by default; ``pytest --pruner package.module:function`` runs the
same suite against any pruner with the signature
``(model, examples, *, ablation, seed) -> prune.circuit.Circuit``.
The default run uses seed 0; ``make test-slow`` runs seeds 0-9.
"""

import textwrap

import pytest

from conftest import artifact, library_names
from groundtruth.recovery import DEFAULT_PRUNER, recover

NAMES = library_names()
SEEDS = range(10)


def check(name, ablation, seed, pruner):
    art = artifact(name)
    gt = art.functional(ablation)
    if not gt:
        pytest.skip(f"{name}: the {ablation} ground truth is empty (the output does not depend on "
                    f"anything the corruption changes), so there is nothing to recover")
    result = recover(name, art.model, art.examples, gt, ablation=ablation, seed=seed, pruner=pruner)
    assert result.exact, (
        f"{name} {ablation} seed {seed}: extra {list(result.only_found)}, missed "
        f"{list(result.only_ground_truth)}, reproduces {result.reproduces:.3f} of the outputs"
    )
    return result


# Edge Pruning's default ends with the shared exact finalizer, which repairs the
# thresholded circuit on the training set (prune.finalize, ``finalize``).
# So that the suite still judges what training learned, the default pruner's
# thresholded circuit (log_alpha > 0, before the repair) must be exact too, at
# seed 0, except on these known cases (per ablation): on shuffle_dyck2 (1,997
# edges, 33 in the zero-ablation ground truth) training leaves the query/key
# edges of the four layer-1 averaging heads, which change only ~5-12% of the
# outputs, below the threshold; with the 150-step default, the thresholded
# circuits of shuffle_dyck (388 edges) and sort_freq (116) at seed 0 under zero
# ablation differ from the ground truth too (bench/results/library-*.md give the counts over ten
# seeds). The repair restores them. The check is strict both ways: it fails
# when training starts getting one of these right, so the entry must go.
THRESHOLD_MISSES = {"zero": {"shuffle_dyck2", "shuffle_dyck", "sort_freq"}, "resample": {"shuffle_dyck2"}}


def check_threshold(name, result, request):
    if request.config.getoption("--pruner") != DEFAULT_PRUNER:
        return  # another pruner is judged by its final circuit only
    if name in THRESHOLD_MISSES[result.ablation]:
        assert not result.own_exact, f"{name}: the thresholded circuit is now exact; drop it from THRESHOLD_MISSES"
    else:
        assert result.own_exact, (
            f"{name} {result.ablation} seed {result.seed}: the final circuit is exact only thanks to the "
            f"exact finalizer; the thresholded circuit differs from the ground truth")


@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_recovery(name, pruner, request):
    check_threshold(name, check(name, "zero", 0, pruner), request)


@pytest.mark.parametrize("name", NAMES)
def test_resample_ablation_recovery(name, pruner, request):
    check_threshold(name, check(name, "resample", 0, pruner), request)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ablation", ["zero", "resample"])
@pytest.mark.parametrize("name", NAMES)
def test_recovery_every_seed(name, ablation, seed, pruner):
    check(name, ablation, seed, pruner)


def test_same_seed_same_circuit(pruner):
    art = artifact("sort")
    a = pruner(art.model, art.examples, ablation="zero", seed=3)
    b = pruner(art.model, art.examples, ablation="zero", seed=3)
    assert a.edges == b.edges


def test_recovery_of_a_program_the_library_has_never_seen(tmp_path, capsys):
    from groundtruth.cli import main

    f = tmp_path / "mine.py"
    f.write_text(textwrap.dedent('''
        from tracr.rasp import rasp
        from groundtruth import program

        @program(vocab={"a", "b", "c"}, max_seq_len=4)
        def frac_b_so_far():
            """Fraction of b tokens up to each position."""
            is_b = rasp.numerical(rasp.Map(lambda t: 1 if t == "b" else 0, rasp.tokens))
            prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
            return rasp.numerical(rasp.Aggregate(prevs, is_b, default=0))
    '''))
    report = tmp_path / "report.json"
    code = main(["recover", str(f), "--ablations", "zero", "--report", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exact recovery: 1/1 runs" in out and report.exists()
