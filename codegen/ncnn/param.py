"""ncnn layers in memory, and the two ``.param`` writers (text and binary).

A :class:`Layer` is one line of the text form: ``Type name nin nout in... out... k=v ...``.
Param keys are ncnn's ids (0..31); a list value is an array (key ``-23300 - id`` in the
binary form, ``id=n,v,v`` spelled ``-23300-id=n,v,...`` in text, which every ncnn reads).
Weights are kept as :class:`kiln.codegen.ncnn.weights.Blob` entries in the order the
layer's ``load_model`` reads them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kiln.codegen.ncnn.weights import Blob

MAGIC = 7767517

ParamValue = int | float | list[int] | list[float]


@dataclass
class Layer:
    """One ncnn layer: type, unique name, bottom/top blob names, params and weights."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue] = field(default_factory=dict)
    weights: list[Blob] = field(default_factory=list)


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2`` ... the first not in ``taken``; adds it to ``taken``."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _float_text(v: float) -> str:
    # repr-style shortest round-trip text, always with a '.' or 'e' so ncnn parses a float.
    text = repr(float(v))
    if text in ("inf", "-inf", "nan"):
        raise ValueError(f"ncnn params cannot hold {text}")
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _is_float_list(value: list) -> bool:
    return any(isinstance(x, float) for x in value)


def _value_text(value: ParamValue) -> str:
    if isinstance(value, list):
        if _is_float_list(value):
            items = [_float_text(x) for x in value]
        else:
            items = [str(int(x)) for x in value]
        return ",".join([str(len(value))] + items)
    if isinstance(value, float):
        return _float_text(value)
    return str(int(value))


def param_text(layers: list[Layer], blob_count: int) -> str:
    """The text ``.param``: magic, counts, one line per layer."""
    lines = [str(MAGIC), f"{len(layers)} {blob_count}"]
    for layer in layers:
        parts = [f"{layer.type:<24}", f"{layer.name:<24}", str(len(layer.inputs)), str(len(layer.outputs))]
        parts += layer.inputs + layer.outputs
        for key in sorted(layer.params):
            value = layer.params[key]
            id_text = str(-23300 - key) if isinstance(value, list) else str(key)
            parts.append(f"{id_text}={_value_text(value)}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def param_binary(layers: list[Layer], blob_count: int, type_index: dict[str, int]) -> bytes:
    """The binary ``.param.bin``: ints for names (blob indices), typed param values.

    Layout (ncnn ``Net::load_param_bin``): magic, layer count, blob count; per layer the
    type index, input and output counts, the input then output blob indices, then the
    params as ``id, value`` (arrays: ``-23300-id, n, values``), closed by ``-233``.
    """
    blob_index: dict[str, int] = {}
    for layer in layers:
        for name in layer.outputs:
            blob_index.setdefault(name, len(blob_index))
    out = [struct.pack("<iii", MAGIC, len(layers), blob_count)]
    for layer in layers:
        if layer.type not in type_index:
            raise ValueError(f"ncnn layer type {layer.type} has no index for the binary param form")
        out.append(struct.pack("<iii", type_index[layer.type], len(layer.inputs), len(layer.outputs)))
        out.append(struct.pack(f"<{len(layer.inputs)}i", *(blob_index[n] for n in layer.inputs)))
        out.append(struct.pack(f"<{len(layer.outputs)}i", *(blob_index[n] for n in layer.outputs)))
        for key in sorted(layer.params):
            value = layer.params[key]
            if isinstance(value, list):
                code = "f" if _is_float_list(value) else "i"
                out.append(struct.pack(f"<ii{len(value)}{code}", -23300 - key, len(value), *value))
            elif isinstance(value, float):
                out.append(struct.pack("<if", key, value))
            else:
                out.append(struct.pack("<ii", key, int(value)))
        out.append(struct.pack("<i", -233))
    return b"".join(out)
