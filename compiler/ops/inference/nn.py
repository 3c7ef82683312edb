"""Inference of neural-network ops: MatMul/Gemm, convolutions, pooling, normalization, Resize, Einsum."""

from __future__ import annotations

import math

from kiln.ir.dtypes import DType
from kiln.ir.types import TensorType
from kiln.ops.inference import infers
from kiln.ops.inference._context import InferContext
from kiln.ops.inference._util import (
    INT64,
    broadcast_shapes,
    ceil_div,
    common_dtype,
    dim_mul,
    fail,
    fmt_shape,
    norm_axis,
    unify,
)

# --------------------------------------------------------------------------- MatMul, Gemm


def _matmul_shape(ctx: InferContext, a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return None
    if not a or not b:
        raise fail(ctx, f"inputs must have rank >= 1, have {fmt_shape(a)} and {fmt_shape(b)}")
    a1, b1 = len(a) == 1, len(b) == 1
    if a1:
        a = (1,) + a
    if b1:
        b = b + (1,)
    unify(ctx, a[-1], b[-2], lambda: f"inner dims of {fmt_shape(a)} and {fmt_shape(b)} differ")
    try:
        batch = broadcast_shapes(a[:-2], b[:-2])
    except ValueError as exc:
        raise fail(ctx, f"batch dims: {exc}") from None
    out = batch + (() if a1 else (a[-2],)) + (() if b1 else (b[-1],))
    return out


@infers("MatMul")
def infer_matmul(ctx: InferContext) -> list:
    dtype = common_dtype(ctx, (0, 1))
    if dtype is None:
        return [None]
    return [TensorType(dtype, _matmul_shape(ctx, ctx.shape(0), ctx.shape(1)))]


@infers("MatMulInteger")
def infer_matmul_integer(ctx: InferContext) -> list:
    return [TensorType(DType.INT32, _matmul_shape(ctx, ctx.shape(0), ctx.shape(1)))]


@infers("QLinearMatMul")
def infer_qlinear_matmul(ctx: InferContext) -> list:
    dtype = ctx.dtype(7) or ctx.dtype(0)
    if dtype is None:
        return [None]
    return [TensorType(dtype, _matmul_shape(ctx, ctx.shape(0), ctx.shape(3)))]


@infers("Gemm")
def infer_gemm(ctx: InferContext) -> list:
    dtype = common_dtype(ctx, (0, 1))
    if dtype is None:
        return [None]
    a, b = ctx.shape(0), ctx.shape(1)
    if a is not None and len(a) != 2 or b is not None and len(b) != 2:
        raise fail(ctx, f"A and B must be 2-D, are {fmt_shape(a)} and {fmt_shape(b)}")
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    m = k1 = k2 = n = None
    if a is not None:
        m, k1 = (a[1], a[0]) if ta else a
    if b is not None:
        k2, n = (b[1], b[0]) if tb else b
    unify(
        ctx,
        k1,
        k2,
        lambda: f"inner dims differ (A {fmt_shape(a)}, B {fmt_shape(b)}, transA={ta}, transB={tb})",
    )
    out = (m, n)
    c = ctx.shape(2) if ctx.has_input(2) else None
    if c is not None:
        try:
            full = broadcast_shapes(out, c)
        except ValueError:
            raise fail(ctx, f"C {fmt_shape(c)} does not broadcast to the output {fmt_shape(out)}") from None
        if len(full) == 2:  # C can only stretch to the output; it may tell a dim the others did not
            out = tuple(o if o.__class__ is int or f.__class__ is not int else f for o, f in zip(out, full))
    return [TensorType(dtype, out)]


# --------------------------------------------------------------------------- sliding windows


def window_out(
    ctx: InferContext,
    size,
    kernel,
    stride: int,
    dilation: int,
    pad_begin: int,
    pad_end: int,
    auto_pad: str,
    ceil_mode: bool = False,
):
    """Output length of one spatial axis of a convolution or pooling window."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if size.__class__ is int:
            return ceil_div(size, stride)
        return size if stride == 1 else None
    if kernel is None:
        return None
    eff = (kernel - 1) * dilation + 1
    if auto_pad == "VALID":
        pad_begin = pad_end = 0
    total_pad = pad_begin + pad_end
    if size.__class__ is not int:
        return size if stride == 1 and total_pad == eff - 1 else None
    span = size + total_pad - eff
    if span < 0:
        raise fail(ctx, f"window of {eff} does not fit an axis of {size} (with pads {total_pad})")
    if ceil_mode:
        out = ceil_div(span, stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1  # the last window would start in the end padding
        return out
    return span // stride + 1


def _raw(attrs: dict, name: str):
    """An attribute's stored value (tuples for lists), or None; for attrs whose ONNX default is
    "absent" (kernel_shape, strides, dilations, pads), this skips the schema-default lookup."""
    a = attrs.get(name)
    return None if a is None else a.value


def _window_attrs(ctx: InferContext, n: int, kernel_required: bool) -> tuple:
    attrs = ctx.node.attrs
    kernel = _raw(attrs, "kernel_shape")
    if kernel is not None and len(kernel) != n:
        raise fail(ctx, f"kernel_shape {list(kernel)} has {len(kernel)} dims, input has {n} spatial dims")
    strides = _raw(attrs, "strides") or (1,) * n
    dilations = _raw(attrs, "dilations") or (1,) * n
    pads = _raw(attrs, "pads") or (0,) * (2 * n)
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise fail(ctx, f"strides/dilations/pads do not match {n} spatial dims")
    auto_pad = _raw(attrs, "auto_pad") or "NOTSET"
    if kernel is None and kernel_required:
        raise fail(ctx, "missing attribute 'kernel_shape'")
    return kernel, strides, dilations, pads, auto_pad


def _spatial_rank(ctx: InferContext, x: tuple | None, w: tuple | None) -> int | None:
    if x is not None:
        if len(x) < 3:
            raise fail(ctx, f"input must have rank >= 3, has shape {fmt_shape(x)}")
        return len(x) - 2
    if w is not None:
        return len(w) - 2
    kernel = ctx.attr("kernel_shape")
    return None if kernel is None else len(kernel)


def _conv_shape(ctx: InferContext, xi: int, wi: int) -> tuple | None:
    x, w = ctx.shape(xi), ctx.shape(wi)
    n = _spatial_rank(ctx, x, w)
    if n is None:
        return None
    if w is not None and len(w) != n + 2:
        raise fail(ctx, f"weight {fmt_shape(w)} does not match input {fmt_shape(x)}")
    kernel, strides, dilations, pads, auto_pad = _window_attrs(ctx, n, False)
    if kernel is None:
        kernel = w[2:] if w is not None else (None,) * n
    elif w is not None:
        for i in range(n):
            unify(
                ctx,
                kernel[i],
                w[2 + i],
                lambda: f"kernel_shape {list(kernel)} does not match weight {fmt_shape(w)}",
            )
    group = _raw(ctx.node.attrs, "group") or 1
    if x is not None and w is not None:
        c, wc = x[1], w[1]
        if c.__class__ is int and wc.__class__ is int and c != wc * group:
            raise fail(
                ctx,
                f"input {fmt_shape(x)} has {c} channels, weight {fmt_shape(w)} with group={group} expects {wc * group}",
            )
    batch = x[0] if x is not None else None
    m = w[0] if w is not None else None
    spatial = x[2:] if x is not None else (None,) * n
    out = [batch, m]
    for i in range(n):
        k = kernel[i] if kernel[i].__class__ is int else None
        out.append(window_out(ctx, spatial[i], k, strides[i], dilations[i], pads[i], pads[i + n], auto_pad))
    return tuple(out)


@infers("Conv")
def infer_conv(ctx: InferContext) -> list:
    dtype = common_dtype(ctx, (0, 1))
    if dtype is None:
        return [None]
    return [TensorType(dtype, _conv_shape(ctx, 0, 1))]


@infers("ConvInteger")
def infer_conv_integer(ctx: InferContext) -> list:
    return [TensorType(DType.INT32, _conv_shape(ctx, 0, 1))]


@infers("QLinearConv")
def infer_qlinear_conv(ctx: InferContext) -> list:
    dtype = ctx.dtype(7) or ctx.dtype(0)
    if dtype is None:
        return [None]
    return [TensorType(dtype, _conv_shape(ctx, 0, 3))]


@infers("ConvTranspose")
def infer_conv_transpose(ctx: InferContext) -> list:
    dtype = common_dtype(ctx, (0, 1))
    if dtype is None:
        return [None]
    x, w = ctx.shape(0), ctx.shape(1)
    n = _spatial_rank(ctx, x, w)
    if n is None:
        return [TensorType(dtype, None)]
    kernel, strides, dilations, pads, auto_pad = _window_attrs(ctx, n, False)
    if kernel is None:
        kernel = w[2:] if w is not None else (None,) * n
    group = ctx.attr("group", 1)
    if x is not None and w is not None:
        unify(ctx, x[1], w[0], lambda: f"input {fmt_shape(x)} channels do not match weight {fmt_shape(w)}")
    batch = x[0] if x is not None else None
    m = dim_mul(w[1], group) if w is not None else None
    out = [batch, m]
    output_shape = ctx.attr("output_shape")
    if output_shape is not None:
        output_shape = list(output_shape)[-n:]
        return [TensorType(dtype, tuple(out + output_shape))]
    output_padding = ctx.attr("output_padding") or [0] * n
    spatial = x[2:] if x is not None else (None,) * n
    for i in range(n):
        size, k, s, d = spatial[i], kernel[i], strides[i], dilations[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(size * s if size.__class__ is int else (size if s == 1 else None))
            continue
        pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + n])
        if k.__class__ is not int:
            out.append(None)
            continue
        extra = output_padding[i] + (k - 1) * d + 1 - pb - pe
        if size.__class__ is int:
            o = s * (size - 1) + extra
            if o <= 0:
                raise fail(ctx, f"output size {o} of spatial axis {i} is not positive")
            out.append(o)
        else:
            out.append(size if s == 1 and extra == 1 else None)
    return [TensorType(dtype, tuple(out))]


def _pool_shape(ctx: InferContext) -> tuple | None:
    x = ctx.shape(0)
    kernel = ctx.attr("kernel_shape")
    if kernel is None:
        raise fail(ctx, "missing attribute 'kernel_shape'")
    n = len(kernel)
    if x is None:
        return None
    if len(x) != n + 2:
        raise fail(ctx, f"input {fmt_shape(x)} does not have {n} spatial dims (kernel_shape {list(kernel)})")
    _, strides, dilations, pads, auto_pad = _window_attrs(ctx, n, True)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    out = [x[0], x[1]]
    for i in range(n):
        out.append(
            window_out(
                ctx, x[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], auto_pad, ceil_mode
            )
        )
    return tuple(out)


@infers("AveragePool", "LpPool")
def infer_pool(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    return [TensorType(dtype, _pool_shape(ctx))]


@infers("MaxPool")
def infer_max_pool(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None, None]
    shape = _pool_shape(ctx)
    return [TensorType(dtype, shape), TensorType(INT64, shape)]


@infers("MaxUnpool")
def infer_max_unpool(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    x = ctx.shape(0)
    if ctx.has_input(2):
        target = ctx.sym_value(2)
        if target is not None:
            return [TensorType(dtype, target)]
        return [TensorType(dtype, None if x is None else (None,) * len(x))]
    kernel = ctx.attr("kernel_shape")
    if x is None or kernel is None:
        return [TensorType(dtype, None)]
    n = len(kernel)
    _, strides, _, pads, _ = _window_attrs(ctx, n, True)
    out = [x[0], x[1]]
    for i in range(n):
        d = x[2 + i]
        out.append((d - 1) * strides[i] + kernel[i] - pads[i] - pads[i + n] if d.__class__ is int else None)
    return [TensorType(dtype, tuple(out))]


@infers("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def infer_global_pool(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    x = t.shape
    if x is None:
        return [TensorType(t.dtype, None)]
    if len(x) < 2:
        raise fail(ctx, f"input must have rank >= 2, has shape {fmt_shape(x)}")
    return [TensorType(t.dtype, x[:2] + (1,) * (len(x) - 2))]


# --------------------------------------------------------------------------- normalization


@infers("BatchNormalization")
def infer_batch_norm(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    x = t.shape if t is not None else None
    c = x[1] if x is not None and len(x) > 1 else None
    for i in range(1, 5):
        s = ctx.shape(i)
        if s is not None and len(s) == 1:
            c = unify(
                ctx,
                c,
                s[0],
                lambda i=i, s=s: f"input {i} {fmt_shape(s)} does not match the channels of {fmt_shape(x)}",
            )
    out = [t]
    stat = ctx.dtype(3) or (t.dtype if t is not None else None)
    for _ in range(1, ctx.num_outputs):
        out.append(None if stat is None else TensorType(stat, (c,)))
    return out


@infers("LayerNormalization")
def infer_layer_norm(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None] * ctx.num_outputs
    out = [t]
    if ctx.num_outputs > 1:
        x = t.shape
        stash = DType(ctx.attr("stash_type", 1))
        if x is None:
            stat_shape = None
        else:
            axis = norm_axis(ctx, ctx.attr("axis", -1), len(x))
            stat_shape = x[:axis] + (1,) * (len(x) - axis)
        out += [TensorType(stash, stat_shape)] * (ctx.num_outputs - 1)
    return out


@infers("RMSNormalization")
def infer_rms_norm(ctx: InferContext) -> list:
    dtype = ctx.dtype(1) or ctx.dtype(0)
    return [None if dtype is None else TensorType(dtype, ctx.shape(0))]


# --------------------------------------------------------------------------- Resize, Upsample


def _scaled(size, scale: float):
    if size.__class__ is int:
        return math.floor(size * scale)
    return size if scale == 1.0 else None


@infers("Resize", "Upsample")
def infer_resize(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    x = t.shape
    if x is None:
        return [TensorType(t.dtype, None)]
    r = len(x)
    op, v = ctx.node.op, ctx.version
    scales = sizes = None
    scales_given = sizes_given = False
    if op == "Upsample" and v < 9:
        scales, scales_given = ctx.attr("scales"), True
    elif op == "Upsample" or v < 11:
        scales_given = True
        c = ctx.const(1)
        scales = None if c is None else [float(s) for s in c.reshape(-1)]
    else:
        if ctx.has_input(3):
            sizes_given = True
            sizes = ctx.sym_value(3)
            ss = ctx.shape(3)
            if sizes is None and ss is not None and ss == (0,):
                sizes_given = False
        if ctx.has_input(2) and not sizes_given:
            scales_given = True
            c = ctx.const(2)
            scales = None if c is None else [float(s) for s in c.reshape(-1)]
            if scales is not None and not scales:
                scales_given = False
        if sizes is not None and not sizes:
            sizes_given, sizes = False, None
    axes = ctx.attr("axes") if op == "Resize" and v >= 18 else None
    axes = list(range(r)) if axes is None else [norm_axis(ctx, a, r) for a in axes]
    out = list(x)
    if sizes_given:
        if sizes is None:
            for a in axes:
                out[a] = None
            return [TensorType(t.dtype, tuple(out))]
        if len(sizes) != len(axes):
            raise fail(ctx, f"sizes has {len(sizes)} elements for {len(axes)} axes")
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch") if v >= 18 else "stretch"
        if policy != "stretch":
            if any(x[a].__class__ is not int for a in axes) or any(s.__class__ is not int for s in sizes):
                for a in axes:
                    out[a] = None
                return [TensorType(t.dtype, tuple(out))]
            ratios = [s / x[a] for s, a in zip(sizes, axes)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a] = int(scale * x[a] + 0.5)
            return [TensorType(t.dtype, tuple(out))]
        for s, a in zip(sizes, axes):
            out[a] = s
        return [TensorType(t.dtype, tuple(out))]
    if not scales_given or scales is None:
        for a in axes:
            out[a] = None
        return [TensorType(t.dtype, tuple(out))]
    if len(scales) != len(axes):
        raise fail(ctx, f"scales has {len(scales)} elements for {len(axes)} axes of {fmt_shape(x)}")
    for s, a in zip(scales, axes):
        if s <= 0:
            raise fail(ctx, f"scale {s} is not positive")
        out[a] = _scaled(x[a], s)
    return [TensorType(t.dtype, tuple(out))]


# --------------------------------------------------------------------------- Einsum


@infers("Einsum")
def infer_einsum(ctx: InferContext) -> list:
    dtype = common_dtype(ctx, range(ctx.num_inputs))
    if dtype is None:
        return [None]
    eq = (ctx.attr("equation") or "").replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != ctx.num_inputs:
        raise fail(ctx, f"equation {eq!r} has {len(terms)} operands, node has {ctx.num_inputs} inputs")
    letters: dict[str, object] = {}
    counts: dict[str, int] = {}
    ellipsis: tuple | None = ()
    for i, term in enumerate(terms):
        shape = ctx.shape(i)
        has_ell = "..." in term
        labels = term.replace("...", "")
        for ch in labels:
            counts[ch] = counts.get(ch, 0) + 1
        if shape is None:
            for ch in labels:
                letters.setdefault(ch, None)
            if has_ell:
                ellipsis = None
            continue
        if has_ell:
            pre, post = term.split("...")
            n_ell = len(shape) - len(pre) - len(post)
            if n_ell < 0:
                raise fail(ctx, f"operand {i} {fmt_shape(shape)} has fewer dims than {term!r}")
            dims = shape[: len(pre)] + shape[len(shape) - len(post) :]
            ell = shape[len(pre) : len(shape) - len(post)]
            if ellipsis is not None:
                try:
                    ellipsis = broadcast_shapes(ellipsis, ell)
                except ValueError as exc:
                    raise fail(ctx, f"ellipsis dims: {exc}") from None
        else:
            if len(shape) != len(labels):
                raise fail(
                    ctx, f"operand {i} {fmt_shape(shape)} does not have the {len(labels)} dims of {term!r}"
                )
            dims = shape
        for ch, d in zip(labels, dims):
            if ch in letters:
                old = letters[ch]
                if old == 1:
                    letters[ch] = d
                elif d != 1:
                    letters[ch] = unify(ctx, old, d, f"label {ch!r} has two sizes")
            else:
                letters[ch] = d
    if arrow:
        out_labels = rhs
    else:
        out_labels = ("..." if "..." in lhs else "") + "".join(
            sorted(ch for ch, c in counts.items() if c == 1)
        )
    out: list = []
    if "..." in out_labels:
        pre, post = out_labels.split("...")
        if ellipsis is None:
            return [TensorType(dtype, None)]
        out = [letters.get(ch) for ch in pre] + list(ellipsis) + [letters.get(ch) for ch in post]
    else:
        for ch in out_labels:
            if ch not in letters:
                raise fail(ctx, f"output label {ch!r} does not appear in the inputs of {eq!r}")
            out.append(letters[ch])
    return [TensorType(dtype, tuple(out))]


# --------------------------------------------------------------------------- assorted


@infers("GridSample")
def infer_grid_sample(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    x, g = ctx.shape(0), ctx.shape(1)
    if x is not None and len(x) < 3 or g is not None and len(g) < 3:
        raise fail(ctx, f"X {fmt_shape(x)} and grid {fmt_shape(g)} must have rank >= 3")
    if x is None or g is None:
        return [
            TensorType(dtype, None if x is None and g is None else (None,) * len(x if x is not None else g))
        ]
    return [TensorType(dtype, (unify(ctx, x[0], g[0], "batch of X and grid"), x[1]) + g[1:-1])]


@infers("RoiAlign")
def infer_roi_align(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    x, rois = ctx.shape(0), ctx.shape(1)
    if x is not None and len(x) != 4 or rois is not None and len(rois) != 2:
        raise fail(ctx, f"X {fmt_shape(x)} must be 4-D and rois {fmt_shape(rois)} 2-D")
    n = rois[0] if rois is not None else None
    c = x[1] if x is not None else None
    return [TensorType(dtype, (n, c, ctx.attr("output_height", 1), ctx.attr("output_width", 1)))]


@infers("NonMaxSuppression")
def infer_nms(ctx: InferContext) -> list:
    return [TensorType(INT64, (None, 3))]


@infers("Det")
def infer_det(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    x = t.shape
    if x is None:
        return [TensorType(t.dtype, None)]
    if len(x) < 2:
        raise fail(ctx, f"input must have rank >= 2, has shape {fmt_shape(x)}")
    unify(ctx, x[-1], x[-2], lambda: f"matrices of {fmt_shape(x)} are not square")
    return [TensorType(t.dtype, x[:-2])]


@infers("AffineGrid")
def infer_affine_grid(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    size = ctx.sym_value(1)
    if size is None:
        s = ctx.shape(1)
        if s is not None and len(s) == 1 and s[0] in (4, 5):
            return [TensorType(dtype, (None,) * (s[0] - 1) + (s[0] - 2,))]
        return [TensorType(dtype, None)]
    spatial = tuple(size[2:])
    return [TensorType(dtype, (size[0],) + spatial + (len(spatial),))]


@infers("Col2Im")
def infer_col2im(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    x = t.shape
    image = ctx.sym_value(1)
    block = ctx.sym_value(2)
    if x is None or image is None:
        return [TensorType(t.dtype, None)]
    c = None
    if block is not None and all(b.__class__ is int for b in block) and x[1].__class__ is int:
        c = x[1] // math.prod(block)
    return [TensorType(t.dtype, (x[0], c) + tuple(image))]
