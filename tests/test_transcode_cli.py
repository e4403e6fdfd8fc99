"""`prune transcode`: transcoders trained on a shipped language model's MLPs from a generated task's text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prune.cli import main
from prune.loaders import from_hf
from prune.transcoder import load_transcoders

GPT2 = Path(__file__).resolve().parent.parent / "models" / "gpt2-ioi-gt"
ARGS = ["transcode", "--model", str(GPT2), "--task", "ioi", "--n", "16", "--steps", "60", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tc") / "run"
    threads = torch.get_num_threads()
    try:
        code = main([*ARGS, "--layers", "0,2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return code, out


def test_trains_saves_and_scores_the_chosen_layers(run, capsys):
    code, out = run
    assert code == 0
    model = from_hf(GPT2)
    tcs = load_transcoders(out / "transcoders", model=model)  # circuit-tracer's layout, checked against the model
    assert sorted(tcs) == [0, 2] and tcs[0].cfg.d_transcoder == 4 * model.cfg.d_mlp
    report = json.loads((out / "transcode.json").read_text())
    assert [r["layer"] for r in report["layers"]] == [0, 2] and report["task"] == "ioi"
    assert 0 < report["layers"][0]["nmse"] < 1  # better than predicting the mean output
    # With error terms the replacement is the model (float32 rounding); without, KL is measured and finite.
    assert report["replacement_with_error_terms"]["max_abs_logit_diff"] < 1e-3
    assert report["replacement"]["kl"] is not None and report["replacement"]["kl"] >= 0


@pytest.mark.parametrize("extra, match", [
    (["--layers", "3"], "MLP layer 3 is out of range: this model's MLP layers are 0..2"),
    (["--layers", "0,0"], "names a layer twice"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--expansion", "0"], "positive number"),
    (["--l1", "nan"], "coefficient"),
])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "new"
    args = [*ARGS, "--out", str(out)]
    for k, v in zip(extra[::2], extra[1::2], strict=True):
        if k in args:
            args[args.index(k) + 1] = v
        else:
            args += [k, v]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_out_folder_that_holds_files_is_not_replaced(run, capsys):
    _, out = run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main([*ARGS, "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
