"""compiled_models/: drift against the source, determinism, atomic writes, refusal of bad files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import library_case, library_names
from groundtruth.artifacts import (
    ARTIFACT_FILES,
    DEFAULT_ROOT,
    ArtifactError,
    _examples_tensors,
    _state_dict,
    case_files,
    load_artifact,
    save_case,
)

NAMES = library_names()


def test_every_library_program_has_an_artifact_and_nothing_else_is_there():
    on_disk = sorted(p.name for p in DEFAULT_ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert on_disk == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_artifact_has_not_drifted_from_its_source(name):
    """Recompile the program; weights, data, config and circuits must equal the artifact."""
    case = library_case(name)
    art = load_artifact(DEFAULT_ROOT / name)
    assert art.provenance["program_source_sha256"] == case.program.source_hash, (
        f"{name}: the program's source changed; run `make build`"
    )
    fresh = case_files(case)  # without the feature-level ground truth: the next test derives that again
    assert art.features is not None, f"{name}: no feature-level ground truth stored; run `make build`"
    for fname in ("config.json", "circuits.json"):
        on_disk = json.loads((DEFAULT_ROOT / name / fname).read_text())
        assert on_disk == json.loads(json.dumps(fresh[fname], sort_keys=True)), f"{name}/{fname} drifted"
    for key, tensor in _state_dict(case.model).items():
        assert torch.equal(art.model.state_dict()[key], tensor), f"{name}: weight {key} drifted"
    disk_examples = load_file(str(DEFAULT_ROOT / name / "examples.safetensors"))
    for key, tensor in _examples_tensors(case.examples).items():
        assert torch.equal(disk_examples[key], tensor), f"{name}: examples {key} drifted"


# Derived in 20 s, 1 min and 18 min on 2 cores (the rest in under 8 s): their drift is checked by the slow run.
SLOW_FEATURE_TRUTHS = {"nary_sequencemap", "shuffle_dyck", "shuffle_dyck2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FEATURE_TRUTHS else n
                                  for n in NAMES])
def test_stored_feature_truth_has_not_drifted(name):
    """The feature-level ground truth stored with the artifact is what deriving it again from the freshly
    compiled program gives, verification included."""
    from groundtruth.artifacts import feature_circuits_json
    from groundtruth.feature_truth import feature_truth

    case = library_case(name)
    on_disk = json.loads((DEFAULT_ROOT / name / "features.json").read_text())
    fresh = feature_circuits_json(feature_truth(case, derive=True))
    assert on_disk == json.loads(json.dumps(fresh, sort_keys=True)), f"{name}: feature ground truth drifted"


def test_stored_feature_truth_is_read_back_and_verifies():
    """feature_truth reads the stored circuits (no derivation), and they verify on the ideal feature model."""
    from groundtruth.circuits import verify
    from groundtruth.feature_truth import feature_truth

    art = load_artifact("nary_sequencemap")  # 20 s to derive; reading it back takes a fraction of that
    truth = feature_truth(art)
    assert truth.stored and truth.ok and truth.seconds < 5
    for ablation in ("zero", "mean", "resample"):
        assert truth.circuits[ablation] == art.features["variants"][f"functional:{ablation}"]
        assert verify(truth.model, truth.examples, truth.functional(ablation), ablation).ok
    assert not feature_truth(art, ablations=("zero",), keep_error=False).stored  # derived: not what was stored


def test_loaded_artifact_reproduces_its_ground_truth():
    from prune.evaluate import Evaluator

    art = load_artifact("reverse")  # by library name
    assert art.path == DEFAULT_ROOT / "reverse"
    for ablation in ("zero", "mean", "resample"):
        mask = art.model.graph.edge_mask(art.functional(ablation))
        assert bool(Evaluator(art.model, art.examples, ablation).agreement(mask).all())


def test_building_twice_gives_identical_bytes(tmp_path):
    case = library_case("frac_prevs")
    a = save_case(case, tmp_path / "a")
    b = save_case(case, tmp_path / "b")
    for fname in (*ARTIFACT_FILES, "provenance.json"):
        assert (a / fname).read_bytes() == (b / fname).read_bytes(), fname
    # rebuilding in place replaces the folder and leaves no temporary folder behind
    save_case(case, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["frac_prevs"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import groundtruth.artifacts as artifacts

    case = library_case("frac_prevs")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "_sha256", broken)
    with pytest.raises(OSError, match="disk full"):
        save_case(case, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def copy_of_reverse(tmp_path):
    dst = tmp_path / "reverse"
    shutil.copytree(DEFAULT_ROOT / "reverse", dst)
    return dst


def _rehash(folder: Path):
    import hashlib

    prov = json.loads((folder / "provenance.json").read_text())
    prov["files_sha256"] = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in ARTIFACT_FILES}
    (folder / "provenance.json").write_text(json.dumps(prov))


def test_tampered_file_is_refused(copy_of_reverse):
    path = copy_of_reverse / "circuits.json"
    path.write_text(path.read_text().replace("a3.h0->logits", "a2.h0->logits", 1))
    with pytest.raises(ArtifactError, match="does not match its hash"):
        load_artifact(copy_of_reverse)


def test_bad_json_is_refused(copy_of_reverse):
    (copy_of_reverse / "config.json").write_text("{not json")
    _rehash(copy_of_reverse)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(copy_of_reverse)


def test_wrong_shapes_are_refused(copy_of_reverse):
    state = load_file(str(copy_of_reverse / "model.safetensors"))
    state["W_U"] = torch.zeros(3, 3)
    save_file(state, str(copy_of_reverse / "model.safetensors"))
    _rehash(copy_of_reverse)
    with pytest.raises(ArtifactError, match="does not fit the config"):
        load_artifact(copy_of_reverse)


def test_unknown_edge_in_circuits_is_refused(copy_of_reverse):
    path = copy_of_reverse / "circuits.json"
    path.write_text(path.read_text().replace("a3.h0->logits", "a9.h0->logits", 1))
    _rehash(copy_of_reverse)
    with pytest.raises(ArtifactError, match="a9.h0->logits"):
        load_artifact(copy_of_reverse)


def _edit_features(folder: Path, edit) -> None:
    import hashlib

    path = folder / "features.json"
    features = json.loads(path.read_text())
    edit(features)
    path.write_text(json.dumps(features))
    prov = json.loads((folder / "provenance.json").read_text())
    prov["derived_sha256"] = {"features.json": hashlib.sha256(path.read_bytes()).hexdigest()}
    (folder / "provenance.json").write_text(json.dumps(prov))


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["variants"]["functional:zero"].append("m1.f999->logits"), "m1.f999"),
    (lambda f: f["features"].__setitem__(0, 3), "feature widths must be"),
    (lambda f: f["verification"].pop("mean"), "'functional:mean' is not a verified"),
    (lambda f: f["verification"]["zero"].__setitem__("inert", None), "'functional:zero' is not a verified"),
])
def test_bad_feature_truth_in_circuits_is_refused(copy_of_reverse, edit, message):
    _edit_features(copy_of_reverse, edit)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(copy_of_reverse)


def test_tampered_feature_truth_is_refused_and_a_folder_without_one_loads(copy_of_reverse):
    path = copy_of_reverse / "features.json"
    text = path.read_text()
    path.write_text(text.replace("functional:zero", "functional:mean", 1))  # still valid JSON
    with pytest.raises(ArtifactError, match="features.json does not match its hash"):
        load_artifact(copy_of_reverse)
    path.unlink()
    with pytest.raises(ArtifactError, match="features.json is missing"):
        load_artifact(copy_of_reverse)
    prov = json.loads((copy_of_reverse / "provenance.json").read_text())
    del prov["derived_sha256"]
    (copy_of_reverse / "provenance.json").write_text(json.dumps(prov))
    assert load_artifact(copy_of_reverse).features is None  # as a variant: derived on demand


def test_missing_file_is_refused(copy_of_reverse):
    (copy_of_reverse / "examples.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(copy_of_reverse)


def test_loading_needs_torch_only():
    code = (
        "import sys; import groundtruth.artifacts as a, prune; a.load_all();"
        "bad = [m for m in ('jax', 'tracr', 'haiku') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
