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
    fresh = case_files(case)
    for fname in ("config.json", "circuits.json"):
        on_disk = json.loads((DEFAULT_ROOT / name / fname).read_text())
        assert on_disk == json.loads(json.dumps(fresh[fname], sort_keys=True)), f"{name}/{fname} drifted"
    for key, tensor in _state_dict(case.model).items():
        assert torch.equal(art.model.state_dict()[key], tensor), f"{name}: weight {key} drifted"
    disk_examples = load_file(str(DEFAULT_ROOT / name / "examples.safetensors"))
    for key, tensor in _examples_tensors(case.examples).items():
        assert torch.equal(disk_examples[key], tensor), f"{name}: examples {key} drifted"


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
