"""Bad programs and bad inputs get clear errors, and nothing is written for them."""

import textwrap

import pytest
from tracr.compiler import lib
from tracr.rasp import rasp

from groundtruth import program
from groundtruth.cli import main
from groundtruth.compiler import ProgramError, compile_program


def test_unsupported_rasp_is_refused_naming_the_expression():
    @program(vocab={1, 2}, max_seq_len=3)
    def numeric_select_keys():
        keys = rasp.numerical(rasp.Map(lambda x: x, rasp.tokens)).named("numeric_keys")
        return rasp.categorical(rasp.Aggregate(rasp.Select(keys, rasp.tokens, rasp.Comparison.EQ), rasp.tokens))

    with pytest.raises(ProgramError, match=r"Tracr cannot compile select_\d+ \(Select\): Select keys must be categorical"):
        compile_program(numeric_select_keys)


def test_composite_selector_is_refused():
    @program(vocab={1, 2}, max_seq_len=3)
    def selector_and():
        both = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ) & rasp.Select(
            rasp.indices, rasp.indices, rasp.Comparison.LEQ)
        return rasp.numerical(rasp.Aggregate(both, rasp.numerical(rasp.Map(lambda x: 1, rasp.tokens)), default=0))

    with pytest.raises(ProgramError, match="selector_and"):
        compile_program(selector_and)


@pytest.mark.parametrize("special", ["compiler_bos", "compiler_pad"])
def test_bos_or_pad_in_vocabulary_is_refused(special):
    @program(vocab={"a", special}, max_seq_len=3)
    def uses_special():
        return rasp.categorical(rasp.Map(lambda x: x, rasp.tokens))

    with pytest.raises(ProgramError, match=f"reserved token '{special}'"):
        compile_program(uses_special)


def test_program_without_tokens_is_refused():
    @program(vocab={"a"}, max_seq_len=3)
    def only_indices():
        return rasp.categorical(rasp.Map(lambda i: i + 1, rasp.indices))

    with pytest.raises(ProgramError, match="does not read rasp.tokens"):
        compile_program(only_indices)


def test_program_whose_rasp_output_is_none_is_refused():
    @program(vocab={"a", "b"}, max_seq_len=3)
    def raw_shift():  # lib.shift_by leaves position 0 as None in RASP
        return rasp.categorical(lib.shift_by(1, rasp.tokens))

    with pytest.raises(ProgramError, match=r"RASP gives None on input \['a'\]"):
        compile_program(raw_shift)


def test_program_that_compiles_wrong_is_refused_with_an_input():
    @program(vocab={1, 2, 3}, max_seq_len=3)
    def categorical_mean():  # a categorical Aggregate must select one key; this averages
        return rasp.categorical(rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), rasp.tokens))

    with pytest.raises(ProgramError, match="disagrees with RASP on input"):
        compile_program(categorical_mean)


def test_build_must_return_a_sop():
    @program(vocab={1}, max_seq_len=2)
    def not_a_sop():
        return 3

    with pytest.raises(ProgramError, match="must return a RASP SOp, got int"):
        compile_program(not_a_sop)


@pytest.fixture(scope="module")
def compiled_count():
    from conftest import library_case

    return library_case("count").compiled


def test_inputs_outside_vocabulary_are_refused(compiled_count):
    with pytest.raises(ValueError, match=r"token 'z' in input \('a', 'z'\) is not in the vocabulary"):
        compiled_count.encode([("a", "z")])


def test_too_long_inputs_are_refused(compiled_count):
    with pytest.raises(ValueError, match="has 6 tokens.*at most max_seq_len=5"):
        compiled_count.encode([("a",) * 6])


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab=set(), max_seq_len=3), "empty vocabulary"),
    (dict(vocab={1}, max_seq_len=0), "max_seq_len must be >= 1"),
    (dict(vocab={1}, max_seq_len=3, min_len=4), "min_len=4"),
])
def test_bad_program_specs_are_refused(kwargs, match):
    def spec():
        return None

    with pytest.raises(ValueError, match=match):
        program(**kwargs)(spec)


USER_FILE = textwrap.dedent('''
    from tracr.rasp import rasp
    from groundtruth import program

    @program(vocab={"a", "b", "c"}, max_seq_len=4)
    def is_b():
        """1 where the token is b."""
        return rasp.categorical(rasp.Map(lambda t: 1 if t == "b" else 0, rasp.tokens))

    @program(vocab={1, 2}, max_seq_len=3)
    def broken():
        return rasp.categorical(rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), rasp.tokens))
''')


def test_cli_checks_a_user_file_and_writes_nothing_for_a_bad_program(tmp_path, capsys):
    f = tmp_path / "mine.py"
    f.write_text(USER_FILE)
    assert main(["check", f"{f}:is_b", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "is_b functional:zero (2 edges): input->m0, m0->logits" in out
    out_dir = tmp_path / "built"
    assert main(["build", f"{f}:broken", "--out", str(out_dir), "--quiet"]) == 2
    assert "disagrees with RASP" in capsys.readouterr().err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert main(["check", f"{f}:nope", "--quiet"]) == 2
    assert "has no program 'nope'" in capsys.readouterr().err
