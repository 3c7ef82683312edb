"""Helpers for rewrite and fusion tests (tests/fusion imports them too): small ONNX models in text form, run before and after.

    g, ctx = check_rewrite(MODEL_TEXT, "fuse-bn", fired={"fuse-bn-into-linear": 1})

parses the model (``onnx.parser``), loads it into kiln, runs the pipeline (or
a :class:`~kiln.rewrite.RuleSet`) with verification after each pass, asserts
how often each named rule fired, exports the result with ``kiln.to_onnx``
and checks that onnxruntime gives the same outputs as on the original model
(graph optimizations off on both sides, so onnxruntime's own fusions do not
hide a difference).
"""

from __future__ import annotations

from collections.abc import Mapping

import kiln
import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
from kiln.ir import Graph, verify
from kiln.passmanager import PassContext, PassManager
from kiln.rewrite import RuleSet


def parse_model(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, dict(feed))]


def random_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs (uniform 0..9 for integers) for every non-initializer input."""
    rng = np.random.default_rng(seed)
    known = {init.name for init in model.graph.initializer}
    feed: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in known:
            continue
        ttype = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if np.issubdtype(dtype, np.integer):
            feed[value.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def assert_close(expected: list[np.ndarray], actual: list[np.ndarray], rtol: float = 1e-5, atol: float = 1e-5) -> None:
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and e.dtype == a.dtype, (e.shape, a.shape, e.dtype, a.dtype)
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol)


def apply(graph: Graph, what: str | RuleSet, ctx: PassContext | None = None) -> PassContext:
    """Runs a pipeline string or a rule set over ``graph`` (verified afterwards); returns the context."""
    ctx = ctx or PassContext()
    if isinstance(what, RuleSet):
        what.apply(graph, ctx)
        verify(graph)
    else:
        PassManager(what).run(graph, ctx)
    return ctx


def fired(ctx: PassContext) -> dict[str, int]:
    """Rule name -> times applied, from ``ctx.stats``."""
    return {k.removeprefix("rules."): v for k, v in ctx.stats.items() if k.startswith("rules.")}


def check_rewrite(
    text: str | onnx.ModelProto,
    what: str | RuleSet,
    *,
    fired_exactly: Mapping[str, int] | None = None,
    ops: list[str] | None = None,
    feed: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    ctx: PassContext | None = None,
) -> tuple[Graph, PassContext]:
    """Rewrites a model and checks rule counts, the resulting op list and onnxruntime outputs.

    Args:
        text: the model in ONNX text syntax (or a ModelProto).
        what: a pipeline string or a rule set.
        fired_exactly: rule name -> expected applications (rules not named must not fire).
        ops: the expected op ids of the result, in order (``onnx.Conv``, ``kiln.ConvAct``).
        feed: inputs (random by default).
    """
    model = parse_model(text) if isinstance(text, str) else text
    graph = kiln.load(model)
    ctx = apply(graph, what, ctx)
    if fired_exactly is not None:
        assert fired(ctx) == {k: v for k, v in fired_exactly.items() if v}, fired(ctx)
    if ops is not None:
        assert [n.op_id for n in graph] == ops, kiln.ir.print_ir(graph)
    feed = dict(feed) if feed is not None else random_feed(model)
    expected = run_ort(model, feed)
    actual = run_ort(kiln.to_onnx(graph), feed)
    assert_close(expected, actual, rtol=rtol, atol=atol)
    return graph, ctx


def const_text(name: str, shape: tuple[int, ...], seed: int, dtype: str = "float", low: float | None = None) -> str:
    """An initializer in ONNX text syntax with seeded random values (``low``: uniform [low, low+1))."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    values = rng.random(n) + low if low is not None else rng.standard_normal(n)
    body = ", ".join(f"{v:.6f}" for v in values)
    dims = ",".join(str(d) for d in shape)
    return f"{dtype}[{dims}] {name} = {{{body}}}" if shape else f"{dtype} {name} = {{{body}}}"


def model_text(signature: str, initializers: list[str], body: str, opset: int = 17) -> str:
    """A model in ONNX text syntax: ``signature`` like ``(float[1,3,8,8] x) => (float[1,4,8,8] y)``."""
    inits = f"<{', '.join(initializers)}>" if initializers else ""
    return f'<ir_version: 8, opset_import: ["" : {opset}]>\ng {signature} {inits} {{\n{body}\n}}\n'


def op_ids(graph: Graph) -> list[str]:
    return [n.op_id for n in graph]


__all__ = [
    "apply",
    "assert_close",
    "check_rewrite",
    "const_text",
    "fired",
    "model_text",
    "op_ids",
    "parse_model",
    "random_feed",
    "run_ort",
]

