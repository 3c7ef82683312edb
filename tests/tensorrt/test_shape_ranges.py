"""``--input-shape`` ranges (``MIN..MAX``, ``MIN..OPT..MAX``) for the tensorrt target's profiles."""

from __future__ import annotations

import pytest
from kiln.driver.options import parse_input_shape_ranges, parse_input_shapes, shapes_for_load
from kiln.errors import UsageError


def test_ranges_parse_with_opt_defaulting_to_max() -> None:
    shapes = parse_input_shape_ranges(["x:1..8,3,224..640,224..320..640", "input:0:1,3,N,W", "y:4..4"])
    assert shapes == {"x": ((1, 8, 8), 3, (224, 640, 640), (224, 320, 640)), "input:0": (1, 3, "N", "W"), "y": (4,)}


def test_ranges_load_as_symbols() -> None:
    shapes = shapes_for_load(parse_input_shape_ranges(["x:1..8,3,224,224", "in.put:1,3..4"]))
    assert shapes == {"x": ("x_0", 3, 224, 224), "in.put": (1, "in_put_1")}


def test_plain_shapes_still_parse_and_refuse_ranges() -> None:
    assert parse_input_shapes(["x:1,3,224,224"]) == {"x": (1, 3, 224, 224)}
    with pytest.raises(UsageError, match=r"only for -t tensorrt"):
        parse_input_shapes(["x:1..8,3,224,224"])


@pytest.mark.parametrize("text,message", [
    ("x:8..1", "needs 1 <= MIN <= OPT <= MAX"),
    ("x:1..9..4", "needs 1 <= MIN <= OPT <= MAX"),
    ("x:0..4", "needs 1 <= MIN"),
    ("x:1..2..3..4", "MIN..MAX or MIN..OPT..MAX"),
    ("x:a..3", "MIN..MAX or MIN..OPT..MAX"),
    ("x:", "expected NAME:D,D"),
])
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        parse_input_shape_ranges([text])


def test_name_given_twice() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_input_shape_ranges(["x:1..2", "x:3"])


# ------------------------------------------------------------------------------- through the command and the API


def _kiln(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, check=False)


def _ppocr_cls() -> str:
    from zoo import get_model

    return str(get_model("ppocr_cls"))  # input 'x' is (N, 3, 48, W): batch and width are dynamic


def test_compile_turns_ranges_into_the_optimization_profile(tmp_path) -> None:
    import trt_double

    proc = _kiln("compile", _ppocr_cls(), "-t", "tensorrt", "-o", str(tmp_path), "-q",
                 "--input-shape", "x:1..4..8,3,48,192..640")
    assert proc.returncode == 0, proc.stderr
    program = trt_double.load_program(tmp_path / "ch_ppocr_mobile_v2.0_cls_infer.trt.py")
    assert program.PROFILES == {"x": ([1, 3, 48, 192], [4, 3, 48, 640], [8, 3, 48, 640])}


def test_compile_api_takes_range_tuples(tmp_path) -> None:
    import trt_double
    from kiln.driver.compile import compile as compile_model

    result = compile_model(_ppocr_cls(), "tensorrt", tmp_path, input_shapes={"x": ((1, 2, 2), 3, 48, 320)})
    program = trt_double.load_program(result.artifacts[0])
    assert program.PROFILES == {"x": ([1, 3, 48, 320], [2, 3, 48, 320], [2, 3, 48, 320])}


def test_a_dynamic_dim_without_a_range_is_one_clear_line(tmp_path) -> None:
    proc = _kiln("compile", _ppocr_cls(), "-t", "tensorrt", "-o", str(tmp_path / "out"), "-q",
                 "--input-shape", "x:1..8,3,48,W")
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln: error:") and "Traceback" not in proc.stderr
    assert "x" in proc.stderr and "MIN..MAX" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_other_targets_refuse_ranges_with_exit_2(tmp_path) -> None:
    proc = _kiln("compile", _ppocr_cls(), "-t", "onnx", "-o", str(tmp_path / "out"), "--input-shape", "x:1..8,3,48,320")
    assert proc.returncode == 2 and "only for -t tensorrt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
