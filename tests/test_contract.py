"""The command-line contract, case by case: every input is answered right or refused.

Refused means: exit status 2, exactly one line ``error: ...`` on stderr naming
the value at fault and what to do, no traceback, no partial file, no changed
input. One test (or parametrized group) per case of the "Nothing silently
wrong" issue that is not about ``prune run`` (those are in test_cli_run.py);
each failed on the code before the fix (e8e82a2). The tests build as little as
possible: one small compiled program per group at most, the ``count`` artifact
otherwise, and pruners defined here that return ``count``'s ground truth.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import artifact, truth_pruner
from groundtruth.artifacts import DEFAULT_ROOT, ArtifactError, load_artifact
from groundtruth.cli import main as gt_main
from groundtruth.recovery import recover
from prune.circuit import Circuit, CircuitFileError

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "interop"
ARTIFACT_FILES = ("model.safetensors", "examples.safetensors", "config.json", "circuits.json")

# ------------------------------------------------------------ test pruners
# Named as ``--pruner`` specs by this module's import name (pytest imports it as ``test_contract``).
ME = __name__
CALLS: list[tuple[str, int]] = []  # (ablation, seed) of every call of counting_pruner
NOT_CALLABLE = 3


def counting_pruner(model, examples, *, ablation, seed):
    CALLS.append((ablation, seed))
    return truth_pruner(model, examples, ablation=ablation, seed=seed)


def empty_pruner(model, examples, *, ablation, seed):
    return Circuit(graph=model.graph, edges=(), ablation=ablation, model="", d_model=model.cfg.d_model)


def mislabelled_pruner(model, examples, *, ablation, seed):
    circuit = truth_pruner(model, examples, ablation=ablation, seed=seed)
    return dataclasses.replace(circuit, ablation="resample" if ablation != "resample" else "zero")


def exiting_pruner(model, examples, *, ablation, seed):
    sys.exit(0)


def raising_pruner(model, examples, *, ablation, seed):
    raise RuntimeError("boom in the pruner")


def garbage_pruner(model, examples, *, ablation, seed):
    return 42


def wrong_signature_pruner(model):
    return None


# ----------------------------------------------------------------- helpers
def gt(capsys, *argv: str) -> tuple[int, str, str]:
    """``groundtruth ARGV`` in-process: (exit status, stdout, stderr)."""
    code = gt_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *needles: str) -> str:
    """Exit 2 and one line ``error: ...`` on stderr that holds every needle; returns the line."""
    lines = err.splitlines()
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err!r}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def recover_argv(*extra: str, pruner: str = "truth_pruner") -> list[str]:
    return ["recover", "count", "--ablations", "zero", "--pruner", f"{ME}:{pruner}", "--quiet", *extra]


def copy_artifact(tmp_path: Path, name: str = "count") -> tuple[Path, Path]:
    """A copy of compiled_models/<name> in ``tmp_path/root``: (root, folder)."""
    root = tmp_path / "root"
    shutil.copytree(DEFAULT_ROOT / name, root / name)
    return root, root / name


def rehash(folder: Path) -> None:
    """Make provenance.json match the files as they are (what a careless tamperer would do)."""
    prov = json.loads((folder / "provenance.json").read_text())
    prov["files_sha256"] = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in ARTIFACT_FILES}
    (folder / "provenance.json").write_text(json.dumps(prov))


def snapshot(folder: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


TINY_PROGRAM = """\
from tracr.rasp import rasp

from groundtruth import program


@program(vocab={{"a", "b"}}, max_seq_len=2, name={name!r})
def {func}():
    return rasp.categorical(rasp.Map(lambda t: t, rasp.tokens))
"""


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ case 1
@pytest.mark.parametrize("flag", ["--seeds=", "--seeds=,", "--ablations="])
def test_1_recover_with_no_seed_or_ablation_is_refused(flag, capsys):
    code, out, err = gt(capsys, *recover_argv(flag))
    assert_refused(code, err, flag.split("=")[0])
    assert "exact recovery" not in out


# ------------------------------------------------------------------ case 4
def test_4_checkpoint_of_other_weights_with_the_same_shapes_is_refused(tmp_path):
    from prune.edge_pruning import CheckpointError, EdgePruner

    art = artifact("count")
    other = copy.deepcopy(art.model)
    with torch.no_grad():
        other.blocks[0].W_in.add_(0.25)  # same shapes, other weights
    path = EdgePruner(art.model, art.examples, ablation="zero", seed=0).save(tmp_path / "ckpt.safetensors")
    with pytest.raises(CheckpointError, match="fingerprint"):
        EdgePruner(other, art.examples, ablation="zero", seed=0).load(path)
    EdgePruner(copy.deepcopy(art.model), art.examples, ablation="zero", seed=0).load(path)  # same weights: resumes


# ------------------------------------------------------------------ case 5
def _nan_model():
    model = copy.deepcopy(artifact("count").model)
    with torch.no_grad():
        model.blocks[0].W_O.fill_(float("nan"))
    return model


def test_5_recovery_on_a_model_with_nan_weights_is_refused():
    art = artifact("count")
    with pytest.raises(ValueError, match="not finite"):
        recover("count", _nan_model(), art.examples, art.functional("zero"), ablation="zero", pruner=empty_pruner)


def test_5_table_refuses_an_artifact_with_nan_weights_even_when_rehashed(tmp_path, capsys):
    root, folder = copy_artifact(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    weights["blocks.0.W_O"] = torch.full_like(weights["blocks.0.W_O"], float("nan"))
    save_file(weights, str(folder / "model.safetensors"))
    rehash(folder)
    before = snapshot(folder)
    code, out, err = gt(capsys, "table", "--root", root)
    assert_refused(code, err, "blocks.0.W_O", "NaN", "groundtruth build count")
    assert "verified" not in out and snapshot(folder) == before
    with pytest.raises(ArtifactError, match="NaN"):
        load_artifact(folder)


# ------------------------------------------------------------------ case 6
def test_6_examples_without_an_answer_position_are_refused():
    from prune.edge_pruning import EdgePruner

    art = artifact("count")
    no_answer = dataclasses.replace(art.examples, answer=torch.zeros_like(art.examples.answer))
    with pytest.raises(ValueError, match="answer mask all False"):
        recover("count", art.model, no_answer, art.functional("zero"), ablation="zero", pruner=empty_pruner)
    with pytest.raises(ValueError, match="answer mask all False"):
        EdgePruner(art.model, no_answer, ablation="zero")


# ------------------------------------------------------------------ case 7
def test_7_build_refuses_a_program_named_like_a_library_program(tmp_path, capsys):
    spec = tmp_path / "mine.py"
    spec.write_text(TINY_PROGRAM.format(name="reverse", func="mine"))
    out_dir = tmp_path / "out"
    code, _, err = gt(capsys, "build", spec, "--out", out_dir, "--quiet")
    assert_refused(code, err, "'reverse'", "rename")
    assert not out_dir.exists()


def test_7_two_programs_with_one_name_in_a_file_are_refused(tmp_path, capsys):
    spec = tmp_path / "twins.py"
    spec.write_text(TINY_PROGRAM.format(name="twin", func="first")
                    + TINY_PROGRAM.format(name="twin", func="second").split("\n\n\n", 1)[1])
    code, _, err = gt(capsys, "check", spec, "--quiet")
    assert_refused(code, err, "'twin'", "two programs")


# ------------------------------------------------------------------ case 8
def test_8_a_circuit_labelled_with_another_ablation_is_refused(capsys):
    code, out, err = gt(capsys, *recover_argv(pruner="mislabelled_pruner"))
    assert_refused(code, err, "'resample'", "'zero'")
    assert "exact recovery" not in out


def test_8_a_pruner_that_calls_sys_exit_is_refused(capsys):
    code, out, err = gt(capsys, *recover_argv(pruner="exiting_pruner"))
    assert_refused(code, err, "SystemExit")
    assert out == ""


# ------------------------------------------------------------------ case 9
@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch build has CUDA: the case is a CPU-only build")
def test_9_bench_step_on_a_missing_cuda_device_is_refused(tmp_path):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "step", "--device", "cuda", "--model",
                           "gpt2", "--shapes", "1x4", "--steps", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert_refused(done.returncode, done.stderr, "--device 'cuda'", "--device cpu")
    assert done.stdout == "" and time.perf_counter() - start < 60


# ----------------------------------------------------------------- case 10
def _mask_with(value: float) -> torch.Tensor:
    mask = torch.ones(artifact("count").model.graph.n_edges)
    mask[1] = value
    return mask


@pytest.mark.parametrize("value", [2.0, -1.0, float("nan")])
def test_10_forward_refuses_edge_mask_values_outside_0_1(value):
    art = artifact("count")
    with pytest.raises(ValueError, match=r"edge_mask values must be in \[0, 1\]"):
        art.model(art.examples.clean[:4], attention_mask=art.examples.valid[:4], edge_mask=_mask_with(value))


@pytest.mark.parametrize("value", [2.0, -1.0, float("nan")])
def test_10_evaluator_refuses_edge_mask_values_outside_0_1(value):
    from prune.evaluate import Evaluator

    art = artifact("count")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Evaluator(art.model, art.examples, "zero").agreement(_mask_with(value))


def test_10_numerical_examples_of_a_categorical_model_are_refused():
    art = artifact("count")
    numerical = dataclasses.replace(art.examples, kind="numerical")
    with pytest.raises(ValueError, match="kind='numerical'"):
        recover("count", art.model, numerical, art.functional("zero"), ablation="zero", pruner=truth_pruner)


def test_10_a_circuit_with_an_unknown_ablation_is_refused():
    g = artifact("count").model.graph
    with pytest.raises(ValueError, match="unknown ablation 'bogus'"):
        Circuit(graph=g, edges=(), ablation="bogus", model="count", d_model=18)


def test_10_a_circuit_file_listing_only_some_edges_is_refused(tmp_path):
    art = artifact("count")
    path = truth_pruner(art.model, art.examples, ablation="zero", seed=0).save(tmp_path / "c.json")
    d = json.loads(path.read_text())
    del d["edges"][next(iter(d["edges"]))]
    path.write_text(json.dumps(d))
    with pytest.raises(CircuitFileError, match="does not list every edge"):
        Circuit.load(path)


@pytest.mark.parametrize("name, match", [("eap_parallel.json", "parallel"), ("eap_neuron_level.json", "neuron")])
def test_10_circuit_files_of_other_graph_kinds_are_refused(name, match):
    with pytest.raises(CircuitFileError, match=match):
        Circuit.load(SHARED / name)


def test_10_nan_scores_are_refused(tmp_path):
    art = artifact("count")
    circuit = truth_pruner(art.model, art.examples, ablation="zero", seed=0)
    scores = [1.0] * art.model.graph.n_edges
    scores[2] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        dataclasses.replace(circuit, scores=tuple(scores))
    d = json.loads(circuit.save(tmp_path / "c.json").read_text())
    d["edges"][art.model.graph.edge_names[2]]["score"] = math.nan
    (tmp_path / "c.json").write_text(json.dumps(d))  # JSON's NaN, as json.dumps writes it
    with pytest.raises(CircuitFileError, match="non-finite"):
        Circuit.load(tmp_path / "c.json")


# ----------------------------------------------------------------- case 11
@pytest.mark.parametrize("spec, needle", [
    ("nocolon", "'nocolon'"),
    ("no_such_module_xyz:fn", "'no_such_module_xyz'"),
    ("prune.baselines:no_such_fn", "'no_such_fn'"),
    (f"{ME}:NOT_CALLABLE", "'NOT_CALLABLE'"),
    (f"{ME}:wrong_signature_pruner", "wrong_signature_pruner"),
])
def test_11_a_bad_pruner_spec_is_refused(spec, needle, capsys):
    code, _, err = gt(capsys, "recover", "count", "--ablations", "zero", "--pruner", spec, "--quiet")
    assert_refused(code, err, needle)


@pytest.mark.parametrize("pruner, needle", [("raising_pruner", "RuntimeError: boom in the pruner"),
                                            ("garbage_pruner", "returned int")])
def test_11_a_pruner_that_raises_or_returns_garbage_is_refused(pruner, needle, capsys):
    code, _, err = gt(capsys, *recover_argv(pruner=pruner))
    assert_refused(code, err, needle)


@pytest.mark.parametrize("seeds", ["a", "1.5", "-1", "3-1", "0,0"])
def test_11_bad_seeds_are_refused(seeds, capsys):
    code, _, err = gt(capsys, *recover_argv("--seeds", seeds))
    assert_refused(code, err, "--seeds", repr(seeds))


def test_11_a_seed_range_is_every_seed_in_it(tmp_path, capsys):
    report = tmp_path / "r.json"
    CALLS.clear()
    code, out, err = gt(capsys, *recover_argv("--seeds", "0-3", "--report", report, pruner="counting_pruner"))
    assert code == 0, err
    assert [s for _, s in CALLS] == [0, 1, 2, 3] and "exact recovery: 4/4 runs" in out
    assert json.loads(report.read_text())["seeds"] == [0, 1, 2, 3]


def test_11_zero_threads_are_refused(capsys):
    code, _, err = gt(capsys, *recover_argv("--threads", "0"))
    assert_refused(code, err, "--threads", "'0'")


def _table_corruptions():
    def drop(name):
        return lambda f: (f / name).unlink()

    def write(name, text, rehashed=True):
        def corrupt(f):
            (f / name).write_text(text)
            if rehashed:
                rehash(f)
        return corrupt

    def edit_json(name, change, rehashed=True):
        def corrupt(f):
            d = json.loads((f / name).read_text())
            change(d)
            (f / name).write_text(json.dumps(d))
            if rehashed:
                rehash(f)
        return corrupt

    def other_weights(f):  # reverse's weights under count's config: the shapes do not fit
        shutil.copy(DEFAULT_ROOT / "reverse" / "model.safetensors", f / "model.safetensors")
        rehash(f)

    def folder_for_file(f):
        (f / "model.safetensors").unlink()
        (f / "model.safetensors").mkdir()

    def no_clean(f):
        t = load_file(str(f / "examples.safetensors"))
        del t["clean"]
        save_file(t, str(f / "examples.safetensors"))
        rehash(f)

    return {
        "provenance missing": (drop("provenance.json"), "provenance.json is missing"),
        "provenance not JSON": (write("provenance.json", "{", rehashed=False), "provenance.json is not valid JSON"),
        "provenance without hashes": (write("provenance.json", "{}", rehashed=False), "lists no file hashes"),
        "config missing": (drop("config.json"), "config.json is missing"),
        "circuits edited": (edit_json("circuits.json", lambda d: d.update(extra=1), rehashed=False),
                            "does not match its hash"),
        "config not JSON": (write("config.json", "[1,"), "config.json is not valid JSON"),
        "config a list": (write("config.json", "[1]"), "not an object"),
        "format version": (edit_json("config.json", lambda d: d.update(format_version=99)), "format_version 99"),
        "model config": (edit_json("config.json", lambda d: d["model"].update(n_layers=0)), "bad model config"),
        "unknown edge": (edit_json("circuits.json", lambda d: d["variants"]["semantic"].append("m7->logits")),
                         "m7->logits"),
        "other weights": (other_weights, "does not fit the config"),
        "folder for a file": (folder_for_file, "not a regular file"),
        "no clean ids": (no_clean, "examples.safetensors"),
    }


TABLE_CORRUPTIONS = _table_corruptions()


@pytest.mark.parametrize("case", list(TABLE_CORRUPTIONS))
def test_11_table_refuses_every_bad_artifact(case, tmp_path, capsys):
    corrupt, needle = TABLE_CORRUPTIONS[case]
    root, folder = copy_artifact(tmp_path)
    corrupt(folder)
    before = snapshot(root)
    code, out, err = gt(capsys, "table", "--root", root)
    assert_refused(code, err, needle)
    assert out == "" and snapshot(root) == before


def test_11_table_refuses_a_root_that_is_not_a_folder_of_artifacts(tmp_path, capsys):
    code, _, err = gt(capsys, "table", "--root", tmp_path / "missing")
    assert_refused(code, err, "--root", "missing")
    (tmp_path / "file").write_text("x")
    code, _, err = gt(capsys, "table", "--root", tmp_path / "file")
    assert_refused(code, err, "--root")
    code, _, err = gt(capsys, "table", "--root", tmp_path)
    assert_refused(code, err, "holds no compiled program", "groundtruth build")


def test_11_a_corrupted_safetensors_with_an_updated_hash_is_refused(tmp_path, capsys):
    root, folder = copy_artifact(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    rehash(folder)
    code, _, err = gt(capsys, "table", "--root", root)
    assert_refused(code, err, "model.safetensors is not a readable safetensors file", "groundtruth build count")


@pytest.mark.parametrize("source, needle", [
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
])
@pytest.mark.parametrize("command", ["check", "recover", "build"])
def test_11_a_program_file_that_does_not_import_is_refused(source, needle, command, tmp_path, capsys):
    spec = tmp_path / "bad.py"
    spec.write_text(source)
    extra = {"check": [], "recover": ["--pruner", f"{ME}:truth_pruner"], "build": ["--out", tmp_path / "out"]}
    code, _, err = gt(capsys, command, spec, *extra[command], "--quiet")
    line = assert_refused(code, err, str(spec), needle)
    if needle == "SyntaxError":
        assert "(line 1)" in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["bad.py"]


def test_11_17_report_into_a_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "reports").mkdir()
    CALLS.clear()
    code, _, err = gt(capsys, *recover_argv("--report", tmp_path / "reports", pruner="counting_pruner"))
    assert_refused(code, err, "--report", "is a folder")
    assert CALLS == []  # refused before the pruner ran
    assert [p.name for p in tmp_path.rglob("*")] == ["reports"]  # no temporary file left


# ----------------------------------------------------------------- case 12
MY_PRUNER = """\
import json

from groundtruth.artifacts import DEFAULT_ROOT
from prune.circuit import Circuit


def fn(model, examples, *, ablation, seed):
    variants = json.loads((DEFAULT_ROOT / "count" / "circuits.json").read_text())["variants"]
    return Circuit(graph=model.graph, edges=tuple(variants["functional:" + ablation]), ablation=ablation,
                   model="count", d_model=model.cfg.d_model)
"""


def test_12_a_pruner_in_the_working_directory_is_found(tmp_path, monkeypatch, capsys):
    (tmp_path / "contract_cwd_pruner.py").write_text(MY_PRUNER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "contract_cwd_pruner", raising=False)
    code, out, err = gt(capsys, "recover", "count", "--ablations", "zero", "--pruner", "contract_cwd_pruner:fn",
                        "--quiet")
    sys.modules.pop("contract_cwd_pruner", None)
    assert code == 0, err
    assert "exact recovery: 1/1 runs" in out


def test_12_the_console_script_finds_a_pruner_in_the_working_directory(tmp_path):
    (tmp_path / "contract_script_pruner.py").write_text(MY_PRUNER)
    script = Path(sys.executable).parent / "groundtruth"  # `make` installs it beside the interpreter
    assert script.exists(), f"no console script at {script}: install the package (make test does)"
    done = subprocess.run([str(script), "recover", "count", "--ablations", "zero", "--pruner",
                           "contract_script_pruner:fn", "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exact recovery: 1/1 runs" in done.stdout


def test_12_a_program_file_imports_a_helper_beside_it(tmp_path, monkeypatch, capsys):
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "contract_helper.py").write_text('VOCAB = {"a", "b"}\n')
    (progs / "mine.py").write_text(TINY_PROGRAM.format(name="helped", func="helped").replace(
        '{"a", "b"}', "VOCAB").replace("from groundtruth import program",
                                         "from contract_helper import VOCAB\nfrom groundtruth import program"))
    monkeypatch.chdir(tmp_path)  # not the program's folder
    monkeypatch.delitem(sys.modules, "contract_helper", raising=False)
    code, out, err = gt(capsys, "check", "progs/mine.py", "--quiet")
    sys.modules.pop("contract_helper", None)
    assert code == 0, err
    assert "helped" in out


# ----------------------------------------------------------------- case 13
def test_13_an_unknown_ablation_is_refused_before_any_work(capsys):
    CALLS.clear()
    code, out, err = gt(capsys, *recover_argv("--ablations", "zero,bogus", pruner="counting_pruner"))
    assert_refused(code, err, "'bogus'", "zero, mean, resample")
    assert CALLS == [] and out == ""


# ----------------------------------------------------------------- case 15
def test_15_tracr_error_above_atol_is_refused_with_a_short_message():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    from groundtruth import program
    from groundtruth.compiler import ProgramError, check_against_rasp, compile_program

    @program(vocab={"x", "y"}, max_seq_len=12, atol=1e-12, n_samples=8)
    def frac_x():
        return rasp.numerical(lib.make_frac_prevs(rasp.tokens == "x"))

    compiled = compile_program(frac_x, validate=False)
    with pytest.raises(ProgramError) as refused:
        check_against_rasp(compiled, [tuple("xyyxyyxyyxyy")])  # Tracr is off by ~1e-6 at every position
    message = str(refused.value)
    assert "atol=1e-12" in message and "largest error" in message and "@program(atol=...)" in message
    assert message.count("position ") == 4 and "and 8 more" in message and len(message) < 600, message
    check_against_rasp(dataclasses.replace(compiled, program=dataclasses.replace(frac_x, atol=1e-3)),
                       [tuple("xyyxyyxyyxyy")])  # within a sane tolerance it agrees


@pytest.mark.parametrize("atol", [0, -1e-3, 1.5, float("nan"), True])
def test_15_a_bad_atol_is_refused(atol):
    from groundtruth import program

    with pytest.raises(ValueError, match="atol"):
        program(vocab={"a"}, max_seq_len=1, name="bad_atol", atol=atol)(lambda: None)


# ----------------------------------------------------------------- case 16
def test_16_recovery_report_gets_the_umask_mode(tmp_path, capsys, umask_022):
    code, _, err = gt(capsys, *recover_argv("--report", tmp_path / "r" / "recovery.json"))
    assert code == 0, err
    assert mode(tmp_path / "r" / "recovery.json") == 0o644
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["recovery.json"]


def test_16_compare_files_get_the_umask_mode(tmp_path, capsys, umask_022):
    code, _, err = gt(capsys, "compare", "--methods", "eap", "--programs", "count", "--out", tmp_path / "cmp",
                      "--quiet")
    assert code == 0, err
    files = sorted(p for p in (tmp_path / "cmp").rglob("*") if p.is_file())
    assert [str(p.relative_to(tmp_path / "cmp")) for p in files] == ["circuits/count-eap.json", "compare.json",
                                                                     "compare.md"]
    assert {mode(p) for p in files} == {0o644}


def test_17_compare_of_artifacts_named_by_path_writes_only_into_its_own_folders(tmp_path, capsys):
    """``--programs /x/count``: the circuit files are named by the folder, inside --out, not beside the artifact
    (found by the fuzzer: the path went into the file name, and an absolute one replaced --out)."""
    other = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "compiled_models" / "count", other / "count")
    shutil.copytree(ROOT / "compiled_models" / "count", other / "again" / "count")
    before = sorted(p for p in other.rglob("*"))
    code, _, err = gt(capsys, "compare", "--methods", "eap", "--programs",
                      f"{other / 'count'},{other / 'again' / 'count'}", "--out", tmp_path / "cmp",
                      "--draw", tmp_path / "cmp" / "drawings", "--quiet")
    assert code == 0, err
    assert sorted(p for p in other.rglob("*")) == before
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [r["files"] for r in rows] == [
        {"circuit": f"circuits/count.{i}-eap.json", "drawing": f"drawings/count.{i}-eap.png"} for i in (0, 1)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``groundtruth build count --out ROOT`` under umask 022, ROOT holding a killed build's leftovers of
    count and of another program: (exit status, stderr, ROOT)."""
    root = tmp_path_factory.mktemp("built")
    (root / ".count.k1ll3d.building" / "x").mkdir(parents=True)
    (root / ".count.k1ll3d.building" / "x" / "model.safetensors").write_bytes(b"partial")
    (root / ".hist.0th3r.building").mkdir()  # another program's build, maybe running
    before = os.umask(0o022)
    try:
        code = gt_main(["build", "count", "--out", str(root), "--quiet"])
    finally:
        os.umask(before)
    return code, root


def test_16_built_artifact_gets_the_umask_mode(built):
    code, root = built
    assert code == 0
    folder = root / "count"
    assert mode(folder) == 0o755
    assert {p.name: mode(p) for p in folder.iterdir()} == {
        f: 0o644 for f in (*ARTIFACT_FILES, "features.json", "provenance.json")}
    load_artifact(folder)


# ----------------------------------------------------------------- case 17
def test_17_build_removes_the_leftovers_of_a_killed_build_of_that_program(built):
    code, root = built
    assert code == 0
    assert sorted(p.name for p in root.iterdir()) == [".hist.0th3r.building", "count"]


# ----------------------------------------------------------------- case 18
def test_18_a_fifo_for_a_weights_file_is_refused_at_once(tmp_path):
    _, folder = copy_artifact(tmp_path)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    code = textwrap.dedent(f"""
        from groundtruth.artifacts import ArtifactError, load_artifact
        try:
            load_artifact({str(folder)!r})
        except ArtifactError as err:
            print("refused:", err)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "not a regular file" in done.stdout
