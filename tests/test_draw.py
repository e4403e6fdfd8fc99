"""Drawings of circuits (prune.draw): both files written whole, the comparison's counts in the picture,
and every refusal made before anything is written."""

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from conftest import artifact
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
