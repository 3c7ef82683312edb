"""fp16 weight storage with float32 islands, chosen by measuring on ncnn's runtime.

Rounding weights to float16 costs ~5e-4 relative per weight, which most models shrug
off; but a few layers (often early depthwise convolutions whose outputs later cancel,
as in PP-OCRv4 det) amplify it to a wrong output, which is what pnnx's fp16 storage
gives there.  So, where the ``ncnn`` package is importable, :func:`fp32_islands` runs
the model on deterministic random inputs: when all-float16 storage stays within
``budget`` of float32 storage nothing changes; otherwise it measures each weight
buffer's sensitivity (that buffer alone in float16) and keeps the most sensitive ones
in float32, the fewest that bring the error within budget.  Without ncnn every buffer
is stored in float16 and a warning says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kiln.codegen.ncnn.lower import Lowered
from kiln.codegen.ncnn.param import param_text
from kiln.codegen.ncnn.weights import encode

logger = logging.getLogger(__name__)

BUDGET = 1e-3  # max relative output error of fp16 storage against fp32 storage, on random inputs


def _runner(lowered: Lowered, folder: Path) -> Callable[[list[bytes]], list[np.ndarray]]:
    import ncnn

    param = folder / "m.param"
    param.write_text(param_text(lowered.layers, lowered.blob_count))
    rng = np.random.default_rng(0)
    samples = [np.ascontiguousarray(rng.standard_normal(io.shape[1:]).astype(np.float32)) for io in lowered.inputs]

    def run(buffers: list[bytes]) -> list[np.ndarray]:
        weights = folder / "m.bin"
        weights.write_bytes(b"".join(buffers))
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = 1
        for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(net.opt, flag, False)
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise RuntimeError("ncnn could not load the model")
        ex = net.create_extractor()
        for io, sample in zip(lowered.inputs, samples):
            ex.input(io.blob, ncnn.Mat(sample).clone())
        outs = []
        for io in lowered.outputs:
            ret, mat = ex.extract(io.blob)
            if ret != 0:
                raise RuntimeError(f"ncnn failed extracting {io.blob}")
            outs.append(np.array(mat, dtype=np.float32))
        return outs

    return run


def _error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(ref, got))


def fp32_islands(lowered: Lowered, budget: float = BUDGET) -> set[int]:
    """Indices (into the flat weight-buffer list) of tagged buffers to keep in float32."""
    blobs = [b for layer in lowered.layers for b in layer.weights]
    tagged = [i for i, b in enumerate(blobs) if b.tagged and b.data.dtype != np.int8]
    if not tagged:
        return set()
    try:
        import ncnn  # noqa: F401
    except ImportError:
        logger.warning("ncnn is not importable: storing every weight in float16 without checking its error")
        return set()
    full = [encode(b, False) for b in blobs]
    half = {i: encode(blobs[i], True) for i in tagged}

    def mixed(fp16: set[int]) -> list[bytes]:
        return [half[i] if i in fp16 else full[i] for i in range(len(blobs))]

    with tempfile.TemporaryDirectory(prefix="kiln-ncnn-fp16-") as tmp:
        run = _runner(lowered, Path(tmp))
        ref = run(full)
        if _error(ref, run(mixed(set(tagged)))) <= budget:
            return set()
        sensitivity = sorted(((_error(ref, run(mixed({i}))), i) for i in tagged), key=lambda t: (-t[0], t[1]))
        order = [i for _, i in sensitivity]

        def within(count: int) -> bool:
            return _error(ref, run(mixed(set(order[count:])))) <= budget

        # Doubling, then bisection: the fewest most-sensitive buffers kept in float32.
        high = 1
        while high < len(order) and not within(high):
            high *= 2
        high = min(high, len(order))
        low = high // 2
        while high - low > 1:
            mid = (low + high) // 2
            if within(mid):
                high = mid
            else:
                low = mid
        islands = set(order[:high])
    logger.info("fp16 storage: %d of %d weight buffers kept in float32", len(islands), len(tagged))
    return islands
