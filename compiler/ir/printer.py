"""Prints a graph in kiln's text form; ``kiln.ir.parser`` reads it back.

One statement per line, attributes sorted by name, large constants as
checksummed references::

    model(ir_version=8, producer_name="pytorch")
    graph @main(%x: f32[N,3,224,224]) -> (%y: f32[N,64,112,112])
        opsets(onnx=17, kiln=1) {
      %w = const f32[64,3,7,7] #sha1=1a2b3c4d
      %k = const i64[1] dense<[5]>
      %y: f32[N,64,112,112] = onnx.Conv(%x, %w, _) {pads=[3,3,3,3], strides=[2,2]} loc("m.onnx":0:"conv1")
      %v: f32[?], %i: i64[?] = onnx.TopK(%y, %k) {axis=-1} v=11
      return %y
    }

The grammar is in the parser's docstring.  What is printed: value names and
types, constants (inline ``dense<...>`` up to ``inline_limit`` elements, else
``#sha1=`` + ``Tensor.checksum()``), every node's op, version (only when it is
not the graph's opset for its domain), inputs, attributes, name (only when it
is not the location's name) and location; graph inputs, outputs and opsets; and
the model facts that differ from ``ModelInfo()``'s defaults; and a node
output's planned arena offset (``value.meta["arena_offset"]``, a non-negative
``int`` set by ``plan-memory``) as ``offset=N`` after its type::

      %y: f32[1,64,56,56] offset=802816 = onnx.Relu(%x)

Not printed: the rest of the ``meta`` dicts, doc strings of graphs,
``ModelInfo.source_path`` and ``ModelInfo.functions``.

Numbers print so that they parse back to the same bits: attribute floats with
``repr``; tensor floats with the shortest decimal that converts back to the
element type exactly (checked here with the parser's own conversion), and a
NaN other than the type's canonical one as its raw bits (``0x7fc00001``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from kiln.ir.core import Attr, AttrKind, Graph, Location, ModelInfo, Node, Value
from kiln.ir.dtypes import DType
from kiln.ir.tensor import Tensor
from kiln.ir.types import TensorType, format_type

DEFAULT_INLINE_LIMIT = 16
"""Constants with at most this many elements print inline by default."""

ARENA_OFFSET = "arena_offset"
"""``value.meta`` key of a node output's planned arena offset (``kiln.memory``), printed as ``offset=N``."""


class MissingTensorData(ValueError):
    """A constant parsed from a ``#sha1=`` reference has no data bound to it."""


# --------------------------------------------------------------------------- names and strings

_BARE_NAME = re.compile(r"[A-Za-z0-9_.]+").fullmatch
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").fullmatch
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*").fullmatch


def quote(text: str) -> str:
    """A double-quoted string with JSON escapes (non-ASCII kept when printable)."""
    if text.isprintable():
        if '"' not in text and "\\" not in text:
            return f'"{text}"'
        return json.dumps(text, ensure_ascii=False)
    return json.dumps(text)


def quote_bytes(data: bytes) -> str:
    """``b"..."``: printable ASCII as is, ``\\"`` and ``\\\\``, other bytes as ``\\xHH``."""
    out = []
    for c in data:
        if c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    return 'b"' + "".join(out) + '"'


def format_name(name: str) -> str:
    """A value or graph name without its sigil: bare when it can be, else quoted."""
    return name if _BARE_NAME(name) else quote(name)


def format_key(key: str) -> str:
    """An attribute or model-field key."""
    return key if _IDENT(key) else quote(key)


def format_domain(domain: str) -> str:
    """``onnx`` for the default domain; a custom domain bare when dotted identifiers, else quoted."""
    if domain == "":
        return "onnx"
    if domain != "onnx" and _DOTTED(domain):
        return domain
    return quote(domain)


def format_op(domain: str, op: str) -> str:
    """``onnx.Conv``, ``com.microsoft.FusedConv``, ``"my-domain"."my op"``."""
    return f"{format_domain(domain)}.{op if _IDENT(op) else quote(op)}"


def format_location(loc: Location) -> str:
    """``loc("m.onnx":3:"conv1")``, ``loc(fused["rule"]: [loc(...), ...])``; ``""`` when unknown."""
    if loc.fused_from or loc.rule is not None:
        rule = "" if loc.rule is None else f"[{quote(loc.rule)}]"
        site = ""
        if loc.file is not None or loc.index is not None or loc.name is not None:
            site = " " + _site(loc)
        inner = ", ".join(format_location(sub) or "loc(?:?:?)" for sub in loc.fused_from)
        return f"loc(fused{rule}{site}: [{inner}])"
    if loc.file is None and loc.index is None and loc.name is None:
        return ""
    return f"loc({_site(loc)})"


def _site(loc: Location) -> str:
    file = "?" if loc.file is None else quote(loc.file)
    index = "?" if loc.index is None else str(loc.index)
    name = "?" if loc.name is None else quote(loc.name)
    return f"{file}:{index}:{name}"


# --------------------------------------------------------------------------- tensor literals


def _uint_for(dt: np.dtype) -> np.dtype:
    return np.dtype(f"u{dt.itemsize}")


def floats_from_text(items: list[str], dt: np.dtype) -> np.ndarray:
    """Float elements from their text (the parser's conversion; ``0x..`` gives raw bits)."""
    hexes = [i for i, s in enumerate(items) if "x" in s]
    if hexes:
        items = list(items)
        raw = {i: int(items[i], 16) for i in hexes}
        for i in hexes:
            if items[i].startswith("-"):
                raise ValueError(f"raw float bits {items[i]!r} cannot be negative")
            items[i] = "0"
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.array([float(s) for s in items], dtype=np.float64).astype(dt)
    if hexes:
        bits = out.view(_uint_for(dt))
        limit = 1 << (8 * dt.itemsize)
        for i, b in raw.items():
            if b >= limit:
                raise ValueError(f"raw float bits {items[i]!r} do not fit {dt}")
            bits[i] = b
    return out


def _float_look(text: str) -> str:
    """Makes ``1`` read as a float (``1.0``); leaves ``1e-05``, ``inf``, ``nan`` alone."""
    if "." in text or "e" in text or "n" in text:
        return text
    return text + ".0"


def _float_items(flat: np.ndarray) -> list[str]:
    """Shortest text per element that converts back to exactly the same bits."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _float_texts(flat)


def _float_texts(flat: np.ndarray) -> list[str]:
    dt = flat.dtype
    n = flat.size
    if dt == np.float64:
        texts = [repr(x) for x in flat.tolist()]
    elif dt in (np.float32, np.float16):
        texts = [str(x) for x in flat]  # numpy's shortest round-trip repr (Dragon4)
    else:
        texts = [""] * n
        values = flat.astype(np.float64).tolist()  # exact: every narrow float is a double
        todo = list(range(n))
        for precision in range(1, 10):
            if not todo:
                break
            cands = [f"{values[i]:.{precision}g}" for i in todo]
            back = floats_from_text(cands, dt).view(_uint_for(dt))
            want = flat[todo].view(_uint_for(dt))
            rest = []
            for j, i in enumerate(todo):
                if back[j] == want[j]:
                    texts[i] = cands[j]
                else:
                    rest.append(i)
            todo = rest
        for i in todo:
            texts[i] = repr(values[i])
    texts = [_float_look(t) for t in texts]
    bits = flat.view(_uint_for(dt))
    nan = np.isnan(flat.astype(np.float64))
    if nan.any():
        canonical = np.array([np.nan], dtype=np.float64).astype(dt).view(_uint_for(dt))[0]
        width = 2 * dt.itemsize
        for i in np.flatnonzero(nan).tolist():
            texts[i] = "nan" if bits[i] == canonical else f"0x{int(bits[i]):0{width}x}"
    back = floats_from_text(texts, dt).view(_uint_for(dt))
    bad = np.flatnonzero(back != bits)
    if bad.size:  # a shortest form that double rounding moved: fall back to the exact double
        values64 = flat.astype(np.float64)
        for i in bad.tolist():
            texts[i] = _float_look(repr(float(values64[i])))
    return texts


def _items(flat: np.ndarray, dtype: DType) -> list[str]:
    if dtype == DType.STRING:
        return [quote_bytes(x) if isinstance(x, (bytes, np.bytes_)) else quote(str(x)) for x in flat.tolist()]
    if dtype == DType.BOOL:
        return ["true" if x else "false" for x in flat.tolist()]
    if dtype.is_integer:
        if flat.dtype.kind not in "iu":
            flat = flat.astype(np.int64)
        return [str(x) for x in flat.tolist()]
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        part = np.float32 if dtype == DType.COMPLEX64 else np.float64
        re_ = _float_items(np.ascontiguousarray(flat.real.astype(part)))
        im_ = _float_items(np.ascontiguousarray(flat.imag.astype(part)))
        return [f"({a},{b})" for a, b in zip(re_, im_)]
    if dtype.is_float:
        return _float_items(np.ascontiguousarray(flat))
    raise ValueError(f"cannot print {dtype.name} elements")


def _all_same(flat: np.ndarray) -> bool:
    if flat.dtype == object:
        first = flat[0]
        return all(type(x) is type(first) and x == first for x in flat.tolist())
    raw = flat.tobytes()
    size = flat.itemsize
    return raw == raw[:size] * flat.size


def format_dense(array: np.ndarray, dtype: DType) -> str:
    """``dense<...>``: nested lists by shape, a scalar for rank 0, one value for a splat."""
    if dtype != DType.STRING and array.dtype != dtype.numpy:
        array = array.astype(dtype.numpy)
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.size > 1 and _all_same(flat):
        return f"dense<{_items(flat[:1], dtype)[0]}>"
    level = _items(flat, dtype)
    shape = array.shape
    for k in range(len(shape) - 1, -1, -1):
        size = shape[k]
        groups = len(level) // size if size else int(np.prod(shape[:k], dtype=np.int64))
        level = ["[" + ",".join(level[g * size : (g + 1) * size]) + "]" for g in range(groups)]
    return f"dense<{level[0]}>"


# --------------------------------------------------------------------------- the printer


class _Printer:
    def __init__(self, inline_constants: bool, inline_limit: int) -> None:
        self.inline_all = inline_constants
        self.inline_limit = inline_limit
        self._types: dict[Any, str] = {}

    # ---- pieces

    def type_text(self, t: Any) -> str:
        try:
            return self._types[t]
        except KeyError:
            text = self._types[t] = format_type(t)
            return text
        except TypeError:  # an unhashable type object: format without the cache
            return format_type(t)

    def decl(self, v: Value) -> str:
        name = v.name
        ref = f"%{name}" if _BARE_NAME(name) else f"%{quote(name)}"
        if v.type is None:
            return ref
        return f"{ref}: {self.type_text(v.type)}"

    def tensor(self, t: Tensor) -> str:
        head = f"{t.dtype.short}[{','.join(str(d) for d in t.shape)}]"
        if self.inline_all or t.numel <= self.inline_limit:
            try:
                arr = t.numpy()
            except MissingTensorData:
                pass
            else:
                return f"{head} {format_dense(arr, t.dtype)}"
        return f"{head} #sha1={t.checksum()}"

    def attr(self, a: Attr, indent: int, opsets: dict[str, int]) -> str:
        kind, v = a.kind, a.value
        if kind == AttrKind.INT:
            return str(int(v))
        if kind == AttrKind.FLOAT:
            return repr(float(v))
        if kind == AttrKind.STRING:
            return quote_bytes(bytes(v)) if isinstance(v, (bytes, bytearray)) else quote(v)
        if kind == AttrKind.TENSOR:
            return self.tensor(v)
        if kind == AttrKind.GRAPH:
            return self.graph(v, indent, opsets)
        if kind == AttrKind.TYPE_PROTO:
            return self.type_text(v)
        if kind == AttrKind.SPARSE_TENSOR:
            return f"sparse<{quote_bytes(bytes(v))}>"
        items = list(v)
        if not items:
            return _EMPTY_LIST[kind] + "[]"
        if kind == AttrKind.INTS:
            return "[" + ",".join(str(int(x)) for x in items) + "]"
        if kind == AttrKind.FLOATS:
            return "[" + ",".join(repr(float(x)) for x in items) + "]"
        single = _SINGULAR[kind]
        return "[" + ", ".join(self.attr(Attr(single, x), indent, opsets) for x in items) + "]"

    # ---- statements

    def const(self, v: Value) -> str:
        t = v.const
        assert t is not None
        head = f"%{format_name(v.name)}"
        if v.type != _tensor_type(t):
            head += f": {self.type_text(v.type)}"
        return f"{head} = const {self.tensor(t)}"

    def output_decl(self, v: Value) -> str:
        """A node output's declaration, with its planned arena offset when it has one."""
        offset = v.meta.get(ARENA_OFFSET) if v.meta else None
        if offset.__class__ is int and offset >= 0:  # type: ignore[union-attr, operator]
            return f"{self.decl(v)} offset={offset}"
        return self.decl(v)

    def node(self, node: Node, indent: int, opsets: dict[str, int]) -> str:
        decl = self.output_decl
        text = ", ".join([decl(o) for o in node.outputs])
        if text:
            text += " = "
        refs = []
        for v in node.inputs:
            if v is None:
                refs.append("_")
            else:
                name = v.name
                refs.append(f"%{name}" if _BARE_NAME(name) else f"%{quote(name)}")
        op = node.op
        domain = node.domain
        if domain == "" and _IDENT(op):
            text += f"onnx.{op}({', '.join(refs)})"
        else:
            text += f"{format_op(domain, op)}({', '.join(refs)})"
        if node.attrs:
            attrs = node.attrs
            text += (
                " {"
                + ", ".join(f"{format_key(k)}={self.attr(attrs[k], indent, opsets)}" for k in sorted(attrs))
                + "}"
            )
        version = node.version
        if version != opsets.get(domain):
            text += " v=?" if version is None else f" v={version}"
        loc = node.loc
        if node.name and node.name != (loc.name or ""):
            text += f" name={quote(node.name)}"
        where = format_location(loc)
        if where:
            text += " " + where
        return text

    def graph(self, g: Graph, indent: int, outer_opsets: dict[str, int] | None) -> str:
        """The graph's text; its first line is unindented, its closing brace at ``indent``."""
        decl = self.decl
        head = (
            f"graph @{format_name(g.name)}({', '.join([decl(v) for v in g.inputs])})"
            f" -> ({', '.join([decl(v) for v in g.outputs])})"
        )
        if g.opsets and (outer_opsets is None or g.opsets != outer_opsets):
            pairs = ", ".join(f"{format_domain(d)}={v}" for d, v in g.opsets.items())
            head += f"\n{' ' * (indent + 4)}opsets({pairs})"
        lines = [head + " {"]
        pad = " " * (indent + 2)
        for v in g.constants.values():
            lines.append(pad + self.const(v))
        node_text = self.node
        opsets = g.opsets
        inner = indent + 2
        for node in g:
            lines.append(pad + node_text(node, inner, opsets))
        outs = ", ".join([f"%{format_name(v.name)}" for v in g.outputs])
        lines.append(f"{pad}return {outs}" if outs else f"{pad}return")
        lines.append(" " * indent + "}")
        return "\n".join(lines)


_EMPTY_LIST = {
    AttrKind.INTS: "ints",
    AttrKind.FLOATS: "floats",
    AttrKind.STRINGS: "strings",
    AttrKind.TENSORS: "tensors",
    AttrKind.GRAPHS: "graphs",
    AttrKind.TYPE_PROTOS: "types",
    AttrKind.SPARSE_TENSORS: "sparse_tensors",
}
_SINGULAR = {
    AttrKind.STRINGS: AttrKind.STRING,
    AttrKind.TENSORS: AttrKind.TENSOR,
    AttrKind.GRAPHS: AttrKind.GRAPH,
    AttrKind.TYPE_PROTOS: AttrKind.TYPE_PROTO,
    AttrKind.SPARSE_TENSORS: AttrKind.SPARSE_TENSOR,
}


def _tensor_type(t: Tensor) -> TensorType:
    return TensorType(t.dtype, t.shape)


def format_model(info: ModelInfo) -> str:
    """``model(...)`` with the fields that differ from ``ModelInfo()``; ``""`` when none do."""
    default = ModelInfo()
    fields: list[str] = []
    if info.doc_string != default.doc_string:
        fields.append(f"doc_string={quote(info.doc_string)}")
    if info.ir_version != default.ir_version:
        fields.append(f"ir_version={int(info.ir_version)}")
    if info.metadata:
        pairs = ", ".join(f"{quote(k)}: {quote(v)}" for k, v in info.metadata.items())
        fields.append(f"metadata={{{pairs}}}")
    if info.model_version != default.model_version:
        fields.append(f"model_version={int(info.model_version)}")
    if info.producer_name != default.producer_name:
        fields.append(f"producer_name={quote(info.producer_name)}")
    if info.producer_version != default.producer_version:
        fields.append(f"producer_version={quote(info.producer_version)}")
    return f"model({', '.join(fields)})" if fields else ""


def print_graph(
    graph: Graph,
    *,
    inline_constants: bool = False,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
) -> str:
    """The graph's text form, ending in a newline.

    Args:
        graph: the graph to print (a root graph, or a subgraph printed on its own).
        inline_constants: print every constant and tensor attribute inline, whatever its size.
        inline_limit: tensors with at most this many elements print inline; larger
            ones print as ``#sha1=`` references.
    """
    printer = _Printer(inline_constants, inline_limit)
    text = printer.graph(graph, 0, None) + "\n"
    model = format_model(graph.model) if graph.parent is None else ""
    return f"{model}\n{text}" if model else text


def format_node(node: Node, *, inline_limit: int = DEFAULT_INLINE_LIMIT) -> str:
    """One node's line (subgraphs included), as ``print_graph`` writes it; for messages."""
    opsets = node.graph.opsets if node.graph is not None else {}
    return _Printer(False, inline_limit).node(node, 0, opsets)

__all__ = [
    "ARENA_OFFSET",
    "DEFAULT_INLINE_LIMIT",
    "MissingTensorData",
    "floats_from_text",
    "format_dense",
    "format_domain",
    "format_location",
    "format_model",
    "format_name",
    "format_node",
    "format_op",
    "print_graph",
    "quote",
    "quote_bytes",
]
