"""``kiln compile`` and ``kiln.driver.compile.compile``."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import onnx
import pytest

from driver_helpers import COMPILE_STACK, assert_clean_error, kiln_subprocess, requires
from kiln.driver import compile as driver_compile
from kiln.driver.compile import CompileResult, _emit
from kiln.errors import ExportError, UsageError

SUMMARY = re.compile(
    r"kiln: (?P<src>\S+) -> (?P<dst>\S+)  nodes (?P<before>\d+) -> (?P<after>\d+)"
    r"  size [\d.]+ (B|KB|MB|GB) -> [\d.]+ (B|KB|MB|GB)  [\d.]+ s  \((?P<label>\w+), onnx\)"
)


# ---- pieces that need only the driver


def test_summary_line():
    result = CompileResult(
        source="resnet50.onnx", target="onnx", out_dir="out", artifacts=[Path("/abs/out/resnet50.onnx")],
        level=2, pipeline="O2", nodes_before=122, nodes_after=57, size_before=int(97.8 * 2**20),
        size_after=int(97.7 * 2**20), seconds=1.234,
    )
    assert result.summary() == "kiln: resnet50.onnx -> out/resnet50.onnx  nodes 122 -> 57  size 97.8 MB -> 97.7 MB  1.23 s  (O2, onnx)"


def test_targets_table():
    assert driver_compile.TARGETS["onnx"] == "kiln.codegen.onnx"
    codegen = driver_compile.target_module("onnx")
    assert codegen.legalize_pipeline({}) == "" and callable(codegen.emit)
    assert set(driver_compile.TARGETS) == {"onnx", "ncnn", "tflite", "tensorrt"}
    with pytest.raises(UsageError, match="supported: ncnn, onnx, tensorrt, tflite"):
        driver_compile.target_module("caffe")


def test_emit_gets_the_standard_options_and_only_truthy_target_options():
    merged = driver_compile._target_options(
        {"nhwc_io": True, "param_bin": False, "workspace": None}, int8=False, fp16=True, input_shapes={"x": (1, 3)}
    )
    assert merged == {"fp16": True, "int8": False, "input_shapes": {"x": (1, 3)}, "nhwc_io": True}
    with pytest.raises(UsageError, match="set by compile"):
        driver_compile._target_options({"fp16": True}, int8=False, fp16=False, input_shapes={})


def test_onnx_target_refuses_other_targets_options(tmp_path):
    codegen = driver_compile.target_module("onnx")
    with pytest.raises(UsageError, match="target onnx has no option --nhwc-io"):
        codegen.emit(None, tmp_path, "m", {"fp16": False, "int8": False, "input_shapes": {}, "nhwc_io": True})


def _fake_codegen(files: dict[str, bytes], fail: bool = False) -> types.SimpleNamespace:
    def emit(graph, out_dir, stem, options):
        written = []
        for suffix, data in files.items():
            path = Path(out_dir) / f"{stem}{suffix}"
            path.write_bytes(data)
            written.append(path)
        if fail:
            raise ExportError("cannot express node #3")
        return written[:1]  # the others are found in the staging folder anyway

    return types.SimpleNamespace(emit=emit, legalize_pipeline=lambda options=None: "")


def test_emit_moves_every_file_into_place(tmp_path):
    out = tmp_path / "a" / "b"
    arts = _emit(_fake_codegen({".param": b"p", ".bin": b"b"}), None, out, "m", None, set())
    assert [p.name for p in arts] == ["m.param", "m.bin"]
    assert sorted(p.name for p in out.iterdir()) == ["m.bin", "m.param"]  # no staging left


def test_emit_into_a_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    codegen = _fake_codegen({".onnx": b"m"})
    emit = codegen.emit
    codegen.emit = lambda *a: [p.resolve() for p in emit(*a)]  # an emitter that answers absolute paths
    arts = _emit(codegen, None, Path("rel") / "out", "m", None, set())
    assert arts == [Path("rel/out/m.onnx")] and (tmp_path / "rel/out/m.onnx").read_bytes() == b"m"


def test_failed_emit_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(ExportError):
        _emit(_fake_codegen({".onnx": b"half"}, fail=True), None, out, "m", None, set())
    assert not (tmp_path / "new").exists()


def test_failed_emit_keeps_an_existing_folder_and_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"old")
    with pytest.raises(ExportError):
        _emit(_fake_codegen({".onnx": b"new"}, fail=True), None, out, "m", None, set())
    assert [p.name for p in out.iterdir()] == ["m.onnx"] and (out / "m.onnx").read_bytes() == b"old"


def test_emit_refuses_to_overwrite_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"original")
    with pytest.raises(UsageError, match="overwrite"):
        _emit(_fake_codegen({".onnx": b"new"}), None, tmp_path, "m", None, {str(model.resolve())})
    assert model.read_bytes() == b"original" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ---- the whole path (frontend, pass manager, exporter)


@requires(*COMPILE_STACK)
def test_compile_and_verify(tiny, tmp_path):
    run = kiln_subprocess("compile", "tiny.onnx", "-t", "onnx", "-o", "out", "-O2", cwd=tmp_path)
    assert run.rc == 0, run.err
    lines = run.out.splitlines()
    assert len(lines) == 1, run.out
    m = SUMMARY.fullmatch(lines[0])
    assert m, lines[0]
    assert m["src"] == "tiny.onnx" and m["dst"] == "out/tiny.onnx" and m["label"] == "O2"
    assert int(m["after"]) <= int(m["before"])
    artifact = tmp_path / "out" / "tiny.onnx"
    onnx.checker.check_model(onnx.load(str(artifact)))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny.onnx"]

    check = kiln_subprocess("verify", "tiny.onnx", "out/tiny.onnx", "--json", cwd=tmp_path)
    assert check.rc == 0, check.err
    report = json.loads(check.out)
    assert report["ok"] is True and set(report["outputs"]) == {"y"}
    assert set(report["outputs"]["y"]) == {"max_abs", "max_rel", "sqnr_db"}


@requires(*COMPILE_STACK)
@pytest.mark.parametrize("flags,label", [(["-O0"], "O0"), (["-O1"], "O1"), (["-O3"], "O3"), (["--pipeline", "dce"], "pipeline")])
def test_compile_levels_in_process(kiln_main, tiny, tmp_path, flags, label):
    out = tmp_path / "out"
    run = kiln_main("compile", tiny, "-o", out, *flags, "--input-shape", "x:2,4", "--fold-limit", "64M")
    assert run.rc == 0, run.err
    assert SUMMARY.fullmatch(run.out.strip())["label"] == label
    assert (out / "tiny.onnx").is_file()
    assert kiln_main("verify", tiny, out / "tiny.onnx", "--input-shape", "x:2,4", "-q").rc == 0


@requires(*COMPILE_STACK)
def test_compile_is_deterministic(kiln_main, tiny, tmp_path):
    assert kiln_main("compile", tiny, "-o", tmp_path / "a", "-q").rc == 0
    assert kiln_main("compile", tiny, "-o", tmp_path / "b", "-q").rc == 0
    assert (tmp_path / "a" / "tiny.onnx").read_bytes() == (tmp_path / "b" / "tiny.onnx").read_bytes()


@requires(*COMPILE_STACK)
def test_quiet_prints_nothing(kiln_main, tiny, tmp_path):
    run = kiln_main("compile", tiny, "-o", tmp_path / "out", "--quiet")
    assert run.rc == 0 and run.out == "" and run.err == ""


@requires(*COMPILE_STACK)
def test_instruments_write_to_stderr_only(kiln_main, tiny, tmp_path):
    run = kiln_main("compile", tiny, "-o", tmp_path / "out", "--pipeline", "fold,dce", "--time-passes",
                    "--print-ir-after", "dce", "--dump-ir-dir", tmp_path / "dump")
    assert run.rc == 0, run.err
    assert len(run.out.splitlines()) == 1 and run.err.strip()
    assert any((tmp_path / "dump").iterdir())


@requires(*COMPILE_STACK)
def test_compile_refuses_to_overwrite_its_input(kiln_main, tiny, tmp_path):
    before = tiny.read_bytes()
    assert_clean_error(kiln_main("compile", tiny, "-o", tmp_path), "overwrite")
    assert tiny.read_bytes() == before


@requires(*COMPILE_STACK)
def test_input_shape_for_an_unknown_input(kiln_main, tiny, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(kiln_main("compile", tiny, "-o", out, "--input-shape", "nope:1,4"), "nope")
    assert not out.exists()


@requires(*COMPILE_STACK)
def test_python_api(tiny, tmp_path):
    result = driver_compile.compile(tiny, "onnx", tmp_path / "out", level=1, input_shapes=["x:3,4"])
    assert result.artifacts == [tmp_path / "out" / "tiny.onnx"] and result.level == 1
    assert result.nodes_after <= result.nodes_before and result.size_after > 0
    assert SUMMARY.fullmatch(result.summary())


PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

from kiln.passmanager.base import Pass


@dataclass(frozen=True)
class CountNodes(Pass):
    """Counts nodes (a test plugin)."""

    name: ClassVar[str] = "test-count-nodes"

    def run(self, graph, ctx):
        ctx.bump("test.nodes", len(graph))
        return False


@dataclass(frozen=True)
class Explode(Pass):
    """Fails (a test plugin)."""

    name: ClassVar[str] = "test-explode"

    def run(self, graph, ctx):
        raise RuntimeError("boom")
'''


@requires(*COMPILE_STACK)
def test_load_pass(tiny, tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tiny, "-o", out, "--load-pass", plugin, "--pipeline", "test-count-nodes,dce")
    assert run.rc == 0, run.err
    assert (out / "tiny.onnx").is_file()


@requires(*COMPILE_STACK)
def test_failing_pass_writes_nothing(tiny, tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    run = kiln_subprocess("compile", tiny, "-o", out, "--load-pass", plugin, "--pipeline", "dce,test-explode")
    assert_clean_error(run, "test-explode")
    assert not out.exists()


@requires(*COMPILE_STACK)
def test_stop_after_is_in_the_summary(kiln_main, tiny, tmp_path):
    run = kiln_main("compile", tiny, "-o", tmp_path / "out", "--stop-after", "fold")
    assert run.rc == 0, run.err
    assert run.out.rstrip().endswith("(O2, onnx, stopped after fold)")
    assert_clean_error(kiln_main("compile", tiny, "-o", tmp_path / "o2", "--stop-after", "fodl"), "fodl")
