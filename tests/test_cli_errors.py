"""What a new user trips on: each mistake ends in one line on stderr,
``mpcc CMD: error: ...``, with exit code 2, and never a traceback."""
from __future__ import annotations

import io
import logging
import warnings

import pytest

import mpcc.cli
from mpcc.cli import build_parser, main
from mpcc.cli_steps import step

PRESETS = "tiny-bert, tiny-gpt2, bert-base, gpt2, minilm"


def one_line_error(capsys, argv, phrase, code=2) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"mpcc {argv[0]}: error: "), lines[0]
    assert phrase in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["run", "compile", "interpret", "dump", "cost"])
@pytest.mark.parametrize("seq", ["0", "-3"])
def test_seq_must_be_at_least_one(capsys, command, seq):
    extra = ["-o", "x.mpcc"] if command == "compile" else []
    one_line_error(capsys, [command, "tiny-bert", "--seq", seq, *extra], f"argument --seq: must be at least 1, not {seq}")


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2"])
def test_seq_longer_than_the_model_names_the_limit(capsys, preset):
    one_line_error(capsys, ["run", preset, "--seq", "129"], f"{preset} takes at most 128 positions, not 129; "
                                                             "use --seq 128 or less")


def test_input_longer_than_the_model_names_the_limit(capsys):
    ids = " ".join(["1"] * 130)
    one_line_error(capsys, ["interpret", "tiny-bert", "--input", ids], "tiny-bert takes at most 128 positions")


def test_steps_keep_log_lines_and_warnings_out_of_the_terminal(caplog):
    noisy = logging.getLogger("transformers.modeling_utils")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with step("tracing"):
            noisy.warning("You tried to access the `AttentionInterface` ...")
            warnings.warn("torch.export says something", UserWarning)
        assert not caplog.records and not caught
        noisy.warning("after the step")
        assert [r.getMessage() for r in caplog.records] == ["after the step"]


def test_steps_show_progress_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        with step("loading bert-base"):
            pass
        assert ("loading bert-base" in stream.getvalue()) == shown


@pytest.mark.parametrize("command", ["run", "dump", "cost"])
def test_missing_plan_file(capsys, command):
    one_line_error(capsys, [command, "nosuchfile.mpcc"], "no such file: nosuchfile.mpcc")


@pytest.mark.parametrize("command", ["run", "dump", "cost"])
def test_a_file_that_is_not_a_plan(capsys, tmp_path, command):
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n")
    one_line_error(capsys, [command, str(path)], "not an mpcc plan (first line is 'shopping list')")


@pytest.mark.parametrize("command, what", [("run", "a model directory or a plan file"),
                                           ("compile", "or a model directory")])
def test_unknown_name_lists_the_presets(capsys, tmp_path, command, what):
    extra = ["-o", str(tmp_path / "x.mpcc")] if command == "compile" else []
    one_line_error(capsys, [command, "bert-tiny", *extra], f"'bert-tiny' is not a preset ({PRESETS}), {what}")


def test_a_model_command_refuses_a_file(capsys, tmp_path):
    path = tmp_path / "bert.mpcc"
    path.write_text("mpcc-plan 2\n")
    one_line_error(capsys, ["interpret", str(path)], f"is a file; give a preset ({PRESETS}) or a Hugging Face model")


def test_plan_options_that_need_a_model(capsys, tmp_path):
    path = tmp_path / "bert.mpcc"
    assert main(["compile", "tiny-bert", "--seq", "4", "-o", str(path)]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["dump", str(path), "--seq", "8"], "the plan")
    one_line_error(capsys, ["dump", str(path), "--after", "import"], "--after needs a model")
    one_line_error(capsys, ["dump", "tiny-bert", "--after", "nope"], "unknown pass 'nope'; choose one of: import, ")


@pytest.mark.parametrize("argv", [["run", "tiny-bert", "--backend", "cuda"], ["bench", "--backend", "cuda"]])
def test_cuda_backend_without_a_gpu(capsys, monkeypatch, argv):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    one_line_error(capsys, argv, "--backend cuda needs a CUDA GPU and torch sees none; use --backend cpu (or limb")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_bench_repeats_must_be_positive(capsys, value):
    one_line_error(capsys, ["bench", "--repeats", value], f"argument --repeats: must be at least 1, not {value}")


def test_usage_errors_are_one_line(capsys):
    one_line_error(capsys, ["compile", "tiny-bert"], "required: -o/--output (see mpcc compile --help)")
    one_line_error(capsys, ["run", "tiny-bert", "--seq", "x"], "argument --seq: must be a whole number, not 'x'")
    one_line_error(capsys, ["run", "tiny-bert", "--backend", "tpu"], "invalid choice: 'tpu'")


def _subcommands():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_every_option_has_help_and_help_shows_defaults(capsys):
    for name, parser in _subcommands().items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help, f"mpcc {name} {action.dest} has no help"
        assert main([name, "--help"]) == 0
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: cpu)" in text and "(default: None)" not in text and "(default: False)" not in text
    assert main(["bench", "--help"]) == 0
    assert "(default: 2)" in capsys.readouterr().out


def test_run_prints_a_verdict_like_interpret(capsys, monkeypatch):
    assert main(["run", "tiny-gpt2", "--seq", "4"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("OK: max abs error ") and last.endswith("vs float64 torch (tolerance 1e-01)")
    assert main(["interpret", "tiny-gpt2", "--seq", "4"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("OK: max abs error ") and last.endswith("vs float64 torch (tolerance 1e-05)")
    monkeypatch.setattr(mpcc.cli, "SECURE_TOLERANCE", 0.0)
    assert main(["run", "tiny-gpt2", "--seq", "4"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("MISMATCH: max abs error ") and last.endswith("is above the tolerance 0e+00")
