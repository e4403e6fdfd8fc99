"""Fuzzing the command-line contract: every input is answered right or refused, never anything else.

Two harnesses, both hypothesis-driven and calling ``main(argv)`` in-process:

1. Argument lists for ``groundtruth`` (recover, demo, table, check, build,
   compare) and ``prune run``, mixing valid values, near misses and garbage
   (empty strings, negative and huge numbers, unicode, paths to missing
   files, folders and FIFOs, duplicated and unknown flags, unknown programs,
   bad seeds, ablations, pruner specs and targets). An argument list that
   could be valid is kept to tiny work: programs ``count`` and ``hist``, fast
   pruners (this module's, ``prune.baselines:eap``), outputs under a temporary
   folder, and every ``check``/``build`` list names a spec refused before
   anything compiles, every ``prune run`` a ``--model`` refused before anything
   loads.
2. Corruptions of a copy of the ``count`` artifact (truncation, flipped bytes,
   deleted files, a folder for a file, JSON replaced or edited at a drawn
   place, NaN or infinite weights, bad example tensors; with or without
   provenance.json's hashes updated to match), read by ``groundtruth table``.

The contract (:func:`check_contract`): exit status 0, 1 or 2, never an
exception; on 2, one line ``error: ...`` on stderr (a progress bar the
command drew before the refusal aside) and no traceback; no file written
outside the temporary output folder, nothing left there on a refusal, the
inputs unchanged.

The default profile runs a few hundred examples in all (derandomized, as
tests/conftest.py sets it); ``pytest -m slow tests/test_fuzz.py`` runs the deep
one, many more and random. Minimised findings are explicit tests at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import truth_pruner
from groundtruth.artifacts import DEFAULT_ROOT
from groundtruth.cli import main as gt_main
from prune.cli import main as prune_main

ROOT = Path(__file__).resolve().parent.parent
ME = __name__
HASHED = ("model.safetensors", "examples.safetensors", "config.json", "circuits.json")
FILES = (*HASHED, "provenance.json")

# Per test: (examples in the default profile, in the slow deep one).
FAST = {"groundtruth": 250, "prune": 100, "artifact": 250}
DEEP = {"groundtruth": 2500, "prune": 1000, "artifact": 2500}


def fast(name: str):
    return settings(max_examples=FAST[name], deadline=None, derandomize=True, phases=[p for p in Phase
                    if p is not Phase.explain], suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


def deep(name: str):
    return settings(max_examples=DEEP[name], deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------ test pruners
def raising_pruner(model, examples, *, ablation, seed):
    raise ValueError("the pruner's own error")


def garbage_pruner(model, examples, *, ablation, seed):
    return {"edges": []}


def exiting_pruner(model, examples, *, ablation, seed):
    sys.exit(3)


def mislabelled_pruner(model, examples, *, ablation, seed):
    return dataclasses.replace(truth_pruner(model, examples, ablation=ablation, seed=seed),
                               ablation="mean" if ablation != "mean" else "zero")


def wrong_signature_pruner(model, examples):
    return None


# --------------------------------------------------------------- the inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Read-only inputs every example may name (``@IN@``): artifact roots, program files, a FIFO, ..."""
    d = tmp_path_factory.mktemp("fuzz_inputs")
    for name in ("count", "hist"):
        shutil.copytree(DEFAULT_ROOT / name, d / "root_ok" / name)
    shutil.copytree(DEFAULT_ROOT / "count", d / "root_bad" / "count")
    (d / "root_bad" / "count" / "circuits.json").write_text("{}")
    (d / "root_empty").mkdir()
    (d / "file.txt").write_text("not a folder\n")
    os.mkfifo(d / "fifo")
    os.mkfifo(d / "fifo.py")
    (d / "dir.py").mkdir()
    (d / "model_noconfig").mkdir()
    (d / "model_noconfig" / "weights.bin").write_bytes(b"\0" * 8)
    for name, config in (("model_badconfig", "{}"), ("model_noweights", '{"model_type": "gpt2"}')):
        (d / name).mkdir()  # past the path checks: refused when it loads (after --out is made and locked)
        (d / name / "config.json").write_text(config)
    from prune.circuit import Circuit
    from prune.graph import Graph

    for name, layers, conventions, edges in (("c_scored", 1, "eap-ig", ()), ("c_one", 1, "eap-ig", ("input->logits",)),
                                             ("c_ours", 1, "ours", ()), ("c_other", 2, "eap-ig", ())):
        g = Graph(n_layers=layers, n_heads=2, conventions=conventions)
        Circuit(graph=g, edges=edges, ablation="resample", model="toy", d_model=4, method="fuzz",
                scores=tuple(float(i) for i in range(g.n_edges))).save(d / f"{name}.json")
    (d / "c_broken.json").write_text('{"cfg": {"n_layers": 1}}')
    (d / "plan_config").mkdir()
    (d / "plan_config" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2,
                                                               "n_embd": 16, "vocab_size": 100, "n_positions": 64}))
    (d / "plan_bad").mkdir()
    (d / "plan_bad" / "config.json").write_text('{"model_type": "gpt2", "n_layer": 0, "mystery": 1}')
    progs = d / "progs"
    progs.mkdir()
    tiny = ('from tracr.rasp import rasp\nfrom groundtruth import program\n\n'
            '@program(vocab={{"a", "b"}}, max_seq_len=2, name={name!r})\n'
            'def {func}():\n    return rasp.categorical(rasp.Map(lambda t: t, rasp.tokens))\n')
    (progs / "syntax.py").write_text("def broken(:\n")
    (progs / "noimport.py").write_text("import no_such_module_for_fuzz\n")
    (progs / "raises.py").write_text("raise SystemExit(0)\n")
    (progs / "none.py").write_text("X = 1\n")
    (progs / "clash.py").write_text(tiny.format(name="reverse", func="mine"))
    (progs / "twins.py").write_text(tiny.format(name="twin", func="one") + tiny.format(name="twin", func="two"))
    (progs / "ok.py").write_text(tiny.format(name="ok_prog", func="ok_prog"))  # only ever named as ok.py:<missing>
    for p in d.rglob("*"):
        if p.is_file():
            p.chmod(0o444)
    return d


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: its bytes (files), "dir", or its kind (FIFOs are never read)."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_dir():
            out[key] = "dir"
        elif p.is_file():
            out[key] = p.read_bytes()
        else:
            out[key] = "special"
    return out


TOOL_CACHES = (".hypothesis", ".pytest_cache", ".ruff_cache")  # written by the tools, not by the commands


def repo_state() -> dict[str, object]:
    """What a command could have written into the repository by mistake: names at its top level and in tests/,
    out/ and compiled_models/ (names only: others may be editing files here meanwhile)."""
    state: dict[str, object] = {}
    for sub in ("", "tests", "out", "compiled_models"):
        folder = ROOT / sub
        entries = folder.iterdir() if sub in ("", "tests") else folder.rglob("*")
        state[sub] = sorted(str(p.relative_to(folder)) for p in entries if "__pycache__" not in p.parts
                            and p.name not in TOOL_CACHES) if folder.is_dir() else None
    return state


def _progress(line: str) -> bool:
    """A tqdm progress-bar fragment (drawn before a refusal when --quiet is not given)."""
    return "|" in line and ("it/s" in line or "s/it" in line or "?it" in line)


class HangError(AssertionError):
    """A command still running after HANG_SECONDS (e.g. blocked reading a FIFO)."""


HANG_SECONDS = 30


@contextlib.contextmanager
def hang_guard(argv):
    """Turn a hang into a failure: SIGALRM interrupts even a blocking open() of a FIFO."""
    def alarm(signum, frame):
        raise HangError(f"main({argv!r}) still running after {HANG_SECONDS} s")

    before = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def run_cli(main, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured; torch's thread count, sys.path and the umask restored."""
    threads, path = torch.get_num_threads(), list(sys.path)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
        sys.path[:] = path
    return code, out.getvalue(), err.getvalue()


def check_contract(main, argv: list[str], out_dir: Path, inputs: Path | None) -> tuple[int, str, str]:
    """Run ``main(argv)`` in ``out_dir`` and assert the contract (module doc); returns (code, stdout, stderr)."""
    before_inputs = snapshot(inputs) if inputs is not None else None
    before_repo = repo_state()
    with contextlib.chdir(out_dir), hang_guard(argv):
        try:
            code, out, err = run_cli(main, argv)
        except HangError:
            raise
        except BaseException as exc:  # noqa: BLE001 (the contract: main returns, whatever the input)
            raise AssertionError(f"main({argv!r}) raised {type(exc).__name__}: {exc}") from exc
    where = f"main({argv!r}) -> {code}, stderr {err[-600:]!r}"
    assert code in (0, 1, 2), where
    assert "Traceback" not in err, where
    lines = [line for line in err.splitlines() if line.strip() and not _progress(line)]
    errors = [line for line in lines if line.startswith("error: ")]
    if code == 2:
        assert len(lines) == 1 and len(errors) == 1, where
        assert len(errors[0].split()) >= 5, f"{where}: the message names no value and nothing to do"
        written = [p for p in out_dir.rglob("*") if p.is_file()]
        assert not written, f"{where}: refused, but wrote {written}"
    else:
        assert not errors, where
    leftovers = [p for p in out_dir.rglob("*") if p.name.endswith((".tmp", ".building", ".probe"))]
    assert not leftovers, f"{where}: temporary files left: {leftovers}"
    if inputs is not None:
        assert snapshot(inputs) == before_inputs, f"{where}: changed its inputs"
    assert repo_state() == before_repo, f"{where}: wrote into the repository"
    return code, out, err


def substitute(argv: list[str], inputs: Path, out_dir: Path) -> list[str]:
    return [a.replace("@IN@", str(inputs)).replace("@OUT@", str(out_dir)) for a in argv]


# ------------------------------------------------------ argument strategies
GARBAGE = st.one_of(
    st.sampled_from(["", " ", "-", "--", "-1", "0", "-0", "1e309", "nan", "inf", "99999999999999999999999",
                     "9223372036854775808", "ü", "名前", "\u202e", "a\tb", "a,b", ",", "@IN@/missing", "@IN@/fifo",
                     "@IN@/file.txt", "@IN@", "@IN@/dir.py", "--bogus", "-x", "--help=1", "~", "/", "."]),
    st.text(max_size=6),
)
# (valid and cheap, near misses): an argument list drawn "valid" takes only the first; a "mixed" one both and garbage.
PRUNERS = ([f"{ME}:truth_pruner", "prune.baselines:eap"],
           [f"{ME}:raising_pruner", f"{ME}:garbage_pruner", f"{ME}:exiting_pruner", f"{ME}:mislabelled_pruner",
            f"{ME}:wrong_signature_pruner", f"{ME}:FAST", "nocolon", "", ":", ":fn", "mod:",
            "no_such_module_for_fuzz:fn", "prune.baselines:nope", "os:getcwd", "builtins:print", "builtins:dict",
            "json:loads", "sys:exit", "groundtruth.cli:main", "prune.baselines:METHODS", "ü:ü", "prune..baselines:eap",
            "@IN@/progs/ok.py:ok_prog"])
SPECS = (["count", "hist"],
         ["bogus", "", "COUNT", "count ", " hist", "count:x", ":count", "reverse.py", "@IN@/missing.py",
          "@IN@/fifo.py", "@IN@/dir.py", "@IN@/file.txt", "@IN@/progs/syntax.py", "@IN@/progs/noimport.py",
          "@IN@/progs/raises.py", "@IN@/progs/none.py", "@IN@/progs/clash.py", "@IN@/progs/twins.py",
          "@IN@/progs/ok.py:nope", "@IN@/progs/twins.py:twin", "ü", "-"])  # not ok.py or ok.py: (they compile)
ABLATIONS = (["zero", "resample", "mean", "zero,resample", "resample,zero", " zero", "zero ,mean"],
             ["zero,zero", "bogus", "", ",", "zero,", "ZERO", "zero,bogus", "zero resample", "zero;mean"])
ABLATION = (["zero", "resample", "mean"], ["bogus", "zero,resample", "", "ZERO", ","])
SEEDS = (["0", "1", "0,1", "0-1", "00", " 0", "0 ,1", "9223372036854775807", "3-3"],
         ["1-0", "", ",", "a", "1.5", "-1", "0-1,1", "0-99999999999999999999999", "9223372036854775808", "0-10000",
          "1e3", "\uff10", "0x1", "1_000"])
SEED = (["0", "7", " 1"], SEEDS[1] + ["0,1", "0-1"])
THREADS = (["1", " 1", "01"], ["0", "-1", "", "a", "1.0", "99999999999", "1025", "2**3", "\uff11"])
REPORTS = (["@OUT@/r.json", "@OUT@/sub/dir/r.json", "r.json", "@OUT@/r"],
           ["@OUT@", "@OUT@/", "", ".", "@IN@/file.txt/r.json", "@IN@/fifo/r.json", "@IN@/dir.py"])
ROOTS = (["@IN@/root_ok", str(DEFAULT_ROOT), "@IN@/root_ok/"],
         ["@IN@/root_bad", "@IN@/root_empty", "@IN@/missing", "@IN@/fifo", "@IN@/file.txt", "", "@IN@/root_ok/count",
          "@IN@/progs", "@OUT@"])
METHODS = (["eap", "eap_ig", "acdc", "eap,eap_ig", " eap"],
           ["eap,eap", "bogus", "", ",", "EAP", "eap,bogus", "eap,"])
PROGRAMS = (["count", "hist", "count,hist", "@IN@/root_ok/count", " count"],
            ["bogus", "", ",", "count,count", "count,", "@IN@/root_bad/count", "@IN@/missing", "@IN@/file.txt"])
COMPARE_OUT = (["@OUT@/cmp", "@OUT@", "@OUT@/a/b", "cmp"], ["", "@IN@/file.txt", "@IN@/fifo"])
PLOT = (["count"], ["hist", "bogus", "", "@IN@/root_ok/count"])
BUILD_OUT = (["@OUT@/b", "@OUT@", "@OUT@/a/b/c"], ["", "@IN@/file.txt", "@IN@/fifo"])
DRAW = (["@OUT@/drawings", "@OUT@", "d"], ["", "@IN@/file.txt", "@IN@/fifo", "@IN@/file.txt/d"])
# Report tables: none valid among the inputs (a valid one needs a compare run first; test_report.py has those).
TABLES = ([], ["@IN@/file.txt", "@IN@/fifo", "@IN@/missing", "@IN@/dir.py", "@IN@/root_ok/count/config.json",
               "@IN@/root_ok/count", "", "."])
REPORT_OUT = (["@OUT@/r.html", "@OUT@/a/r.html"], ["@OUT@", "", "@IN@/file.txt/r.html", "@IN@/fifo"])
MODELS = ([], ["@IN@/missing_model", "@IN@/model_noconfig", "@IN@/root_empty", "@IN@/file.txt", "@IN@/fifo", "",
               " ", "./no_such_model_dir", "@IN@/missing/deeper", "~/no_such_model_for_fuzz/x", "@IN@/model_badconfig",
               "@IN@/model_noweights"])
TASKS = (["ioi", "greater_than", "boolean_expressions"], ["bogus", "", "IOI"])
TARGETS = (["0.9", "0.5,0.9", "-0", "1e-400", "1", "0"], ["", "nan", "1.5", "0.9,0.9", "a", "0.1,,0.2", "inf", "-1"])
RUN_OUT = (["@OUT@/run", "@OUT@"], ["", "@IN@/file.txt", "@IN@/fifo"])
POSITIVE = (["1", "200", "32"], ["0", "-5", "a", "", "1.5"])
DTYPES = (["fp32", "bf16", "fp16"], ["fp64", "", "FP32"])


def unit(flag: str, values, ok: bool) -> st.SearchStrategy[list[str]]:
    """``[flag, value]`` (or ``[flag=value]``), the value from ``values`` (valid, near misses): the valid ones
    alone when ``ok``, else all of them and garbage."""
    valid, near = values
    drawn = st.sampled_from(valid) if ok else st.one_of(st.sampled_from(valid + near), GARBAGE) if valid + near \
        else GARBAGE
    # --flag=-- included: Python 3.11's argparse hands the action [] for it, which prune._cli.ArgumentParser refuses.
    return st.one_of(drawn.map(lambda v: [flag, v]), drawn.map(lambda v: [f"{flag}={v}"]))


@st.composite
def assemble(draw, head: list[str], positionals: list[str], options: list[st.SearchStrategy], tail: list[list[str]],
             ok: bool, required: tuple[st.SearchStrategy, ...] = ()):
    """``head + positionals``, then some of ``options`` (each drawn once or twice: a duplicated flag), every one
    of ``required`` and, unless ``ok``, garbage, in a drawn order, then ``tail``: the options that keep the work
    small (argparse keeps an option's last value, so they win over earlier duplicates)."""
    units = [draw(o) for o in options for _ in range(draw(st.sampled_from([0, 1, 1, 2])))]
    units += [draw(o) for o in required for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
    if not ok:
        units += draw(st.lists(st.one_of(GARBAGE.map(lambda g: [g]), unit("--bogus-flag", ([], []), False)),
                               max_size=1))
    units = draw(st.permutations(units)) if units else []
    return [*head, *positionals, *[a for u in units for a in u], *[a for u in tail for a in u]]


@st.composite
def recover_argv(draw):
    ok, demo = draw(st.booleans()), draw(st.sampled_from([False, False, False, True]))
    specs = [] if demo else draw(st.lists(st.sampled_from(SPECS[0] if ok else SPECS[0] + SPECS[1]),
                                          min_size=1, max_size=2))
    options = [unit("--ablations", ABLATIONS, ok), unit("--seeds", SEEDS, ok), unit("--threads", THREADS, ok),
               unit("--report", REPORTS, ok), st.just(["--quiet"]), unit("--pruner", PRUNERS, ok)]
    if draw(st.integers(0, 4)) == 0:  # a drawing costs a few tenths of a second
        options.append(unit("--draw", DRAW, ok))
    # The whole library for demo: only pruners that are refused (before or at the first run) keep it small.
    cheap = not demo and all(s in SPECS[0] for s in specs)
    tail = [["--pruner", draw(st.sampled_from(PRUNERS[0] if ok and cheap else PRUNERS[1]
                                              if not cheap else PRUNERS[0] + PRUNERS[1]))]]
    return draw(assemble(["demo" if demo else "recover"], specs, options, tail, ok))


@st.composite
def table_argv(draw):
    ok = draw(st.booleans())
    return draw(assemble(["table"], [], [unit("--root", ROOTS, ok)], [], ok))


@st.composite
def compile_argv(draw):
    """``check`` or ``build`` with at least one spec refused before anything compiles."""
    command, ok = draw(st.sampled_from(["check", "build"])), draw(st.booleans())
    specs = draw(st.lists(st.sampled_from(SPECS[0] + SPECS[1]), max_size=2))
    specs.insert(draw(st.integers(0, len(specs))), draw(st.sampled_from(SPECS[1])))
    options = [st.just(["--quiet"])] + ([unit("--out", BUILD_OUT, ok)] if command == "build" else
                                        [unit("--draw", DRAW, ok)])
    # Never compiled, but were it to be, its artifacts go under the output folder, not into compiled_models/.
    tail = [["--out", draw(st.sampled_from(BUILD_OUT[0] + BUILD_OUT[1]))]] if command == "build" else []
    return draw(assemble([command], specs, options, tail, ok))


@st.composite
def compare_argv(draw):
    ok = draw(st.booleans())
    options = [unit("--ablation", ABLATION, ok), unit("--out", COMPARE_OUT, ok), unit("--seed", SEED, ok),
               unit("--threads", THREADS, ok), st.just(["--quiet"]), unit("--methods", METHODS, ok),
               unit("--programs", PROGRAMS, ok)]
    if draw(st.integers(0, 9)) == 0:  # a plot costs a few tenths of a second
        options.append(unit("--plot", PLOT, ok))
    if draw(st.integers(0, 4)) == 0:
        options.append(unit("--draw", DRAW, ok))
    tail = [["--methods", draw(st.sampled_from(METHODS[0] if ok else METHODS[0] + METHODS[1]))],
            ["--programs", draw(st.sampled_from(PROGRAMS[0] if ok else PROGRAMS[0] + PROGRAMS[1]))]]
    return draw(assemble(["compare"], [], options, tail, ok))


@st.composite
def report_argv(draw):
    ok = draw(st.booleans())
    table = draw(st.sampled_from(TABLES[1]))
    options = [unit("--out", REPORT_OUT, ok), unit("--title", (["t", "a <b> & c"], ["", "\u202e"]), ok),
               st.just(["--quiet"])]
    return draw(assemble(["report"], [table], options, [], ok))


GROUNDTRUTH_ARGV = st.one_of(
    recover_argv(), recover_argv(), table_argv(), compile_argv(), compare_argv(), compare_argv(), report_argv(),
    st.lists(GARBAGE, max_size=3),  # no or an unknown subcommand
    st.sampled_from([["--help"], ["recover", "--help"], ["table", "-h"], ["-h", "bogus"], ["compare", "--help"]]),
)


@st.composite
def prune_argv(draw):
    """``prune run`` lists whose ``--model`` is always refused before any weights load (missing, a file, a FIFO,
    a folder without config.json, an empty string; a config.json that is no model, or a model without weights):
    every other argument may be valid."""
    ok = draw(st.booleans())
    required = (unit("--task", TASKS, ok), unit("--target-edge-sparsity", TARGETS, ok), unit("--out", RUN_OUT, ok))
    options = [unit("--n", POSITIVE, ok), unit("--steps", POSITIVE, ok), unit("--batch-size", POSITIVE, ok),
               unit("--ablation", ABLATION, ok), unit("--seed", SEED, ok), unit("--dtype", DTYPES, ok),
               unit("--checkpoint-every", POSITIVE, ok), st.just(["--resume"]), unit("--threads", THREADS, ok),
               st.just(["--quiet"])]
    if not ok:  # required options may be missing too
        options, required = [*options, *required], ()
    head = ["run"] if ok else draw(st.sampled_from([["run"], ["run"], ["run"], [], ["bogus"], ["run", "extra"]]))
    tail = [["--model", draw(st.sampled_from(MODELS[1]))]] if head[:1] == ["run"] else []
    return draw(assemble(head, [], options, tail, ok, required))


CIRCUIT_FILES = (["@IN@/c_scored.json", "@IN@/c_one.json"],
                 ["@IN@/c_ours.json", "@IN@/c_other.json", "@IN@/c_broken.json", "@IN@/fifo", "@IN@/file.txt",
                  "@IN@/missing.json", "@IN@"])
MIB_OUT = ["@OUT@/mib", "@OUT@", "@OUT@/a/b"], ["", "@IN@/file.txt", "@IN@/fifo", "@IN@/file.txt/x"]
NAMES = (["toy", "ep", "eap-ig"], ["", " ", "a/b", ".", "..", "my_model"])


@st.composite
def mib_export_argv(draw):
    """``prune mib-export`` lists; every output lands under the example's own folder (no garbage for --out)."""
    ok = draw(st.booleans())
    files = draw(st.lists(st.sampled_from(CIRCUIT_FILES[0] if ok else CIRCUIT_FILES[0] + CIRCUIT_FILES[1]),
                          min_size=1 if ok else 0, max_size=3))
    out = draw(st.sampled_from(MIB_OUT[0] if ok else MIB_OUT[0] + MIB_OUT[1]))
    required = (unit("--task", TASKS, ok), unit("--model-name", NAMES, ok), unit("--method", NAMES, ok))
    options = [unit("--mode", (["scores", "circuits"], ["", "both"]), ok), st.just(["--any-conventions"])]
    if not ok:
        options, required = [*options, *required], ()
    return draw(assemble(["mib-export"], files, options, [["--out", out]], ok, required))


PLAN_MODELS = (["gpt2", "codellama/CodeLlama-13b-hf", "@IN@/plan_config"],
               ["@IN@/file.txt", "@IN@/fifo", "@IN@/missing.json", "@IN@", "@IN@/plan_bad/config.json", "./x.json"])


@st.composite
def plan_argv(draw):
    """``prune plan`` lists (it writes nothing; 1 means "does not fit"). No bare hub names: they need a network."""
    ok = draw(st.booleans())
    required = (unit("--model", PLAN_MODELS, ok), unit("--batch", POSITIVE, ok), unit("--seq", POSITIVE, ok))
    options = [unit("--dtype", DTYPES, ok), unit("--nproc", (["1", "2", "8"], ["0", "-1", "x"]), ok),
               unit("--examples", POSITIVE, ok), unit("--ablation", ABLATION, ok),
               unit("--gpu-memory", (["80", "0.5", "141"], ["0", "-1", "nan", "inf", "x"]), ok)]
    if not ok:
        options, required = [*options, *required], ()
    return draw(assemble(["plan"], [], options, [], ok, required))


def _fuzz_plan(inputs, argv):
    with tempfile.TemporaryDirectory(prefix="fuzz_out_") as tmp:
        code, out, _ = check_contract(prune_main, substitute(argv, inputs, Path(tmp)), Path(tmp), inputs)
        assert code in (0, 1, 2), f"prune {argv!r} -> {code}"
        if code in (0, 1) and not any(a in ("-h", "--help") or a.startswith("--h") for a in argv):
            assert "total per rank" in out and ("fits" in out), (argv, out)


def _fuzz_mib_export(inputs, argv):
    with tempfile.TemporaryDirectory(prefix="fuzz_out_") as tmp:
        code, out, _ = check_contract(prune_main, substitute(argv, inputs, Path(tmp)), Path(tmp), inputs)
        assert code in (0, 2), f"prune {argv!r} -> {code}"
        if code == 0 and not any(a in ("-h", "--help") or a.startswith("--h") for a in argv):
            written = sorted(p for p in Path(tmp).rglob("*.json"))
            assert written and all(str(p) in out for p in written if p.name != "importances.json") or \
                [p.name for p in written] == ["importances.json"], (argv, out, written)


def _fuzz_groundtruth(inputs, argv):
    with tempfile.TemporaryDirectory(prefix="fuzz_out_") as tmp:
        check_contract(gt_main, substitute(argv, inputs, Path(tmp)), Path(tmp), inputs)


def _fuzz_prune(inputs, argv):
    with tempfile.TemporaryDirectory(prefix="fuzz_out_") as tmp:
        code, _, _ = check_contract(prune_main, substitute(argv, inputs, Path(tmp)), Path(tmp), inputs)
        assert code in (0, 2), f"prune {argv!r} -> {code}"  # `prune run` has no exit 1
        assert code != 0 or any(a in ("-h", "--help") or a.startswith("--h") for a in argv), argv


# Each fuzz test runs under the fast profile in `make test` and the deep one (random, many more examples)
# behind the slow marker, in `make test-slow`.
PROFILES = [pytest.param(fast, id="fast"), pytest.param(deep, id="deep", marks=pytest.mark.slow)]


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_groundtruth_arguments(inputs, profile):
    given(argv=GROUNDTRUTH_ARGV)(profile("groundtruth")(lambda argv: _fuzz_groundtruth(inputs, argv)))()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_prune_run_arguments(inputs, profile):
    given(argv=prune_argv())(profile("prune")(lambda argv: _fuzz_prune(inputs, argv)))()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_prune_plan_arguments(inputs, profile):
    given(argv=plan_argv())(profile("prune")(lambda argv: _fuzz_plan(inputs, argv)))()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_prune_mib_export_arguments(inputs, profile):
    given(argv=mib_export_argv())(profile("prune")(lambda argv: _fuzz_mib_export(inputs, argv)))()


# ------------------------------------------------------- artifact corruption
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.sampled_from([2**31, 2**63, -(2**63), 10**30])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5)
    | st.sampled_from(["zero", "categorical", "numerical", "m0->logits", "input->logits", "a0.h0"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def _json_paths(value, prefix=()):
    """Every place in a JSON value: tuples of keys and indices."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, (*prefix, i))


def rehash(folder: Path) -> None:
    """Update provenance.json's hashes to the files as they are (where provenance.json still parses)."""
    if not (folder / "provenance.json").is_file():
        return
    try:
        prov = json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(prov, dict):
        return
    prov["files_sha256"] = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest()
                            for f in HASHED if (folder / f).is_file()}
    (folder / "provenance.json").write_text(json.dumps(prov))


def _edit_json(data, folder: Path, fname: str) -> str:
    path = folder / fname
    doc = json.loads(path.read_text())
    how = data.draw(st.sampled_from(["set", "delete", "replace"]), label="json edit")
    if how == "replace":
        doc = data.draw(JSON_VALUES, label="new document")
    else:
        paths = [p for p in _json_paths(doc) if p or how == "set"]
        at = data.draw(st.sampled_from(paths), label="place")
        if not at:
            doc = data.draw(JSON_VALUES, label="new document")
        else:
            parent = doc
            for key in at[:-1]:
                parent = parent[key]
            if how == "delete":
                del parent[at[-1]]
            else:
                parent[at[-1]] = data.draw(JSON_VALUES, label="new value")
    path.write_text(json.dumps(doc))
    return f"json {how}"


def _edit_tensors(data, folder: Path, fname: str) -> str:
    tensors = load_file(str(folder / fname))
    key = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
    t = tensors[key]
    how = data.draw(st.sampled_from(["value", "dtype", "shape", "drop", "add", "empty", "cut all"]),
                    label="tensor edit")
    if how == "cut all":  # every tensor to its first k rows or positions: still a consistent set
        dim = data.draw(st.integers(0, 1), label="dim")
        k = data.draw(st.integers(0, min(v.shape[dim] for v in tensors.values() if v.ndim > dim)), label="k")
        tensors = {n: v.narrow(dim, 0, k).contiguous() if v.ndim > dim else v for n, v in tensors.items()}
    elif how == "value" and t.numel():
        flat = t.flatten().clone()
        i = data.draw(st.integers(0, flat.numel() - 1), label="element")
        if flat.is_floating_point():
            flat[i] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e30, 0.0]), label="float")
        elif flat.dtype == torch.bool:
            flat[i] = not bool(flat[i])
        else:
            flat[i] = data.draw(st.sampled_from([-1, 5, 6, 2**31 - 1, 0, 1]), label="id")
        tensors[key] = flat.reshape(t.shape)
    elif how == "dtype":
        dtype = data.draw(st.sampled_from([torch.float16, torch.float64, torch.int8, torch.int64, torch.bool,
                                           torch.float32, torch.int32]), label="dtype")
        tensors[key] = t.to(dtype)
    elif how == "shape":
        tensors[key] = t.flatten() if data.draw(st.booleans(), label="flatten") else t[..., :-1].contiguous()
    elif how == "drop":
        del tensors[key]
        if not tensors:
            tensors["other"] = torch.zeros(1)
    elif how == "add":
        tensors["extra"] = torch.zeros(2)
    else:
        tensors[key] = t[:0].contiguous()
    save_file(tensors, str(folder / fname))
    return f"tensors {how} {key} of"


def corrupt(data, folder: Path) -> tuple[str, bool]:
    """Apply one drawn corruption to an artifact folder; (what was done, whether hashes were updated)."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "delete", "folder", "fifo", "json", "tensors",
                                      "nan weights"]), label="corruption")
    fname = data.draw(st.sampled_from(FILES), label="file")
    path = folder / fname
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw)), label="offset")])
    elif kind == "flip":
        raw = bytearray(path.read_bytes())
        for at, mask in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                                           min_size=1, max_size=4), label="flips"):
            raw[at] ^= mask
        path.write_bytes(bytes(raw))
    elif kind == "delete":
        path.unlink()
    elif kind == "folder":
        path.unlink()
        path.mkdir()
        if data.draw(st.booleans(), label="non-empty folder"):
            (path / "x").write_text("x")
    elif kind == "fifo":  # reading it would block: it must be refused unread
        path.unlink()
        os.mkfifo(path)
        return f"{kind} {fname}", False
    elif kind == "json":
        fname = data.draw(st.sampled_from(["config.json", "circuits.json", "provenance.json"]), label="json file")
        kind = _edit_json(data, folder, fname)
    elif kind == "tensors":
        fname = data.draw(st.sampled_from(["model.safetensors", "examples.safetensors"]), label="tensor file")
        kind = _edit_tensors(data, folder, fname)
    else:
        weights = load_file(str(folder / "model.safetensors"))
        key = data.draw(st.sampled_from(sorted(weights)), label="weight")
        flat = weights[key].flatten().clone()
        flat[data.draw(st.integers(0, flat.numel() - 1), label="element")] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf]), label="value")
        weights[key] = flat.reshape(weights[key].shape)
        save_file(weights, str(folder / "model.safetensors"))
        rehash(folder)
        return "nan weights", True
    rehashed = data.draw(st.sampled_from([True, True, False]), label="rehash")
    if rehashed:
        rehash(folder)
    return f"{kind} {fname}", rehashed


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(DEFAULT_ROOT / "count", root / "count")
    return root / "count"


def _fuzz_artifact(pristine: Path, data) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz_artifact_") as tmp:
        root, out_dir = Path(tmp) / "root", Path(tmp) / "out"
        out_dir.mkdir()
        folder = root / "count"
        shutil.copytree(pristine, folder)
        what, rehashed = corrupt(data, folder)
        changed = snapshot(folder) != snapshot(pristine)
        code, out, err = check_contract(gt_main, ["table", "--root", str(root)], out_dir, root)
        assert code in (0, 2), f"{what}: table -> {code}"
        if not changed:
            assert code == 0, f"{what} changed nothing, but table refused it: {err!r}"
        elif what == "nan weights" or not rehashed and what.split()[-1] in HASHED or what.split()[0] in (
                "delete", "folder", "fifo"):  # a hashed file changed and its hash not updated, one gone, NaN weights
            assert code == 2, f"{what} (rehashed {rehashed}) was accepted: {out!r}"
        if code == 0:
            assert "| count " in out


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_artifact_corruption(pristine, profile):
    given(data=st.data())(profile("artifact")(lambda data: _fuzz_artifact(pristine, data)))()


# ------------------------------------------------------ minimised findings
# Each failed before its fix (the fuzz found the first four kinds; the rest are their siblings).
def _refused(main, argv, tmp_path, *needles, inputs=None) -> str:
    code, _, err = check_contract(main, [str(a) for a in argv], tmp_path, inputs)
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    return err


def test_found_a_seed_range_past_2_63_is_refused(tmp_path):
    # OverflowError from len(range(...)) in parse_seeds, with a traceback.
    _refused(gt_main, ["recover", "count", "--seeds", "0-99999999999999999999999", "--pruner",
                       f"{ME}:truth_pruner"], tmp_path, "--seeds '0-99999999999999999999999'", "10000")


def test_found_a_program_file_that_exits_on_import_is_refused(inputs, tmp_path):
    # SystemExit escaped load_file (it caught Exception only) and main.
    for command in ("check", "recover"):
        _refused(gt_main, [command, inputs / "progs" / "raises.py", "--quiet"], tmp_path, "raises.py",
                 "SystemExit", inputs=inputs)


@pytest.mark.parametrize("command", [["recover", "count", "--pruner", f"{ME}:truth_pruner"],
                                     ["compare", "--methods", "eap", "--programs", "count"]])
@pytest.mark.parametrize("threads", ["99999999999", "1025"])
def test_found_too_many_threads_are_refused(command, threads, tmp_path):
    # "error: Overflow when unpacking long" (torch.set_num_threads), naming no value; 1025 threads were spawned.
    _refused(gt_main, [*command, "--threads", threads, "--quiet"], tmp_path, f"'{threads}'", "1 to 1024")


def _rehashed_edit(tmp_path, fname, change):
    """A copy of count's artifact with ``change`` applied to one of its JSON files and the hashes updated."""
    root = tmp_path / "root"
    shutil.copytree(DEFAULT_ROOT / "count", root / "count")
    doc = json.loads((root / "count" / fname).read_text())
    change(doc)
    (root / "count" / fname).write_text(json.dumps(doc))
    rehash(root / "count")
    (tmp_path / "out").mkdir()
    return root


@pytest.mark.parametrize("edges", [None, [[]], 3, {"m0->logits": True}])
def test_found_a_circuit_that_is_no_list_of_edge_names_is_refused(edges, tmp_path):
    # TypeError (None is not iterable; unhashable list) from load_artifact's edge check; a dict was read as its keys.
    root = _rehashed_edit(tmp_path, "circuits.json", lambda d: d["variants"].update({"functional:mean": edges}))
    _refused(gt_main, ["table", "--root", root], tmp_path / "out", "circuits.json", "functional:mean",
             "not a list of edge names", inputs=root)


@pytest.mark.parametrize("fname, change, needle", [
    ("circuits.json", lambda d: d["variants"].pop("semantic"), "has no semantic circuit"),
    ("config.json", lambda d: d.pop("causal"), "'causal' is None"),
    ("config.json", lambda d: d.update(causal="yes"), "'causal' is 'yes'"),
    ("circuits.json", lambda d: d.pop("verification"), "'verification'"),
    ("circuits.json", lambda d: d.update(verification=[]), "'verification'"),
    ("circuits.json", lambda d: d["verification"].update(zero=1), "'verification'"),
    ("circuits.json", lambda d: d["verification"]["zero"].update(sufficient="no"), "'verification'"),
    ("config.json", lambda d: d.update(output=[]), "examples.safetensors"),
])
def test_found_table_refuses_an_artifact_without_what_its_row_shows(fname, change, needle, tmp_path):
    # "error: semantic" / "error: causal" (a KeyError's bare key), tracebacks (TypeError, AttributeError),
    # or "verified yes" for {"sufficient": "no"}.
    root = _rehashed_edit(tmp_path, fname, change)
    _refused(gt_main, ["table", "--root", root], tmp_path / "out", needle, "groundtruth build count", inputs=root)


def test_found_examples_without_positions_are_refused(tmp_path):
    # Every example tensor [N, 0]: RuntimeError from the token-id check's max() of nothing.
    root = tmp_path / "root"
    shutil.copytree(DEFAULT_ROOT / "count", root / "count")
    path = root / "count" / "examples.safetensors"
    save_file({n: v[:, :0].contiguous() for n, v in load_file(str(path)).items()}, str(path))
    rehash(root / "count")
    (tmp_path / "out").mkdir()
    _refused(gt_main, ["table", "--root", root], tmp_path / "out", "examples.safetensors", inputs=root)


@pytest.mark.parametrize("field, value", [("d_model", 2**63), ("d_mlp", 10**12), ("n_layers", 5000), ("n_heads", 30),
                                          ("n_kv_heads", -1), ("d_out", -5), ("vocab_size", 2**40)])
def test_found_a_model_config_beyond_its_weights_is_refused_before_building_it(field, value, tmp_path):
    # RuntimeError or OverflowError tracebacks from Transformer(cfg) (allocating the sizes the config names);
    # 5000 layers: a model of 5000 blocks built, then a one-line error of 1.1 MB naming its 60,000 missing weights.
    root = _rehashed_edit(tmp_path, "config.json", lambda d: d["model"].update({field: value}))
    err = _refused(gt_main, ["table", "--root", root], tmp_path / "out", "groundtruth build count", inputs=root)
    assert ("does not fit the config" in err or "bad model config" in err) and len(err) < 600, err


def test_found_a_fifo_for_provenance_or_a_circuit_file_is_refused_at_once(tmp_path):
    # load_artifact read provenance.json (Circuit.load its file) without checking it is a regular file: blocked.
    shutil.copytree(DEFAULT_ROOT / "count", tmp_path / "count")
    (tmp_path / "count" / "provenance.json").unlink()
    os.mkfifo(tmp_path / "count" / "provenance.json")
    os.mkfifo(tmp_path / "circuit.json")
    code = textwrap.dedent(f"""
        from groundtruth.artifacts import ArtifactError, load_artifact
        from prune.circuit import Circuit, CircuitFileError
        try:
            load_artifact({str(tmp_path / "count")!r})
        except ArtifactError as err:
            print("refused:", err)
        try:
            Circuit.load({str(tmp_path / "circuit.json")!r})
        except CircuitFileError as err:
            print("refused:", err)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") and "not a regular file" in line for line in lines), (
        done.stdout, done.stderr)


@pytest.mark.parametrize("argv, needle", [
    (["step", "--threads", "99999999999"], "--threads"),
    (["step", "--shapes", "0x4"], "'0x4'"),
    (["step", "--shapes", "abc"], "'abc'"),
    (["step", "--shapes", "1x4,"], "''"),
])
def test_found_bench_refuses_bad_threads_and_shapes(argv, needle, monkeypatch):
    # Each measurement failed in its subprocess: "nan s", exit 0 (as case 9's missing device), or a traceback.
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))  # bench/run.py puts the repository first

    spec = importlib.util.spec_from_file_location("bench_run_for_fuzz", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        bench.main([*argv, "--model", "gpt2", "--steps", "1"])
    assert done.value.code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


@pytest.mark.parametrize("argv", [["compare", "--out=--", "--methods", "eap", "--programs", "count"],
                                  ["table", "--root=--"], ["recover", "count", "--seeds=--"]])
def test_found_flag_equals_double_dash_is_one_line(argv, capsys):
    from groundtruth.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --") and "expected one argument" in err
