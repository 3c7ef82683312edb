"""``raise-channel-shuffle``: ShuffleNet's Reshape-Transpose-Reshape raised to ``kiln.ChannelShuffle``.

    Reshape(x [N, C, ...] -> [N, g, C/g, ...]) -> Transpose(0, 2, 1, ...) -> Reshape(-> [N, C, ...])
    ->  kiln.ChannelShuffle(x, group=g)

Exact (it moves data only).  Checked on the inferred shapes: static ``C`` and ``g``, the other
dims carried through unchanged.  A target pass: NCNN (``ShuffleChannel``) and TensorRT run it
as one layer, while on onnxruntime the kiln op is a function of the same three nodes, so it is
not in the ONNX presets.
"""

from __future__ import annotations

from kiln.ir.core import Node, Value
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RuleSet, rule


def _same(a: tuple, b: tuple) -> bool:
    """Dim lists equal where both are known, at most one unknown pair (the element counts agree)."""
    return len(a) == len(b) and sum(1 for x, y in zip(a, b) if x is None or x != y) <= 1


@rule("raise-channel-shuffle")
def channel_shuffle(op, x, s1, s2):
    """Reshape(Transpose(Reshape(x, [N, g, C/g, ...]), [0, 2, 1, ...]), [N, C, ...]) -> kiln.ChannelShuffle."""
    grouped = op.Reshape(x, s1, _outputs=["grouped"], _one_use=True)
    swapped = op.Transpose(grouped, _node="t", _one_use=True)
    return op.Reshape(swapped, s2, _outputs=["y"])


def _group(x: Value, grouped: Value, t: Node, y: Value) -> int | str:
    xs, gs, ys = x.shape, grouped.shape, y.shape
    if xs is None or gs is None or ys is None or len(xs) < 2 or len(gs) != len(xs) + 1:
        return "shapes unknown, or the first Reshape does not split one axis in two"
    c, g, cg = xs[1], gs[1], gs[2]
    if not all(isinstance(d, int) for d in (c, g, cg)) or g * cg != c or g <= 1 or cg <= 1:  # type: ignore[operator]
        return "the first Reshape does not split the channels into static groups"
    if not _same(tuple(xs[:1]) + tuple(xs[2:]), tuple(gs[:1]) + tuple(gs[3:])):
        return "the first Reshape changes another axis"
    perm = [int(p) for p in (t.attr("perm") or [])]
    if perm != [0, 2, 1, *range(3, len(gs))]:
        return "the Transpose does not swap the group axes"
    if not _same(tuple(ys), tuple(xs)) or ys[1] != c:
        return "the last Reshape does not restore the input's shape"
    return int(g)  # type: ignore[arg-type]


@channel_shuffle.check
def _(ctx, x: Value, grouped: Value, t: Node, y: Value) -> bool | str:
    group = _group(x, grouped, t, y)
    return group if isinstance(group, str) else True


@channel_shuffle.replace
def _(op, x: Value, grouped: Value, t: Node, y: Value) -> Value:
    group = _group(x, grouped, t, y)
    assert isinstance(group, int)
    return op.op("ChannelShuffle", x, _domain="kiln", group=group)


SHUFFLE_RULES = RuleSet([channel_shuffle], name="raise-channel-shuffle")


RaiseChannelShuffle = register_pass(
    SHUFFLE_RULES.as_pass(
        "raise-channel-shuffle", "Raises ShuffleNet's Reshape-Transpose-Reshape to kiln.ChannelShuffle (target pipelines)."
    )
)


__all__ = ["SHUFFLE_RULES", "RaiseChannelShuffle"]
