"""kiln.rewrite: the pattern language, checks, replacements, captures."""

from __future__ import annotations

import kiln
import numpy as np
import pytest
from kiln.ir import Location
from kiln.passmanager import PassContext, PassManager, PassRegistry, use_registry
from kiln.rewrite import P, RuleSet, attrs_of, rule
from rewrite_helpers import check_rewrite, const_text, model_text, op_ids, parse_model

W = const_text("w", (4, 3, 3, 3), 1)
B = const_text("b", (4,), 2)
CONV_RELU = model_text(
    "(float[1,3,8,8] x) => (float[1,4,8,8] y)",
    [W, B],
    "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Relu(c)",
)


# --------------------------------------------------------------------------- the docstring example


@rule("fuse-conv-relu")
def conv_relu(op, x, w):
    return op.Relu(op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv"]))


@conv_relu.check
def _(ctx, conv):
    return ctx.one_use(conv) or "the Conv output has other users"


@conv_relu.replace
def _(op, conv):
    return op.op("ConvAct", *conv.producer.inputs, _domain="kiln", activation="Relu", **attrs_of(conv.producer))


def test_docstring_example_fuses_and_runs() -> None:
    g, ctx = check_rewrite(CONV_RELU, RuleSet([conv_relu]), fired_exactly={"fuse-conv-relu": 1}, ops=["kiln.ConvAct"])
    node = next(iter(g))
    assert node.attr("pads") == [1, 1, 1, 1] and node.attr("activation") == "Relu"
    assert node.loc.rule == "fuse-conv-relu"
    assert [loc.index for loc in node.loc.fused_from] == [1, 0]  # Relu, then Conv
    assert node.outputs[0].name == "y"  # the graph output keeps its name
    assert ctx.stats["rules.fuse-conv-relu"] == 1


def _docstring_example() -> str:
    import textwrap

    import kiln.rewrite as module

    doc = module.__doc__ or ""
    return textwrap.dedent(doc[doc.index("    from kiln.passmanager"): doc.index("Patterns (")])


def test_docstring_example_fits_in_15_lines_and_runs() -> None:
    code = _docstring_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    registry = PassRegistry(entry_point_group=None)
    with use_registry(registry):
        namespace: dict[str, object] = {"__name__": "docstring_example"}
        exec(compile(code, "kiln.rewrite docstring", "exec"), namespace)  # noqa: S102 - our own docstring
        assert registry.lookup("fuse-conv-relu").summary == "Conv + Relu -> kiln.ConvAct."
        g = kiln.load(parse_model(CONV_RELU))
        ctx = PassContext()
        PassManager("fuse-conv-relu").run(g, ctx)
    assert op_ids(g) == ["kiln.ConvAct"] and ctx.stats["rules.fuse-conv-relu"] == 1


def test_check_refusal_keeps_graph(caplog: pytest.LogCaptureFixture) -> None:
    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] c)", [W, B], "c = Conv<pads=[1,1,1,1]>(x, w, b)\ny = Relu(c)"
    )
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        check_rewrite(text, RuleSet([conv_relu]), fired_exactly={}, ops=["onnx.Conv", "onnx.Relu"],
                      ctx=PassContext(debug_rules=True))
    assert "rule fuse-conv-relu refused: the Conv output has other users" in caplog.text


# --------------------------------------------------------------------------- attributes


def _count(text: str, r: object) -> int:
    g = kiln.load(parse_model(text))
    return RuleSet([r]).apply(g, PassContext())  # type: ignore[list-item]


def _leaky(alpha: float | None) -> str:
    attr = "" if alpha is None else f"<alpha={alpha}>"
    return model_text("(float[2,3] x) => (float[2,3] y)", [], f"y = LeakyRelu{attr}(x)")


def test_attribute_exact_value_uses_schema_default() -> None:
    @rule("leaky-default")
    def r(op, x):
        return op.LeakyRelu(x, alpha=0.01)

    r.replace(lambda op, x: op.Relu(x))
    assert _count(_leaky(None), r) == 1  # absent: the schema default 0.01
    assert _count(_leaky(0.5), r) == 0


def test_attribute_predicate_and_set() -> None:
    @rule("leaky-small")
    def small(op, x):
        return op.LeakyRelu(x, alpha=lambda a: a < 0.2)

    small.replace(lambda op, x: op.Relu(x))

    @rule("leaky-set")
    def in_set(op, x):
        return op.LeakyRelu(x, alpha={0.5, 0.25})

    in_set.replace(lambda op, x: op.Relu(x))
    assert _count(_leaky(0.1), small) == 1
    assert _count(_leaky(0.3), small) == 0
    assert _count(_leaky(0.25), in_set) == 1
    assert _count(_leaky(0.3), in_set) == 0


def test_attribute_capture() -> None:
    seen: list[float] = []

    @rule("leaky-capture")
    def r(op, x):
        return op.LeakyRelu(x, alpha=P.attr("a", lambda a: a > 0))

    @r.replace
    def _(op, x, a):
        seen.append(a)
        return op.Relu(x)

    assert _count(_leaky(0.5), r) == 1
    assert seen == [0.5]


# --------------------------------------------------------------------------- inputs


def test_optional_input_captures_none_when_absent() -> None:
    seen: list[object] = []

    @rule("conv-optional-bias")
    def r(op, x, w, b=P.optional()):  # noqa: B008 - pattern defaults are patterns, by design
        return op.Relu(op.Conv(x, w, b, _node="conv"))

    @r.replace
    def _(op, x, w, b, conv):
        seen.append(b)
        inputs = [x, w] if b is None else [x, w, b]
        return op.op("ConvAct", *inputs, _domain="kiln", activation="Relu", **attrs_of(conv))

    with_bias = CONV_RELU
    without_bias = CONV_RELU.replace("Conv<pads=[1,1,1,1]>(x, w, b)", "Conv<pads=[1,1,1,1]>(x, w)")
    check_rewrite(with_bias, RuleSet([r]), fired_exactly={"conv-optional-bias": 1})
    check_rewrite(without_bias, RuleSet([r]), fired_exactly={"conv-optional-bias": 1})
    assert seen[0] is not None and seen[1] is None


def test_exact_arity_without_allow_other_inputs() -> None:
    @rule("conv-no-bias")
    def r(op, x, w):
        return op.Relu(op.Conv(x, w, _node="conv"))

    r.replace(lambda op, conv: op.op("ConvAct", *conv.inputs, _domain="kiln", activation="Relu", **attrs_of(conv)))
    assert _count(CONV_RELU, r) == 0  # the Conv has a bias
    assert _count(CONV_RELU.replace("(x, w, b)", "(x, w)"), r) == 1


def test_variadic_captures_the_rest() -> None:
    seen: list[tuple] = []

    @rule("sum-rest")
    def r(op, first, rest=P.variadic()):  # noqa: B008 - pattern defaults are patterns, by design
        return op.Sum(first, rest)

    @r.replace
    def _(op, first, rest):
        seen.append(rest)
        # declines: nothing changes

    text = model_text("(float[2] a, float[2] b, float[2] c) => (float[2] y)", [], "y = Sum(a, b, c)")
    assert _count(text, r) == 0
    assert [v.name for v in seen[0]] == ["b", "c"]


def test_omitted_input_pattern_none() -> None:
    @rule("clip-no-max")
    def r(op, x, lo=P.const()):  # noqa: B008 - pattern defaults are patterns, by design
        return op.Clip(x, lo, None)

    r.replace(lambda op, x, lo: op.Max(x, lo))
    text = model_text("(float[4] x) => (float[4] y)", ["float lo = {0.0}", "float hi = {6.0}"], "y = Clip(x, lo, hi)")
    assert _count(text, r) == 0
    text = model_text("(float[4] x) => (float[4] y)", ["float lo = {0.0}"], "y = Clip(x, lo)")
    check_rewrite(text, RuleSet([r]), fired_exactly={"clip-no-max": 1}, ops=["onnx.Max"])


# --------------------------------------------------------------------------- constants


def test_const_and_scalar_patterns() -> None:
    @rule("add-zero")
    def add_zero(op, x):
        return op.Add(x, P.scalar(0.0))

    add_zero.replace(lambda op, x: op.Identity(x))

    @rule("add-const")
    def add_const(op, x, c=P.const(check=lambda a: bool(np.all(a > 0)))):  # noqa: B008 - pattern defaults are patterns, by design
        return op.Add(x, c)

    add_const.replace(lambda op, x, c: op.Sub(x, op.const(-c.numpy())))
    zero = model_text("(float[3] x) => (float[3] y)", ["float z = {0.0}"], "y = Add(x, z)")
    vec = model_text("(float[3] x) => (float[3] y)", ["float[3] z = {1.0, 2.0, 3.0}"], "y = Add(x, z)")
    neg = model_text("(float[3] x) => (float[3] y)", ["float[3] z = {1.0, -2.0, 3.0}"], "y = Add(x, z)")
    runtime = model_text("(float[3] x, float[3] z) => (float[3] y)", [], "y = Add(x, z)")
    assert _count(zero, add_zero) == 1
    assert _count(vec, add_zero) == 0
    assert _count(vec, add_const) == 1
    assert _count(neg, add_const) == 0
    assert _count(runtime, add_const) == 0
    check_rewrite(vec, RuleSet([add_const]), fired_exactly={"add-const": 1}, ops=["onnx.Sub"])


# --------------------------------------------------------------------------- commutativity, DAGs, one use


@rule("mul-by-two")
def mul_two(op, x):
    return op.Mul(x, P.scalar(2.0))


mul_two.replace(lambda op, x: op.Add(x, x))


@pytest.mark.parametrize("body", ["y = Mul(x, two)", "y = Mul(two, x)"])
def test_commutative_ops_match_both_orders(body: str) -> None:
    text = model_text("(float[3] x) => (float[3] y)", ["float two = {2.0}"], body)
    check_rewrite(text, RuleSet([mul_two]), fired_exactly={"mul-by-two": 1}, ops=["onnx.Add"])


def test_non_commutative_and_commute_false() -> None:
    @rule("sub-two")
    def sub_two(op, x):
        return op.Sub(x, P.scalar(2.0))

    sub_two.replace(lambda op, x: op.Add(x, op.const(np.float32(-2.0))))

    @rule("mul-two-ordered")
    def ordered(op, x):
        return op.Mul(x, P.scalar(2.0), _commute=False)

    ordered.replace(lambda op, x: op.Add(x, x))
    swapped_sub = model_text("(float[3] x) => (float[3] y)", ["float two = {2.0}"], "y = Sub(two, x)")
    swapped_mul = model_text("(float[3] x) => (float[3] y)", ["float two = {2.0}"], "y = Mul(two, x)")
    assert _count(swapped_sub, sub_two) == 0
    assert _count(swapped_mul, ordered) == 0


def test_check_refusal_tries_the_other_order() -> None:
    """Add(Relu(a), Relu(b)): the check refuses the first binding, the swapped one passes."""
    seen: list[tuple[str, str]] = []

    @rule("pick-b")
    def r(op, p, q):
        return op.Add(op.Relu(p), q)

    @r.check
    def _(ctx, p):
        return p.name == "b" or f"p is {p.name}"

    @r.replace
    def _(op, p, q):
        seen.append((p.name, q.name))
        return op.Sum(op.Relu(p), q)

    text = model_text("(float[3] a, float[3] b) => (float[3] y)", [], "ra = Relu(a)\nrb = Relu(b)\ny = Add(ra, rb)")
    check_rewrite(text, RuleSet([r]), fired_exactly={"pick-b": 1})
    assert seen == [("b", "ra")]


def test_dag_pattern_same_value_twice() -> None:
    @rule("swish")
    def r(op, x):
        return op.Mul(x, op.Sigmoid(x))

    r.replace(lambda op, x: op.op("HardSwish", x))  # any marker will do: count only
    swish = model_text("(float[3] x) => (float[3] y)", [], "s = Sigmoid(x)\ny = Mul(x, s)")
    other = model_text("(float[3] x, float[3] z) => (float[3] y)", [], "s = Sigmoid(z)\ny = Mul(x, s)")
    assert _count(swish, r) == 1
    assert _count(other, r) == 0


def test_one_use_rule_option_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    @rule("neg-neg", one_use=True)
    def r(op, x):
        return op.Neg(op.Neg(x))

    r.replace(lambda op, x: x)
    single = model_text("(float[3] x) => (float[3] y)", [], "n = Neg(x)\nm = Neg(n)\ny = Relu(m)")
    shared = model_text("(float[3] x) => (float[3] y, float[3] n)", [], "n = Neg(x)\nm = Neg(n)\ny = Relu(m)")
    assert _count(single, r) == 1
    g = kiln.load(parse_model(shared))
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        assert RuleSet([r]).apply(g, PassContext(debug_rules=True)) == 0
    assert "the rule needs one" in caplog.text


# --------------------------------------------------------------------------- replacements


def test_replacement_with_existing_value_and_output_names() -> None:
    @rule("relu-relu")
    def r(op, x):
        return op.Relu(op.Relu(x, _outputs=["inner"]))

    r.replace(lambda op, inner: inner)
    text = model_text("(float[3] x) => (float[3] y)", [], "a = Relu(x)\nb = Relu(a)\ny = Relu(b)")
    g, _ = check_rewrite(text, RuleSet([r]), fired_exactly={"relu-relu": 2}, ops=["onnx.Relu"])
    assert g.outputs[0].name == "y"


def test_replacement_may_not_rename_a_graph_input() -> None:
    @rule("drop-identity")
    def r(op, x):
        return op.Identity(x)

    r.replace(lambda op, x: x)
    text = model_text("(float[3] x) => (float[3] y)", [], "y = Identity(x)")
    g = kiln.load(parse_model(text))
    assert RuleSet([r]).apply(g) == 0
    assert op_ids(g) == ["onnx.Identity"]


def test_replacement_refuse_undoes_new_nodes() -> None:
    @rule("half-built")
    def r(op, x):
        return op.Relu(x)

    @r.replace
    def _(op, x):
        op.Neg(op.Neg(x))
        op.const(np.zeros(3, np.float32))
        op.refuse("changed my mind")

    text = model_text("(float[3] x) => (float[3] y)", [], "y = Relu(x)")
    g = kiln.load(parse_model(text))
    consts = dict(g.constants)
    assert RuleSet([r]).apply(g) == 0
    assert op_ids(g) == ["onnx.Relu"] and g.constants == consts


def test_check_and_replace_signatures_are_validated() -> None:
    @rule("sig")
    def r(op, x):
        return op.Relu(x, _outputs=["y"])

    with pytest.raises(TypeError, match="'z', which the pattern does not capture"):
        r.check(lambda ctx, z: True)
    r.check(lambda ctx, **captures: set(captures) == {"x", "y"})
    with pytest.raises(ValueError, match="kebab-case"):
        rule("Not_Kebab")(lambda op, x: op.Relu(x))
    with pytest.raises(TypeError, match="must return the output"):
        rule("no-op-pattern")(lambda op, x: x)


def test_fused_location_lists_the_originals() -> None:
    g = kiln.load(parse_model(CONV_RELU))
    originals = [n.loc for n in g]
    RuleSet([conv_relu]).apply(g)
    loc = next(iter(g)).loc
    assert loc == Location.fused([originals[1], originals[0]], "fuse-conv-relu")
    assert loc.describe().startswith("fused by fuse-conv-relu from [")


def test_matches_can_be_listed_without_rewriting() -> None:
    g = kiln.load(parse_model(CONV_RELU))
    relu = next(n for n in g if n.op == "Relu")
    found = list(conv_relu.matches(relu))
    assert len(found) == 1 and set(found[0].captures) == {"x", "w", "conv"}
    assert [n.op for n in found[0].nodes] == ["Relu", "Conv"]
    assert op_ids(g) == ["onnx.Conv", "onnx.Relu"]
