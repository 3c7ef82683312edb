"""fuse-bn: BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, neighbours, or Mul + Add."""

from __future__ import annotations

import kiln
import pytest
from kiln.passmanager import PassContext
from rewrite_helpers import check_rewrite, const_text, fired, model_text, op_ids, parse_model


def bn_inits(c: int, seed: int = 10, prefix: str = "") -> list[str]:
    return [
        const_text(f"{prefix}gamma", (c,), seed),
        const_text(f"{prefix}beta", (c,), seed + 1),
        const_text(f"{prefix}mean", (c,), seed + 2),
        const_text(f"{prefix}var", (c,), seed + 3, low=0.5),
    ]


BN = "BatchNormalization<epsilon=0.001>"


def test_conv_bn() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)",
        [const_text("w", (4, 3, 3, 3), 1), const_text("b", (4,), 2), *bn_inits(4)],
        f"c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    g, _ = check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.Conv"])
    conv = next(iter(g))
    assert conv.loc.rule == "fuse-bn-into-linear" and len(conv.loc.fused_from) == 2


def test_conv_without_bias_gets_one() -> None:
    text = model_text(
        "(float[2,3,8,8] x) => (float[2,4,6,6] y)",
        [const_text("w", (4, 3, 3, 3), 1), *bn_inits(4)],
        f"c = Conv(x, w)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    g, _ = check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.Conv"])
    assert len(next(iter(g)).inputs) == 3


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_weight_layout(group: int) -> None:
    """ConvTranspose weights are [Cin, Cout/group, k, k]: the scale goes on axis 1, per group."""
    cout = 6
    text = model_text(
        "(float[1,4,5,5] x) => (float[1,6,10,10] y)",
        [const_text("w", (4, cout // group, 2, 2), 1), const_text("b", (cout,), 2), *bn_inits(cout)],
        f"c = ConvTranspose<strides=[2,2], group={group}>(x, w, b)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.ConvTranspose"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(trans_b: int) -> None:
    w_shape = (5, 6) if trans_b else (6, 5)
    text = model_text(
        "(float[3,6] x) => (float[3,5] y)",
        [const_text("w", w_shape, 1), const_text("b", (5,), 2), *bn_inits(5)],
        f"c = Gemm<transB={trans_b}, beta=0.5, alpha=2.0>(x, w, b)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    g, _ = check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.Gemm"])
    assert "beta" not in next(iter(g)).attrs


def test_matmul_2d_bn_becomes_gemm() -> None:
    text = model_text(
        "(float[3,6] x) => (float[3,5] y)",
        [const_text("w", (6, 5), 1), *bn_inits(5)],
        f"c = MatMul(x, w)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.Gemm"])


def test_matmul_const_left_bn_3d() -> None:
    """MatMul(W[C,K], x[N,K,L]) -> [N,C,L]: the BN channel axis is W's rows; the bias stays an Add."""
    text = model_text(
        "(float[2,6,7] x) => (float[2,5,7] y)",
        [const_text("w", (5, 6), 1), *bn_inits(5)],
        f"c = MatMul(w, x)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-linear": 1}, ops=["onnx.MatMul", "onnx.Add"])


def test_matmul_3d_bn_on_rows_is_refused_then_standalone() -> None:
    text = model_text(
        "(float[2,5,6] x) => (float[2,5,4] y)",
        [const_text("w", (6, 4), 1), *bn_inits(5)],
        f"c = MatMul(x, w)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-standalone": 1}, ops=["onnx.MatMul", "onnx.Mul", "onnx.Add"])


def test_bn_after_shared_conv_is_standalone() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] c)",
        [const_text("w", (4, 3, 1, 1), 1), *bn_inits(4)],
        f"c = Conv(x, w)\ny = {BN}(c, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-standalone": 1},
                  ops=["onnx.Conv", "onnx.Mul", "onnx.Add"])
    check_rewrite(text, "fuse-bn{standalone=keep}", fired_exactly={},
                  ops=["onnx.Conv", "onnx.BatchNormalization"])


def test_bn_before_unpadded_conv_folds() -> None:
    text = model_text(
        "(float[1,4,8,8] x) => (float[1,6,6,6] y)",
        [const_text("w", (6, 2, 3, 3), 1), const_text("b", (6,), 2), *bn_inits(4)],
        f"n = {BN}(x, gamma, beta, mean, var)\ny = Conv<group=2>(n, w, b)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-next-linear": 1}, ops=["onnx.Conv"])


def test_bn_before_padded_conv_is_refused_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    text = model_text(
        "(float[1,4,8,8] x) => (float[1,6,8,8] y)",
        [const_text("w", (6, 4, 3, 3), 1), *bn_inits(4)],
        f"n = {BN}(x, gamma, beta, mean, var)\ny = Conv<pads=[1,1,1,1]>(n, w)",
    )
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-standalone": 1},
                      ops=["onnx.Mul", "onnx.Add", "onnx.Conv"], ctx=PassContext(debug_rules=True))
    assert "the Conv pads with zeros: a shift before it is not exact at the borders" in caplog.text
    # fuse-bias then moves the Mul (exact with zero padding) into the Conv; the Add stays.
    check_rewrite(text, "fuse-bn,fuse-bias", ops=["onnx.Add", "onnx.Conv"])


def test_bn_before_gemm() -> None:
    text = model_text(
        "(float[3,4] x) => (float[3,5] y)",
        [const_text("w", (5, 4), 1), const_text("b", (5,), 2), *bn_inits(4)],
        f"n = {BN}(x, gamma, beta, mean, var)\ny = Gemm<transB=1>(n, w, b)",
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-into-next-linear": 1}, ops=["onnx.Gemm"])


def test_mul_and_add_after_bn_are_absorbed() -> None:
    text = model_text(
        "(float[1,4,5,5] x) => (float[1,4,5,5] y)",
        [*bn_inits(4), const_text("s", (4, 1, 1), 20), const_text("t", (1, 4, 1, 1), 21)],
        f"n = {BN}(x, gamma, beta, mean, var)\nm = Mul(s, n)\na = Add(m, t)\ny = Relu(a)",
    )
    check_rewrite(text, "fuse-bn{standalone=keep}", fired_exactly={"fuse-mul-into-bn": 1, "fuse-add-into-bn": 1},
                  ops=["onnx.BatchNormalization", "onnx.Relu"])


def test_mul_and_add_before_bn_are_absorbed() -> None:
    text = model_text(
        "(float[2,4,5] x) => (float[2,4,5] y)",
        [*bn_inits(4), const_text("s", (4, 1), 20, low=0.5), const_text("t", (4, 1), 21)],
        f"m = Mul(x, s)\na = Add(m, t)\ny = {BN}(a, gamma, beta, mean, var)",
    )
    check_rewrite(text, "fuse-bn{standalone=keep}", fired_exactly={"fuse-bn-after-add": 1, "fuse-bn-after-mul": 1},
                  ops=["onnx.BatchNormalization"])


def test_non_per_channel_neighbours_stay() -> None:
    text = model_text(
        "(float[1,4,5,5] x) => (float[1,4,5,5] y)",
        [*bn_inits(4), const_text("s", (5,), 20)],
        f"n = {BN}(x, gamma, beta, mean, var)\ny = Mul(n, s)",
    )
    check_rewrite(text, "fuse-bn{standalone=keep}", fired_exactly={}, ops=["onnx.BatchNormalization", "onnx.Mul"])


def test_standalone_bn_opset9_and_rank2() -> None:
    text = model_text(
        "(float[3,4] x) => (float[3,4] y)",
        bn_inits(4),
        "y = BatchNormalization(x, gamma, beta, mean, var)",
        opset=9,
    )
    check_rewrite(text, "fuse-bn", fired_exactly={"fuse-bn-standalone": 1}, ops=["onnx.Mul", "onnx.Add"])


def test_training_mode_bn_is_left_alone() -> None:
    text = model_text(
        "(float[2,4,3,3] x) => (float[2,4,3,3] y)",
        [const_text("w", (4, 4, 1, 1), 1), *bn_inits(4)],
        "c = Conv(x, w)\ny = BatchNormalization<training_mode=1>(c, gamma, beta, mean, var)",
        opset=15,
    )
    g = kiln.load(parse_model(text))
    ctx = PassContext()
    from kiln.passmanager import PassManager

    PassManager("fuse-bn").run(g, ctx)
    assert fired(ctx) == {} and op_ids(g) == ["onnx.Conv", "onnx.BatchNormalization"]


def test_conv_bn_relu_chain_in_o2() -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,8,4,4] y)",
        [const_text("w1", (4, 3, 3, 3), 1), *bn_inits(4, 10, "a"), const_text("w2", (8, 4, 3, 3), 2),
         *bn_inits(8, 20, "b")],
        f"c1 = Conv<pads=[1,1,1,1]>(x, w1)\nn1 = {BN}(c1, agamma, abeta, amean, avar)\nr1 = Relu(n1)\n"
        f"c2 = Conv<pads=[1,1,1,1], strides=[2,2]>(r1, w2)\nn2 = {BN}(c2, bgamma, bbeta, bmean, bvar)\ny = Relu(n2)",
    )
    check_rewrite(text, "O2", fired_exactly={"fuse-bn-into-linear": 2},
                  ops=["onnx.Conv", "onnx.Relu", "onnx.Conv", "onnx.Relu"])
