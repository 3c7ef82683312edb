"""``example-fuse-hardswish``: a rewrite rule written with ``kiln.rewrite``, registered as a pass.

Exporters that know no HardSwish write it out as ``x * relu6(x + 3) / 6``,
with ``relu6`` a ``Clip(·, 0, 6)``.  This rule turns the five nodes back into
one ``HardSwish(x)`` (ONNX opset 14 and later): the whole fusion is the
pattern, a check and the replacement.
"""

from __future__ import annotations

from kiln.passmanager import register_pass
from kiln.rewrite import P, RuleSet, rule


@rule("example-fuse-hardswish", one_use=True)
def hardswish(op, x):
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x)."""
    relu6 = op.Clip(op.Add(x, P.scalar(3.0)), P.scalar(0.0), P.scalar(6.0))
    return op.Div(op.Mul(x, relu6), P.scalar(6.0))


@hardswish.check
def _(ctx, x):
    return ctx.graph.opsets.get("", 0) >= 14 or "HardSwish needs ONNX opset 14"


@hardswish.replace
def _(op, x):
    return op.HardSwish(x)


HARDSWISH_RULES = RuleSet([hardswish])

FuseHardSwish = register_pass(
    HARDSWISH_RULES.as_pass("example-fuse-hardswish", "Fuses x * relu6(x + 3) / 6 into HardSwish(x) (an example rule).")
)
