"""Numpy references of ONNX's signal-processing ops: DFT, STFT, the Hann,
Hamming and Blackman windows, and MelWeightMatrix.

Complex tensors use ONNX's layout: a trailing axis of 2 holds the real and
imaginary parts (a trailing axis of 1 means a real signal).  Transforms are
computed in complex128 with ``numpy.fft`` and cast back to the input's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference
from kiln.ops.reference.elementwise import onnx_dtype

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _arg(inputs: Inputs, i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    a = _arg(inputs, i)
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _scalar(a: np.ndarray) -> Any:
    return np.asarray(a).reshape(-1)[0].item()


def _to_complex(x: np.ndarray) -> np.ndarray:
    """``[..., 1]`` (real) or ``[..., 2]`` (real, imaginary) -> complex128 ``[...]``."""
    if x.shape[-1] == 1:
        return x[..., 0].astype(np.float64).astype(np.complex128)
    if x.shape[-1] == 2:
        return x[..., 0].astype(np.float64) + 1j * x[..., 1].astype(np.float64)
    raise ValueError(f"the last axis must be 1 (real) or 2 (complex), got {x.shape[-1]}")


def _from_complex(c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


def _fit(c: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Zero-pads or truncates ``c`` along ``axis`` to ``length``."""
    size = c.shape[axis]
    if size >= length:
        return np.take(c, np.arange(length), axis=axis)
    widths = [(0, 0)] * c.ndim
    widths[axis] = (0, length - size)
    return np.pad(c, widths)


# --------------------------------------------------------------------------- DFT, STFT


@reference("DFT")
def dft_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """The (inverse, one-sided) DFT along one signal axis.

    Opset 17-19 take ``axis`` as an attribute (default 1); opset 20 as the
    third input (default -2).  ``dft_length`` pads or truncates the signal;
    the inverse one-sided transform (IRFFT) defaults it to ``2 * (n - 1)``
    and returns a real ``[..., 1]`` signal.
    """
    x = _req(inputs, 0)
    length_in = _arg(inputs, 1)
    if ctx.version >= 20:
        axis_in = _arg(inputs, 2)
        axis = -2 if axis_in is None else int(_scalar(axis_in))
    else:
        axis = int(attrs.get("axis", 1))
    rank = x.ndim
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank - 2:
        raise ValueError(f"DFT axis {axis} is not a signal axis of a rank-{rank} input")
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    c = _to_complex(x)
    n = c.shape[axis]
    if inverse and onesided:
        length = 2 * (n - 1) if length_in is None else int(_scalar(length_in))
        real = np.fft.irfft(c, n=length, axis=axis)
        return [real[..., None].astype(x.dtype)]
    length = n if length_in is None else int(_scalar(length_in))
    c = _fit(c, length, axis)
    y = np.fft.ifft(c, axis=axis) if inverse else np.fft.fft(c, axis=axis)
    if onesided:
        y = np.take(y, np.arange(length // 2 + 1), axis=axis)
    return [_from_complex(y, x.dtype)]


@reference("STFT")
def stft_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Windowed DFT of every frame: ``[batch, frames, bins, 2]``.

    ``frames = (signal_length - frame_length) // frame_step + 1``;
    ``frame_length`` comes from the input, else the window's length, else the
    whole signal; the window defaults to all ones.
    """
    signal, step_in = _req(inputs, 0), _req(inputs, 1)
    window, length_in = _arg(inputs, 2), _arg(inputs, 3)
    step = int(_scalar(step_in))
    c = _to_complex(signal)  # (batch, signal_length)
    if length_in is not None:
        frame = int(_scalar(length_in))
    elif window is not None:
        frame = int(window.shape[0])
    else:
        frame = c.shape[1]
    if window is not None and window.shape[0] != frame:
        raise ValueError(f"STFT window of length {window.shape[0]} for frames of {frame}")
    w = np.ones(frame) if window is None else _to_complex(np.asarray(window).reshape(frame, -1))
    frames = (c.shape[1] - frame) // step + 1
    starts = np.arange(frames) * step
    chunks = c[:, starts[:, None] + np.arange(frame)[None, :]] * w  # (batch, frames, frame)
    onesided = bool(attrs.get("onesided", 1))
    if onesided and (signal.shape[-1] == 2 or (window is not None and np.asarray(window).ndim == 2)):
        raise ValueError("STFT: onesided output needs a real signal and window")
    y = np.fft.fft(chunks, axis=-1)
    if onesided:
        y = y[..., : frame // 2 + 1]
    return [_from_complex(y, signal.dtype)]


# --------------------------------------------------------------------------- windows


def _window(inputs: Inputs, attrs: Attrs, coefficients: list[float]) -> list[np.ndarray]:
    """``sum_k (-1)^k a_k cos(2 pi k n / N)`` with ``N = size`` if periodic else ``size - 1``."""
    size = int(_scalar(_req(inputs, 0)))
    periodic = bool(attrs.get("periodic", 1))
    denominator = size if periodic else size - 1
    n = np.arange(size, dtype=np.float64)
    phase = 2 * np.pi * n / denominator if denominator > 0 else np.zeros(size)
    w = np.zeros(size)
    for k, a in enumerate(coefficients):
        w += (-1) ** k * a * np.cos(k * phase)
    return [w.astype(onnx_dtype(attrs.get("output_datatype", 1)))]


@reference("HannWindow")
def hann_window_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return _window(inputs, attrs, [0.5, 0.5])


@reference("HammingWindow")
def hamming_window_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return _window(inputs, attrs, [25 / 46, 21 / 46])


@reference("BlackmanWindow")
def blackman_window_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return _window(inputs, attrs, [0.42, 0.5, 0.08])


# --------------------------------------------------------------------------- mel filter bank


def _mel(hz: np.ndarray | float) -> Any:
    return 2595 * np.log10(1 + np.asarray(hz, dtype=np.float64) / 700)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (np.power(10, mel / 2595) - 1)


@reference("MelWeightMatrix")
def mel_weight_matrix_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Triangular filters, peak 1, of ``[dft_length // 2 + 1, num_mel_bins]``.

    ``num_mel_bins + 2`` edges are spaced evenly on the mel scale from
    ``lower_edge_hertz`` with a step of ``(mel(upper) - mel(lower)) /
    (num_mel_bins + 2)`` and snapped down to spectrogram bins
    (``bin = floor((dft_length + 1) * hz / sample_rate)``); filter ``i`` rises
    linearly from edge ``i`` to 1 at edge ``i + 1`` and falls to 0 at edge
    ``i + 2``.  This bin snapping is what ONNX implementations compute.
    """
    bins_n, dft_length, rate = (int(_scalar(_req(inputs, i))) for i in range(3))
    lower, upper = float(_scalar(_req(inputs, 3))), float(_scalar(_req(inputs, 4)))
    spectrum = dft_length // 2 + 1
    low_mel, high_mel = _mel(lower), _mel(upper)
    step = (high_mel - low_mel) / (bins_n + 2)
    edges_hz = _hz(np.arange(bins_n + 2) * step + low_mel)
    edges = np.floor((dft_length + 1) * edges_hz / rate).astype(np.int64)
    out = np.zeros((spectrum, bins_n))
    j = np.arange(spectrum)
    for i in range(bins_n):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        if mid == lo:
            if 0 <= mid < spectrum:
                out[mid, i] = 1
        else:
            rising = (j >= lo) & (j <= mid)
            out[rising, i] = (j[rising] - lo) / (mid - lo)
        if hi > mid:
            falling = (j >= mid) & (j < hi)
            out[falling, i] = (hi - j[falling]) / (hi - mid)
    return [out.astype(onnx_dtype(attrs.get("output_datatype", 1)))]
