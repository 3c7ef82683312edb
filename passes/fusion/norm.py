"""``raise-norm``: decomposed LayerNorm and RMSNorm raised to one op, with their affine parts.

LayerNorm over the last ``k`` axes of ``x`` (``μ``, ``E`` the ReduceMean over them, keepdims)::

    d = x - μ(x)            (computed once, or twice from the same mean)
    v = E[d²]               (Pow(d, 2) or Mul(d, d))
    y = d / sqrt(v + ε)     (Div by Sqrt or Pow(·, 0.5); Mul by Reciprocal(Sqrt) or Pow(·, -0.5);
                             ε may be missing: 0)

RMSNorm is the same without the mean: ``y = x / sqrt(E[x²] + ε)``.

- ``raise-layernorm``: ``y`` -> ONNX ``LayerNormalization(x, 1, axis=-k, epsilon=ε)`` at opset
  >= 17 (its scale is required: a constant of ones over the normalized dims, so they must be
  static), else ``kiln.LayerNorm(x)``;
- ``raise-rmsnorm``: ``y`` -> ONNX ``RMSNormalization`` at opset >= 23, else ``kiln.RMSNorm(x)``;
- ``layernorm-scale``: ``Mul(N(x, s, b), g)`` -> ``N(x, s·g, b·g)`` and ``layernorm-bias``:
  ``Add(N(x, s, b), c)`` -> ``N(x, s, b + c)``, for any of these normalizations (ONNX or kiln;
  RMSNorm takes no bias) and constants ``g``, ``c`` that vary along the normalized axes only.
  So the affine ``γ·y + β`` that follows a decomposed norm joins it, and so does a Mul/Add
  after an exported LayerNormalization.

Required: float types, ``ε`` a scalar constant, the ReduceMeans keeping dims over the same
trailing axes, and every intermediate read only inside the pattern.  The result equals the
pattern up to rounding; ONNX LayerNormalization computes in float32 (``stash_type=1``), which
is no less precise for float16 models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import const_array
from kiln.passes.fusion._match import (
    escaping,
    is_float,
    one_use,
    reduce_axes,
    replace_and_erase,
    scalar_of,
)
from kiln.passes.fusion._raise import RaisePass, kiln_ops_allowed, raise_to
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RewritePattern, Rewriter, RuleSet, attrs_of, rule

NORM_OPS = {("", "LayerNormalization"), ("", "RMSNormalization"), ("kiln", "LayerNorm"), ("kiln", "RMSNorm")}
"""(domain, op) of the normalizations whose affine parts the absorb rules fold."""


@dataclass
class _Norm:
    """A matched decomposed normalization."""

    x: Value
    k: int
    eps: float
    nodes: list[Node]
    rms: bool


def _producer(value: Value | None, *ops: str) -> Node | None:
    node = value.producer if value is not None else None
    return node if node is not None and node.domain == "" and node.op in ops else None


def _inverse_sqrt(root: Node) -> tuple[Value, Value, list[Node]] | str:
    """``root`` as ``n · (a)^-1/2``: ``(n, a, nodes)``."""
    if root.op == "Div":
        n, den = root.input(0), root.input(1)
        sq = _producer(den, "Sqrt", "Pow")
        if sq is None or (sq.op == "Pow" and scalar_of(sq.input(1)) != 0.5):
            return "the divisor is not Sqrt(...)"
        return n, sq.inputs[0], [sq]  # type: ignore[return-value]
    for i in (0, 1):
        n, r = root.input(i), root.input(1 - i)
        rec = _producer(r, "Reciprocal", "Pow", "Div")
        if rec is None:
            continue
        if rec.op == "Pow" and scalar_of(rec.input(1)) == -0.5:
            return n, rec.inputs[0], [rec]  # type: ignore[return-value]
        if rec.op == "Reciprocal" or (rec.op == "Div" and scalar_of(rec.input(0)) == 1.0):
            sq = _producer(rec.inputs[-1], "Sqrt")
            if sq is not None:
                return n, sq.inputs[0], [rec, sq]  # type: ignore[return-value]
    return "no Sqrt, Reciprocal(Sqrt) or Pow(·, -0.5) of the variance"


def _mean_of_square(a: Value) -> tuple[Value, list[int], float, list[Node]] | str:
    """``a = E[d²] + ε``: ``(d, axes, ε, nodes)``; a bare ``E[d²]`` has ``ε = 0``.

    The dynamo exporter drops a tiny ε (BERT's 1e-12 vanished from a written-out LayerNorm), so
    the variance may reach the Sqrt with nothing added; LayerNormalization with ``epsilon=0`` is
    the same computation.
    """
    add = _producer(a, "Add")
    bare = _producer(a, "ReduceMean")
    if add is None and bare is None:
        return "the variance has no epsilon added (Sqrt(var + eps)) and is no ReduceMean"
    candidates = [(0.0, bare, [])] if bare is not None else [
        (scalar_of(add.input(1 - i)), _producer(add.input(i), "ReduceMean"), [add]) for i in (0, 1)  # type: ignore[union-attr]
    ]
    for eps, mean, added in candidates:
        if eps is None or mean is None:
            continue
        axes = reduce_axes(mean)
        sq = _producer(mean.inputs[0], "Pow", "Mul")
        if axes is None or sq is None:
            return "the variance is not a ReduceMean (keepdims) of a square"
        if sq.op == "Pow":
            if scalar_of(sq.input(1)) != 2.0:
                return "the variance's Pow is not a square"
            d = sq.inputs[0]
        elif sq.input(0) is sq.input(1):
            d = sq.inputs[0]
        else:
            return "the variance's Mul is not a square"
        assert d is not None
        return d, axes, eps, [*added, mean, sq]
    return "no ReduceMean + scalar epsilon under the Sqrt"


def _centered(d: Value, axes: list[int]) -> tuple[Value, Node, Node] | None:
    """``d = x - E[x]`` over ``axes``: ``(x, sub, mean)``."""
    sub = _producer(d, "Sub")
    if sub is None:
        return None
    x = sub.inputs[0]
    mean = _producer(sub.input(1), "ReduceMean")
    if x is None or mean is None or mean.inputs[0] is not x or reduce_axes(mean) != axes:
        return None
    return x, sub, mean


def match_norm(root: Node) -> _Norm | str:
    """A decomposed LayerNorm or RMSNorm ending at ``root`` (a Div or Mul), or why not."""
    inv = _inverse_sqrt(root)
    if isinstance(inv, str):
        return inv
    n, a, nodes = inv
    found = _mean_of_square(a)
    if isinstance(found, str):
        return found
    d, axes, eps, more = found
    nodes = [root, *nodes, *more]
    if d.shape is None:
        return "the input's rank is unknown"
    rank = len(d.shape)
    k = len(axes)
    if axes != list(range(rank - k, rank)):
        return f"the reduced axes {axes} are not the trailing axes of a rank-{rank} tensor"
    centered = _centered(d, axes)
    if centered is not None:
        x, sub, mean = centered
        nodes += [sub, mean]
        if n is not d:
            again = _centered(n, axes)  # x - mean computed a second time for the numerator
            if again is None or again[0] is not x:
                return "the numerator is not x - mean(x)"
            nodes += [again[1], again[2]]
        rms = False
    else:
        if n is not d:
            return "the numerator is neither x - mean(x) nor the squared value (RMSNorm)"
        x, rms = d, True
    if not is_float(x) or root.outputs[0].dtype != x.dtype:
        return f"{x.dtype} is not a float type"
    if root.outputs[0].shape is None or len(root.outputs[0].shape) != rank:
        return "the result's rank differs from the input's"
    nodes = list(dict.fromkeys(nodes))
    leak = escaping(nodes, root)
    if leak is not None:
        return f"%{leak.name} is read outside the pattern"
    return _Norm(x, k, eps, nodes, rms)


def _normalized_dims(x: Value, k: int) -> tuple[int, ...] | None:
    shape = x.shape
    if shape is None or len(shape) < k or not all(isinstance(d, int) for d in shape[len(shape) - k:]):
        return None
    return tuple(int(d) for d in shape[len(shape) - k:])  # type: ignore[arg-type]


class RaiseNorm(RewritePattern):
    """Decomposed LayerNorm/RMSNorm -> LayerNormalization / RMSNormalization / kiln.LayerNorm / kiln.RMSNorm."""

    name = "raise-layernorm"
    roots = ("Div", "Mul")
    rms = False

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        found = match_norm(node)
        if isinstance(found, str):
            return rewriter.refuse(found)
        if found.rms != self.rms:
            return rewriter.refuse("an RMSNorm" if found.rms else "a LayerNorm")
        onnx_op, kiln_name, since = (
            ("RMSNormalization", "RMSNorm", 23) if found.rms else ("LayerNormalization", "LayerNorm", 17)
        )
        graph = node.graph
        assert graph is not None
        x = found.x
        where = raise_to(self.pass_ctx, graph, onnx_op, since)
        dims = _normalized_dims(x, found.k)
        if where == "onnx" and dims is None:
            # The ONNX op needs its scale: ones over the normalized dims, which must be static.
            where = "kiln" if kiln_ops_allowed(self.pass_ctx) else "the normalized dims are not static"
        if where not in ("onnx", "kiln"):
            return rewriter.refuse(where)
        op = rewriter.builder(graph, before=node, fused_from=found.nodes)
        attrs = {"axis": -found.k, "epsilon": found.eps}
        if where == "onnx":
            assert dims is not None and x.dtype is not None
            ones = op.const(np.ones(dims, dtype=x.dtype.numpy), "ones")
            new = op.op(onnx_op, x, ones, **attrs)
        else:
            new = op.op(kiln_name, x, _domain="kiln", **attrs)
        replace_and_erase(rewriter, node, [node.outputs[0]], [new], found.nodes)
        return True


class RaiseRMSNorm(RaiseNorm):
    """Decomposed RMSNorm -> RMSNormalization (opset 23) / kiln.RMSNorm."""

    name = "raise-rmsnorm"
    rms = True


# --------------------------------------------------------------------------- affine parts


def _along_norm_axes(c: Value, y: Value, k: int) -> np.ndarray | str:
    """``c`` broadcast to the normalized dims of ``y`` (the last ``k``), if it varies only along them."""
    data = const_array(c)
    shape = y.shape
    assert data is not None
    if shape is None or not all(isinstance(d, int) for d in shape[len(shape) - k:]):
        return "the normalized dims are not static"
    if data.ndim > len(shape) or c.dtype != y.dtype:
        return "the constant widens the result or has another type"
    full = (1,) * (len(shape) - data.ndim) + tuple(data.shape)
    if any(d != 1 for d in full[: len(shape) - k]):
        return "the constant varies along an axis that is not normalized"
    norm_dims = tuple(shape[len(shape) - k:])
    if any(d not in (1, n) for d, n in zip(full[len(shape) - k:], norm_dims)):
        return "the constant does not broadcast into the normalized dims"
    return np.broadcast_to(data.reshape(full[len(shape) - k:]).astype(np.float64), norm_dims)  # type: ignore[arg-type]


def _norm_axes_count(norm: Node) -> int | None:
    rank = len(norm.inputs[0].shape) if norm.inputs[0] is not None and norm.inputs[0].shape is not None else None
    if rank is None:
        return None
    return rank - int(norm.attr("axis", -1)) % rank


def _is_norm(node: Node) -> bool:
    return (node.domain, node.op) in NORM_OPS


def _affine_check(norm: Node, y: Value, c: Value, *, bias: bool) -> bool | str:
    if not _is_norm(norm):
        return f"{norm.op_id} is not a normalization"
    if bias and norm.op in ("RMSNormalization", "RMSNorm"):
        return "RMSNorm has no bias"
    if not one_use(y):
        return "the normalization's result has other users"
    k = _norm_axes_count(norm)
    if k is None:
        return "the normalization's input rank is unknown"
    found = _along_norm_axes(c, y, k)
    if isinstance(found, str):
        return found
    for i in (1, 2):
        v = norm.input(i)
        if v is not None and const_array(v) is None:
            return "the normalization's scale or bias is not a constant"
    return True


def _refold(op, norm: Node, c: Value, *, scale: bool) -> Value:
    y = norm.outputs[0]
    k = _norm_axes_count(norm)
    assert k is not None and y.dtype is not None
    vec = _along_norm_axes(c, y, k)
    assert not isinstance(vec, str)
    dtype = y.dtype.numpy
    dims = vec.shape
    s_in, b_in = norm.input(1), norm.input(2)
    s = np.ones(dims) if s_in is None else np.broadcast_to(np.asarray(const_array(s_in), np.float64), dims)
    b = None if b_in is None else np.broadcast_to(np.asarray(const_array(b_in), np.float64), dims)
    if scale:
        s = s * vec
        b = None if b is None else b * vec
    else:
        b = vec if b is None else b + vec
    inputs: list[Value | None] = [norm.inputs[0], op.const(s.astype(dtype), "scale")]
    if b is not None:
        inputs.append(op.const(b.astype(dtype), "bias"))
    return op.op(norm.op, *inputs, _domain=norm.domain, **attrs_of(norm))


@rule("layernorm-scale")
def norm_scale(op, x):
    """Mul(Norm(x, s, b), g) -> Norm(x, s·g, b·g)."""
    norm = op.op({"LayerNormalization", "RMSNormalization"}, x, P.variadic(), _node="norm", _outputs=["y"])
    return op.Mul(norm, P.const("g"))


@norm_scale.check
def _(ctx, norm: Node, y: Value, g: Value) -> bool | str:
    return _affine_check(norm, y, g, bias=False)


@norm_scale.replace
def _(op, norm: Node, g: Value) -> Value:
    return _refold(op, norm, g, scale=True)


@rule("layernorm-bias")
def norm_bias(op, x):
    """Add(LayerNorm(x, s, b), c) -> LayerNorm(x, s, b + c)."""
    return op.Add(op.LayerNormalization(x, P.variadic(), _node="norm", _outputs=["y"]), P.const("c"))


@norm_bias.check
def _(ctx, norm: Node, y: Value, c: Value) -> bool | str:
    return _affine_check(norm, y, c, bias=True)


@norm_bias.replace
def _(op, norm: Node, c: Value) -> Value:
    return _refold(op, norm, c, scale=False)


@rule("kiln-norm-scale")
def kiln_norm_scale(op, x):
    """Mul(kiln.LayerNorm|RMSNorm(x, [s], [b]), g) -> the op with s·g, b·g."""
    norm = op.op({"LayerNorm", "RMSNorm"}, x, P.variadic(), _domain="kiln", _node="norm", _outputs=["y"])
    return op.Mul(norm, P.const("g"))


@kiln_norm_scale.check
def _(ctx, norm: Node, y: Value, g: Value) -> bool | str:
    return _affine_check(norm, y, g, bias=False)


@kiln_norm_scale.replace
def _(op, norm: Node, g: Value) -> Value:
    return _refold(op, norm, g, scale=True)


@rule("kiln-norm-bias")
def kiln_norm_bias(op, x):
    """Add(kiln.LayerNorm(x, [s], [b]), c) -> kiln.LayerNorm(x, s, b + c)."""
    return op.Add(op.op("LayerNorm", x, P.variadic(), _domain="kiln", _node="norm", _outputs=["y"]), P.const("c"))


@kiln_norm_bias.check
def _(ctx, norm: Node, y: Value, c: Value) -> bool | str:
    return _affine_check(norm, y, c, bias=True)


@kiln_norm_bias.replace
def _(op, norm: Node, c: Value) -> Value:
    return _refold(op, norm, c, scale=False)


NORM_RULES = RuleSet(
    [RaiseNorm(), RaiseRMSNorm(), norm_scale, norm_bias, kiln_norm_scale, kiln_norm_bias], name="raise-norm"
)


@register_pass
@dataclass(frozen=True)
class RaiseNormPass(RaisePass):
    """Raises decomposed LayerNorm/RMSNorm (and their affine Mul/Add) to one normalization op."""

    name: ClassVar[str] = "raise-norm"
    rules: ClassVar[RuleSet] = NORM_RULES


__all__ = ["NORM_RULES", "RaiseNorm", "RaiseNormPass", "RaiseRMSNorm", "match_norm"]
