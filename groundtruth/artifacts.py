"""Built artifacts: one folder per program under ``compiled_models/``.

::

    compiled_models/<name>/
      model.safetensors     weights of the converted transformer (float32)
      examples.safetensors  evaluation set: clean, corrupted, valid, answer
      config.json           model config, encodings, output kind, residual labels
      circuits.json         ground truth: semantic, structural, functional per ablation
      features.json         the functional ground truth on the feature graph of the program's
                            ideal transcoders (groundtruth.feature_truth), per ablation
      provenance.json       tracr version, program source hash, file hashes

``features.json`` is derived from the files above it, so its hash is kept apart
(``derived_sha256``): a variant records the hashes of the files it is built from
(``files_sha256``), which adding it does not change. A folder without it (a
variant, or an artifact written before it existed) loads, and the feature ground
truth is derived on demand.

Writing is atomic: the folder is written under a temporary name, then renamed
into place. Loading needs torch only (no jax, no tracr) and refuses a folder
whose files do not match the hashes in ``provenance.json``, whose JSON does
not parse, or whose tensors have the wrong shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prune.data import Examples
from prune.files import atomic_folder, read_json
from prune.model import Transformer, TransformerConfig

__all__ = ["Artifact", "ArtifactError", "load_artifact", "load_all", "save_case", "save_variant", "ARTIFACT_FILES",
           "DEFAULT_ROOT", "VARIANT_ROOT"]

FORMAT_VERSION = 1
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "compiled_models"
VARIANT_ROOT = Path(__file__).resolve().parent.parent / "compiled_variants"
ARTIFACT_FILES = ("model.safetensors", "examples.safetensors", "config.json", "circuits.json")
FEATURE_FILE = "features.json"  # derived from ARTIFACT_FILES; hashed under "derived_sha256"
VARIANT_FILES = (*ARTIFACT_FILES, "directions.safetensors")  # a variant's: W, the image of each labelled direction


class ArtifactError(ValueError):
    """A compiled_models/ folder that is missing, corrupted or tampered with."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A loaded program artifact: everything a pruner needs, torch only."""

    name: str
    path: Path
    model: Transformer
    examples: Examples
    config: dict
    circuits: dict  # variant -> edge names; variants: semantic, structural, functional:<ablation>
    provenance: dict
    W: torch.Tensor | None = None  # a variant's [width, D]: column i is residual_labels[i]'s image
    features: dict | None = None  # features.json (checked on load), None where not stored

    def directions(self) -> dict[str, torch.Tensor]:
        """Each labelled direction of the compiled residual, as the vector it is in this model's stream."""
        labels = self.config["residual_labels"]
        W = torch.eye(len(labels)) if self.W is None else self.W
        return dict(zip(labels, W.T.unbind(0), strict=True))

    def functional(self, ablation: str) -> list[str]:
        key = f"functional:{ablation}"
        if key not in self.circuits:
            raise KeyError(f"artifact {self.name!r} has no {key} ground truth; it has {sorted(self.circuits)}")
        return self.circuits[key]

    @property
    def inert(self) -> dict:
        return self.config.get("inert", {})


def _dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to JSON")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _token_json(token):
    # JSON keeps bool, int, float and str apart: enough for Tracr's values.
    if not isinstance(token, (bool, int, float, str)):
        raise ValueError(f"value {token!r} ({type(token).__name__}) cannot be stored; use bool, int, float or str")
    return token


def case_files(case) -> dict[str, bytes | dict]:
    """The artifact's contents, in memory (shared by save and the drift test)."""
    from groundtruth.compiler import COMPILER_BOS, COMPILER_PAD

    compiled, prog, ex = case.compiled, case.program, case.examples
    config = {
        "format_version": FORMAT_VERSION,
        "name": prog.name,
        "description": prog.description,
        "model": case.model.cfg.to_dict(),
        "vocab": [[_token_json(t), i] for t, i in sorted(compiled.input_encoding.items(), key=lambda kv: kv[1])],
        "bos": COMPILER_BOS,
        "pad": COMPILER_PAD,
        "max_seq_len": prog.max_seq_len,
        "causal": prog.causal,
        "output": {
            "kind": ex.kind,
            "values": None if compiled.output_values is None else [_token_json(v) for v in compiled.output_values],
            "label": compiled.sop.label,
            "atol": ex.atol,
        },
        "residual_labels": compiled.residual_labels,
        "examples": {"n": len(ex), "exhaustive": prog.exhaustive, "seed": prog.seed, "min_len": prog.min_len},
        "inert": {a: v.inert for a, v in case.verifications.items()},
    }
    files = {"config.json": config, "circuits.json": _circuits_json(case.model, case.circuits, case.verifications)}
    if case.features is not None:
        files[FEATURE_FILE] = feature_circuits_json(case.features)
    return files


def feature_circuits_json(truth) -> dict:
    """features.json: a :class:`groundtruth.feature_truth.FeatureTruth` as circuits.json holds the edge-level
    ground truth, plus the feature graph's width per layer."""
    circuits = {f"functional:{a}": edges for a, edges in truth.circuits.items()}
    return {"features": list(truth.model.graph.features or ()),
            **_circuits_json(truth.model, circuits, truth.verifications)}


def _circuits_json(model: Transformer, circuits: dict, verifications: dict) -> dict:
    """circuits.json: every ground truth, its verification per ablation, its nodes."""
    return {
        "variants": {k: list(v) for k, v in circuits.items()},
        "verification": {
            a: {"sufficient": v.sufficient, "n_examples": v.n_examples, "n_reproduced": v.n_reproduced,
                "inert": v.inert}
            for a, v in verifications.items()
        },
        "nodes": {k: model.graph.nodes_of(v) for k, v in circuits.items()},
        "n_edges_total": model.graph.n_edges,
    }


def _state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _examples_tensors(ex: Examples) -> dict[str, torch.Tensor]:
    return {
        "clean": ex.clean.to(torch.int32).contiguous(),
        "corrupted": ex.corrupted.to(torch.int32).contiguous(),
        "valid": ex.valid.contiguous(),
        "answer": ex.answer.contiguous(),
    }


_BUILDING = ".building"  # suffix of the temporary folders of a build in progress


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_builds(root: Path, name: str) -> list[Path]:
    """Remove the temporary folders (``.<name>.*.building``) a killed build of ``name`` left in ``root``.

    Only this program's: a build of another program may be running beside it.
    """
    stale = [p for p in root.glob(f".{name}.*{_BUILDING}") if p.is_dir() and not p.is_symlink()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _write_atomically(root: Path, name: str, write) -> Path:
    """``root/<name>/`` written whole or not at all (:func:`prune.files.atomic_folder`), after removing
    what a killed build of ``name`` left behind."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(root, name)
    return atomic_folder(root / name, write, suffix=_BUILDING)


def save_case(case, root: Path | str = DEFAULT_ROOT) -> Path:
    """Write ``case`` to ``root/<name>/`` atomically; returns the folder."""
    import importlib.metadata as md

    def write(tmp: Path) -> None:
        save_file(_state_dict(case.model), str(tmp / "model.safetensors"))
        save_file(_examples_tensors(case.examples), str(tmp / "examples.safetensors"))
        for fname, content in case_files(case).items():
            (tmp / fname).write_text(_dumps(content))
        provenance = {
            "format_version": FORMAT_VERSION,
            "program": case.program.name,
            "program_source_sha256": case.program.source_hash,
            "tracr": md.version("tracr-pypi"),
            "jax": md.version("jax"),
            "files_sha256": {f: _sha256(tmp / f) for f in ARTIFACT_FILES},
        }
        if (tmp / FEATURE_FILE).exists():
            provenance["derived_sha256"] = {FEATURE_FILE: _sha256(tmp / FEATURE_FILE)}
        (tmp / "provenance.json").write_text(_dumps(provenance))

    return _write_atomically(Path(root), case.program.name, write)


def variant_files(variant, parent: Artifact) -> dict[str, dict]:
    """A variant's config.json and circuits.json, in memory: the parent's config with the variant's model
    and how it was made (``config["variant"]``); its own verified ground truth."""
    config = json.loads(json.dumps(parent.config))  # a deep copy of plain JSON
    config.update(name=variant.name, model=variant.model.cfg.to_dict(),
                  description=f"{parent.config['description']} ({variant.kind} variant)",
                  inert={a: v.inert for a, v in variant.verifications.items()})
    config["variant"] = {**variant.info, "differences": {a: d.to_dict() for a, d in variant.differences.items()}}
    return {"config.json": config,
            "circuits.json": _circuits_json(variant.model, variant.circuits, variant.verifications)}


def save_variant(variant, parent: Artifact, root: Path | str = VARIANT_ROOT) -> Path:
    """Write a :class:`groundtruth.variant_case.VariantCase` to ``root/<program>@<kind>/`` atomically: the
    program's files plus ``directions.safetensors`` (``W`` ``[width, D]``: column i is the image of the
    compiled direction ``residual_labels[i]``; the identity for a perturbed variant of full width)."""
    D = parent.model.cfg.d_model
    W = variant.W if variant.W is not None else torch.eye(D, dtype=parent.model.W_E.dtype)

    def write(tmp: Path) -> None:
        save_file(_state_dict(variant.model), str(tmp / "model.safetensors"))
        save_file(_examples_tensors(variant.examples), str(tmp / "examples.safetensors"))
        save_file({"W": W.detach().contiguous()}, str(tmp / "directions.safetensors"))
        for fname, content in variant_files(variant, parent).items():
            (tmp / fname).write_text(_dumps(content))
        provenance = {
            "format_version": FORMAT_VERSION,
            "program": parent.name,
            "variant": variant.name,
            "program_source_sha256": parent.provenance["program_source_sha256"],
            "parent_files_sha256": parent.provenance["files_sha256"],
            "files_sha256": {f: _sha256(tmp / f) for f in VARIANT_FILES},
        }
        (tmp / "provenance.json").write_text(_dumps(provenance))

    return _write_atomically(Path(root), variant.name, write)


def _read_json(path: Path) -> dict:
    fix = f"rebuild with `groundtruth build {path.parent.name}`"
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise ArtifactError(f"{path} is not a regular file; {fix}")
    return read_json(path, ArtifactError, fix=fix)


def _artifact_path(name_or_path: Path | str) -> Path:
    """A bare name (no path separator) is a program in ``compiled_models/``, or with an ``@`` a variant in
    ``compiled_variants/``; anything else a folder."""
    if isinstance(name_or_path, str) and name_or_path and os.sep not in name_or_path and "/" not in name_or_path:
        root, what = (VARIANT_ROOT, "variant") if "@" in name_or_path else (DEFAULT_ROOT, "compiled program")
        path = root / name_or_path
        if not path.is_dir() and root is VARIANT_ROOT:
            from groundtruth.variant_case import parse_variant_name

            try:
                program, kind = parse_variant_name(name_or_path)
            except ValueError as err:
                raise ArtifactError(str(err)) from None
            raise ArtifactError(f"no variant named {name_or_path!r} in {root}; build it with "
                                f"`groundtruth variant {program} --kind {kind}`, or give a folder path")
        if not path.is_dir():
            known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                           ) if root.is_dir() else []
            raise ArtifactError(f"no {what} named {name_or_path!r} in {root}; "
                                f"choose one of {', '.join(known) or '(none built)'}, or give a folder path")
        return path
    return Path(name_or_path)


def load_artifact(name_or_path: Path | str) -> Artifact:
    """Load one artifact, by library name (``"reverse"``) or folder path, checking hashes, JSON and shapes."""
    path = _artifact_path(name_or_path)
    if not path.is_dir():
        raise ArtifactError(f"no artifact folder at {path}")
    provenance = _read_json(path / "provenance.json")
    hashes = provenance.get("files_sha256")
    files = VARIANT_FILES if "variant" in provenance else ARTIFACT_FILES
    if not isinstance(hashes, dict) or set(hashes) != set(files):
        raise ArtifactError(f"{path / 'provenance.json'} lists no file hashes for {list(files)}")
    derived = provenance.get("derived_sha256", {})
    if not isinstance(derived, dict) or set(derived) - {FEATURE_FILE}:
        raise ArtifactError(f"{path / 'provenance.json'}: derived_sha256 must list {FEATURE_FILE} only, got "
                            f"{derived!r}")
    hashes = {**hashes, **derived}
    for fname in (*files, *derived):
        f = path / fname
        if not f.exists():
            raise ArtifactError(f"{f} is missing; rebuild with `groundtruth build`")
        if not f.is_file():  # a FIFO or a device would block the hash below forever
            raise ArtifactError(f"{f} is not a regular file; rebuild with `groundtruth build {path.name}`")
        if _sha256(f) != hashes[fname]:
            raise ArtifactError(
                f"{f} does not match its hash in provenance.json: the file was modified or "
                f"corrupted; rebuild with `groundtruth build {path.name}`"
            )
    config = _read_json(path / "config.json")
    circuits = _read_json(path / "circuits.json")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path / 'config.json'} has format_version {config.get('format_version')!r}; "
            f"this code reads {FORMAT_VERSION}"
        )
    try:
        cfg = TransformerConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path / 'config.json'}: bad model config: {err}") from None
    state = _load_tensors(path / "model.safetensors")
    _check_fit(cfg, state, path)
    model = Transformer(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{path / 'model.safetensors'} does not fit the config: {' '.join(str(err).split())}"
                            ) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{path / 'model.safetensors'}: weight {bad[0]} has NaN or infinite values; "
                            f"rebuild with `groundtruth build {path.name}`")
    model.requires_grad_(False).eval()
    t = _load_tensors(path / "examples.safetensors")
    try:
        examples = Examples(
            clean=t["clean"].long(), corrupted=t["corrupted"].long(), valid=t["valid"].bool(),
            answer=t["answer"].bool(), kind=config["output"]["kind"], atol=config["output"]["atol"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path / 'examples.safetensors'}: {err}; rebuild with `groundtruth build {path.name}`"
                            ) from None
    ids = torch.cat([examples.clean.flatten(), examples.corrupted.flatten()])
    if not 0 < examples.clean.shape[1] <= cfg.n_positions or int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size:
        raise ArtifactError(f"{path / 'examples.safetensors'}: ids or lengths do not fit the model")
    variants = circuits.get("variants")
    if not isinstance(variants, dict):
        raise ArtifactError(f"{path / 'circuits.json'} has no 'variants'")
    for variant, edges in variants.items():
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise ArtifactError(f"{path / 'circuits.json'}: {variant}: {edges!r} is not a list of edge names; "
                                f"rebuild with `groundtruth build {path.name}`")
        for e in edges:
            try:
                model.graph.edge_position(e)
            except KeyError as err:
                raise ArtifactError(f"{path / 'circuits.json'}: {variant}: {err.args[0]}") from None
    features = _check_features(_read_json(path / FEATURE_FILE), model, path) if derived else None
    W = None
    if "variant" in provenance:
        W = _load_tensors(path / "directions.safetensors").get("W")
        D = len(config.get("residual_labels", []))
        if W is None or W.ndim != 2 or tuple(W.shape) != (cfg.d_model, D):
            raise ArtifactError(f"{path / 'directions.safetensors'}: W must be [{cfg.d_model}, {D}] (the width, "
                                f"the compiled width), got {None if W is None else list(W.shape)}")
    return Artifact(path.name, path, model, examples, config, variants, provenance, W, features)


def _check_features(features, model: Transformer, path: Path) -> dict | None:
    """features.json, refused unless its widths are the ideal transcoders' (every layer's d_mlp) and every
    edge is an edge of that feature graph."""
    where, fix = path / FEATURE_FILE, f"rebuild with `groundtruth build {path.name}`"
    cfg = model.cfg
    want = [cfg.d_mlp] * cfg.n_layers
    if not isinstance(features, dict) or features.get("features") != want:
        got = features.get("features") if isinstance(features, dict) else features
        raise ArtifactError(f"{where}: the feature widths must be {want} (each layer's d_mlp), got {got!r}; {fix}")
    graph = dataclasses.replace(model.graph, features=tuple(want))
    variants, verification = features.get("variants"), features.get("verification")
    if not isinstance(variants, dict) or not isinstance(verification, dict):
        raise ArtifactError(f"{where} has no 'variants' or 'verification'; {fix}")
    for variant, edges in variants.items():
        ablation = variant.partition(":")[2]
        v = verification.get(ablation)
        if (not variant.startswith("functional:") or not isinstance(v, dict)
                or not all(isinstance(v.get(k), int) for k in ("n_examples", "n_reproduced"))
                or not isinstance(v.get("inert"), list)):
            raise ArtifactError(f"{where}: {variant!r} is not a verified functional ground truth; {fix}")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise ArtifactError(f"{where}: {variant}: {edges!r} is not a list of edge names; {fix}")
        for e in edges:
            try:
                graph.edge_position(e)
            except KeyError as err:
                raise ArtifactError(f"{where}: {variant}: {err.args[0]}; {fix}") from None
    return features


def _check_fit(cfg: TransformerConfig, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights whose shapes are not the config's, before the model is built: a config that names
    more layers or heads than the weights hold, or huge or negative sizes, is refused here in one short
    line, not by a crash, an allocation of the sizes it names, or an error listing every missing weight."""
    fix = f"rebuild with `groundtruth build {path.name}`"
    layers = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    heads = state.get("blocks.0.W_Q")
    n_heads = heads.shape[0] if heads is not None and heads.ndim == 3 else None
    if cfg.n_layers != len(layers) or cfg.n_heads != n_heads:
        raise ArtifactError(f"{path / 'model.safetensors'} does not fit the config: {cfg.n_layers} layers of "
                            f"{cfg.n_heads} heads in the config, {len(layers)} of {n_heads} in the weights; {fix}")
    try:
        with torch.device("meta"):  # shapes only, nothing allocated
            want = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    except (RuntimeError, TypeError, ValueError, OverflowError) as err:  # torch's first line; its C++ frames follow
        raise ArtifactError(f"{path / 'config.json'}: bad model config: {(str(err).splitlines() or [''])[0][:200]}; "
                            f"{fix}") from None
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        bad = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        shown = {k: list(v[bad[0]]) if bad[0] in v else "absent" for k, v in (("file", have), ("config", want))}
        raise ArtifactError(f"{path / 'model.safetensors'} does not fit the config: weight {bad[0]} is "
                            f"{shown['file']} in the file, {shown['config']} in the config; {fix}")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types for a bad file)
        raise ArtifactError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                            f"rebuild with `groundtruth build {path.parent.name}`") from None


def load_all(root: Path | str = DEFAULT_ROOT) -> dict[str, Artifact]:
    root = Path(root)
    return {p.name: load_artifact(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
