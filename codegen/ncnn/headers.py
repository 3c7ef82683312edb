"""C header forms of a model, as ncnn's ``ncnn2mem`` writes them.

``<stem>.id.h`` names every layer and blob index (``<stem>_param_id::LAYER_conv1``,
``BLOB_data``) for ``Net::load_param(const unsigned char*)`` users who extract by index;
``<stem>.mem.h`` embeds the binary param and the weights as byte arrays.
"""

from __future__ import annotations

import re

from kiln.codegen.ncnn.param import Layer, fresh_name

_NOT_C = re.compile(r"[^A-Za-z0-9_]")


def c_name(text: str) -> str:
    """A C identifier from any text (used for the stem and for layer/blob names)."""
    name = _NOT_C.sub("_", text)
    return name if name and not name[0].isdigit() else f"_{name}"


def id_header(stem: str, layers: list[Layer]) -> str:
    ident = c_name(stem)
    lines = [f"#ifndef NCNN_INCLUDE_GUARD_{ident}_id_h", f"#define NCNN_INCLUDE_GUARD_{ident}_id_h",
             f"namespace {ident}_param_id {{"]
    seen: set[str] = set()

    blob_index: dict[str, int] = {}
    for i, layer in enumerate(layers):
        lines.append(f"const int {fresh_name('LAYER_' + c_name(layer.name), seen)} = {i};")
        for top in layer.outputs:
            if top not in blob_index:
                blob_index[top] = len(blob_index)
                lines.append(f"const int {fresh_name('BLOB_' + c_name(top), seen)} = {blob_index[top]};")
    lines += [f"}} // namespace {ident}_param_id", f"#endif // NCNN_INCLUDE_GUARD_{ident}_id_h", ""]
    return "\n".join(lines)


def _bytes_array(name: str, data: bytes) -> list[str]:
    lines = [f"static const unsigned char {name}[] = {{"]
    for start in range(0, len(data), 16):
        lines.append(",".join(f"0x{b:02x}" for b in data[start:start + 16]) + ",")
    lines.append("};")
    return lines


def mem_header(stem: str, param_bin: bytes, weights: bytes) -> str:
    ident = c_name(stem)
    lines = [f"#ifndef NCNN_INCLUDE_GUARD_{ident}_mem_h", f"#define NCNN_INCLUDE_GUARD_{ident}_mem_h"]
    lines += _bytes_array(f"{ident}_param_bin", param_bin)
    lines += _bytes_array(f"{ident}_bin", weights)
    lines += [f"#endif // NCNN_INCLUDE_GUARD_{ident}_mem_h", ""]
    return "\n".join(lines)
