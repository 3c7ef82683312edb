"""Statistics of constants: what ``kiln inspect`` shows and quantization starts from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir.tensor import Tensor
from kiln.kernels import per_channel_absmax


@dataclass(frozen=True)
class ConstantStats:
    """Range facts of one constant."""

    numel: int
    absmax: float
    channel_absmax_min: float
    channel_absmax_max: float
    zero_channels: int
    """Channels (along axis 0) that are all zeros: a pruning or export smell."""


def constant_stats(tensor: Tensor, channel_axis: int = 0) -> ConstantStats | None:
    """Per-channel |x| statistics of a numeric constant, ``None`` for strings/empty."""
    arr = tensor.numpy()
    if arr.dtype == object or arr.size == 0 or arr.dtype.kind not in "fiub":
        return None
    if arr.dtype.kind == "b" or arr.dtype.itemsize < 1 or arr.dtype.kind == "V":
        arr = arr.astype(np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 2 and arr.dtype != np.float16:
        arr = arr.astype(np.float32)  # bfloat16 and friends
    per_channel = per_channel_absmax(arr, channel_axis if arr.ndim else 0)
    return ConstantStats(
        numel=int(arr.size),
        absmax=float(per_channel.max()),
        channel_absmax_min=float(per_channel.min()),
        channel_absmax_max=float(per_channel.max()),
        zero_channels=int(np.count_nonzero(per_channel == 0)),
    )
