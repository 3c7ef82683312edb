"""kiln.rewrite: rule sets, the greedy driver, listeners, --debug-rules, the ping-pong guard, passes."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

import kiln
import numpy as np
import pytest
from kiln.ir import DType, Graph, Node, TensorType, verify
from kiln.passmanager import PassContext, PassManager, PassRegistry, Pipeline, register_pass, use_registry
from kiln.rewrite import (
    GreedyRewriteDriver,
    P,
    RewriteListener,
    RewriteLoopError,
    RewritePattern,
    Rewriter,
    RuleSet,
    RulesPass,
    rule,
    rules_pass,
)
from rewrite_helpers import check_rewrite, model_text, op_ids, parse_model


@rule("relu-relu")
def relu_relu(op, x):
    return op.Relu(op.Relu(x, _outputs=["inner"]))


relu_relu.replace(lambda op, inner: inner)


@rule("neg-neg")
def neg_neg(op, x):
    return op.Neg(op.Neg(x))


neg_neg.replace(lambda op, x: op.Identity(x))


def relu_chain(n: int) -> Graph:
    """x -> Relu -> Relu -> ... (n nodes), built directly in the IR."""
    g = Graph()
    g.opsets = {"": 17}
    v = g.add_input("x", TensorType(DType.FLOAT, (4,)))
    for _ in range(n):
        v = g.create_node("Relu", [v], output_types=[TensorType(DType.FLOAT, (4,))]).outputs[0]
    g.outputs.append(v)
    return g


# --------------------------------------------------------------------------- rule sets


def test_rule_sets_compose_and_index_by_root_op() -> None:
    a = RuleSet([relu_relu])
    b = RuleSet([neg_neg])
    both = a + b
    assert both.names() == ["relu-relu", "neg-neg"]
    assert (both + relu_relu).names() == ["relu-relu", "neg-neg"]  # the same rule once
    assert both["neg-neg"] is neg_neg
    g = relu_chain(2)
    relu = next(iter(g))
    assert both.candidates(relu) == [relu_relu]
    other = g.create_node("Sigmoid", [g.inputs[0]])
    assert both.candidates(other) == []


def test_two_rules_with_one_name_are_an_error() -> None:
    @rule("relu-relu")
    def impostor(op, x):
        return op.Relu(x)

    with pytest.raises(ValueError, match="two different rules are named 'relu-relu'"):
        RuleSet([relu_relu, impostor])


def test_fixed_point_and_stats() -> None:
    text = model_text("(float[3] x) => (float[3] y)", [], "a = Relu(x)\nb = Relu(a)\nc = Relu(b)\ny = Neg(c)")
    _, ctx = check_rewrite(text, RuleSet([relu_relu]), fired_exactly={"relu-relu": 2}, ops=["onnx.Relu", "onnx.Neg"])
    assert ctx.stats == {"rules.relu-relu": 2}


class CountingListener(RewriteListener):
    def __init__(self) -> None:
        self.events: list[str] = []

    def node_created(self, node: Node) -> None:
        self.events.append(f"created {node.op}")

    def node_erased(self, node: Node, inputs: object) -> None:
        self.events.append(f"erased {node.op}")

    def value_replaced(self, old: object, new: object) -> None:
        self.events.append("replaced")

    def rule_applied(self, rule: str, root: Node, matched: object) -> None:
        self.events.append(f"applied {rule}")


def test_all_mutations_reach_the_listeners() -> None:
    text = model_text("(float[3] x) => (float[3] y)", [], "a = Neg(x)\nb = Neg(a)\ny = Relu(b)")
    g = kiln.load(parse_model(text))
    listener = CountingListener()
    driver = GreedyRewriteDriver(RuleSet([neg_neg]), PassContext(), listeners=[listener])
    assert driver.run(g) == 1
    assert listener.events == ["created Identity", "replaced", "erased Neg", "erased Neg", "applied neg-neg"]
    assert driver.applied == {"neg-neg": 1}


# --------------------------------------------------------------------------- imperative rules


class FoldDoubleTranspose(RewritePattern):
    """Transpose(Transpose(x, p), q) -> Transpose(x, p∘q), or x."""

    name = "fold-double-transpose"
    roots = ("Transpose",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        inner_value = node.input(0)
        inner = inner_value.producer if inner_value is not None else None
        if inner is None or not inner.is_op("Transpose"):
            return rewriter.refuse("the input is not a Transpose")
        if len(inner_value.uses) != 1:  # type: ignore[union-attr]
            return rewriter.refuse("the inner Transpose has other users")
        p, q = inner.attr("perm"), node.attr("perm")
        if p is None or q is None:
            return rewriter.refuse("a perm is implicit")
        perm = [p[i] for i in q]
        op = rewriter.builder(node.graph, before=node, fused_from=[node, inner])  # type: ignore[arg-type]
        new = op.Transpose(inner.input(0), perm=perm)
        rewriter.replace_value(node.outputs[0], new)
        rewriter.erase_dead([node, inner])
        return True


def test_imperative_rule(caplog: pytest.LogCaptureFixture) -> None:
    text = model_text(
        "(float[2,3,4] x) => (float[4,2,3] y)",
        [],
        "a = Transpose<perm=[1,2,0]>(x)\nb = Transpose<perm=[2,0,1]>(a)\ny = Transpose<perm=[2,0,1]>(b)",
    )
    rules = RuleSet([FoldDoubleTranspose()])
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        g, _ = check_rewrite(text, rules, fired_exactly={"fold-double-transpose": 2}, ops=["onnx.Transpose"],
                             ctx=PassContext(debug_rules=True))
    assert next(iter(g)).attr("perm") == [2, 0, 1]
    assert "rule fold-double-transpose refused: the input is not a Transpose" in caplog.text
    assert next(iter(g)).loc.rule == "fold-double-transpose"


# --------------------------------------------------------------------------- --debug-rules


def test_debug_rules_logs_tries_refusals_and_applications(caplog: pytest.LogCaptureFixture) -> None:
    @rule("add-zero")
    def add_zero(op, x, z=P.scalar(0.0)):  # noqa: B008 - pattern defaults are patterns, by design
        return op.Add(x, z, _outputs=["y"])

    @add_zero.check
    def _(ctx, x, y):
        return x.type == y.type or "the Add broadcasts its input to a larger shape"

    add_zero.replace(lambda op, x: op.Identity(x))
    text = model_text(
        "(float[3] x, float[2,3] w) => (float[3] y, float[2,3] v, float[3] u)",
        ["float z = {0.0}", "float one = {1.0}", "float[2,3] zz = {0,0,0,0,0,0}"],
        "y = Add(x, z)\nv = Add(x, zz)\nu = Add(x, one)",
    )
    g = kiln.load(parse_model(text))
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        RuleSet([add_zero]).apply(g, PassContext(debug_rules=True), pass_name="my-pass")
    lines = [r.getMessage() for r in caplog.records if r.name == "kiln.rewrite"]
    assert any(line.startswith("my-pass: onnx.Add") and "rule add-zero applied (1 node matched)" in line for line in lines)
    assert any("rule add-zero refused: input 1 of onnx.Add: constant %one: value is not 0.0" in line for line in lines)
    assert any("rule add-zero refused: input 1 of onnx.Add: constant %zz has 6 elements, not a scalar" in line
               for line in lines)
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "kiln.rewrite")


def test_without_debug_rules_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    g = relu_chain(5)
    with caplog.at_level("DEBUG", logger="kiln.rewrite"):
        RuleSet([relu_relu]).apply(g, PassContext())
    assert not [r for r in caplog.records if r.name == "kiln.rewrite"]


def test_debug_rules_reaches_a_quiet_logger(caplog: pytest.LogCaptureFixture) -> None:
    """The CLI sets 'kiln' to WARNING; --debug-rules still shows its lines (and restores the level)."""
    kiln_logger = logging.getLogger("kiln")
    saved = kiln_logger.level
    kiln_logger.setLevel(logging.WARNING)
    try:
        with caplog.at_level(logging.NOTSET):
            RuleSet([relu_relu]).apply(relu_chain(3), PassContext(debug_rules=True))
        assert "rule relu-relu applied" in caplog.text
        assert logging.getLogger("kiln.rewrite").level == logging.NOTSET
    finally:
        kiln_logger.setLevel(saved)


# --------------------------------------------------------------------------- ping-pong


@rule("mul-two-to-add")
def mul_to_add(op, x):
    return op.Mul(x, P.scalar(2.0))


mul_to_add.replace(lambda op, x: op.Add(x, x))


@rule("add-self-to-mul")
def add_to_mul(op, x):
    return op.Add(x, x)


add_to_mul.replace(lambda op, x: op.Mul(x, op.const(np.float32(2.0))))

PING_PONG = model_text("(float[3] x) => (float[3] y)", ["float two = {2.0}"], "m = Mul(x, two)\ny = Relu(m)")


def test_ping_pong_is_an_error_naming_the_rules() -> None:
    g = kiln.load(parse_model(PING_PONG))
    with pytest.raises(RewriteLoopError) as info:
        RuleSet([mul_to_add, add_to_mul]).apply(g, PassContext(), max_rewrites_per_node=10)
    message = str(info.value)
    assert "ping-pong" in message and "mul-two-to-add -> add-self-to-mul" in message
    assert "11 times" in message


def test_ping_pong_warn_mode_stops_with_a_valid_graph(caplog: pytest.LogCaptureFixture) -> None:
    g = kiln.load(parse_model(PING_PONG))
    with caplog.at_level("WARNING", logger="kiln.rewrite"):
        done = RuleSet([mul_to_add, add_to_mul]).apply(g, PassContext(), max_rewrites_per_node=6, on_loop="warn")
    assert done == 7
    assert "ping-pong" in caplog.text
    verify(g)


def test_total_rewrite_cap() -> None:
    g = relu_chain(50)
    with pytest.raises(RewriteLoopError, match="more than 10 rewrites"):
        RuleSet([relu_relu]).apply(g, max_rewrites=10)


def test_ping_pong_through_a_pass_fails_the_pass() -> None:
    from kiln.errors import KilnError

    registry = PassRegistry(entry_point_group=None)
    with use_registry(registry):
        register_pass(RuleSet([mul_to_add, add_to_mul]).as_pass("test-ping-pong", "Undoes itself."))
        g = kiln.load(parse_model(PING_PONG))
        with pytest.raises(KilnError, match="ping-pong"):
            PassManager("test-ping-pong{max-rewrites-per-node=5}").run(g)


# --------------------------------------------------------------------------- big graphs


def _time_collapse(n: int) -> float:
    g = relu_chain(n)
    start = time.perf_counter()
    done = RuleSet([relu_relu]).apply(g, PassContext())
    elapsed = time.perf_counter() - start
    assert done == n - 1 and len(g) == 1
    return elapsed


def test_100k_node_graph_without_recursion_or_quadratic_time() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(500)  # the driver and the matcher recurse over the pattern, never the graph
    try:
        small = min(_time_collapse(10_000) for _ in range(2))
        big = _time_collapse(100_000)
    finally:
        sys.setrecursionlimit(limit)
    assert big < 60, f"100k rewrites took {big:.1f} s"
    assert big < 30 * small, f"10x the nodes took {big / small:.1f}x the time (quadratic?)"


def test_nodes_without_rules_cost_little() -> None:
    g = relu_chain(100_000)
    start = time.perf_counter()
    assert RuleSet([neg_neg]).apply(g) == 0
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- subgraphs


def test_rules_apply_inside_if_branches() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[3] x) => (float[3] y) {
      y = If(c) <
        then_branch = t () => (float[3] a) { n1 = Neg(x)  n2 = Neg(n1)  a = Relu(n2) },
        else_branch = e () => (float[3] b) { b = Relu(x) }
      >
    }
    """
    model = parse_model(text)
    g = kiln.load(model)
    ctx = PassContext()
    assert RuleSet([neg_neg]).apply(g, ctx) == 1
    verify(g)
    then = next(iter(g)).attr("then_branch")
    assert [n.op for n in then] == ["Identity", "Relu"]
    for cond in (True, False):
        feed = {"c": np.array(cond), "x": np.array([-1.0, 0.5, 2.0], np.float32)}
        from rewrite_helpers import run_ort

        np.testing.assert_array_equal(run_ort(model, feed)[0], run_ort(kiln.to_onnx(g), feed)[0])


# --------------------------------------------------------------------------- as a pass


def test_rule_set_as_a_registered_pass_in_one_line() -> None:
    registry = PassRegistry(entry_point_group=None)
    with use_registry(registry):
        cls = register_pass(RuleSet([relu_relu]).as_pass("test-relu-relu", "Drops repeated Relus."))
        info = registry.lookup("test-relu-relu")
        assert info.cls is cls and issubclass(cls, RulesPass)
        assert info.summary == "Drops repeated Relus."
        assert cls.__module__ == __name__ and cls.__qualname__ == "TestReluReluPass"
        assert [o.key for o in info.options()] == ["max-rewrites-per-node"]
        g = relu_chain(4)
        ctx = PassContext()
        report = PassManager("test-relu-relu").run(g, ctx)
        assert report.changed and len(g) == 1
        assert ctx.stats == {"rules.relu-relu": 3, "test-relu-relu.rewrites": 3}
        assert str(Pipeline.parse("test-relu-relu{max-rewrites-per-node=3}")) == "test-relu-relu{max-rewrites-per-node=3}"


def test_rules_pass_subclass_picks_rules_from_options() -> None:
    @dataclass(frozen=True)
    class Picky(RulesPass):
        """Drops repeated Relus or Negs."""

        name: ClassVar[str] = "test-picky"
        which: str = "relu"

        def rule_set(self) -> RuleSet:
            return RuleSet([relu_relu if self.which == "relu" else neg_neg])

    g = relu_chain(3)
    assert Picky(which="neg").run(g, PassContext()) is False
    assert Picky().run(g, PassContext()) is True and len(g) == 1
    assert rules_pass("test-plain", RuleSet([neg_neg])).summary() == "Applies the rewrite rules neg-neg."
    assert op_ids(g) == ["onnx.Relu"]
