"""The ``.bin`` weight file: each buffer as ncnn's ``ModelBin::load`` reads it.

A buffer read with type 0 (conv/fc weights, MemoryData-free layers' main weight)
starts with a 4-byte storage tag: ``0`` float32, ``0x01306B47`` float16, ``0x000D4B38``
int8 (what ``ncnn2int8`` writes); one read with type 1 (biases, scales, norms) is raw
float32 with no tag.  Every buffer is padded with zeros to a multiple of 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAG_FP32 = 0
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38


@dataclass
class Blob:
    """One weight buffer: the data and whether ncnn reads it with a storage tag (type 0)."""

    data: np.ndarray
    tagged: bool = False


def _pad4(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def encode(blob: Blob, fp16: bool) -> bytes:
    """The bytes of one buffer; ``fp16`` stores tagged float buffers as float16."""
    data = np.ascontiguousarray(blob.data).reshape(-1)
    if not blob.tagged:
        return _pad4(data.astype("<f4").tobytes())
    if data.dtype == np.int8:
        return _pad4(np.uint32(TAG_INT8).astype("<u4").tobytes() + data.tobytes())
    values = data.astype(np.float32)
    if fp16:
        # Values beyond float16's range would become inf; clip them as a converter must.
        half = np.clip(values, -65504.0, 65504.0).astype("<f2")
        return _pad4(np.uint32(TAG_FP16).astype("<u4").tobytes() + half.tobytes())
    # Denormals are flushed to zero, as ncnn's own writer does (they are slow on many CPUs).
    tiny = np.abs(values) < np.finfo(np.float32).tiny
    values = np.where(tiny, np.float32(0), values).astype("<f4")
    return np.uint32(TAG_FP32).astype("<u4").tobytes() + values.tobytes()


def model_bin(blobs: list[Blob], fp16: bool, keep_fp32: set[int] | frozenset[int] = frozenset()) -> bytes:
    """All buffers concatenated, in the order the layers read them; ``keep_fp32`` indexes
    buffers stored in float32 even when ``fp16`` is set."""
    return b"".join(encode(b, fp16 and i not in keep_fp32) for i, b in enumerate(blobs))
