"""The onnxruntime bridge (CPU): the reference every other runtime is compared with.

``run(model, inputs)`` runs an ONNX model given as a path, serialized bytes or
a ``ModelProto``; ``random_inputs(model, seed, input_shapes)`` makes the
deterministic inputs ``kiln verify`` feeds both sides.

Sessions on kiln's own graphs (calibration, the int8 report, the sensitivity
searches) hand onnxruntime the large weights as the graph's arrays, read in
place (:func:`detach_initializers`, ``session(..., initializers=...)``):
serializing 100 MB of weights into a protobuf and parsing them back costs more
than a small model's whole calibration run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError, ModelLoadError, UsageError

logger = logging.getLogger(__name__)

# Integer inputs are often indices or token ids: keep them small and valid.
_INT_HIGH = 8


def _describe(model: Any) -> str | None:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


IN_MEMORY = "kiln-in-memory"
"""The external-data location of an initializer whose bytes onnxruntime gets as an array instead."""

IN_MEMORY_MIN_BYTES = 1 << 16
"""Smaller initializers stay in the protobuf (the bookkeeping would cost more than their bytes)."""


def constant_arrays(graph: Any) -> dict[str, np.ndarray]:
    """The root graph's constants by value name: the arrays ``to_onnx`` writes as its initializers."""
    arrays: dict[str, np.ndarray] = {}
    for v in graph.value_by_name().values():
        if v.const is not None and v.producer is None and v.graph is graph:
            arrays[v.name] = np.asarray(v.const.numpy())
    return arrays


def detach_initializers(proto: Any, arrays: Mapping[str, np.ndarray],
                        min_bytes: int = IN_MEMORY_MIN_BYTES) -> dict[str, np.ndarray]:
    """Turns every root initializer of ``proto`` that ``arrays`` holds (same element type and shape, at
    least ``min_bytes``) into an in-memory reference: its bytes leave the protobuf, and ``session`` hands
    onnxruntime the array.  In place; returns the detached arrays by name."""
    from onnx import TensorProto, helper

    detached: dict[str, np.ndarray] = {}
    for init in proto.graph.initializer:
        arr = arrays.get(init.name)
        if arr is None or arr.nbytes < min_bytes or init.data_location == TensorProto.EXTERNAL:
            continue
        if (init.data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or not arr.flags.c_contiguous
                or arr.dtype != helper.tensor_dtype_to_np_dtype(init.data_type)
                or arr.dtype.byteorder == ">" or tuple(arr.shape) != tuple(init.dims)):
            continue
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(field)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", IN_MEMORY), ("length", str(arr.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        detached[init.name] = arr
    return detached


def in_memory_names(proto: Any) -> list[str]:
    """The root initializers of ``proto`` that :func:`detach_initializers` left as in-memory references."""
    from onnx import TensorProto

    return [init.name for init in proto.graph.initializer
            if init.data_location == TensorProto.EXTERNAL
            and any(e.key == "location" and e.value == IN_MEMORY for e in init.external_data)]


def _names_read(graph: Any) -> set[str]:
    """Every value name a node of ``graph`` or of its subgraphs reads, and the graph's outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub)
    return names


def _with_arrays(model: Any, initializers: Mapping[str, np.ndarray] | None, options: Any) -> tuple[bytes, list[Any]]:
    """The bytes of a ``ModelProto`` whose detached initializers go to ``options`` as arrays, and what must
    stay alive while the session reads them."""
    import onnxruntime as ort

    names = in_memory_names(model)
    missing = [n for n in names if initializers is None or n not in initializers]
    if missing:
        raise KilnError(f"initializer {missing[0]!r} was detached from the model, but no array was given")
    if not names:
        return model.SerializeToString(), []
    assert initializers is not None
    read = _names_read(model.graph)
    unread = set(names) - read
    if unread:  # onnxruntime drops an unread initializer before it would take its array, then refuses the name
        from onnx import ModelProto

        copy = ModelProto()
        copy.CopyFrom(model)  # kilobytes: the detached weights have no bytes in it
        kept = [init for init in copy.graph.initializer if init.name not in unread]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(kept)
        model, names = copy, [n for n in names if n in read]
    values = [ort.OrtValue.ortvalue_from_numpy(initializers[n]) for n in names]
    if names:
        options.add_external_initializers(names, values)
    return model.SerializeToString(), values + [initializers[n] for n in names]


def session(model: Any, *, initializers: Mapping[str, np.ndarray] | None = None, options: Any = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU, quiet unless something fails.

    ``model`` is a path, serialized bytes or a ``ModelProto``; ``initializers``: the arrays of the
    initializers :func:`detach_initializers` took out of it (a ``ModelProto`` then: the names are read
    from it), which onnxruntime reads in place for the session's life.
    """
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    source: Any = model
    keep: list[Any] = []
    if isinstance(model, os.PathLike):
        source = os.fspath(model)
    elif not isinstance(model, (str, bytes)):
        source, keep = _with_arrays(model, initializers, options)
    try:
        sess = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load it: {_one_line(exc)}", file=_describe(model)) from exc
    sess._kiln_in_memory = keep  # onnxruntime reads these arrays in place: they live as long as the session
    return sess


def run(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``model`` (path, bytes or ModelProto) on ``inputs``; outputs by name.

    Inputs the model does not declare are ignored; a declared input missing
    from ``inputs`` is a :class:`UsageError`.
    """
    sess = session(model)
    feeds: dict[str, np.ndarray] = {}
    for meta in sess.get_inputs():
        if meta.name not in inputs:
            raise UsageError(f"no value for input {meta.name!r}", file=_describe(model))
        feeds[meta.name] = inputs[meta.name]
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feeds)
    except Exception as exc:
        raise KilnError(f"onnxruntime failed running it: {_one_line(exc)}", file=_describe(model)) from exc
    return dict(zip(names, (np.asarray(v) for v in values)))


def random_inputs(
    model: Any,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int | str, ...]] | None = None,
    *,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic inputs of the right dtype and shape for every graph input.

    Floats are standard normal, integers uniform in [0, 8), bools fair coins,
    all from ``numpy.random.default_rng(seed)`` in input order.  A dim that is
    symbolic or unknown takes its size from ``input_shapes`` (per input name;
    a symbol bound there binds it everywhere), else 1; each such default is
    reported in ``notes`` so the caller can say so.

    Raises:
        ModelLoadError: the model cannot be read.
        UsageError: an input is not a tensor, has an unsupported dtype, or
            ``input_shapes`` names an unknown input or gives the wrong rank.
    """
    from kiln.ir.dtypes import DType

    graph = _load_proto(model).graph
    where = _describe(model)
    initializers = {init.name for init in graph.initializer}
    declared = [i for i in graph.input if i.name not in initializers]
    shapes = dict(input_shapes or {})
    unknown = sorted(set(shapes) - {i.name for i in declared})
    if unknown:
        names = ", ".join(i.name for i in declared) or "none"
        raise UsageError(f"--input-shape names {unknown[0]!r}, which is not an input (inputs: {names})", file=where)

    model_dims: dict[str, list[int | str | None]] = {}
    for info in declared:
        if not info.type.HasField("tensor_type"):
            raise UsageError(f"input {info.name!r} is not a tensor; pass its value with --inputs", file=where)
        tt = info.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim if tt.HasField("shape") else ():
            # Exporters also write -1 or a "?" symbol (Paddle) for a dim they do not know.
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            else:
                dims.append(d.dim_param if d.dim_param.isidentifier() else None)
        model_dims[info.name] = dims

    # Bind symbols from the overrides first, so one --input-shape sizes every input sharing N.
    symbols: dict[str, int] = {}
    for name, override in shapes.items():
        dims = model_dims[name]
        if dims and len(override) != len(dims):
            raise UsageError(f"--input-shape {name}: {len(override)} dims given, the input has rank {len(dims)}", file=where)
        for model_dim, size in zip(dims, override):
            if isinstance(model_dim, str) and isinstance(size, int):
                symbols.setdefault(model_dim, size)

    rng = np.random.default_rng(seed)
    result: dict[str, np.ndarray] = {}
    for info in declared:
        elem = info.type.tensor_type.elem_type
        try:
            dtype = DType(elem)
            np_dtype = np.dtype(dtype.numpy)
        except (ValueError, TypeError):
            raise UsageError(f"input {info.name!r} has element type {elem}, which has no numpy form; pass it with --inputs", file=where) from None
        given = shapes.get(info.name)
        concrete = _concrete_shape(info.name, model_dims[info.name], given, symbols, notes)
        result[info.name] = _random_array(rng, np_dtype, concrete, info.name, where)
    return result


def _concrete_shape(
    name: str,
    dims: list[int | str | None],
    given: tuple[int | str, ...] | None,
    symbols: dict[str, int],
    notes: list[str] | None,
) -> tuple[int, ...]:
    wanted: list[int | str | None] = list(given) if given is not None else dims
    out: list[int] = []
    for axis, dim in enumerate(wanted):
        if isinstance(dim, int):
            out.append(dim)
            continue
        if isinstance(dim, str) and dim in symbols:
            out.append(symbols[dim])
            continue
        label = f"symbolic ({dim!r})" if isinstance(dim, str) else "unknown"
        if notes is not None:
            notes.append(f"input {name!r} dim {axis} is {label}; using 1 (set it with --input-shape {name}:...)")
        if isinstance(dim, str):
            symbols[dim] = 1
        out.append(1)
    return tuple(out)


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], name: str, where: str | None) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, _INT_HIGH, size=shape).astype(dtype)
    if dtype.kind in "fV" or dtype.name in ("bfloat16",):
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    raise UsageError(f"input {name!r} has dtype {dtype}; random values of it are not supported, pass it with --inputs", file=where)


def _load_proto(model: Any) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    where = _describe(model)
    try:
        if isinstance(model, bytes):
            return onnx.load_model_from_string(model)
        return onnx.load_model(os.fspath(Path(model)), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"not a readable ONNX model: {_one_line(exc)}", file=where) from exc
