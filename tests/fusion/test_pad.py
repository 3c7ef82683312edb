"""fuse-pad: a constant Pad merged into Conv / AveragePool / MaxPool pads."""

from __future__ import annotations

import pytest
from kiln.passmanager import PassContext
from rewrite_helpers import check_rewrite, const_text, model_text

W = const_text("w", (4, 3, 3, 3), 1)
PADS = "int64[8] p = {0, 0, 1, 2, 0, 0, 2, 1}"
ZERO = "float z = {0.0}"


def test_pad_into_conv() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,11,11] y)",
        [W, PADS, ZERO],
        "p1 = Pad(x, p, z)\ny = Conv<pads=[1,0,0,1]>(p1, w)",
    )
    g, _ = check_rewrite(text, "fuse-pad", fired_exactly={"fuse-pad": 1}, ops=["onnx.Conv"])
    assert next(iter(g)).attr("pads") == [2, 2, 2, 2]


def test_pad_into_conv_opset9_attribute_form() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,9,9] y)",
        [W],
        "p1 = Pad<pads=[0,0,1,1,0,0,1,1], mode=\"constant\">(x)\ny = Conv<auto_pad=\"VALID\">(p1, w)",
        opset=9,
    )
    g, _ = check_rewrite(text, "fuse-pad", fired_exactly={"fuse-pad": 1}, ops=["onnx.Conv"])
    assert "auto_pad" not in next(iter(g)).attrs


def test_pad_with_axes_opset18() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,7] y)",
        [W, "int64[2] p = {1, 1}", "int64[1] ax = {2}"],
        "p1 = Pad(x, p, , ax)\ny = Conv<pads=[0,0,0,0]>(p1, w)",
        opset=18,
    )
    check_rewrite(text, "fuse-pad", fired_exactly={"fuse-pad": 1}, ops=["onnx.Conv"])


@pytest.mark.parametrize("include", [0, 1])
def test_pad_into_average_pool(include: int) -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,3,5,5] y)",
        [PADS],
        f"p1 = Pad(x, p)\ny = AveragePool<kernel_shape=[3,3], strides=[2,2], count_include_pad={include}>(p1)",
    )
    g, _ = check_rewrite(text, "fuse-pad", fired_exactly={"fuse-pad": 1}, ops=["onnx.AveragePool"])
    assert next(iter(g)).attr("count_include_pad") == 1


def test_pad_into_max_pool_needs_minus_infinity() -> None:
    body = "p1 = Pad(x, p, v)\ny = MaxPool<kernel_shape=[3,3], strides=[2,2]>(p1)"
    sig = "(float[1,3,8,8] x) => (float[1,3,5,5] y)"
    check_rewrite(model_text(sig, [PADS, "float v = {-inf}"], body), "fuse-pad", fired_exactly={"fuse-pad": 1},
                  ops=["onnx.MaxPool"])
    check_rewrite(model_text(sig, [PADS, "float v = {0.0}"], body), "fuse-pad", fired_exactly={},
                  ops=["onnx.Pad", "onnx.MaxPool"])


@pytest.mark.parametrize(
    "pads, mode, value, reason",
    [
        ("0, 0, 1, 1, 0, 0, 1, 1", "reflect", "0.0", "Pad mode is 'reflect'"),
        ("0, 0, 1, 1, 0, 0, 1, 1", "constant", "1.5", "the Pad value is 1.5, a Conv pads with 0"),
        ("0, 1, 1, 1, 0, 0, 1, 1", "constant", "0.0", "the Pad pads the batch or channel axis"),
        ("0, 0, -1, 1, 0, 0, 1, 1", "constant", "0.0", "the Pad crops"),
    ],
)
def test_refusals(pads: str, mode: str, value: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    channels = 4 if pads.startswith("0, 1") else 3
    w = const_text("w", (4, channels, 3, 3), 1)
    out = "7,8" if ", -1" in pads else "8,8"
    text = model_text(
        f"(float[1,3,8,8] x) => (float[1,4,{out}] y)",
        [w, f"int64[8] p = {{{pads}}}", f"float v = {{{value}}}"],
        f'p1 = Pad<mode="{mode}">(x, p, v)\ny = Conv(p1, w)',
    )
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        check_rewrite(text, "fuse-pad", fired_exactly={}, ops=["onnx.Pad", "onnx.Conv"], ctx=PassContext(debug_rules=True))
    assert reason in caplog.text


def test_shared_pad_stays() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,3,10,10] p1)",
        [W, "int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}"],
        "p1 = Pad(x, p)\ny = Conv(p1, w)",
    )
    check_rewrite(text, "fuse-pad", fired_exactly={}, ops=["onnx.Pad", "onnx.Conv"])
