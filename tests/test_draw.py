"""Drawings of circuits (prune.draw): both files written whole, the comparison's counts in the picture,
and every refusal made before anything is written."""

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from conftest import artifact, library_case
from prune import Circuit
from prune.draw import draw_circuit
from prune.graph import Graph


def _truth(name="reverse", ablation="zero"):
    art = artifact(name)
    return Circuit(graph=art.model.graph, edges=tuple(art.functional(ablation)), ablation=ablation, model=name,
                   d_model=art.model.cfg.d_model)


def test_a_circuit_against_its_truth_is_drawn_as_png_and_svg_with_the_counts(tmp_path):
    truth = _truth()
    g = truth.graph
    extra = tuple(e for e in g.edge_names if e not in truth.edges)[:3]
    found = dataclasses.replace(truth, edges=truth.edges[1:] + extra)
    paths = draw_circuit(found, tmp_path / "sub" / "reverse-zero", truth=truth, labels={"a0.h0": "x = Select"})
    assert [p.name for p in paths] == ["reverse-zero.png", "reverse-zero.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    ET.fromstring(svg)  # well-formed
    tp = len(truth) - 1
    for text in (f"true positive (in both): {tp}", "false positive (circuit only): 3", "missed (reference only): 1",
                 "x = Select", "logits", "input"):
        assert text in svg, text
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["reverse-zero.png", "reverse-zero.svg"]


def test_a_circuit_alone_names_its_ports(tmp_path):
    svg = draw_circuit(_truth(), tmp_path / "alone")[1].read_text()
    assert "q port" in svg and "k port" in svg and "v port" in svg and "true positive" not in svg


def test_what_cannot_be_drawn_is_refused_and_nothing_is_written(tmp_path):
    truth = _truth()
    other = Circuit(graph=Graph(n_layers=1, n_heads=1), edges=("input->logits",), ablation="zero", model="x",
                    d_model=4)
    cases = [
        (dict(circuit=truth.edges), "draws a prune.circuit.Circuit"),
        (dict(circuit=truth, truth=other), "truth= is a circuit of model 'x'"),
        (dict(circuit=truth, truth=_truth("sort")), None),
        (dict(circuit=truth, truth=_truth("reverse", "resample")), "ablation"),
        (dict(circuit=truth, labels={"a9.h0": "?"}), "labels= names 'a9.h0'"),
    ]
    for kwargs, message in cases:
        circuit = kwargs.pop("circuit")
        with pytest.raises(ValueError, match=message):
            draw_circuit(circuit, tmp_path / "x", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- the commands that draw
def _gt(capsys, *argv) -> tuple[int, str, str]:
    from groundtruth.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_recover_draw_saves_each_circuit_and_its_drawing_against_the_truth(tmp_path, capsys):
    draw, report = tmp_path / "drawings", tmp_path / "recovery.json"
    code, _, err = _gt(capsys, "recover", "reverse", "--ablations", "zero,resample", "--draw", draw,
                       "--report", report, "--quiet")
    assert code == 0, err
    results = json.loads(report.read_text())["results"]
    assert [r["files"] for r in results] == [
        {"circuit": f"drawings/reverse-{a}-seed0.json", "drawing": f"drawings/reverse-{a}-seed0.png"}
        for a in ("zero", "resample")]
    for r in results:
        circuit = Circuit.load(tmp_path / r["files"]["circuit"])
        assert list(circuit.edges) == r["found"] and circuit.ablation == r["ablation"]
        svg = (tmp_path / r["files"]["drawing"]).with_suffix(".svg").read_text()
        tp = len(set(r["found"]) & set(r["ground_truth"]))
        assert f"true positive (in both): {tp}" in svg
        assert f"missed (reference only): {len(r['only_ground_truth'])}" in svg
    assert sorted(p.name for p in draw.iterdir()) == sorted(
        f"reverse-{a}-seed0.{ext}" for a in ("zero", "resample") for ext in ("json", "png", "svg"))


def test_check_draw_labels_every_node_with_the_rasp_it_computes(tmp_path, capsys):
    code, out, err = _gt(capsys, "check", "reverse", "--draw", tmp_path, "--quiet")
    assert code == 0, err
    labels = library_case("reverse").compiled.node_labels()
    for variant in ("semantic", "structural", "functional-zero", "functional-mean", "functional-resample"):
        svg = (tmp_path / f"reverse-{variant}.svg").read_text()
        for text in labels.values():  # the first word of each label: the SOp it names (text may wrap after it)
            assert text.split()[0] in svg, (variant, text)
        assert Circuit.load(tmp_path / f"reverse-{variant}.json").model == "reverse"
    assert "drawn: " in out


@pytest.mark.parametrize("command", [
    ["recover", "reverse", "--ablations", "zero"],
    ["check", "reverse"],
    ["compare", "--methods", "eap", "--programs", "reverse"],
])
def test_a_draw_folder_that_cannot_take_files_is_refused_before_any_work(command, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for where, needle in ((a_file, "is a file, not a folder"), (a_file / "sub", "is a file, not a folder")):
        extra = ["--out", tmp_path / "cmp"] if command[0] == "compare" else []
        code, out, err = _gt(capsys, *command, "--draw", where, "--quiet", *extra)
        assert code == 2 and err.startswith("error: --draw") and needle in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and a_file.read_text() == "x"


_CALLS = []


def second_call_fails(model, examples, *, ablation, seed):
    """The library's ground truth the first time, a refusal (garbage) the second: a pruner that fails mid-run."""
    from prune.circuit import Circuit

    _CALLS.append(1)
    if len(_CALLS) % 2 == 0:
        return "not a circuit"
    truth = artifact("reverse").functional(ablation)
    return Circuit(graph=model.graph, edges=tuple(truth), ablation=ablation, model="", d_model=model.cfg.d_model)


def test_a_recovery_refused_mid_run_leaves_no_drawing(tmp_path, capsys):
    _CALLS.clear()
    code, _, err = _gt(capsys, "recover", "reverse", "sort", "--ablations", "zero", "--pruner",
                       f"{__name__}:second_call_fails", "--draw", tmp_path / "d", "--report", tmp_path / "r.json",
                       "--quiet")
    assert len(_CALLS) == 2, "the first run must have finished (and could have been drawn) before the refusal"
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
