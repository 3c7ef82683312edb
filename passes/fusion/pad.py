"""``fuse-pad``: merges a constant Pad into the pads of the Conv or pool that reads it.

``Conv(Pad(x, p, 0))`` is ``Conv(x)`` with its pads increased by ``p``: a Conv
pads with zeros, so padding first with zeros is the same.  Likewise

- ``AveragePool``: its implicit pads are zeros that count in the average only
  with ``count_include_pad=1``; so a zero Pad merges into a pool that has
  ``count_include_pad=1``, or into one with ``count_include_pad=0`` and no
  pads of its own (it then gets ``count_include_pad=1``: the padded zeros
  were real elements of its input, and counted);
- ``MaxPool``: its implicit pads never win the max, like ``-inf``; so a Pad
  with value ``-inf`` (or the dtype's lowest value) merges, provided every
  window still holds a real element (pads smaller than the kernel).

Required: Pad in ``constant`` mode with constant pads and value, no padding of
the batch and channel axes, no negative pads, the Pad read by nothing else,
``auto_pad`` NOTSET or VALID on the consumer, and ``ceil_mode=0`` on pools
(where a ceil-mode window may hang over the padded edge the two forms count
differently).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import const_array, rank_of
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RuleSet, attrs_of, rule

_CONSUMERS = {"Conv", "AveragePool", "MaxPool"}


def pad_spec(pad: Node) -> tuple[list[int], float] | str:
    """``(pads over every axis [begins..., ends...], value)`` of a constant-mode Pad, or why not."""
    mode = pad.attr("mode", "constant") or "constant"
    if mode != "constant":
        return f"Pad mode is {mode!r}, not 'constant'"
    x = pad.input(0)
    rank = rank_of(x)
    if rank is None:
        return "the Pad input has unknown rank"
    version = pad.version or 11
    value = 0.0
    if version < 11:
        pads_attr = pad.attr("pads")
        if pads_attr is None:
            return "Pad has no pads attribute"
        pads = [int(p) for p in pads_attr]
        value = float(pad.attr("value", 0.0) or 0.0)
    else:
        data = const_array(pad.input(1))
        if data is None:
            return "the Pad pads are not a constant"
        pads = [int(p) for p in data.reshape(-1)]
        if pad.input(2) is not None:
            v = const_array(pad.input(2))
            if v is None or v.size != 1:
                return "the Pad value is not a constant scalar"
            value = float(v.reshape(-1)[0])
        axes_value = pad.input(3)
        if axes_value is not None:
            axes_data = const_array(axes_value)
            if axes_data is None:
                return "the Pad axes are not a constant"
            axes = [int(a) % rank for a in axes_data.reshape(-1)]
            n = len(axes)
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[n + i]
            pads = full
    if len(pads) != 2 * rank:
        return f"Pad has {len(pads)} pads for rank {rank}"
    return pads, value


def _merged_pads(pad: Node, consumer: Node) -> tuple[list[int], dict[str, Any]] | str:
    """The consumer's new ``pads`` and attribute changes, or why the Pad does not merge."""
    spec = pad_spec(pad)
    if isinstance(spec, str):
        return spec
    pads, value = spec
    rank = len(pads) // 2
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return "the Pad pads the batch or channel axis"
    if any(p < 0 for p in pads):
        return "the Pad crops (negative pads)"
    auto_pad = consumer.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in ("NOTSET", "VALID"):
        return f"{consumer.op} has auto_pad={auto_pad}"
    n = rank - 2
    old = [int(p) for p in (consumer.attr("pads") or [0] * (2 * n))] if auto_pad == "NOTSET" else [0] * (2 * n)
    if len(old) != 2 * n:
        return f"{consumer.op} pads do not match the input rank"
    new = [old[i] + pads[2 + i] for i in range(n)] + [old[n + i] + pads[rank + 2 + i] for i in range(n)]
    changes: dict[str, Any] = {"pads": new}
    if consumer.op == "Conv":
        if value != 0.0:
            return f"the Pad value is {value}, a Conv pads with 0"
        return new, changes
    if consumer.attr("ceil_mode", 0):
        return f"{consumer.op} has ceil_mode=1"
    if consumer.op == "AveragePool":
        if value != 0.0:
            return f"the Pad value is {value}, an AveragePool pads with 0"
        if not consumer.attr("count_include_pad", 0):
            if any(old):
                return "AveragePool has pads of its own that do not count (count_include_pad=0)"
            changes["count_include_pad"] = 1
        return new, changes
    # MaxPool
    x = pad.input(0)
    lowest = np.finfo(x.dtype.numpy).min if x is not None and x.dtype is not None and x.dtype.numpy.kind == "f" else None
    if not (value == -np.inf or (lowest is not None and value <= lowest)):
        return f"the Pad value is {value}; a MaxPool's pads act as -inf"
    kernel = consumer.attr("kernel_shape") or []
    if any(new[i] >= int(kernel[i % n]) for i in range(2 * n)):
        return "a pad as large as the kernel would leave a window without real elements"
    return new, changes


@rule("fuse-pad")
def pad_into_consumer(op, x):
    """Conv|AveragePool|MaxPool(Pad(x)) -> the op with merged pads."""
    padded = op.Pad(x, P.variadic(), _node="pad", _one_use=True)
    return op.op(_CONSUMERS, padded, P.variadic("rest"), _node="consumer")


@pad_into_consumer.check
def _(ctx, pad: Node, consumer: Node) -> bool | str:
    merged = _merged_pads(pad, consumer)
    return merged if isinstance(merged, str) else True


@pad_into_consumer.replace
def _(op, x: Value, pad: Node, consumer: Node, rest: tuple) -> Value:
    merged = _merged_pads(pad, consumer)
    assert not isinstance(merged, str)
    _, changes = merged
    attrs: dict[str, Any] = dict(attrs_of(consumer, drop=("auto_pad",)))
    attrs.update(changes)
    return op.op(consumer.op, x, *rest, **attrs)


PAD_RULES = RuleSet([pad_into_consumer], name="fuse-pad")

FusePad = register_pass(
    PAD_RULES.as_pass("fuse-pad", "Merges a constant Pad into the pads of the Conv/AveragePool/MaxPool after it.")
)

__all__ = ["PAD_RULES", "FusePad", "pad_spec"]
