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


# A known failure of the default Edge Pruning, kept visible rather than hidden:
# on shuffle_dyck2 (1,997 edges, 33 in the zero-ablation ground truth) it misses
# the query/key edges of the four layer-1 averaging heads, which change only ~5%
# of the outputs, and keeps a few extra edges (see README). strict=True: the
# test fails as soon as the pruner starts recovering it, so the mark must go.
KNOWN_FAILURES = {"shuffle_dyck2"}


def _mark_known_failure(request, name):
    # Only Edge Pruning's own known failure: another pruner (--pruner) is judged plainly.
    if name in KNOWN_FAILURES and request.config.getoption("--pruner") == DEFAULT_PRUNER:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="known Edge Pruning miss, see README"))


@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_recovery(name, pruner, request):
    _mark_known_failure(request, name)
    check(name, "zero", 0, pruner)


@pytest.mark.parametrize("name", NAMES)
def test_resample_ablation_recovery(name, pruner, request):
    _mark_known_failure(request, name)
    check(name, "resample", 0, pruner)


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
