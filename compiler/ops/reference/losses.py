"""Numpy references of ONNX's loss functions and of the training optimizers.

NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss share one weighted
gather: ``loss[n, d...] = -input[n, target[n, d...], d...] * weight[target]``,
zero (with zero weight) where the target is ``ignore_index``; "mean" divides
the sum by the total weight of the targets that count.

Momentum, Adagrad and Adam (domain ``ai.onnx.preview.training``) are plain,
deterministic arithmetic on their inputs, so folding them is sound; each
handles any number of optimized tensors, their inputs grouped by kind
(all X, then all G, then all states) as the spec lays them out.

Floats are computed in float32 (float64 stays float64) and cast back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.ops.reference._common import arg as _arg, compute_dtype as _compute_dtype, req as _req, text as _text
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]

TRAINING = "ai.onnx.preview.training"




# --------------------------------------------------------------------------- losses


def _nll(log_probs: np.ndarray, target: np.ndarray, weight: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """The (weighted, reduced) negative log likelihood, in ``log_probs``' dtype."""
    reduction = _text(attrs.get("reduction", "mean"))
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    ignore = attrs.get("ignore_index")
    classes = log_probs.shape[1]
    target = np.asarray(target).astype(np.int64)
    if target.shape != log_probs.shape[:1] + log_probs.shape[2:]:
        raise ValueError(f"target shape {target.shape} does not match input shape {log_probs.shape}")
    counted = np.ones(target.shape, dtype=bool) if ignore is None else target != ignore
    if np.any(counted & ((target < 0) | (target >= classes))):
        raise ValueError(f"a target is outside [0, {classes})")
    safe = np.where(counted, target, 0)
    picked = np.take_along_axis(log_probs, safe[:, None], axis=1)[:, 0]
    w = np.ones(classes, log_probs.dtype) if weight is None else weight.astype(log_probs.dtype)
    sample_w = np.where(counted, w[safe], 0).astype(log_probs.dtype)
    loss = -picked * sample_w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum(), dtype=log_probs.dtype)
    return np.asarray(loss.sum() / sample_w.sum(), dtype=log_probs.dtype)


@reference("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x, target, weight = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    cdt = _compute_dtype(x.dtype)
    return [_nll(x.astype(cdt), target, weight, attrs).astype(x.dtype)]


@reference("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """NLL of ``log(softmax(scores, axis=1))``; the second output is that log-probability."""
    scores, labels, weight = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    cdt = _compute_dtype(scores.dtype)
    s = scores.astype(cdt)
    shifted = s - s.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = _nll(log_probs, labels, weight, attrs)
    return [loss.astype(scores.dtype), log_probs.astype(scores.dtype)]


# --------------------------------------------------------------------------- optimizers


def _groups(inputs: Inputs, kinds: int) -> tuple[float, int, list[list[np.ndarray]]]:
    """``R``, ``T`` and the variadic tail split into ``kinds`` equal groups."""
    rate = float(np.asarray(_req(inputs, 0)).reshape(-1)[0])
    count = int(np.asarray(_req(inputs, 1)).reshape(-1)[0])
    tail = [_req(inputs, i) for i in range(2, len(inputs))]
    if not tail or len(tail) % kinds:
        raise ValueError(f"expected a multiple of {kinds} tensors after R and T, got {len(tail)}")
    n = len(tail) // kinds
    return rate, count, [tail[k * n : (k + 1) * n] for k in range(kinds)]


@reference("Momentum", domain=TRAINING)
def momentum_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """SGD with (standard or Nesterov) momentum; outputs the new Xs, then the new Vs."""
    rate, count, (xs, gs, vs) = _groups(inputs, 3)
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    norm = float(attrs["norm_coefficient"])
    mode = _text(attrs["mode"])
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum: unknown mode {mode!r}")
    beta_t = beta if count > 0 else 1.0
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        cdt = _compute_dtype(x.dtype)
        xc, gc, vc = x.astype(cdt), g.astype(cdt), v.astype(cdt)
        g_reg = cdt.type(norm) * xc + gc
        v_next = cdt.type(alpha) * vc + cdt.type(beta_t) * g_reg
        if mode == "nesterov":
            x_next = xc - cdt.type(rate) * (g_reg + cdt.type(alpha) * v_next)
        else:
            x_next = xc - cdt.type(rate) * v_next
        new_x.append(x_next.astype(x.dtype))
        new_v.append(v_next.astype(v.dtype))
    return new_x + new_v


@reference("Adagrad", domain=TRAINING)
def adagrad_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """ADAGRAD; outputs the new Xs, then the new accumulated squared gradients."""
    rate, count, (xs, gs, hs) = _groups(inputs, 3)
    norm = float(attrs.get("norm_coefficient", 0.0))
    decay = float(attrs.get("decay_factor", 0.0))
    eps = float(attrs.get("epsilon", 1e-6))
    r = rate / (1 + count * decay)
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        cdt = _compute_dtype(x.dtype)
        xc, gc, hc = x.astype(cdt), g.astype(cdt), h.astype(cdt)
        g_reg = cdt.type(norm) * xc + gc
        h_next = hc + g_reg * g_reg
        x_next = xc - cdt.type(r) * g_reg / (np.sqrt(h_next) + cdt.type(eps))
        new_x.append(x_next.astype(x.dtype))
        new_h.append(h_next.astype(h.dtype))
    return new_x + new_h


@reference("Adam", domain=TRAINING)
def adam_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Adam; outputs the new Xs, then the new Vs, then the new Hs."""
    rate, count, (xs, gs, vs, hs) = _groups(inputs, 4)
    alpha = float(attrs.get("alpha", 0.9))
    beta = float(attrs.get("beta", 0.999))
    eps = float(attrs.get("epsilon", 1e-6))
    norm = float(attrs.get("norm_coefficient", 0.0))
    norm_post = float(attrs.get("norm_coefficient_post", 0.0))
    r = rate * np.sqrt(1 - beta**count) / (1 - alpha**count) if count > 0 else rate
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        cdt = _compute_dtype(x.dtype)
        xc, gc, vc, hc = x.astype(cdt), g.astype(cdt), v.astype(cdt), h.astype(cdt)
        g_reg = cdt.type(norm) * xc + gc
        v_next = cdt.type(alpha) * vc + cdt.type(1 - alpha) * g_reg
        h_next = cdt.type(beta) * hc + cdt.type(1 - beta) * g_reg * g_reg
        x_next = xc - cdt.type(r) * v_next / (np.sqrt(h_next) + cdt.type(eps))
        x_final = cdt.type(1 - norm_post) * x_next
        new_x.append(x_final.astype(x.dtype))
        new_v.append(v_next.astype(v.dtype))
        new_h.append(h_next.astype(h.dtype))
    return new_x + new_v + new_h
