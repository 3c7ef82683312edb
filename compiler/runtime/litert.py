"""The LiteRT bridge: runs a ``.tflite`` file as if it were the ONNX model it came from.

``run(path, inputs)`` takes inputs keyed by ONNX input names in ONNX layout and
returns outputs keyed by ONNX output names in ONNX layout.  What it undoes:

- names: the "serving_default" SignatureDef maps ONNX names to tensors;
- layout: metadata ``kiln_io_layout`` (JSON, ONNX name -> ``{"perm": [...]}``, the
  permutation from the ONNX layout to the tensor's) transposes an input by ``perm``
  and an output by its inverse;
- precision: int8/uint8/int16 I/O tensors with quantization parameters take float
  inputs quantized with them and give dequantized float32 outputs; other dtype
  differences (float64 -> float32, int64 -> int32) are casts.

``session(path, num_threads)`` loads once for repeated runs (benchmarks).  LiteRT's
default delegate (XNNPACK) runs the model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kiln.errors import KilnError, ModelLoadError, UsageError

logger = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"
LAYOUT_METADATA = "kiln_io_layout"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def read_metadata(data: bytes, file: str | None = None) -> dict[str, bytes]:
    """The Model.metadata entries of a TFLite flatbuffer: name -> buffer bytes."""
    from ai_edge_litert import schema_py_generated as fb

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError("not a TFLite flatbuffer (no TFL3 identifier)", file=file)
    try:
        model = fb.Model.GetRootAs(data, 0)
        result: dict[str, bytes] = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            buffer = model.Buffers(entry.Buffer())
            if buffer.DataLength():
                raw = buffer.DataAsNumpy().tobytes()
            else:  # data stored after the flatbuffer (models over 2 GB)
                raw = bytes(data[buffer.Offset() : buffer.Offset() + buffer.Size()])
            result[entry.Name().decode("utf-8")] = raw
        return result
    except Exception as exc:
        raise ModelLoadError(f"malformed TFLite flatbuffer: {_one_line(exc)}", file=file) from exc


def _signature_order(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """Position of each input and output name in the "serving_default" SignatureDef."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        if sig.SignatureKey() == SIGNATURE_KEY.encode():
            ins = {sig.Inputs(k).Name().decode("utf-8"): k for k in range(sig.InputsLength())}
            outs = {sig.Outputs(k).Name().decode("utf-8"): k for k in range(sig.OutputsLength())}
            return ins, outs
    return {}, {}


@dataclass
class _Port:
    """One signature input or output: its tensor, dtype, quantization and layout."""

    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]
    signature: tuple[int, ...]
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    axis: int
    perm: tuple[int, ...] | None

    @classmethod
    def from_details(cls, name: str, details: Mapping[str, Any], perm: tuple[int, ...] | None) -> _Port:
        q = details.get("quantization_parameters") or {}
        scales = np.asarray(q.get("scales", ()), dtype=np.float32)
        quantized = scales.size > 0 and np.dtype(details["dtype"]).kind in "iu"
        return cls(
            name=name,
            index=int(details["index"]),
            dtype=np.dtype(details["dtype"]),
            shape=tuple(int(d) for d in details["shape"]),
            signature=tuple(int(d) for d in details.get("shape_signature", details["shape"])),
            scale=scales if quantized else None,
            zero_point=np.asarray(q.get("zero_points", ()), dtype=np.int64) if quantized else None,
            axis=int(q.get("quantized_dimension", 0)),
            perm=perm,
        )

    def _broadcast(self, values: np.ndarray, ndim: int) -> np.ndarray:
        # Per-channel parameters line up with `axis`; per-tensor ones broadcast as they are.
        if values.size == 1:
            return values.reshape(())
        shape = [1] * ndim
        shape[self.axis] = values.size
        return values.reshape(shape)

    def quantize(self, value: np.ndarray) -> np.ndarray:
        assert self.scale is not None and self.zero_point is not None
        info = np.iinfo(self.dtype)
        scale = self._broadcast(self.scale, value.ndim)
        zero = self._broadcast(self.zero_point, value.ndim)
        q = np.round(value.astype(np.float32) / scale) + zero
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, value: np.ndarray) -> np.ndarray:
        assert self.scale is not None and self.zero_point is not None
        scale = self._broadcast(self.scale, value.ndim)
        zero = self._broadcast(self.zero_point, value.ndim)
        return ((value.astype(np.int64) - zero) * scale).astype(np.float32)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


class Session:
    """A loaded ``.tflite`` file, ready to run many times on LiteRT."""

    def __init__(self, path: str | os.PathLike[str], num_threads: int = 1):
        self.path = os.fspath(path)
        file = self.path
        if not os.path.isfile(file):
            raise UsageError("no such file", file=file)
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read it: {_one_line(exc)}", file=file) from exc
        metadata = read_metadata(data, file)
        layout = _layout(metadata.get(LAYOUT_METADATA), file)

        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=file, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"LiteRT cannot load it: {_one_line(exc)}", file=file) from exc
        it = self.interpreter
        if SIGNATURE_KEY in it.get_signature_list():
            runner = it.get_signature_runner(SIGNATURE_KEY)
            # Keyed by signature (ONNX) name; the tensor's own name may differ.
            # LiteRT lists them by name; keep the order the file declares (the ONNX order).
            order_in, order_out = _signature_order(data)
            ins = sorted(runner.get_input_details().items(), key=lambda kv: order_in.get(kv[0], 0))
            outs = sorted(runner.get_output_details().items(), key=lambda kv: order_out.get(kv[0], 0))
        else:
            ins = [(d["name"], d) for d in it.get_input_details()]
            outs = [(d["name"], d) for d in it.get_output_details()]
        self.inputs = [_Port.from_details(n, d, layout.get(n)) for n, d in ins]
        self.outputs = [_Port.from_details(n, d, layout.get(n)) for n, d in outs]
        for port in self.inputs + self.outputs:
            if port.perm is not None and len(port.perm) != len(port.shape):
                raise ModelLoadError(f"{LAYOUT_METADATA}: {port.name!r} has rank {len(port.shape)}, "
                                     f"its perm {list(port.perm)} has {len(port.perm)} axes", file=file)

    @property
    def input_names(self) -> list[str]:
        return [p.name for p in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [p.name for p in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs once; ``inputs`` by ONNX name in ONNX layout, outputs likewise.

        Inputs the model does not declare are ignored; a missing one, or one of
        the wrong rank or a shape the model cannot take, is a :class:`UsageError`.
        """
        it = self.interpreter
        feeds = [(port, self._prepare(port, inputs)) for port in self.inputs]
        resized = False
        for port, value in feeds:
            if value.shape != port.shape:
                it.resize_tensor_input(port.index, list(value.shape), strict=True)
                port.shape = value.shape
                resized = True
        try:
            if resized:
                it.allocate_tensors()
            for port, value in feeds:
                it.set_tensor(port.index, value)
            it.invoke()
        except Exception as exc:
            raise KilnError(f"LiteRT failed running it: {_one_line(exc)}", file=self.path) from exc
        return {port.name: self._finish(port, it.get_tensor(port.index)) for port in self.outputs}

    def _prepare(self, port: _Port, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if port.name not in inputs:
            raise UsageError(f"no value for input {port.name!r}", file=self.path)
        value = np.asarray(inputs[port.name])
        if value.ndim != len(port.signature):
            raise UsageError(f"input {port.name!r} has rank {value.ndim}, the model takes rank "
                             f"{len(port.signature)}", file=self.path)
        if port.perm is not None:
            value = value.transpose(port.perm)
        if any(s >= 0 and d != s for d, s in zip(value.shape, port.signature)):
            back = _inverse(port.perm) if port.perm is not None else tuple(range(value.ndim))
            want = tuple(port.signature[i] for i in back)
            given = tuple(value.shape[i] for i in back)
            raise UsageError(f"input {port.name!r} has shape {list(given)}, the model takes {list(want)}",
                             file=self.path)
        if port.scale is not None and value.dtype.kind == "f":
            value = port.quantize(value)
        elif value.dtype != port.dtype:
            value = value.astype(port.dtype)
        return np.ascontiguousarray(value)

    @staticmethod
    def _finish(port: _Port, value: np.ndarray) -> np.ndarray:
        if port.scale is not None:
            value = port.dequantize(value)
        if port.perm is not None:
            value = value.transpose(_inverse(port.perm))
        return np.ascontiguousarray(value)


def _layout(raw: bytes | None, file: str) -> dict[str, tuple[int, ...]]:
    if raw is None:
        return {}
    try:
        table = json.loads(raw.decode("utf-8"))
        result = {}
        for name, entry in table.items():
            perm = tuple(int(i) for i in entry["perm"])
            if sorted(perm) != list(range(len(perm))):
                raise ValueError(f"{name!r}: {list(perm)} is not a permutation")
            result[str(name)] = perm
        return result
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"bad {LAYOUT_METADATA} metadata: {_one_line(exc)}", file=file) from exc


def session(path: str | os.PathLike[str], num_threads: int = 1) -> Session:
    """Loads ``path`` on LiteRT (XNNPACK, ``num_threads`` threads) for repeated :meth:`Session.run`."""
    return Session(path, num_threads)


def run(
    path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], num_threads: int = 1
) -> dict[str, np.ndarray]:
    """Runs the ``.tflite`` file at ``path``; inputs and outputs by ONNX name, in ONNX layout."""
    return session(path, num_threads).run(inputs)
