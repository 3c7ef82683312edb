"""fp16 weight storage with float32 islands, chosen by measuring on ncnn's runtime.

Rounding weights to float16 costs ~5e-4 relative per weight, which most models shrug
off; but a few layers (often early depthwise convolutions whose outputs later cancel,
as in PP-OCRv4 det) amplify it to a wrong output, which is what pnnx's fp16 storage
gives there.  So, where the ``ncnn`` package is importable, :func:`fp32_islands` runs
the model on deterministic random inputs: when all-float16 storage stays within
``budget`` of float32 storage nothing changes; otherwise it measures each weight
buffer's sensitivity (that buffer alone in float16) and keeps the most sensitive ones
in float32, the fewest that bring the error within budget (the search is
:func:`kiln.quant.islands.fewest_sensitive`, shared with TFLite).  Without ncnn every
buffer is stored in float16 and a warning says so.
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
from kiln.quant.islands import BUDGET, fewest_sensitive, output_error, report_islands

logger = logging.getLogger(__name__)



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
        islands = fewest_sensitive(tagged, lambda fp16: output_error(ref, run(mixed(fp16))), budget)
    report_islands([blobs[i].data.nbytes for i in islands], [blobs[i].data.nbytes for i in tagged], budget)
    return islands
