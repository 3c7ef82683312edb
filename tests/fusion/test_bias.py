"""fuse-bias: Add/Mul/Div by constants into linear ops; constant chains merged; Sub/Div canonicalized."""

from __future__ import annotations

import numpy as np
import pytest
from rewrite_helpers import check_rewrite, const_text, model_text

W = const_text("w", (4, 3, 3, 3), 1)
B = const_text("b", (4,), 2)
CONV = "(float[1,3,8,8] x) => (float[1,4,8,8] y)"


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (1,), ()])
def test_add_per_channel_into_conv_bias(shape: tuple[int, ...]) -> None:
    text = model_text(CONV, [W, B, const_text("c", shape, 3)], "t = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Add(c, t)")
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-add-into-linear": 1}, ops=["onnx.Conv"])


def test_add_varying_over_space_stays() -> None:
    text = model_text(CONV, [W, B, const_text("c", (1, 8, 8), 3)], "t = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Add(t, c)")
    check_rewrite(text, "fuse-bias", fired_exactly={}, ops=["onnx.Conv", "onnx.Add"])


def test_add_into_conv_transpose_bias() -> None:
    text = model_text(
        "(float[1,4,5,5] x) => (float[1,6,10,10] y)",
        [const_text("w", (4, 3, 2, 2), 1), const_text("c", (6, 1, 1), 3)],
        "t = ConvTranspose<strides=[2,2], group=2>(x, w)\ny = Add(t, c)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-add-into-linear": 1}, ops=["onnx.ConvTranspose"])


def test_matmul_add_2d_becomes_gemm() -> None:
    text = model_text(
        "(float[3,6] x) => (float[3,5] y)",
        [const_text("w", (6, 5), 1), const_text("c", (5,), 3)],
        "t = MatMul(x, w)\ny = Add(t, c)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-add-into-linear": 1}, ops=["onnx.Gemm"])


def test_matmul_add_nd_stays(caplog: pytest.LogCaptureFixture) -> None:
    text = model_text(
        "(float[2,3,6] x) => (float[2,3,5] y)",
        [const_text("w", (6, 5), 1), const_text("c", (5,), 3)],
        "t = MatMul(x, w)\ny = Add(t, c)",
    )
    from kiln.passmanager import PassContext

    with caplog.at_level("INFO", logger="kiln.rewrite"):
        check_rewrite(text, "fuse-bias", fired_exactly={}, ops=["onnx.MatMul", "onnx.Add"], ctx=PassContext(debug_rules=True))
    assert "an N-D MatMul keeps its Add (Gemm is 2-D)" in caplog.text


def test_gemm_add_full_matrix() -> None:
    text = model_text(
        "(float[3,6] x) => (float[3,5] y)",
        [const_text("w", (5, 6), 1), const_text("b", (5,), 2), const_text("c", (3, 5), 3)],
        "t = Gemm<transB=1, beta=0.5>(x, w, b)\ny = Add(t, c)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-add-into-linear": 1}, ops=["onnx.Gemm"])


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_mul_or_div_per_channel_into_conv_weights(op: str) -> None:
    text = model_text(CONV, [W, B, const_text("c", (4, 1, 1), 3, low=0.5)], f"t = Conv<pads=[1,1,1,1]>(x, w, b)\ny = {op}(t, c)")
    rule = "fold-mul-into-linear" if op == "Mul" else "fold-div-into-linear"
    check_rewrite(text, "fuse-bias", fired_exactly={rule: 1}, ops=["onnx.Conv"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_mul_into_gemm_and_matmul(trans_b: int) -> None:
    w_shape = (5, 6) if trans_b else (6, 5)
    text = model_text(
        "(float[3,6] x, float[2,3,6] z) => (float[3,5] y, float[2,3,6] v)",
        [const_text("w", w_shape, 1), const_text("b", (5,), 2), const_text("c", (5,), 3), const_text("m", (6, 6), 4),
         const_text("d", (1, 1, 6), 5)],
        f"t = Gemm<transB={trans_b}>(x, w, b)\ny = Mul(t, c)\nu = MatMul(z, m)\nv = Mul(u, d)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-mul-into-linear": 2}, ops=["onnx.Gemm", "onnx.MatMul"])


def test_mul_and_add_before_conv() -> None:
    """A per-input-channel scale folds even through zero padding; a shift only without padding."""
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,6,6] v)",
        [W, B, const_text("s", (3, 1, 1), 3, low=0.5), const_text("t", (1, 3, 1, 1), 4)],
        "m = Mul(x, s)\ny = Conv<pads=[1,1,1,1]>(m, w, b)\na = Add(x, t)\nv = Conv(a, w, b)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-mul-into-next-linear": 1, "fold-add-into-next-linear": 1},
                  ops=["onnx.Conv", "onnx.Conv"])


def test_shift_before_padded_conv_stays_but_scale_moves() -> None:
    text = model_text(
        CONV,
        [W, B, const_text("s", (3, 1, 1), 3, low=0.5), const_text("t", (3, 1, 1), 4)],
        "m = Mul(x, s)\na = Add(m, t)\ny = Conv<pads=[1,1,1,1]>(a, w, b)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-scale-through-shift": 1}, ops=["onnx.Add", "onnx.Conv"])


def test_affine_before_gemm() -> None:
    text = model_text(
        "(float[3,4] x) => (float[3,5] y)",
        [const_text("w", (4, 5), 1), const_text("s", (4,), 3), const_text("t", (4,), 4)],
        "m = Mul(x, s)\na = Add(m, t)\ny = Gemm<alpha=0.5>(a, w)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"fold-add-into-next-linear": 1, "fold-mul-into-next-linear": 1},
                  ops=["onnx.Gemm"])


def test_constant_chains_merge() -> None:
    text = model_text(
        "(float[2,3,4] x) => (float[2,3,4] y)",
        [const_text("a", (3, 1), 1), const_text("b", (4,), 2), const_text("c", (), 3), const_text("d", (3, 1), 4),
         "float e = {2.0}"],
        "m1 = Mul(x, a)\nm2 = Mul(b, m1)\na1 = Add(m2, c)\nm3 = Mul(a1, d)\na2 = Sub(m3, c)\ny = Div(a2, e)",
    )
    _, ctx = check_rewrite(text, "fuse-bias", ops=["onnx.Mul", "onnx.Add"])
    stats = {k: v for k, v in ctx.stats.items() if k.startswith("rules.")}
    assert stats["rules.merge-mul-mul"] >= 2 and stats["rules.sub-to-add"] == 1 and stats["rules.div-to-mul"] == 1


def test_chain_that_widens_stays() -> None:
    text = model_text(
        "(float[3] x) => (float[2,3] y)",
        [const_text("a", (2, 3), 1), const_text("b", (3,), 2)],
        "m = Mul(x, a)\ny = Mul(m, b)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={}, ops=["onnx.Mul", "onnx.Mul"])


def test_integer_chains_merge_exactly() -> None:
    text = model_text(
        "(int64[4] x) => (int64[4] y)",
        ["int64 a = {3}", "int64[4] b = {1, 2, 3, 4}"],
        "m = Add(x, a)\ny = Add(m, b)",
    )
    check_rewrite(text, "fuse-bias", fired_exactly={"merge-add-add": 1}, ops=["onnx.Add"], rtol=0, atol=0)


@pytest.mark.parametrize("divisor, exact", [(8.0, True), (0.25, True), (-2.0, True), (3.0, False), (0.1, False)])
def test_div_becomes_mul_only_by_powers_of_two(divisor: float, exact: bool) -> None:
    text = model_text("(float[5] x) => (float[5] y)", [f"float c = {{{divisor}}}"], "y = Div(x, c)")
    check_rewrite(text, "fuse-bias", fired_exactly={"div-to-mul": int(exact)},
                  ops=["onnx.Mul" if exact else "onnx.Div"], rtol=0, atol=0)


def test_div_by_subnormal_reciprocal_stays() -> None:
    huge = float(np.float32(2.0**127))
    text = model_text("(float[5] x) => (float[5] y)", [f"float c = {{{huge}}}"], "y = Div(x, c)")
    check_rewrite(text, "fuse-bias", fired_exactly={}, ops=["onnx.Div"])


def test_conv_add_mul_chain_all_into_conv() -> None:
    text = model_text(
        CONV,
        [W, B, const_text("c", (4, 1, 1), 3), const_text("s", (4, 1, 1), 4), const_text("e", (1, 4, 1, 1), 5)],
        "t = Conv<pads=[1,1,1,1]>(x, w, b)\na = Add(t, c)\nm = Mul(a, s)\nq = Sub(m, e)\ny = Relu(q)",
    )
    check_rewrite(text, "fuse-bias", ops=["onnx.Conv", "onnx.Relu"])
