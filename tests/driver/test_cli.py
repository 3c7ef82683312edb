"""The command's surface: help, exit codes, and one-line errors."""

from __future__ import annotations

import pytest

from driver_helpers import (
    COMPILE_STACK,
    INSPECT_STACK,
    assert_clean_error,
    kiln_subprocess,
    requires,
    write_model,
)


def test_help_runs_as_module():
    run = kiln_subprocess("--help")
    assert run.rc == 0
    for command in ("compile", "inspect", "verify", "passes"):
        assert command in run.out
    assert "70" in run.out and "internal error" in run.out  # the exit statuses are documented


@pytest.mark.parametrize("command", ["compile", "inspect", "verify", "passes"])
def test_subcommand_help(kiln_main, command):
    run = kiln_main(command, "--help")
    assert run.rc == 0
    assert f"usage: kiln {command}" in run.out


def test_verify_help_defines_the_metrics(kiln_main):
    out = kiln_main("verify", "--help").out
    assert "max |a - b| / max |a|" in out and "10 log10" in out


def test_version(kiln_main):
    run = kiln_main("--version")
    assert run.rc == 0 and run.out.startswith("kiln ")


def test_no_command(kiln_main):
    assert_clean_error(kiln_main(), "COMMAND")


def test_unknown_command(kiln_main):
    assert_clean_error(kiln_main("frobnicate"), "frobnicate")


def test_compile_needs_output(kiln_main, tiny):
    assert_clean_error(kiln_main("compile", tiny), "-o")


def test_missing_model(tmp_path):
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tmp_path / "missing.onnx", "-o", out)
    assert_clean_error(run, "missing.onnx", "no such file")
    assert not out.exists()


def test_model_is_a_directory(kiln_main, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(kiln_main("compile", tmp_path, "-o", out), "is a directory")
    assert not out.exists()


@pytest.mark.parametrize("shape", ["x", "x:1,a b", "x:-1,4", "x:"])
def test_bad_input_shape(tiny, tmp_path, shape):
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tiny, "-o", out, "--input-shape", shape)
    assert_clean_error(run, "--input-shape")
    assert not out.exists()


def test_unknown_target(tiny, tmp_path):
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tiny, "-t", "tpu", "-o", out)
    assert_clean_error(run, "'tpu'", "onnx")
    assert not out.exists()


def test_bad_fold_limit(kiln_main, tiny, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(kiln_main("compile", tiny, "-o", out, "--fold-limit", "lots"), "--fold-limit")
    assert not out.exists()


def test_bad_level(kiln_main, tiny, tmp_path):
    assert_clean_error(kiln_main("compile", tiny, "-o", tmp_path / "out", "-O7"), "-O")


def test_level_and_pipeline_exclude_each_other(kiln_main, tiny, tmp_path):
    assert_clean_error(kiln_main("compile", tiny, "-o", tmp_path / "out", "-O1", "--pipeline", "dce"), "--pipeline")


def test_missing_load_pass_file(kiln_main, tiny, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(kiln_main("compile", tiny, "-o", out, "--load-pass", tmp_path / "nope.py"), "nope.py")
    assert not out.exists()


def test_output_is_a_file(kiln_main, tiny, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert_clean_error(kiln_main("compile", tiny, "-o", target), "not a folder")
    assert target.read_text() == "keep me"


# ---- how errors are reported


def _boom(exc: BaseException):
    def fail(args):
        raise exc

    return fail


def test_internal_error_is_one_line_exit_70(kiln_main, monkeypatch):
    from kiln.driver import cli

    monkeypatch.setattr(cli, "cmd_passes", _boom(RuntimeError("kaput\nsecond line")))
    run = kiln_main("passes")
    assert run.rc == 70
    assert len(run.err_lines) == 1 and "Traceback" not in run.err
    assert "internal error" in run.err and "kaput second line" in run.err and "--debug" in run.err


def test_internal_error_with_debug_shows_the_traceback(kiln_main, monkeypatch):
    from kiln.driver import cli

    monkeypatch.setattr(cli, "cmd_passes", _boom(RuntimeError("kaput")))
    run = kiln_main("passes", "--debug")
    assert run.rc == 70
    assert "Traceback" in run.err and run.err_lines[-1].startswith("kiln: internal error")


def test_kiln_error_with_debug_shows_the_traceback(kiln_main, tmp_path):
    run = kiln_main("--debug", "compile", tmp_path / "missing.onnx", "-o", tmp_path / "out")
    assert run.rc == 2
    assert "Traceback" in run.err
    assert run.err_lines[-1].startswith("kiln: error: ") and "missing.onnx" in run.err_lines[-1]


def test_multiline_kiln_error_is_one_line(kiln_main, monkeypatch):
    from kiln.driver import cli
    from kiln.errors import PassFailure

    monkeypatch.setattr(cli, "cmd_passes", _boom(PassFailure("line one\nline two", notes=["ran: fold, dce"])))
    run = kiln_main("passes")
    assert run.rc == 2 and run.err_lines == ["kiln: error: line one line two (ran: fold, dce)"]


def test_ctrl_c_exits_130(kiln_main, monkeypatch):
    from kiln.driver import cli

    monkeypatch.setattr(cli, "cmd_passes", _boom(KeyboardInterrupt()))
    run = kiln_main("passes")
    assert run.rc == 130 and "Traceback" not in run.err and len(run.err_lines) == 1


# ---- errors that need the frontend / pass manager


@requires(*COMPILE_STACK)
def test_garbage_model(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07this is not an onnx model\xff\xfe" * 20)
    out = tmp_path / "out"
    run = kiln_subprocess("compile", bad, "-o", out)
    assert_clean_error(run, "garbage.onnx")
    assert not out.exists()


@requires(*COMPILE_STACK)
def test_unknown_pass_in_pipeline(tiny, tmp_path):
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tiny, "-o", out, "--pipeline", "fold,no-such-pass")
    assert_clean_error(run, "no-such-pass")
    assert not out.exists()


@requires(*INSPECT_STACK)
def test_garbage_model_inspect(kiln_main, tmp_path):
    bad = write_model(tmp_path / "ok.onnx")
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    assert_clean_error(kiln_main("inspect", bad), "ok.onnx")
