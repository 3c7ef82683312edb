"""Runs a serialized TensorRT engine (``.engine``): the bridge ``kiln verify`` uses.

    from kiln.runtime import tensorrt
    outputs = tensorrt.run("out/model.engine", {"x": x})   # ONNX names, NCHW numpy arrays

Needs the ``tensorrt`` package with its libraries and a CUDA GPU, and PyTorch
with CUDA for the device buffers (the usual companion of TensorRT's Python
API).  Where any of them is missing, :func:`run` raises a :class:`UsageError`
that says which.  Note that ``tensorrt-stubs`` alone installs an importable,
empty ``tensorrt`` namespace; :func:`unavailable_reason` tells it apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from kiln.errors import UsageError


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UsageError(f"TensorRT is not installed ({exc}); an .engine runs only where it is") from None
    if not hasattr(trt, "Builder"):
        raise UsageError("the installed 'tensorrt' has no libraries (only type stubs?); "
                         "install TensorRT to run an .engine")
    return trt


def unavailable_reason() -> str | None:
    """Why no engine can be built or run here (``None`` when TensorRT and a GPU are present)."""
    try:
        trt = _import_tensorrt()
    except UsageError as exc:
        return exc.message
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError without a CUDA device
        return f"TensorRT cannot start a builder: {exc}"
    if builder is None:
        return "TensorRT found no CUDA GPU"
    return None


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError("running a TensorRT engine needs PyTorch with CUDA for its device buffers") from None
    if not torch.cuda.is_available():
        raise UsageError("running a TensorRT engine needs a CUDA GPU; torch.cuda finds none")
    return torch


def run(artifact: str | os.PathLike[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the engine once on ``inputs``; returns the outputs by name.

    Inputs are keyed by the ONNX input names in ONNX layout; dynamic inputs
    take their shapes from the arrays (within the engine's profile).
    """
    trt = _import_tensorrt()
    torch = _torch_cuda()
    path = os.fspath(artifact)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    if engine is None:
        raise UsageError(f"{path}: TensorRT cannot load this engine (another TensorRT version or GPU?)")
    context = engine.create_execution_context()
    buffers: dict[str, Any] = {}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            continue
        if name not in inputs:
            raise UsageError(f"{path}: no value given for the engine input {name!r}")
        array = np.ascontiguousarray(inputs[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
        context.set_input_shape(name, tuple(array.shape))
        buffers[name] = torch.from_numpy(array).cuda()
    outputs: list[str] = []
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            continue
        shape = tuple(context.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        buffers[name] = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")
        outputs.append(name)
    for name, buffer in buffers.items():
        context.set_tensor_address(name, buffer.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise UsageError(f"{path}: TensorRT failed to run the engine")
    stream.synchronize()
    return {name: buffers[name].cpu().numpy() for name in outputs}
