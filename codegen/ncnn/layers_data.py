"""Lowering of data movement (reshape, permute, concat, slice, pad, resize ...) and attention.

Each ``lower_*`` takes the :class:`~kiln.codegen.ncnn.lower.Lowering` and one node and
appends ncnn layers; shapes are ncnn's (batch dropped), see :mod:`kiln.codegen.ncnn.lower`.
"""

from __future__ import annotations

import math

import numpy as np
from kiln.codegen.ncnn.lower import Lowering, ints, permute_order, unsupported
from kiln.codegen.ncnn.weights import Blob
from kiln.ir.core import Node, Value

# ---------------------------------------------------------------------- data movement


def lower_reshape(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    out = node.outputs[0]
    bottom = lw.blob(x, node)
    shape = lw.onnx_shape(out, node)
    if shape and shape[0] != 1 and 1 <= len(shape) <= 4:
        # A reshape that folds the batch of 1 into another dim (dynamo's flatten before an
        # index Gather): the blob keeps every dim; only an identity Gather may read it.
        lw.batchless[out] = shape
        lw.blob_of[out] = lw.reshape(bottom, shape, node, "")
        return
    lw.blob_of[out] = lw.reshape(bottom, lw.shape_of(out, node), node, "")


def lower_transpose(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    out = node.outputs[0]
    rank = len(lw.onnx_shape(x, node))
    perm = ints(node.attr("perm") or list(reversed(range(rank))))
    if perm[0] != 0:
        raise unsupported(node, f"a transpose {perm} that moves the batch axis")
    nperm = [p - 1 for p in perm[1:]]
    bottom = lw.blob(x, node)
    if nperm == sorted(nperm):
        lw.blob_of[out] = bottom
        return
    lw.add("Permute", lw.layer_name(node), [bottom], [lw.bind(out, node)], {0: permute_order(nperm, node)})


def lower_concat(lw: Lowering, node: Node) -> None:
    out = node.outputs[0]
    rank = len(lw.onnx_shape(out, node))
    axis = int(node.attr("axis")) % rank
    if axis == 0:
        raise unsupported(node, "a concatenation along the batch axis")
    blobs = [lw.blob(v, node) for v in node.inputs if v is not None]
    if len(blobs) == 1:
        lw.blob_of[out] = blobs[0]
        return
    lw.add("Concat", lw.layer_name(node), blobs, [lw.bind(out, node)], {0: axis - 1})


def lower_split(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    rank = len(lw.onnx_shape(x, node))
    axis = int(node.attr("axis", 0)) % rank
    if axis == 0:
        raise unsupported(node, "a split along the batch axis")
    sizes = [lw.onnx_shape(o, node)[axis] for o in node.outputs]
    tops = [lw.bind(o, node) for o in node.outputs]
    lw.add("Slice", lw.layer_name(node), [lw.blob(x, node)], tops, {0: sizes, 1: axis - 1})


def lower_slice(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    shape = lw.onnx_shape(x, node)
    rank = len(shape)
    if node.input(1) is not None:
        vals = [lw.const(node.input(i)) for i in range(1, 5)]
        if any(node.input(i) is not None and vals[i - 1] is None for i in range(1, 5)):
            raise unsupported(node, "a Slice with starts/ends/axes/steps that are not constants")
        starts, ends = vals[0].reshape(-1).tolist(), vals[1].reshape(-1).tolist()  # type: ignore[union-attr]
        axes = vals[2].reshape(-1).tolist() if vals[2] is not None else list(range(len(starts)))
        steps = vals[3].reshape(-1).tolist() if vals[3] is not None else [1] * len(starts)
    else:
        starts, ends = ints(node.attr("starts")), ints(node.attr("ends"))
        axes = ints(node.attr("axes") or range(len(starts)))
        steps = [1] * len(starts)
    n_starts, n_ends, n_axes = [], [], []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        dim = shape[a]
        if int(st) != 1:
            raise unsupported(node, f"a Slice with step {st}")
        s = min(max(int(s) + dim if int(s) < 0 else int(s), 0), dim)
        e = min(max(int(e) + dim if int(e) < 0 else int(e), 0), dim)
        if a == 0:
            if (s, e) != (0, 1):
                raise unsupported(node, "a Slice of the batch axis")
            continue
        n_starts.append(s)
        n_ends.append(e)
        n_axes.append(a - 1)
    out = node.outputs[0]
    bottom = lw.blob(x, node)
    if not n_axes:
        lw.blob_of[out] = bottom
        return
    lw.add("Crop", lw.layer_name(node), [bottom], [lw.bind(out, node)], {9: n_starts, 10: n_ends, 11: n_axes})


def lower_gather(lw: Lowering, node: Node) -> None:
    x, idx = node.input(0), node.input(1)
    assert x is not None
    table = lw.const(x)
    if table is not None and idx is not None and idx in lw.int32_inputs:
        lower_embed(lw, node, table)
        return
    index = lw.const(idx)
    if x in lw.batchless and index is not None and int(node.attr("axis", 0)) == 0 and x.shape is not None \
            and len(x.shape) == 1 and np.array_equal(index.reshape(-1), np.arange(x.shape[0])):
        # Gather of every element in order (dynamo's as_strided): a reshape.
        lw.blob_of[node.outputs[0]] = lw.reshape(lw.blob(x, node), lw.shape_of(node.outputs[0], node), node, "")
        return
    shape = lw.onnx_shape(x, node)
    axis = int(node.attr("axis", 0)) % len(shape)
    if index is None or index.size != 1 or axis == 0 or lw.const(x) is not None:
        raise unsupported(node, "a Gather other than one constant index on a non-batch axis of an activation")
    i = int(index.reshape(-1)[0]) % shape[axis]
    crop_shape = list(shape[1:])
    crop_shape[axis - 1] = 1
    out = node.outputs[0]
    mid = lw.new_blob(out.name + "_crop", tuple(crop_shape))
    lw.add("Crop", lw.layer_name(node), [lw.blob(x, node)], [mid], {9: [i], 10: [i + 1], 11: [axis - 1]})
    lw.blob_of[out] = lw.reshape(mid, lw.shape_of(out, node), node, "_squeeze")


def lower_embed(lw: Lowering, node: Node, table: np.ndarray) -> None:
    """A row lookup in a constant [vocab, dim] table by ids that come straight from a graph input (fed as
    int32 bits, see ``IOBlob.feed``): ncnn's Embed, which clamps out-of-range ids where ONNX would fail."""
    if table.ndim != 2 or int(node.attr("axis", 0)) % 2 != 0:
        raise unsupported(node, "an embedding lookup other than rows of a 2-D constant table")
    vocab, dim = (int(d) for d in table.shape)
    out = node.outputs[0]
    words = lw.onnx_shape(out, node)
    top = lw.new_blob(out.name, (int(np.prod(words[:-1])), dim))  # ncnn: h = words, w = dim
    lw.add("Embed", lw.layer_name(node), [lw.blob(node.inputs[1], node)], [top],  # type: ignore[arg-type]
           {0: dim, 1: vocab, 2: 0, 3: vocab * dim}, [Blob(table.astype(np.float32), tagged=True)])
    lw.blob_of[out] = lw.reshape(top, lw.shape_of(out, node), node, "_rows")


def lower_pad(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    shape = lw.onnx_shape(x, node)
    pads = lw.const(node.input(1)) if node.input(1) is not None else np.array(node.attr("pads"))
    if pads is None:
        raise unsupported(node, "pads that are not constants")
    pads = pads.reshape(-1).astype(np.int64)
    rank = len(shape)
    if node.input(3) is not None:
        raise unsupported(node, "a Pad with axes")
    begin, end = pads[:rank].tolist(), pads[rank:].tolist()
    value = lw.const(node.input(2)) if node.input(2) is not None else None
    fill = float(value.reshape(-1)[0]) if value is not None else float(node.attr("value", 0.0))
    mode = {"constant": 0, "edge": 1, "reflect": 2}.get(node.attr("mode", "constant") or "constant")
    if mode is None or begin[0] or end[0] or rank > 4 or rank < 2 or min(begin + end) < 0:
        raise unsupported(node, f"a Pad of {pads.tolist()} in mode {node.attr('mode', 'constant')}")
    full_b = [0] * (4 - rank) + begin
    full_e = [0] * (4 - rank) + end
    params = {0: full_b[2], 1: full_e[2], 2: full_b[3], 3: full_e[3], 4: mode, 5: fill, 7: full_b[1],
              8: full_e[1]}
    lw.add("Padding", lw.layer_name(node), [lw.blob(x, node)], [lw.bind(node.outputs[0], node)], params)


def lower_resize(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    in_shape = lw.onnx_shape(x, node)
    out_shape = lw.onnx_shape(node.outputs[0], node)
    if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
        raise unsupported(node, f"a resize from {in_shape} to {out_shape} (ncnn's Interp resizes H and W)")
    mode = node.attr("mode", "nearest") or "nearest"
    kind = {"nearest": 1, "linear": 2, "bilinear": 2, "cubic": 3}.get(mode)
    if kind is None:
        raise unsupported(node, f"resize mode {mode}")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel") or "half_pixel"
    if kind == 1:
        integral = all(o % i == 0 for o, i in zip(out_shape[2:], in_shape[2:]))
        if not integral and ctm != "asymmetric":
            raise unsupported(node, "nearest resize by a non-integer factor")
    elif ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise unsupported(node, f"{mode} resize with coordinate_transformation_mode {ctm}")
    params = {0: kind, 3: out_shape[2], 4: out_shape[3], 6: int(ctm == "align_corners")}
    lw.add("Interp", lw.layer_name(node), [lw.blob(x, node)], [lw.bind(node.outputs[0], node)], params)


def lower_shuffle(lw: Lowering, node: Node) -> None:
    params = {0: int(node.attr("group"))}
    lw.add("ShuffleChannel", lw.layer_name(node), [lw.blob(node.input(0), node)],
           [lw.bind(node.outputs[0], node)], params)


def lower_depth_to_space(lw: Lowering, node: Node) -> None:
    mode = node.attr("mode", "DCR") or "DCR"
    params = {0: int(node.attr("blocksize")), 1: 0 if mode == "CRD" else 1}
    lw.add("PixelShuffle", lw.layer_name(node), [lw.blob(node.input(0), node)],
           [lw.bind(node.outputs[0], node)], params)


def lower_identity(lw: Lowering, node: Node) -> None:
    if node.op == "Cast" and (node.outputs[0].dtype is None or node.outputs[0].dtype.numpy != np.float32):
        raise unsupported(node, "a Cast to a type other than float32")
    lw.alias(node.outputs[0], node.input(0), node)  # type: ignore[arg-type]


def lower_attention(lw: Lowering, node: Node) -> None:
    """kiln.Attention as ncnn's SDPA layer on [heads, seq, dim] blobs (heads split by Reshape + Permute)."""
    q, k, v = node.input(0), node.input(1), node.input(2)
    assert q is not None and k is not None and v is not None
    mask = node.input(3)
    qs = lw.onnx_shape(q, node)
    out = node.outputs[0]
    if len(qs) == 3:
        heads = int(node.attr("q_num_heads") or 0)
        if not heads or int(node.attr("kv_num_heads") or heads) != heads:
            raise unsupported(node, "3-D attention without equal q/kv head counts")
        dq = qs[2] // heads
        seq_k = lw.onnx_shape(k, node)[1]
        dv = lw.onnx_shape(v, node)[2] // heads

        def heads_first(val: Value, seq: int, d: int, order: list[int], tag: str) -> str:
            split = lw.reshape(lw.blob(val, node), (seq, heads, d), node, f"_{tag}heads")
            shape = tuple((seq, heads, d)[i] for i in order)
            top = lw.new_blob(f"{val.name}_{tag}perm", shape)
            lw.add("Permute", lw.layer_name(node, f"_{tag}perm"), [split], [top], {0: permute_order(order, node)})
            return top

        qb = heads_first(q, qs[1], dq, [1, 0, 2], "q")
        kb = heads_first(k, seq_k, dq, [1, 0, 2], "k")
        vb = heads_first(v, seq_k, dv, [1, 0, 2], "v")
        seq_q, d = qs[1], dq
    elif len(qs) == 4:
        qb, kb, vb = lw.blob(q, node), lw.blob(k, node), lw.blob(v, node)
        heads, seq_q, d = qs[1], qs[2], qs[3]
        seq_k = lw.onnx_shape(k, node)[2]
        dv = lw.onnx_shape(v, node)[3]
    else:
        raise unsupported(node, f"attention on rank-{len(qs)} inputs")
    scale = node.attr("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    ctx = lw.new_blob(out.name + "_ctx", (heads, seq_q, dv))
    bottoms = [qb, kb, vb]
    if mask is not None:
        bottoms.append(_attention_mask(lw, node, mask, heads, seq_q, seq_k))
    # softmax(q kᵀ * scale [+ mask]) v per head; scale 0 would mean ncnn's default 1/sqrt(dim).
    lw.add("SDPA", lw.layer_name(node), bottoms, [ctx],
           {5: int(mask is not None), 6: scale if scale != 0.0 else 1e-30})
    if len(qs) == 4:
        lw.blob_of[out] = ctx
        return
    merged = lw.new_blob(out.name + "_merge", (seq_q, heads, dv))
    lw.add("Permute", lw.layer_name(node, "_merge"), [ctx], [merged], {0: permute_order([1, 0, 2], node)})
    lw.blob_of[out] = lw.reshape(merged, lw.shape_of(out, node), node, "_out")


def _attention_mask(lw: Lowering, node: Node, mask: Value, heads: int, seq_q: int, seq_k: int) -> str:
    """The additive mask as SDPA reads it: [seq_q, seq_k] rows for every head, or [heads, seq_q, seq_k].

    ncnn adds row i of the mask to row i of q kᵀ with no broadcasting, so a mask that broadcasts over the
    query rows or the heads (BERT's [1, 1, 1, seq_k]) is widened by adding it to zeros of the full shape.
    """
    if mask.dtype is not None and not mask.dtype.is_float:
        raise unsupported(node, "attention with a boolean mask (kiln lowers additive float masks)")
    ms = list(lw.onnx_shape(mask, node))
    ms = [1] * (4 - len(ms)) + ms if len(ms) <= 4 else ms
    if len(ms) != 4 or ms[0] != 1 or ms[1] not in (1, heads) or ms[2] not in (1, seq_q) or ms[3] != seq_k:
        raise unsupported(node, f"an attention mask of shape {tuple(lw.onnx_shape(mask, node))} for "
                                f"{heads} heads, {seq_q} queries and {seq_k} keys")
    own = (ms[1], ms[2], seq_k) if ms[1] > 1 else (ms[2], seq_k)
    full = (heads, seq_q, seq_k) if ms[1] > 1 else (seq_q, seq_k)
    blob = lw.reshape(lw.blob(mask, node), own, node, "_mask")
    if own == full:
        return blob
    zeros = lw.memory_data(np.zeros(full, np.float32), f"{mask.name}_rows", node)
    wide = lw.new_blob(f"{mask.name}_wide", full)
    lw.add("BinaryOp", lw.layer_name(node, "_mask_rows"), [blob, zeros], [wide], {0: 0})
    return wide


def lower_qdq(lw: Lowering, node: Node) -> None:
    """Activation Q/DQ are looked through (:meth:`Lowering.source`); constant ones are folded by readers."""
