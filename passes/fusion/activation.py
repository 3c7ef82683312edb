"""``fuse-act``: activations fused into the Conv/Gemm/MatMul that produces their input.

- ``fuse-conv-act``: ``act(Conv(x, W, B))`` -> ``kiln.ConvAct(x, W, B)``;
- ``fuse-convtranspose-act`` (a pass of its own, see below):
  ``act(ConvTranspose(x, W, B))`` -> ``kiln.ConvTransposeAct(x, W, B)``;
- ``fuse-gemm-act``: ``act(Gemm(A, B, C))`` -> ``kiln.GemmAct(A, B, C)``;
- ``fuse-matmul-act``: ``act(MatMul(a, b))`` and ``act(MatMul(a, b) + c)``
  (``c`` broadcasting into the product without widening it) ->
  ``kiln.GemmAct(a, b, [c])``;
- ``fuse-conv-swish`` / ``fuse-gemm-swish``: ``y · Sigmoid(y)`` (SiLU) and
  ``y · HardSigmoid(y; 1/6, 1/2)`` (HardSwish) over such a ``y``;
- ``fuse-{conv,gemm,matmul-bias,matmul}-kiln-act``: the same producers under the
  ``kiln.Gelu`` / ``kiln.Swish`` / ``kiln.HardSwish`` that raising made (a
  transformer FFN's ``Gelu(x @ W + b)`` becomes one ``kiln.GemmAct``);
- ``fuse-add-act`` (a pass of its own, see below): ``act(Add(a, b))`` ->
  ``kiln.AddAct(a, b)``, the residual block's ``Relu(x + shortcut)``.

``act`` is one of Relu, Clip (constant bounds), LeakyRelu, Sigmoid,
HardSigmoid, HardSwish, Swish, Mish, Tanh, Elu, Gelu and PRelu (its slope becomes the
fused op's last input); see ``kiln.ops.kiln_dialect`` for the semantics.  The
producer's output must feed only the activation.

NCNN, TFLite and TensorRT execute a convolution or matrix product with its
activation as one layer, and their legalization pipelines run this pass.  It
is not in ``O2`` (onnxruntime fuses these itself); ``O3`` runs it, and the
ONNX target writes the fused ops as onnxruntime's ``FusedConv``/``FusedGemm``/
``BiasGelu``... with ``--onnx-contrib``, else as model-local functions.
"""

from __future__ import annotations

import math

from kiln.ir.core import Node, Value
from kiln.ops.kiln_dialect import FLOAT_MAX
from kiln.passes.fusion._affine import FLOAT_DTYPES, const_array, fits_into
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, Rule, RuleSet, attrs_of, rule

SIMPLE_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Swish", "Mish", "Tanh", "Elu", "Gelu",
     "PRelu"}
)
KILN_ACTIVATIONS = frozenset({"Gelu", "Swish", "HardSwish"})
"""The kiln ops that raising makes (``kiln.Gelu`` ...) and that a ConvAct/GemmAct can carry."""


def activation_of(act: Node) -> tuple[str, list[float], dict[str, str], Value | None] | str:
    """``(activation, params, extra attrs, PRelu slope)`` for a fused op, or why ``act`` cannot fuse."""
    op = act.op
    if act.domain == "kiln" and op not in KILN_ACTIVATIONS:
        return f"{act.op_id} is not a fusable activation"
    if op in ("Relu", "Sigmoid", "Tanh", "HardSwish", "Mish"):
        return op, [], {}, None
    if op == "Swish":
        alpha = float(act.attr("alpha", 1.0))
        return op, ([alpha] if alpha != 1.0 else []), {}, None
    if op == "LeakyRelu":
        return op, [float(act.attr("alpha", 0.01))], {}, None
    if op == "HardSigmoid":
        return op, [float(act.attr("alpha", 0.2)), float(act.attr("beta", 0.5))], {}, None
    if op == "Elu":
        return op, [float(act.attr("alpha", 1.0))], {}, None
    if op == "Gelu":
        approximate = act.attr("approximate", "none") or "none"
        return op, [], ({"approximate": approximate} if approximate != "none" else {}), None
    if op == "PRelu":
        return op, [], {}, act.input(1)
    if op == "Clip":
        if (act.version or 11) < 11:
            return op, [float(act.attr("min", -FLOAT_MAX)), float(act.attr("max", FLOAT_MAX))], {}, None
        bounds = []
        for i, default in ((1, -FLOAT_MAX), (2, FLOAT_MAX)):
            v = act.input(i)
            if v is None:
                bounds.append(default)
                continue
            data = const_array(v)
            if data is None or data.size != 1:
                return "the Clip bounds are not constant scalars"
            bounds.append(float(data.reshape(-1)[0]))
        if any(math.isnan(b) for b in bounds):
            return "a Clip bound is NaN"
        return op, bounds, {}, None
    return f"{act.op_id} is not a fusable activation"


def _act_inputs(op: str, inputs: list[Value | None], slope: Value | None) -> list[Value | None]:
    """The fused op's inputs: a PRelu slope goes last, after kiln.AddAct's two operands or the others' three."""
    if slope is not None:
        inputs = inputs + [None] * ((2 if op == "AddAct" else 3) - len(inputs)) + [slope]
    return inputs


def _fused(op, kind: str, producer: Node | None, inputs: list[Value | None], act: Node) -> Value:
    """kiln.<kind>(*inputs) carrying ``act``, with ``producer``'s attributes (none for MatMul [+ bias] or Add)."""
    spec = activation_of(act)
    assert not isinstance(spec, str)
    name, params, extra, slope = spec
    attrs = dict(attrs_of(producer)) if producer is not None else {}
    attrs.update(extra)
    if params:
        attrs["activation_params"] = params
    return op.op(kind, *_act_inputs(kind, inputs, slope), _domain="kiln", activation=name, **attrs)


def _check_act(act: Node, y: Value) -> bool | str:
    if y.dtype not in FLOAT_DTYPES:
        return f"{y.dtype} is not a float type"
    spec = activation_of(act)
    return spec if isinstance(spec, str) else True


def _producer_rule(name: str, producer: str, fused: str, acts: str) -> Rule:
    """``act(<producer>(args...))`` -> ``kiln.<fused>(args...)``, the producer's output read by the activation
    alone; ``acts`` is ``"onnx"`` (the ONNX activations fuse-act knows) or ``"kiln"`` (the kiln.Gelu /
    Swish / HardSwish that raising makes)."""

    def pattern(op):  # type: ignore[no-untyped-def]
        made = getattr(op, producer)(P.variadic("args"), _outputs=["y"], _one_use=True)
        if acts == "kiln":
            return _kiln_act(op, made)
        return op.op(SIMPLE_ACTIVATIONS, made, _allow_other_inputs=True, _node="act")

    pattern.__doc__ = f"{'kiln.' if acts == 'kiln' else ''}act({producer}(args...)) -> kiln.{fused}(args...)."
    return Rule(
        name,
        pattern,
        replacement=lambda op, act, y, args: _fused(op, fused, y.producer, list(args), act),
        check=lambda ctx, act, y: _check_act(act, y),
    )


def _kiln_act(op, producer):  # type: ignore[no-untyped-def]
    return op.op(KILN_ACTIVATIONS, producer, _domain="kiln", _node="act")


conv_act = _producer_rule("fuse-conv-act", "Conv", "ConvAct", "onnx")
conv_transpose_act = _producer_rule("fuse-convtranspose-act", "ConvTranspose", "ConvTransposeAct", "onnx")
gemm_act = _producer_rule("fuse-gemm-act", "Gemm", "GemmAct", "onnx")
conv_kiln_act = _producer_rule("fuse-conv-kiln-act", "Conv", "ConvAct", "kiln")
gemm_kiln_act = _producer_rule("fuse-gemm-kiln-act", "Gemm", "GemmAct", "kiln")


# --------------------------------------------------------------------------- MatMul (+ bias)


@rule("fuse-matmul-bias-act")
def matmul_bias_act(op, a, b, c):
    """act(Add(MatMul(a, b), c)) -> kiln.GemmAct(a, b, c)."""
    mm = op.MatMul(a, b, _outputs=["mm"], _one_use=True)
    return op.op(SIMPLE_ACTIVATIONS, op.Add(mm, c, _outputs=["y"], _one_use=True), _allow_other_inputs=True, _node="act")


@matmul_bias_act.check
def _matmul_bias_check(ctx, act: Node, mm: Value, y: Value, c: Value) -> bool | str:
    if mm.shape is None or c.shape is None or y.shape != mm.shape or c.dtype != mm.dtype:
        return "the bias widens the product, or shapes are unknown"
    if not fits_into(tuple(c.shape), mm.shape):
        return "the bias does not broadcast into the product"
    return _check_act(act, y)


def _matmul_act(op, act: Node, inputs: list[Value | None]) -> Value:
    """kiln.GemmAct(*inputs) carrying ``act``: MatMul [+ bias] has no Gemm attributes to copy."""
    return _fused(op, "GemmAct", None, inputs, act)


@matmul_bias_act.replace
def _(op, act: Node, a: Value, b: Value, c: Value) -> Value:
    return _matmul_act(op, act, [a, b, c])


def _binary_act_rule(name: str, producer: str, acts: str, make) -> Rule:  # type: ignore[no-untyped-def]
    """``act(<producer>(a, b))`` -> ``make(op, act, [a, b])``, the product or sum read by the activation alone;
    ``acts`` as in :func:`_producer_rule`."""

    def pattern(op, a, b):  # type: ignore[no-untyped-def]
        made = getattr(op, producer)(a, b, _outputs=["y"], _one_use=True)
        if acts == "kiln":
            return _kiln_act(op, made)
        return op.op(SIMPLE_ACTIVATIONS, made, _allow_other_inputs=True, _node="act")

    fused = "GemmAct" if producer == "MatMul" else f"{producer}Act"
    pattern.__doc__ = f"{'kiln.' if acts == 'kiln' else ''}act({producer}(a, b)) -> kiln.{fused}(a, b)."
    return Rule(
        name,
        pattern,
        replacement=lambda op, act, a, b: make(op, act, [a, b]),
        check=lambda ctx, act, y: _check_act(act, y),
    )


matmul_act = _binary_act_rule("fuse-matmul-act", "MatMul", "onnx", _matmul_act)


# --------------------------------------------------------------------------- MatMul under kiln.Gelu / Swish / HardSwish


@rule("fuse-matmul-bias-kiln-act")
def matmul_bias_kiln_act(op, a, b, c):
    """kiln.Gelu|Swish|HardSwish(Add(MatMul(a, b), c)) -> kiln.GemmAct(a, b, c) (a transformer's FFN)."""
    mm = op.MatMul(a, b, _outputs=["mm"], _one_use=True)
    return _kiln_act(op, op.Add(mm, c, _outputs=["y"], _one_use=True))


@matmul_bias_kiln_act.check
def _(ctx, act: Node, mm: Value, y: Value, c: Value) -> bool | str:
    return _matmul_bias_check(ctx, act, mm, y, c)


@matmul_bias_kiln_act.replace
def _(op, act: Node, a: Value, b: Value, c: Value) -> Value:
    return _matmul_act(op, act, [a, b, c])


matmul_kiln_act = _binary_act_rule("fuse-matmul-kiln-act", "MatMul", "kiln", _matmul_act)


# --------------------------------------------------------------------------- y * gate(y)


def _is_hard_swish_gate(alpha: float) -> bool:
    return abs(alpha - 1.0 / 6.0) < 1e-6


def _gated(op, producer_op: str, kind: str):
    y = op.op(producer_op, P.variadic("args"), _outputs=["y"])
    gate = op.op({"Sigmoid", "HardSigmoid"}, y, _outputs=["g"], _node="gate", _one_use=True)
    return op.Mul(y, gate)


def _gate_check(y: Value, gate: Node) -> bool | str:
    if len(y.uses) != 2 or (y.graph is not None and y.graph.is_output(y)):
        return "the product is read by more than the gate and the Mul"
    if y.dtype not in FLOAT_DTYPES:
        return f"{y.dtype} is not a float type"
    hard_swish = _is_hard_swish_gate(float(gate.attr("alpha", 0.2))) and float(gate.attr("beta", 0.5)) == 0.5
    if gate.op == "HardSigmoid" and not hard_swish:
        return "the HardSigmoid is not HardSwish's (alpha 1/6, beta 1/2)"
    return True


def _gate_replace(op, kind: str, y: Value, gate: Node, args: tuple) -> Value:
    producer = y.producer
    assert producer is not None
    name = "Swish" if gate.op == "Sigmoid" else "HardSwish"
    return op.op(kind, *args, _domain="kiln", activation=name, **attrs_of(producer))


@rule("fuse-conv-swish")
def conv_swish(op):
    """Mul(y, Sigmoid|HardSigmoid(y)), y = Conv(...) -> kiln.ConvAct(Swish|HardSwish)."""
    return _gated(op, "Conv", "ConvAct")


@conv_swish.check
def _(ctx, y: Value, gate: Node) -> bool | str:
    return _gate_check(y, gate)


@conv_swish.replace
def _(op, y: Value, gate: Node, args: tuple) -> Value:
    return _gate_replace(op, "ConvAct", y, gate, args)


@rule("fuse-gemm-swish")
def gemm_swish(op):
    """Mul(y, Sigmoid|HardSigmoid(y)), y = Gemm(...) -> kiln.GemmAct(Swish|HardSwish)."""
    return _gated(op, "Gemm", "GemmAct")


@gemm_swish.check
def _(ctx, y: Value, gate: Node) -> bool | str:
    return _gate_check(y, gate)


@gemm_swish.replace
def _(op, y: Value, gate: Node, args: tuple) -> Value:
    return _gate_replace(op, "GemmAct", y, gate, args)


# --------------------------------------------------------------------------- Add


def _add_act(op, act: Node, inputs: list[Value | None]) -> Value:
    return _fused(op, "AddAct", None, inputs, act)


add_act = _binary_act_rule("fuse-add-act", "Add", "onnx", _add_act)
add_kiln_act = _binary_act_rule("fuse-add-kiln-act", "Add", "kiln", _add_act)


ACT_RULES = RuleSet(
    [conv_act, gemm_act, matmul_bias_act, matmul_act, conv_kiln_act, gemm_kiln_act, matmul_bias_kiln_act,
     matmul_kiln_act, conv_swish, gemm_swish],
    name="fuse-act",
)

FuseActivation = register_pass(
    ACT_RULES.as_pass("fuse-act", "Fuses activations into the Conv/Gemm/MatMul before them (kiln.ConvAct, kiln.GemmAct).")
)

# A pass of its own, run by the targets whose transposed convolution carries an activation (NCNN's
# Deconvolution): onnxruntime has no fused ConvTranspose, and on TFLite and TensorRT the activation is a
# layer of its own anyway, so it is not in fuse-act, O3 or target-fusions.
CONV_TRANSPOSE_ACT_RULES = RuleSet([conv_transpose_act], name="fuse-convtranspose-act")

FuseConvTransposeActivation = register_pass(
    CONV_TRANSPOSE_ACT_RULES.as_pass(
        "fuse-convtranspose-act", "Fuses activations into the ConvTranspose before them (kiln.ConvTransposeAct)."
    )
)

# A pass of its own, run by the target whose elementwise add carries an activation (TFLite's ADD, for the Relu
# family), after its layout pass.  onnxruntime has no fused Add + activation kernel (a kiln.AddAct would be a
# local function it inlines back), NCNN's BinaryOp and TensorRT's elementwise layer carry none, so it is not
# in fuse-act, O3 or target-fusions.
ADD_ACT_RULES = RuleSet([add_act, add_kiln_act], name="fuse-add-act")

FuseAddActivation = register_pass(
    ADD_ACT_RULES.as_pass("fuse-add-act", "Fuses activations into the Add before them (kiln.AddAct).")
)

__all__ = ["ACT_RULES", "ADD_ACT_RULES", "CONV_TRANSPOSE_ACT_RULES", "SIMPLE_ACTIVATIONS", "FuseActivation",
           "FuseAddActivation", "FuseConvTransposeActivation", "activation_of"]
