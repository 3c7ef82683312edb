"""The ncnn bridge: runs a kiln ``.param``/``.bin`` on ncnn's own runtime (the ``ncnn`` pip package).

``run("out/model.param", {"x": nchw_array})`` feeds inputs keyed by their ONNX names in
ONNX layout (batch included) and returns outputs keyed by ONNX names in ONNX shape.  The
``<stem>.ncnn.json`` beside the param maps the names and shapes (ncnn blobs have no
batch dim).  Float16 storage/arithmetic is off by default so fp32 artifacts are checked
in fp32; ``threads`` sets ncnn's thread count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from kiln.errors import KilnError, ModelLoadError, UsageError

MAP_SUFFIX = ".ncnn.json"


def _paths(artifact: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    param = Path(artifact)
    stem = param.name[: -len(".param")] if param.name.endswith(".param") else param.stem
    return param, param.with_name(stem + ".bin"), param.with_name(stem + MAP_SUFFIX)


def load_map(artifact: str | os.PathLike[str]) -> dict[str, Any]:
    """The ONNX <-> ncnn name map written beside ``artifact``."""
    _, _, map_path = _paths(artifact)
    try:
        return json.loads(map_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the ncnn name map {map_path.name}: {exc}", file=os.fspath(artifact)) from exc


def load_net(artifact: str | os.PathLike[str], threads: int = 1, fp16: bool = False) -> Any:
    """An ``ncnn.Net`` with the param and weights loaded (CPU)."""
    import ncnn

    param, weights, _ = _paths(artifact)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = int(threads)
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                 "use_bf16_packed"):
        if hasattr(net.opt, flag):
            setattr(net.opt, flag, bool(fp16))
    if not param.is_file():
        raise UsageError(f"no such file: {param}")
    if net.load_param(os.fspath(param)) != 0:
        raise ModelLoadError("ncnn cannot load the param file", file=os.fspath(param))
    if net.load_model(os.fspath(weights)) != 0:
        raise ModelLoadError(f"ncnn cannot load the weights {weights.name}", file=os.fspath(param))
    return net


def _feed(array: np.ndarray, item: Mapping[str, Any], artifact: str | os.PathLike[str]) -> np.ndarray:
    """The float32 array ncnn's blob gets: the values, or for ``"feed": "int32"`` (Embed's word ids) the
    int32 bit patterns in a float32 array."""
    if item.get("feed") == "int32":
        if array.dtype.kind not in "iub":
            raise UsageError(f"input {item['name']!r} holds ids: expected integers, got {array.dtype}",
                             file=os.fspath(artifact))
        if array.size and (array.min() < -(2**31) or array.max() >= 2**31):
            raise UsageError(f"input {item['name']!r}: ids beyond int32", file=os.fspath(artifact))
        return np.ascontiguousarray(array.astype(np.int32)).view(np.float32)
    if array.dtype.kind in "iu" and array.size and np.abs(array).max() > 2**24:
        raise UsageError(f"input {item['name']!r}: integers beyond 2**24 are not exact in ncnn's float blobs",
                         file=os.fspath(artifact))
    return array.astype(np.float32)


def run(artifact: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], *, threads: int = 1,
        fp16: bool = False, net: Any = None) -> dict[str, np.ndarray]:
    """Runs the model once; outputs by ONNX name in ONNX shape."""
    import ncnn

    io = load_map(artifact)
    net = net if net is not None else load_net(artifact, threads, fp16)
    ex = net.create_extractor()
    keep = []  # ncnn.Mat borrows the numpy buffer: keep each alive until extraction ends
    for item in io["inputs"]:
        if item["name"] not in inputs:
            raise UsageError(f"no value for input {item['name']!r}", file=os.fspath(artifact))
        array = _feed(np.asarray(inputs[item["name"]]), item, artifact)
        if tuple(array.shape) != tuple(item["shape"]):
            raise UsageError(f"input {item['name']!r} has shape {array.shape}; the ncnn model was compiled for "
                             f"{tuple(item['shape'])}", file=os.fspath(artifact))
        # ncnn blobs have no batch dim: feed the one sample.
        sample = np.ascontiguousarray(array[0])
        keep.append(sample)
        # The wrapping Mat borrows numpy's buffer with an unaligned channel step; ncnn's
        # in-place layers may write the input, so hand it an owned, aligned copy.
        ex.input(item["blob"], ncnn.Mat(sample).clone())
    results: dict[str, np.ndarray] = {}
    for item in io["outputs"]:
        ret, mat = ex.extract(item["blob"])
        if ret != 0:
            raise KilnError(f"ncnn failed extracting {item['blob']!r} (error {ret})", file=os.fspath(artifact))
        value = np.array(mat, dtype=np.float32)
        shape = tuple(item["shape"])
        if value.size != int(np.prod(shape)):
            raise KilnError(f"ncnn output {item['blob']!r} has shape {value.shape}, expected {shape[1:]}",
                            file=os.fspath(artifact))
        results[item["name"]] = value.reshape(shape)
    return results
