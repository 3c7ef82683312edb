"""Numpy references of the transformer-block ops: Attention, FlexAttention,
LinearAttention, RotaryEmbedding, SwiGLU, CausalConvWithState, TensorScatter.

Floats are computed in float32 (float64 stays float64; float16 and bfloat16
are widened to float32) and rounded back once at the end, so each output has
the input's dtype.  Heads are always handled in the 4-D layout
``(batch, heads, sequence, head_size)``; 3-D inputs are unpacked on entry and
packed again on exit.  Grouped-query attention shares K/V head ``h // group``
with query head ``h``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kiln.ops.reference._common import arg as _arg, compute_dtype as _compute_dtype, req as _req, text as _text
from kiln.ops.reference._registry import RefContext, get_reference, reference
from kiln.ops.reference.elementwise import onnx_dtype

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


# --------------------------------------------------------------------------- helpers




def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """``(B, S, H*D)`` -> ``(B, H, S, D)``."""
    b, s, hidden = x.shape
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """``(B, H, S, D)`` -> ``(B, S, H*D)``."""
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def _repeat_kv(x: np.ndarray, q_heads: int) -> np.ndarray:
    """Repeats each K/V head so that query head ``h`` meets K/V head ``h // group``."""
    kv_heads = x.shape[1]
    if q_heads == kv_heads:
        return x
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads")
    return np.repeat(x, q_heads // kv_heads, axis=1)


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row that is all ``-inf`` (no key allowed)
    becomes zeros instead of NaN."""
    dead = np.all(np.isneginf(scores), axis=-1, keepdims=True)
    safe = np.where(dead, 0, scores)
    e = np.exp(safe - safe.max(axis=-1, keepdims=True))
    return np.where(dead, 0, e / e.sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- Attention


def _attention_bias(
    attrs: Attrs,
    mask: np.ndarray | None,
    nonpad: np.ndarray | None,
    shape: tuple[int, int, int, int],
    past_len: int,
    cdt: np.dtype,
) -> np.ndarray:
    """The additive bias ``(B, 1 or H, Sq, T)``: float mask values, ``-inf`` where
    a boolean mask, the causal frontier, a sliding window or the padding of
    ``nonpad_kv_seqlen`` disallows a key."""
    batch, _heads, sq, total = shape
    bias = np.zeros((batch, 1, sq, total), dtype=cdt)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape[-1] < total:  # a short mask is padded with "disallowed"
            widths = [(0, 0)] * (m.ndim - 1) + [(0, total - m.shape[-1])]
            m = np.pad(m, widths, constant_values=False if m.dtype == np.bool_ else -np.inf)
        if m.dtype == np.bool_:
            m = np.where(m, 0, -np.inf)
        bias = bias + m.astype(cdt)
    # Absolute offset of query row 0 among the keys, per batch entry.
    if past_len:
        offset = np.full((batch,), past_len, dtype=np.int64)
    elif nonpad is not None:
        offset = np.asarray(nonpad, dtype=np.int64).reshape(-1) - sq
    else:
        offset = np.zeros((batch,), dtype=np.int64)
    pos = offset[:, None, None, None] + np.arange(sq).reshape(1, 1, sq, 1)
    key = np.arange(total).reshape(1, 1, 1, total)
    allowed = np.ones((batch, 1, sq, total), dtype=bool)
    if attrs.get("is_causal", 0):
        allowed &= key <= pos
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    if left >= 0:
        allowed &= key >= pos - left
    if right >= 0:
        allowed &= key <= pos + right
    if nonpad is not None:
        allowed &= key < np.asarray(nonpad, dtype=np.int64).reshape(batch, 1, 1, 1)
    return np.where(allowed, bias, -np.inf).astype(cdt, copy=False)


@reference("Attention")
def attention_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Scaled dot-product attention (opset 23+).

    ``scores = (Q*sqrt(s)) @ (K*sqrt(s))^T``, then softcap, then the bias from
    the mask, the causal/window frontier and ``nonpad_kv_seqlen``, then softmax
    (in ``softmax_precision`` if given) and ``@ V``.  A query row with no
    allowed key gives a zero output row, not NaN.  The optional fourth output
    is the scores at the stage ``qk_matmul_output_mode`` names (0: raw, 1:
    after softcap, 2: after the bias, 3: the probabilities).
    """
    q, k, v = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    mask, past_k, past_v, nonpad = _arg(inputs, 3), _arg(inputs, 4), _arg(inputs, 5), _arg(inputs, 6)
    dtype = q.dtype
    cdt = _compute_dtype(dtype)
    three_d = q.ndim == 3
    if three_d:
        q = _split_heads(q, attrs["q_num_heads"])
        k = _split_heads(k, attrs["kv_num_heads"])
        v = _split_heads(v, attrs["kv_num_heads"])
    present_k, present_v = k, v
    past_len = 0
    if past_k is not None and past_v is not None:
        past_len = past_k.shape[2]
        present_k = np.concatenate([past_k.astype(k.dtype), k], axis=2)
        present_v = np.concatenate([past_v.astype(v.dtype), v], axis=2)
    batch, q_heads, sq, head_size = q.shape
    total = present_k.shape[2]
    scale = attrs.get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(head_size)
    root = np.sqrt(np.asarray(scale, dtype=cdt))
    qc = q.astype(cdt) * root
    kc = _repeat_kv(present_k.astype(cdt), q_heads) * root
    vc = _repeat_kv(present_v.astype(cdt), q_heads)

    raw = qc @ kc.swapaxes(-1, -2)
    capped = raw
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        capped = (softcap * np.tanh(raw / softcap)).astype(cdt)
    bias = _attention_bias(attrs, mask, nonpad, (batch, q_heads, sq, total), past_len, cdt)
    biased = capped + bias
    precision = attrs.get("softmax_precision")
    sdt = onnx_dtype(precision) if precision is not None else cdt
    # The scores are rounded to softmax_precision; the softmax itself runs in float32 or float64.
    work = np.float64 if sdt == np.float64 else cdt
    probs = _softmax_rows(biased.astype(sdt).astype(work)).astype(sdt).astype(cdt)
    y = probs @ vc
    if three_d:
        y = _merge_heads(y)
    results = [y.astype(dtype), present_k.astype(dtype), present_v.astype(v.dtype)]
    if ctx.num_outputs > 3:
        mode = attrs.get("qk_matmul_output_mode", 0)
        stage = {0: raw, 1: capped, 2: biased, 3: probs}[mode]
        results.append(stage.astype(dtype))
    return results[: max(ctx.num_outputs, 1)]


# --------------------------------------------------------------------------- FlexAttention


def _run_modifier(graph: Any, x: np.ndarray, version: int) -> np.ndarray:
    """Evaluates a one-input, one-output modifier subgraph (a kiln ``Graph``)
    node by node with kiln's own references."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("a FlexAttention modifier takes one tensor and returns one")
    env: dict[int, np.ndarray] = {id(graph.inputs[0]): x}

    def value_of(v: Any) -> np.ndarray | None:
        if v is None:
            return None
        if id(v) in env:
            return env[id(v)]
        if v.const is not None:
            return v.const.numpy()
        raise ValueError(f"modifier reads %{v.name}, which is neither computed nor constant")

    for node in graph:
        ref = get_reference(node.domain, node.op)
        if ref is None or node.subgraphs():
            raise NotImplementedError(f"modifier node {node.op_id} has no reference")
        args = [value_of(v) for v in node.inputs]
        attrs = {name: a.plain() for name, a in node.attrs.items()}
        results = ref(args, attrs, RefContext(version=node.version or version, num_outputs=len(node.outputs)))
        for out, result in zip(node.outputs, results):
            env[id(out)] = np.asarray(result)
    y = value_of(graph.outputs[0])
    assert y is not None
    if y.shape != x.shape:
        raise ValueError(f"modifier changed the shape {x.shape} to {y.shape}")
    return y.astype(x.dtype, copy=False)


@reference("FlexAttention", domain="ai.onnx.preview")
def flex_attention_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``softmax(score_mod(Q @ K^T * scale))``, then ``prob_mod``, then ``@ V``,
    with GQA; scores and probabilities are in ``softmax_precision`` (float32,
    or float64 for double inputs).

    The modifiers are kiln ``Graph`` attributes evaluated with kiln's own
    references (default-domain opset 26 for their nodes unless they carry a
    version).  Constant folding never calls this for a node with modifiers
    (it skips nodes with subgraphs); the evaluation is there for direct use.
    """
    q, k, v = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    dtype = q.dtype
    precision = attrs.get("softmax_precision")
    sdt = onnx_dtype(precision) if precision is not None else _compute_dtype(dtype)
    heads, head_size = q.shape[1], q.shape[-1]
    scale = attrs.get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(head_size)
    scores = (q.astype(sdt) @ _repeat_kv(k.astype(sdt), heads).swapaxes(-1, -2)) * np.asarray(scale, sdt)
    if attrs.get("score_mod") is not None:
        scores = _run_modifier(attrs["score_mod"], scores, 26)
    probs = _softmax_rows(scores)
    if attrs.get("prob_mod") is not None:
        probs = _run_modifier(attrs["prob_mod"], probs, 26)
    y = probs @ _repeat_kv(v.astype(sdt), heads)
    return [y.astype(dtype)]


# --------------------------------------------------------------------------- LinearAttention


def _per_head(x: np.ndarray | None, heads: int) -> np.ndarray | None:
    """A packed ``(B, T, H*D)`` gate to ``(B, H, T, D)``; ``(B, T, H)`` or
    ``(B, T, 1)`` (one value per head, or one for all) to ``(B, H or 1, T, 1)``."""
    if x is None:
        return None
    width = x.shape[-1]
    if width in (heads, 1):
        return x.transpose(0, 2, 1)[..., None]
    return _split_heads(x, heads)


@reference("LinearAttention")
def linear_attention_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """The linear-attention recurrence, one token at a time.

    Per K/V head the state ``S`` is ``(d_k, d_v)``; with ``g`` the log-space
    decay and ``b`` the update rate::

        linear:      S = S + k v^T
        gated:       S = exp(g) S + k v^T
        delta:       S = S + b k (v - S^T k)^T
        gated_delta: S = exp(g) S + b k (v - (exp(g) S)^T k)^T

    and each query head ``h`` reads ``o = scale * S^T q`` from K/V head
    ``h // (q_num_heads / kv_num_heads)``.  A per-key-dimension decay scales
    the rows of ``S``; a per-head decay all of it.
    """
    q, k, v = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    past, decay, beta = _arg(inputs, 3), _arg(inputs, 4), _arg(inputs, 5)
    rule = _text(attrs.get("update_rule", "gated_delta"))
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ValueError(f"LinearAttention: unknown update_rule {rule!r}")
    q_heads, kv_heads = attrs["q_num_heads"], attrs["kv_num_heads"]
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads")
    dtype = q.dtype
    cdt = _compute_dtype(dtype)
    qh = _split_heads(q.astype(cdt), q_heads)  # (B, Hq, T, dk)
    kh = _split_heads(k.astype(cdt), kv_heads)  # (B, Hkv, T, dk)
    vh = _split_heads(v.astype(cdt), kv_heads)  # (B, Hkv, T, dv)
    batch, _, steps, d_k = kh.shape
    d_v = vh.shape[-1]
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(q.shape[-1] // q_heads)
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated and decay is None:
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs the decay input")
    if delta and beta is None:
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs the beta input")
    g = _per_head(decay.astype(cdt), kv_heads) if gated and decay is not None else None
    b = _per_head(beta.astype(cdt), kv_heads) if delta and beta is not None else None
    state = np.zeros((batch, kv_heads, d_k, d_v), dtype=cdt) if past is None else past.astype(cdt)
    group = q_heads // kv_heads
    out = np.empty((batch, q_heads, steps, d_v), dtype=cdt)
    for t in range(steps):
        kt, vt = kh[:, :, t, :], vh[:, :, t, :]  # (B, Hkv, dk), (B, Hkv, dv)
        if g is not None:
            state = np.exp(g[:, :, t, :])[..., None] * state  # rows (dk) scaled
        if b is not None:
            predicted = np.einsum("bhkv,bhk->bhv", state, kt)
            update = b[:, :, t, :] * (vt - predicted)  # (B, Hkv, dv)
        else:
            update = vt
        state = state + kt[..., :, None] * update[..., None, :]
        shared = np.repeat(state, group, axis=1) if group > 1 else state
        out[:, :, t, :] = scale * np.einsum("bhkv,bhk->bhv", shared, qh[:, :, t, :])
    present_dtype = past.dtype if past is not None else dtype
    return [_merge_heads(out).astype(dtype), state.astype(present_dtype)]


# --------------------------------------------------------------------------- RotaryEmbedding


@reference("RotaryEmbedding")
def rotary_embedding_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Rotates pairs of features by the angles whose cosines and sines are given.

    The first ``rotary_embedding_dim`` features of each head (all by default)
    form pairs ``(x1, x2)``: the two halves, or even/odd features when
    ``interleaved``; each becomes ``(cos*x1 - sin*x2, sin*x1 + cos*x2)``.  The
    caches are indexed by ``position_ids`` when given, else they are already
    ``(batch, sequence, dim/2)``.
    """
    x, cos, sin, positions = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2), _arg(inputs, 3)
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    if x.ndim == 4:  # (B, H, S, D) -> (B, S, H, D)
        xs = x.transpose(0, 2, 1, 3)
    else:
        heads = attrs.get("num_heads")
        if not heads:
            raise ValueError("RotaryEmbedding: a 3-D input needs the num_heads attribute")
        b, s, hidden = x.shape
        xs = x.reshape(b, s, heads, hidden // heads)
    xs = xs.astype(cdt)
    dim = attrs.get("rotary_embedding_dim", 0) or xs.shape[-1]
    if positions is not None:
        cos, sin = cos[positions], sin[positions]
    if cos.shape[-1] * 2 != dim or sin.shape[-1] * 2 != dim:
        raise ValueError(f"RotaryEmbedding: caches of width {cos.shape[-1]} do not fit rotary dim {dim}")
    cos = cos.astype(cdt)[:, :, None, :]  # (B, S, 1, dim/2)
    sin = sin.astype(cdt)[:, :, None, :]
    rot, rest = xs[..., :dim], xs[..., dim:]
    if attrs.get("interleaved", 0):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : dim // 2], rot[..., dim // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if attrs.get("interleaved", 0):
        rotated = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rotated, rest], axis=-1)
    y = y.transpose(0, 2, 1, 3) if x.ndim == 4 else y.reshape(x.shape)
    return [np.ascontiguousarray(y).astype(dtype)]


# --------------------------------------------------------------------------- SwiGLU, causal conv, cache scatter


@reference("SwiGLU")
def swiglu_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``A * sigmoid(alpha * A) * B`` (no broadcasting: A and B share a shape)."""
    a, b = _req(inputs, 0), _req(inputs, 1)
    if a.shape != b.shape:
        raise ValueError(f"SwiGLU: shapes {a.shape} and {b.shape} differ")
    cdt = _compute_dtype(a.dtype)
    ac = a.astype(cdt)
    alpha = np.asarray(attrs.get("alpha", 1.0), dtype=cdt)
    y = ac / (1 + np.exp(-alpha * ac)) * b.astype(cdt)
    return [y.astype(a.dtype)]


@reference("CausalConvWithState")
def causal_conv_with_state_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Depthwise causal 1-D convolution carrying the last ``k - 1`` positions.

    The sequence is ``past_state`` (zeros if omitted) followed by the input;
    output ``t`` is ``sum_j w[c, 0, j] * seq[t + j] (+ bias)``, optionally
    through SiLU; ``present_state`` is the sequence's last ``k - 1`` positions.
    """
    x, w, bias, past = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2), _arg(inputs, 3)
    activation = _text(attrs.get("activation", "none")).lower()
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"CausalConvWithState: unknown activation {activation!r}")
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    batch, channels, length = x.shape
    ksize = w.shape[-1]
    if past is None:
        past = np.zeros((batch, channels, ksize - 1), dtype=cdt)
    seq = np.concatenate([past.astype(cdt), x.astype(cdt)], axis=-1)
    kernel = w.astype(cdt).reshape(channels, ksize)
    y = np.zeros((batch, channels, length), dtype=cdt)
    for j in range(ksize):
        y += kernel[None, :, j : j + 1] * seq[:, :, j : j + length]
    if bias is not None:
        y += bias.astype(cdt)[None, :, None]
    if activation != "none":
        y = y / (1 + np.exp(-y))
    present = seq[:, :, seq.shape[-1] - (ksize - 1) :]
    return [y.astype(dtype), np.ascontiguousarray(present).astype(dtype)]


@reference("TensorScatter")
def tensor_scatter_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Writes ``update`` into a copy of ``past_cache`` along ``axis``, starting
    per batch entry at ``write_indices`` (0 if omitted); ``circular`` wraps."""
    cache, update, where = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    axis = attrs.get("axis", -2)
    axis = axis + cache.ndim if axis < 0 else axis
    if axis == 0:
        raise ValueError("TensorScatter: axis cannot be the batch axis")
    circular = _text(attrs.get("mode", "linear")) == "circular"
    capacity, steps = cache.shape[axis], update.shape[axis]
    starts = np.zeros(cache.shape[0], np.int64) if where is None else np.asarray(where, np.int64).reshape(-1)
    out = cache.copy()
    for b in range(cache.shape[0]):
        slots = starts[b] + np.arange(steps)
        if circular:
            slots %= capacity
        elif steps and slots[-1] >= capacity:
            raise ValueError(f"TensorScatter: write of {steps} at {starts[b]} overflows {capacity}")
        target = np.moveaxis(out[b], axis - 1, 0)  # a view into out
        target[slots] = np.moveaxis(update[b], axis - 1, 0)
    return [out]
