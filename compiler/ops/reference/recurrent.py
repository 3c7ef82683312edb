"""Numpy references of ONNX's recurrent layers: RNN, GRU, LSTM.

One loop drives all three: it walks the time steps of one direction for the
whole batch at once, and a per-op *cell* computes the next state from the
input row and the previous state.  ``sequence_lens`` is honoured by masking:
past its length a batch entry keeps its state and outputs zeros.  The
reverse direction runs the same loop over each entry's valid prefix
reversed, so padding stays at the end, and the outputs are flipped back.

Shapes inside are always layout 0 (``X: (seq, batch, input)``); ``layout=1``
(batch first) is transposed on entry and exit.  Floats are computed in
float32 (float64 stays float64) and cast back to the input's dtype.

Activations are named as in the spec (case-insensitive); a list of
activations covers the forward direction first, then the reverse one.
``activation_alpha``/``activation_beta`` values are consumed, in order, by
the activations that take such a parameter; the others keep the defaults of
the corresponding ONNX op.  ``clip`` bounds the input of every gate
activation (the pre-activations of RNN's ``f``, GRU's ``f``/``g`` and LSTM's
``f``/``g``); LSTM's output activation ``h(C_t)`` reads the cell state
unclipped and the cell state itself is not clipped, as onnxruntime computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kiln.ops.reference._common import arg as _arg, compute_dtype as _compute_dtype, req as _req, text as _text
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]
Activation = Callable[[np.ndarray], np.ndarray]




# --------------------------------------------------------------------------- activations


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# name -> (default alpha or None if it takes none, default beta or None, function of (x, alpha, beta))
_ACTIVATIONS: dict[
    str, tuple[float | None, float | None, Callable[[np.ndarray, float, float], np.ndarray]]
] = {
    "relu": (None, None, lambda x, a, b: np.maximum(x, 0)),
    "tanh": (None, None, lambda x, a, b: np.tanh(x)),
    "sigmoid": (None, None, lambda x, a, b: _sigmoid(x)),
    "affine": (1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (0.01, None, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1.0, None, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (1.0, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (1.0, None, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1))),
    "softsign": (None, None, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (None, None, lambda x, a, b: np.logaddexp(0, x)),
}


def _activations(
    attrs: Attrs, defaults: list[str], directions: int, clip: float | None, unclipped: int = -1
) -> list[list[Activation]]:
    """The activation functions of each direction, parameters bound, clip applied
    first, except to the activation at position ``unclipped`` (LSTM's ``h``)."""
    names = [_text(n) for n in attrs.get("activations") or []] or defaults * directions
    if len(names) == len(defaults) and directions == 2:
        names = names * 2
    if len(names) != len(defaults) * directions:
        raise ValueError(f"expected {len(defaults) * directions} activations, got {len(names)}")
    alphas = list(attrs.get("activation_alpha") or [])
    betas = list(attrs.get("activation_beta") or [])
    funcs: list[Activation] = []
    for position, name in enumerate(names):
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise NotImplementedError(f"activation {name!r}")
        alpha, beta, fn = _ACTIVATIONS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)

        limit = None if position % len(defaults) == unclipped else clip

        def bound(
            x: np.ndarray, fn: Any = fn, a: Any = alpha, b: Any = beta, limit: Any = limit
        ) -> np.ndarray:
            if limit is not None:
                x = np.clip(x, -limit, limit)
            return fn(x, a, b)

        funcs.append(bound)
    n = len(defaults)
    return [funcs[d * n : (d + 1) * n] for d in range(directions)]


# --------------------------------------------------------------------------- the loop

# cell(x_t (B, I), states (tuple of (B, H)), direction index) -> new states; states[0] is the hidden.
Cell = Callable[[np.ndarray, tuple[np.ndarray, ...], int], tuple[np.ndarray, ...]]


def _reverse_valid(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverses each batch entry's first ``lengths[b]`` steps of ``(seq, batch, ...)``."""
    out = x.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = x[:n, b][::-1]
    return out


def _scan(
    x: np.ndarray, lengths: np.ndarray, init: tuple[np.ndarray, ...], cell: Cell, d: int, reverse: bool
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Runs one direction; returns Y ``(seq, batch, hidden)`` and the final states."""
    steps = x.shape[0]
    xs = _reverse_valid(x, lengths) if reverse else x
    states = init
    ys = np.zeros((steps,) + init[0].shape, dtype=init[0].dtype)
    for t in range(steps):
        active = (t < lengths)[:, None]
        new = cell(xs[t], states, d)
        states = tuple(np.where(active, n, s) for n, s in zip(new, states))
        ys[t] = np.where(active, new[0], 0)
    if reverse:
        ys = _reverse_valid(ys, lengths)
    return ys, states


def _recurrent(
    inputs: Inputs,
    attrs: Attrs,
    gates: int,
    defaults: list[str],
    make_cell: Callable[[np.ndarray, np.ndarray, np.ndarray, list[list[Activation]], int], Cell],
    state_inputs: list[int],
) -> list[np.ndarray]:
    """Shared driver: unpacks the inputs, runs each direction, packs Y and the final states."""
    x, w, r = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    bias, lens = _arg(inputs, 3), _arg(inputs, 4)
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    layout = attrs.get("layout", 0)
    direction = _text(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"unknown direction {direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    if layout:
        x = x.transpose(1, 0, 2)
    x = x.astype(cdt)
    steps, batch = x.shape[:2]
    hidden = attrs.get("hidden_size") or r.shape[-1]
    wc, rc = w.astype(cdt), r.astype(cdt)
    bc = np.zeros((directions, 2 * gates * hidden), cdt) if bias is None else bias.astype(cdt)
    lengths = np.full(batch, steps, np.int64) if lens is None else np.asarray(lens, np.int64).reshape(-1)
    clip = attrs.get("clip")
    # LSTM's third activation (h) reads the cell state, not a gate: it is not clipped.
    funcs = _activations(
        attrs, defaults, directions, None if clip is None else float(clip), 2 if gates == 4 else -1
    )
    cell = make_cell(wc, rc, bc, funcs, hidden)
    inits = []
    for i in state_inputs:
        s = _arg(inputs, i)
        if s is None:
            s = np.zeros((directions, batch, hidden), cdt)
        elif layout:
            s = s.transpose(1, 0, 2)
        inits.append(s.astype(cdt))
    ys, finals = [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        y, states = _scan(x, lengths, tuple(s[d] for s in inits), cell, d, reverse)
        ys.append(y)
        finals.append(states)
    y_all = np.stack(ys, axis=1)  # (seq, dirs, batch, hidden)
    outs = [np.stack([f[k] for f in finals]) for k in range(len(state_inputs))]  # (dirs, batch, hidden)
    if layout:
        y_all = y_all.transpose(2, 0, 1, 3)
        outs = [o.transpose(1, 0, 2) for o in outs]
    return [np.ascontiguousarray(a).astype(dtype) for a in [y_all, *outs]]


# --------------------------------------------------------------------------- the cells


def _rnn_cell(
    w: np.ndarray, r: np.ndarray, b: np.ndarray, funcs: list[list[Activation]], hidden: int
) -> Cell:
    def cell(xt: np.ndarray, states: tuple[np.ndarray, ...], d: int) -> tuple[np.ndarray, ...]:
        (h,) = states
        (f,) = funcs[d]
        return (f(xt @ w[d].T + h @ r[d].T + b[d, :hidden] + b[d, hidden:]),)

    return cell


def _gru_cell(linear_before_reset: bool) -> Callable[..., Cell]:
    def make(w: np.ndarray, r: np.ndarray, b: np.ndarray, funcs: list[list[Activation]], hidden: int) -> Cell:
        def cell(xt: np.ndarray, states: tuple[np.ndarray, ...], d: int) -> tuple[np.ndarray, ...]:
            (h,) = states
            f, g = funcs[d]
            wb, rb = b[d, : 3 * hidden], b[d, 3 * hidden :]
            xw = xt @ w[d].T + wb  # gates z, r, h
            hr = h @ r[d, : 2 * hidden].T + rb[: 2 * hidden]
            z = f(xw[:, :hidden] + hr[:, :hidden])
            reset = f(xw[:, hidden : 2 * hidden] + hr[:, hidden:])
            rh, rbh = r[d, 2 * hidden :], rb[2 * hidden :]
            if linear_before_reset:
                candidate = g(xw[:, 2 * hidden :] + reset * (h @ rh.T + rbh))
            else:
                candidate = g(xw[:, 2 * hidden :] + (reset * h) @ rh.T + rbh)
            return ((1 - z) * candidate + z * h,)

        return cell

    return make


def _lstm_cell(peepholes: np.ndarray | None, input_forget: bool) -> Callable[..., Cell]:
    def make(w: np.ndarray, r: np.ndarray, b: np.ndarray, funcs: list[list[Activation]], hidden: int) -> Cell:
        p = np.zeros((w.shape[0], 3 * hidden), w.dtype) if peepholes is None else peepholes.astype(w.dtype)

        def cell(xt: np.ndarray, states: tuple[np.ndarray, ...], d: int) -> tuple[np.ndarray, ...]:
            h, c = states
            f, g, hf = funcs[d]
            gates = xt @ w[d].T + h @ r[d].T + b[d, : 4 * hidden] + b[d, 4 * hidden :]  # i, o, f, c
            pi, po, pf = p[d, :hidden], p[d, hidden : 2 * hidden], p[d, 2 * hidden :]
            i = f(gates[:, :hidden] + pi * c)
            forget = 1 - i if input_forget else f(gates[:, 2 * hidden : 3 * hidden] + pf * c)
            cell_new = forget * c + i * g(gates[:, 3 * hidden :])
            o = f(gates[:, hidden : 2 * hidden] + po * cell_new)
            return o * hf(cell_new), cell_new

        return cell

    return make


@reference("RNN")
def rnn_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``H = f(X W^T + H R^T + Wb + Rb)``; outputs Y, Y_h."""
    return _recurrent(inputs, attrs, 1, ["Tanh"], _rnn_cell, [5])


@reference("GRU")
def gru_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Gates z, r, h (in that order in W, R, B); outputs Y, Y_h."""
    cell = _gru_cell(bool(attrs.get("linear_before_reset", 0)))
    return _recurrent(inputs, attrs, 3, ["Sigmoid", "Tanh"], cell, [5])


@reference("LSTM")
def lstm_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Gates i, o, f, c (in that order in W, R, B), peepholes i, o, f;
    ``input_forget`` couples the forget gate to ``1 - i``; outputs Y, Y_h, Y_c."""
    cell = _lstm_cell(_arg(inputs, 7), bool(attrs.get("input_forget", 0)))
    return _recurrent(inputs, attrs, 4, ["Sigmoid", "Tanh", "Tanh"], cell, [5, 6])
