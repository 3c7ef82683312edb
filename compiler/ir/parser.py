"""Parses kiln's text IR back into a graph; the inverse of ``kiln.ir.printer``.

``parse_graph(print_graph(g))`` rebuilds ``g`` through the public Graph API
(``add_input``, ``add_constant``, ``Node`` + ``insert_node``), so use-lists,
order and the shared name table are right, and ``print_graph`` of the result
is the same text.  Whitespace (newlines included) only separates tokens, and
``//`` or a ``#`` not followed by a letter or digit (``# IR after ...``)
starts a comment that runs to the end of the line.

Grammar (EBNF; ``{x}`` is zero or more, ``[x]`` optional)::

    text      ::= [model] graph
    model     ::= 'model' '(' [field {',' field}] ')'
    field     ::= IDENT '=' (INT | STRING | '{' [STRING ':' STRING {',' STRING ':' STRING}] '}')
    graph     ::= 'graph' GRAPHNAME '(' [decl {',' decl}] ')' '->' '(' [decl {',' decl}] ')'
                  [opsets] '{' {const | node} return '}'
    opsets    ::= 'opsets' '(' [domain '=' INT {',' domain '=' INT}] ')'
    decl      ::= VALUE [':' type]
    const     ::= decl '=' 'const' tensor
    node      ::= [outdecl {',' outdecl} '='] op '(' [operand {',' operand}] ')'
                  ['{' [attr {',' attr}] '}'] ['v' '=' (INT | '?')] ['name' '=' STRING] [loc]
    outdecl   ::= decl ['offset' '=' INT]          (* planned arena offset, >= 0 *)
    return    ::= 'return' [VALUE {',' VALUE}]
    operand   ::= VALUE | '_'                      (* '_': an omitted optional input *)
    op        ::= DOTTED | domain '.' (IDENT | STRING)
    domain    ::= DOTTED | STRING                  (* 'onnx' is the default domain "" *)
    attr      ::= (IDENT | STRING) '=' attrval
    attrval   ::= INT | FLOAT | STRING | BYTES | tensor | type | graph | 'sparse' '<' BYTES '>'
                | '[' [attrval {',' attrval}] ']' | EMPTYLIST      (* a bare '[]' reads as ints[] *)
    tensor    ::= TENSORTYPE (dense | REF)          (* the type's dims must be static *)
    dense     ::= 'dense' '<' literal '>'          (* a scalar literal of a non-scalar type: splat *)
    literal   ::= scalar | '[' [literal {',' literal}] ']'
    scalar    ::= INT | FLOAT | HEX | 'true' | 'false' | STRING | BYTES | '(' FLOAT ',' FLOAT ')'
    type      ::= TENSORTYPE | 'seq' '<' type '>' | 'opt' '<' type '>' | '?'
    loc       ::= 'loc' '(' (site | 'fused' ['[' STRING ']'] [site] ':' '[' [loc {',' loc}] ']') ')'
    site      ::= (STRING | '?') ':' (INT | '?') ':' (STRING | '?')

    VALUE      %x  %0  %conv.out  %"/model/conv/Conv_output_0"   (bare: [A-Za-z0-9_.]+)
    GRAPHNAME  @main  @"then branch"
    DOTTED     IDENT {'.' IDENT}: onnx.Conv, kiln.ConvAct, com.microsoft.FusedConv
    TENSORTYPE f32[N,3,?,"2*s0"]  i64[]  bf16[...]  (see kiln.ir.types)
    EMPTYLIST  ints[] floats[] strings[] tensors[] graphs[] types[] sparse_tensors[]
    REF        #sha1=1a2b3c4d                      (Tensor.checksum() of the data)
    STRING     "..." with JSON escapes             BYTES  b"..." with \\xHH escapes
    INT        -?[0-9]+    FLOAT  1.0  1e-05  inf  -inf  nan    HEX  0x7fc00001 (raw float bits)

Semantics: every VALUE used must be defined earlier in the same graph or an
enclosing one (SSA), and names are unique across a graph and its subgraphs.
A node output's ``offset=N`` sets ``value.meta["arena_offset"] = N``.
A node without ``v=`` gets the graph's opset for its domain (``v=?``: none).
A node without ``name=`` takes its location's name.  A node output or input
without a type is untyped; a constant without one has its tensor's type.
The header's output types must match the returned values' types.

A ``#sha1=`` reference parses to a tensor with the given type and checksum and
no data (``numpy()`` raises :class:`kiln.ir.printer.MissingTensorData`, a
``ValueError``); ``parse_graph(text, constants={...})`` binds data by constant
name or by checksum.  Errors raise :class:`kiln.errors.ParseError` with the
line and column.  The parser loops over statements and literals; it recurses
only into nested subgraphs, types and fused locations, so a 100k-node graph
parses at constant stack depth (too deep a nesting is a ParseError too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from kiln.errors import ParseError
from kiln.ir.gcpause import paused_gc
from kiln.ir.core import UNKNOWN_LOCATION, Attr, AttrKind, Graph, Location, Node, Value, canonical_domain
from kiln.ir.dtypes import DType
from kiln.ir.printer import ARENA_OFFSET, MissingTensorData, floats_from_text
from kiln.ir.tensor import Tensor
from kiln.ir.types import OptionalType, SequenceType, TensorType, Type, parse_type

_STR = r'"(?:[^"\\\n]|\\.)*"'
_DTYPES = "|".join(sorted((d.short for d in DType), key=len, reverse=True))
_LISTS = "sparse_tensors|tensors|strings|floats|graphs|types|ints"
_TOKEN = re.compile(
    r"//[^\n]*"
    r"|#(?![A-Za-z0-9])[^\n]*"
    rf"|{_STR}"
    rf"|b{_STR}"
    rf"|%(?:[A-Za-z0-9_.]+|{_STR})"
    rf"|@(?:[A-Za-z0-9_.]+|{_STR})"
    r"|#[A-Za-z0-9]+=[0-9A-Za-z]*"
    rf"|(?:{_DTYPES})\[(?:[^\]\"\n]|{_STR})*\]"
    rf"|(?:{_LISTS})\[\]"
    r'|dense<[^<>"()\n]*>'
    r"|->"
    r"|-?0[xX][0-9A-Fa-f]+"
    r"|-?(?:[0-9]+\.[0-9]*(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+)"
    r"|-(?:inf|nan)\b"
    r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
    r"|[()\[\]{}<>,=:?.]"
    r"|\S"
)
_EMPTY_LISTS = {
    "ints[]": AttrKind.INTS,
    "floats[]": AttrKind.FLOATS,
    "strings[]": AttrKind.STRINGS,
    "tensors[]": AttrKind.TENSORS,
    "graphs[]": AttrKind.GRAPHS,
    "types[]": AttrKind.TYPE_PROTOS,
    "sparse_tensors[]": AttrKind.SPARSE_TENSORS,
}
_PLURAL = {
    AttrKind.INT: AttrKind.INTS,
    AttrKind.FLOAT: AttrKind.FLOATS,
    AttrKind.STRING: AttrKind.STRINGS,
    AttrKind.TENSOR: AttrKind.TENSORS,
    AttrKind.GRAPH: AttrKind.GRAPHS,
    AttrKind.TYPE_PROTO: AttrKind.TYPE_PROTOS,
    AttrKind.SPARSE_TENSOR: AttrKind.SPARSE_TENSORS,
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").fullmatch
_INT = re.compile(r"-?[0-9]+").fullmatch
_FLOAT_WORDS = ("inf", "nan", "-inf", "-nan")
_BYTES_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_DENSE_SPLIT = re.compile(r"[\[\],\s]+")
_DENSE_SKELETON = re.compile(r"[^\[\],]")
_NO_TYPE = object()
_COMMENT_START = re.compile(r"//|#(?![A-Za-z0-9])")
_COMMENT = _COMMENT_START.match  # a comment token ('#sha1=' is not one)
_STRAY = {
    '"': "unterminated string",
    "%": "'%' must be followed by a value name",
    "@": "'@' must be followed by a graph name",
    "#": "malformed reference: expected #sha1=<hex digits>",
}
_STRAY_CHARS = frozenset(_STRAY)


def parse_graph(
    text: str,
    *,
    constants: Mapping[str, Any] | None = None,
    filename: str | None = None,
) -> Graph:
    """Parses the text form into a new graph.

    Args:
        text: what ``print_graph`` wrote (or hand-written text in the same grammar).
        constants: data for ``#sha1=`` references, keyed by constant name, or by the
            checksum (``"1a2b3c4d"``) for any reference, tensor attributes included.
            Values are numpy arrays or ``Tensor``s; their dtype, shape and checksum
            must match the reference.
        filename: named in error messages.

    Raises:
        kiln.errors.ParseError: the text is malformed; the message has line:column.
    """
    parser = _Parser(text, constants or {}, filename)
    try:
        with paused_gc():  # a parse creates millions of objects and no garbage
            return parser.parse()
    except RecursionError:
        raise parser.error("nesting too deep (subgraphs, types or locations)") from None


def unquote(token: str) -> str:
    """The text of a ``"..."`` token."""
    if "\\" not in token:
        return token[1:-1]
    return json.loads(token)


def unquote_bytes(token: str) -> bytes:
    """The bytes of a ``b"..."`` token."""
    raw = token[2:-1].encode("latin-1")

    def repl(m: re.Match) -> bytes:
        e = m.group(1)
        if e[:1] == b"x":
            return bytes([int(e[1:], 16)])
        return {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"0": b"\0"}.get(e, e)

    return _BYTES_ESCAPE.sub(repl, raw)


def _missing(label: str, checksum: str) -> Any:
    def load() -> np.ndarray:
        raise MissingTensorData(
            f"{label} was parsed from a text reference (#sha1={checksum}) and has no data; "
            "bind it with parse_graph(text, constants={...})"
        )

    return load


def _skeleton(shape: tuple[int, ...]) -> str:
    """The brackets and commas of a nested literal of ``shape`` (``""`` for a scalar)."""
    s = ""
    for d in reversed(shape):
        s = "[" + ",".join([s] * d) + "]"
    return s


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, Any], filename: str | None) -> None:
        self.text = text
        self.constants = constants
        self.filename = filename
        toks = _TOKEN.findall(text)
        if _COMMENT_START.search(text):
            toks = [t for t in toks if not _COMMENT(t)]
        toks.append("")  # end of input
        self.toks = toks
        stray = _STRAY_CHARS.intersection(toks)  # a sigil or quote that did not start a whole token
        if stray:
            at = min(toks.index(c) for c in stray)
            raise self.error(_STRAY[toks[at]], at)
        self.i = 0
        self.visible: dict[str, Value] = {}
        self.defined: set[str] = set()
        self.types: dict[str, Type | None] = {}
        self.files: dict[str, str] = {}

    # ---- errors

    def error(self, message: str, at: int | None = None) -> ParseError:
        k = self.i if at is None else at
        offset = len(self.text)
        n = 0
        for m in _TOKEN.finditer(self.text):
            if _COMMENT(m.group()):
                continue
            if n == k:
                offset = m.start()
                break
            n += 1
        text = self.text
        line = text.count("\n", 0, offset) + 1
        start = text.rfind("\n", 0, offset) + 1
        end = text.find("\n", offset)
        source = text[start : end if end >= 0 else len(text)]
        return ParseError(message, line=line, column=offset - start + 1, source_line=source, file=self.filename)

    def describe(self, k: int) -> str:
        tok = self.toks[k]
        if tok == "":
            return "end of input"
        return f"'{tok if len(tok) <= 40 else tok[:37] + '...'}'"

    def expect(self, token: str) -> None:
        if self.toks[self.i] != token:
            raise self.error(f"expected '{token}', found {self.describe(self.i)}")
        self.i += 1

    # ---- tokens

    def string(self, what: str = "a string") -> str:
        tok = self.toks[self.i]
        if tok[:1] != '"':
            raise self.error(f"expected {what}, found {self.describe(self.i)}")
        self.i += 1
        return unquote(tok)

    def integer(self, what: str = "an integer") -> int:
        tok = self.toks[self.i]
        if not _INT(tok):
            raise self.error(f"expected {what}, found {self.describe(self.i)}")
        self.i += 1
        return int(tok)

    def value_name(self, sigil: str = "%", what: str = "a value name") -> str:
        tok = self.toks[self.i]
        if tok[:1] != sigil:
            raise self.error(f"expected {what}, found {self.describe(self.i)}")
        self.i += 1
        return unquote(tok[1:]) if tok[1:2] == '"' else tok[1:]

    def domain_key(self) -> str:
        tok = self.toks[self.i]
        if tok[:1] == '"':
            self.i += 1
            return canonical_domain(unquote(tok))
        if tok[:1].isalpha() or tok[:1] == "_":
            self.i += 1
            return "" if tok == "onnx" else tok
        raise self.error(f"expected a domain, found {self.describe(self.i)}")

    # ---- types

    def type(self) -> Type | None:
        toks = self.toks
        tok = toks[self.i]
        cached = self.types.get(tok, _NO_TYPE)
        if cached is not _NO_TYPE:
            self.i += 1
            return cached  # type: ignore[return-value]
        if tok == "?":
            self.i += 1
            return None
        if tok in ("seq", "opt") and toks[self.i + 1] == "<":
            self.i += 2
            inner = self.type()
            self.expect(">")
            return SequenceType(inner) if tok == "seq" else OptionalType(inner)
        if tok[:1].isalpha() and tok.endswith("]") and "[" in tok:
            try:
                t = parse_type(tok)
            except ValueError as e:
                raise self.error(str(e)) from None
            self.types[tok] = t
            self.i += 1
            return t
        raise self.error(f"expected a type, found {self.describe(self.i)}")

    # ---- tensors

    def tensor(self, label: str, const_name: str | None) -> Tensor:
        at = self.i
        t = self.type()
        if not isinstance(t, TensorType) or not t.is_static:
            raise self.error("a tensor needs a static tensor type such as f32[2,3]", at)
        shape: tuple[int, ...] = t.shape  # type: ignore[assignment]
        tok = self.toks[self.i]
        if tok.startswith("#"):
            return self.reference(t.dtype, shape, label, const_name)
        at = self.i
        if tok.startswith("dense<"):
            self.i += 1
            body = tok[6:-1]
            items: list[Any] = [x for x in _DENSE_SPLIT.split(body) if x]
            skeleton = _DENSE_SKELETON.sub("", body)
        elif tok == "dense":
            self.i += 1
            self.expect("<")
            items, skeleton = self.literal()
            self.expect(">")
        else:
            raise self.error(f"expected 'dense<...>' or '#sha1=...', found {self.describe(self.i)}")
        try:
            array = _array(items, skeleton, t.dtype, shape)
        except (ValueError, TypeError, OverflowError) as e:
            raise self.error(f"bad {t} literal: {e}", at) from None
        return Tensor(t.dtype, shape, array=array)

    def literal(self) -> tuple[list[Any], str]:
        """Scalars and the bracket skeleton of a ``dense<...>`` that needs tokens (strings, complex)."""
        toks = self.toks
        items: list[Any] = []
        skeleton: list[str] = []
        depth = 0
        while True:
            tok = toks[self.i]
            if tok == "[":
                depth += 1
                skeleton.append(tok)
            elif tok == "]":
                depth -= 1
                if depth < 0:
                    raise self.error("unbalanced ']'")
                skeleton.append(tok)
            elif tok == ",":
                skeleton.append(tok)
            elif tok == ">" and depth == 0:
                return items, "".join(skeleton)
            elif tok == "(":
                self.i += 1
                real = toks[self.i]
                self.i += 1
                self.expect(",")
                imag = toks[self.i]
                self.i += 1
                self.expect(")")
                items.append((real, imag))
                continue
            elif tok in ("", ">", "<", "{", "}", "(", ")"):
                raise self.error(f"unexpected {self.describe(self.i)} in a dense literal")
            else:
                items.append(tok)
            self.i += 1

    def reference(self, dtype: DType, shape: tuple[int, ...], label: str, const_name: str | None) -> Tensor:
        at = self.i
        tok = self.toks[self.i]
        self.i += 1
        kind, _, checksum = tok[1:].partition("=")
        if kind != "sha1" or not re.fullmatch(r"[0-9a-f]+", checksum):
            raise self.error(f"expected '#sha1=' and lowercase hex digits, found {self.describe(at)}", at)
        data = self.constants.get(const_name) if const_name is not None else None
        if data is None:
            data = self.constants.get(checksum)
        if data is None:
            return Tensor(dtype, shape, loader=_missing(label, checksum), checksum=checksum)
        bound = data if isinstance(data, Tensor) else Tensor.from_numpy(np.asarray(data))
        if bound.dtype != dtype or bound.shape != shape:
            want = f"{dtype.short}[{','.join(map(str, shape))}]"
            got = f"{bound.dtype.short}[{','.join(map(str, bound.shape))}]"
            raise self.error(f"data bound to {label} is {got}, the text says {want}", at)
        if bound.checksum() != checksum:
            raise self.error(f"data bound to {label} has checksum {bound.checksum()}, the text says {checksum}", at)
        return bound

    # ---- attributes

    def attrs(self, g: Graph) -> dict[str, Attr]:
        toks = self.toks
        self.expect("{")
        attrs: dict[str, Attr] = {}
        if toks[self.i] == "}":
            self.i += 1
            return attrs
        while True:
            at = self.i
            tok = toks[at]
            if tok[:1] == '"':
                key = unquote(tok)
            elif _IDENT(tok):
                key = tok
            else:
                raise self.error(f"expected an attribute name, found {self.describe(at)}")
            if key in attrs:
                raise self.error(f"attribute {key!r} given twice", at)
            self.i += 1
            self.expect("=")
            attrs[key] = self.attr_value(g, key)
            tok = toks[self.i]
            self.i += 1
            if tok == "}":
                return attrs
            if tok != ",":
                raise self.error(f"expected ',' or '}}' after an attribute, found {self.describe(self.i - 1)}", self.i - 1)

    def attr_value(self, g: Graph, key: str) -> Attr:
        toks = self.toks
        at = self.i
        tok = toks[at]
        c = tok[:1]
        if (c.isdigit() or (c == "-" and tok != "->") or tok in _FLOAT_WORDS) and "x" not in tok:
            self.i += 1
            if tok in _FLOAT_WORDS or "." in tok or "e" in tok or "E" in tok:
                return Attr(AttrKind.FLOAT, float(tok))
            if not _INT(tok):
                raise self.error(f"expected an attribute value, found {self.describe(at)}", at)
            return Attr(AttrKind.INT, int(tok))
        if c == '"':
            self.i += 1
            return Attr(AttrKind.STRING, unquote(tok))
        if tok.startswith('b"'):
            self.i += 1
            return Attr(AttrKind.STRING, unquote_bytes(tok))
        if tok == "[":
            return self.attr_list(g, key)
        if tok in _EMPTY_LISTS:
            self.i += 1
            return Attr(_EMPTY_LISTS[tok], ())
        if tok == "graph":
            return Attr(AttrKind.GRAPH, self.graph(g))
        if tok == "sparse":
            self.i += 1
            self.expect("<")
            data = toks[self.i]
            if not data.startswith('b"'):
                raise self.error(f"expected the sparse tensor's bytes b\"...\", found {self.describe(self.i)}")
            self.i += 1
            self.expect(">")
            return Attr(AttrKind.SPARSE_TENSOR, unquote_bytes(data))
        if tok in ("seq", "opt", "?"):
            return Attr(AttrKind.TYPE_PROTO, self.type())
        if c.isalpha() and tok.endswith("]"):
            nxt = toks[at + 1]
            if nxt.startswith(("dense", "#")):
                return Attr(AttrKind.TENSOR, self.tensor(f"attribute {key!r}", None))
            return Attr(AttrKind.TYPE_PROTO, self.type())
        raise self.error(f"expected an attribute value, found {self.describe(at)}", at)

    def attr_list(self, g: Graph, key: str) -> Attr:
        toks = self.toks
        self.expect("[")
        if toks[self.i] == "]":
            self.i += 1
            return Attr(AttrKind.INTS, ())
        items: list[Attr] = []
        ats: list[int] = []
        while True:
            ats.append(self.i)
            items.append(self.attr_value(g, key))
            tok = toks[self.i]
            self.i += 1
            if tok == "]":
                break
            if tok != ",":
                raise self.error(f"expected ',' or ']' in a list, found {self.describe(self.i - 1)}", self.i - 1)
        kinds = {a.kind for a in items}
        if kinds == {AttrKind.INT, AttrKind.FLOAT}:
            return Attr(AttrKind.FLOATS, tuple(float(a.value) for a in items))
        first = items[0].kind
        if first not in _PLURAL:
            raise self.error("lists of lists are not attribute values", ats[0])
        for a, at in zip(items, ats):
            if a.kind != first:
                raise self.error(f"list mixes {first.name} and {a.kind.name} items", at)
        return Attr(_PLURAL[first], tuple(a.value for a in items))

    # ---- locations

    def location(self) -> Location:
        toks = self.toks
        i = self.i
        if toks[i + 3 : i + 8 : 2] == [":", ":", ")"] and toks[i + 1] == "(":
            # The common ``loc("file":12:"name")``, without the general machinery.
            file, index, name = toks[i + 2], toks[i + 4], toks[i + 6]
            if file[:1] == '"' and name[:1] == '"' and _INT(index):
                self.i = i + 8
                files = self.files
                f = files.get(file)
                if f is None:
                    f = files[file] = unquote(file)
                return Location(f, int(index), unquote(name))
        self.expect("loc")
        self.expect("(")
        if toks[self.i] == "fused":
            self.i += 1
            rule = None
            if toks[self.i] == "[":
                self.i += 1
                rule = self.string("the fusing rule's name")
                self.expect("]")
            site: tuple[Any, Any, Any] = (None, None, None)
            if toks[self.i] != ":":
                site = self.site()
            self.expect(":")
            self.expect("[")
            parts: list[Location] = []
            if toks[self.i] != "]":
                while True:
                    parts.append(self.location())
                    tok = toks[self.i]
                    self.i += 1
                    if tok == "]":
                        break
                    if tok != ",":
                        raise self.error(f"expected ',' or ']', found {self.describe(self.i - 1)}", self.i - 1)
            else:
                self.i += 1
            loc = Location(site[0], site[1], site[2], fused_from=tuple(parts), rule=rule)
        else:
            loc = Location(*self.site())
        self.expect(")")
        return loc

    def site(self) -> tuple[str | None, int | None, str | None]:
        toks = self.toks
        file = None
        if toks[self.i] == "?":
            self.i += 1
        else:
            file = self.string("a file name or '?'")
        self.expect(":")
        index = None
        if toks[self.i] == "?":
            self.i += 1
        else:
            index = self.integer("a node index or '?'")
        self.expect(":")
        name = None
        if toks[self.i] == "?":
            self.i += 1
        else:
            name = self.string("a node name or '?'")
        return file, index, name

    # ---- statements

    def define(self, name: str, at: int, scope: list[str]) -> None:
        if name in self.defined:
            raise self.error(f"value %{name} is defined twice", at)
        self.defined.add(name)
        scope.append(name)

    def decls(self, offsets: dict[str, int] | None = None) -> list[tuple[str, Any, int]]:
        """``%a: T, %b`` up to (not including) what follows; a missing type is ``_NO_TYPE``.

        With ``offsets``, a declaration may end in ``offset=N``, stored there by name.
        """
        toks = self.toks
        out: list[tuple[str, Any, int]] = []
        while True:
            at = self.i
            name = self.value_name()
            typ: Any = _NO_TYPE
            if toks[self.i] == ":":
                self.i += 1
                typ = self.type()
            if offsets is not None and toks[self.i] == "offset" and toks[self.i + 1] == "=":
                self.i += 2
                where = self.i
                offset = self.integer("an arena offset")
                if offset < 0:
                    raise self.error("an arena offset cannot be negative", where)
                offsets[name] = offset
            out.append((name, typ, at))
            if toks[self.i] != ",":
                return out
            self.i += 1

    def const(self, g: Graph, decl: tuple[str, Any, int], scope: list[str]) -> None:
        name, typ, at = decl
        self.expect("const")
        tensor = self.tensor(f"constant %{name}", name)
        self.define(name, at, scope)
        value = g.add_constant(name, tensor, None if typ is _NO_TYPE else typ)
        if typ is None:
            value.type = None
        assert value.name == name
        self.visible[name] = value

    def node(self, g: Graph, decls: list[tuple[str, Any, int]], scope: list[str]) -> None:
        toks = self.toks
        # op
        at = self.i
        tok = toks[at]
        if tok[:1] == '"' or (tok[:1].isalpha() and toks[at + 1] == "."):
            domain = self.domain_key()
            self.expect(".")
            tok = toks[self.i]
            if tok[:1] == '"':
                op = unquote(tok)
            elif _IDENT(tok):
                op = tok
            else:
                raise self.error(f"expected an op name, found {self.describe(self.i)}")
            self.i += 1
        elif "." in tok and (tok[0].isalpha() or tok[0] == "_"):
            dom, _, op = tok.rpartition(".")
            domain = "" if dom == "onnx" else dom
            self.i += 1
        else:
            raise self.error(f"expected an op such as onnx.Relu, found {self.describe(at)}", at)
        # inputs
        if toks[self.i] != "(":
            raise self.error(f"expected '(' after the op, found {self.describe(self.i)}")
        self.i += 1
        inputs: list[Value | None] = []
        visible = self.visible
        if toks[self.i] == ")":
            self.i += 1
        else:
            while True:
                tok = toks[self.i]
                if tok[:1] == "%":
                    name = unquote(tok[1:]) if tok[1:2] == '"' else tok[1:]
                    v = visible.get(name)
                    if v is None:
                        if name in self.defined:
                            raise self.error(f"value %{name} is not visible here (it is defined in another graph)")
                        raise self.error(f"value %{name} is used but not defined")
                    inputs.append(v)
                elif tok == "_":
                    inputs.append(None)
                else:
                    raise self.error(f"expected an input value or '_', found {self.describe(self.i)}")
                tok = toks[self.i + 1]
                self.i += 2
                if tok == ")":
                    break
                if tok != ",":
                    raise self.error(f"expected ',' or ')' after an input, found {self.describe(self.i - 1)}", self.i - 1)
        # attributes, version, name, location
        attrs = self.attrs(g) if toks[self.i] == "{" else {}
        version = g.opsets.get(domain)
        if toks[self.i] == "v" and toks[self.i + 1] == "=":
            self.i += 2
            if toks[self.i] == "?":
                self.i += 1
                version = None
            else:
                version = self.integer("an opset version or '?'")
        node_name: str | None = None
        if toks[self.i] == "name" and toks[self.i + 1] == "=":
            self.i += 2
            node_name = self.string("the node's name")
        loc = self.location() if toks[self.i] == "loc" else UNKNOWN_LOCATION
        # outputs
        outputs = []
        for name, typ, out_at in decls:
            self.define(name, out_at, scope)
            outputs.append(Value(name, None if typ is _NO_TYPE else typ))
        node = Node(
            op,
            inputs,
            outputs,
            attrs,
            domain=domain,
            version=version,
            name=(loc.name or "") if node_name is None else node_name,
            loc=loc,
        )
        g.insert_node(node)
        for v in outputs:
            visible[v.name] = v

    def graph(self, outer: Graph | None) -> Graph:
        toks = self.toks
        self.expect("graph")
        name = self.value_name("@", "a graph name such as @main")
        g = Graph(name) if outer is None else outer.new_subgraph(name)
        scope: list[str] = []
        self.expect("(")
        if toks[self.i] != ")":
            for vname, typ, at in self.decls():
                self.define(vname, at, scope)
                v = g.add_input(vname, None if typ is _NO_TYPE else typ)
                assert v.name == vname
                self.visible[vname] = v
        self.expect(")")
        self.expect("->")
        self.expect("(")
        declared = self.decls() if toks[self.i] != ")" else []
        self.expect(")")
        if toks[self.i] == "opsets":
            self.i += 1
            opsets = self.opsets()
            if outer is None:
                g.opsets.update(opsets)
            else:
                g.opsets = opsets
        self.expect("{")
        self.body(g, scope)
        # return
        ret_at = self.i
        self.expect("return")
        outputs: list[Value] = []
        while toks[self.i][:1] == "%":
            at = self.i
            vname = self.value_name()
            v = self.visible.get(vname)
            if v is None:
                raise self.error(f"graph output %{vname} is not defined", at)
            outputs.append(v)
            if toks[self.i] != ",":
                break
            self.i += 1
        if len(outputs) != len(declared):
            raise self.error(f"the header declares {len(declared)} outputs, 'return' gives {len(outputs)}", ret_at)
        for v, (dname, dtype_, at) in zip(outputs, declared):
            if v.name != dname:
                raise self.error(f"the header declares output %{dname}, 'return' gives %{v.name}", at)
            want = None if dtype_ is _NO_TYPE else dtype_
            if want != v.type:
                raise self.error(f"the header gives output %{dname} type {want}, the value has {v.type}", at)
        g.outputs.extend(outputs)
        self.expect("}")
        visible = self.visible
        for vname in scope:
            visible.pop(vname, None)
        return g

    def opsets(self) -> dict[str, int]:
        self.expect("(")
        opsets: dict[str, int] = {}
        toks = self.toks
        if toks[self.i] == ")":
            self.i += 1
            return opsets
        while True:
            at = self.i
            domain = self.domain_key()
            if domain in opsets:
                raise self.error("opset domain given twice", at)
            self.expect("=")
            opsets[domain] = self.integer("an opset version")
            tok = toks[self.i]
            self.i += 1
            if tok == ")":
                return opsets
            if tok != ",":
                raise self.error(f"expected ',' or ')', found {self.describe(self.i - 1)}", self.i - 1)

    def body(self, g: Graph, scope: list[str]) -> None:
        toks = self.toks
        while True:
            tok = toks[self.i]
            if tok[:1] == "%":
                offsets: dict[str, int] = {}
                decls = self.decls(offsets)
                if toks[self.i] != "=":
                    raise self.error(f"expected ',' or '=' after a value, found {self.describe(self.i)}")
                self.i += 1
                if toks[self.i] == "const":
                    if len(decls) != 1:
                        raise self.error("a constant defines exactly one value", decls[1][2])
                    if offsets:
                        raise self.error("a constant has no arena offset", decls[0][2])
                    self.const(g, decls[0], scope)
                else:
                    self.node(g, decls, scope)
                    for vname, offset in offsets.items():
                        self.visible[vname].meta[ARENA_OFFSET] = offset
            elif tok == "return":
                return
            elif tok in ("}", ""):
                raise self.error(f"expected 'return' before {self.describe(self.i)}")
            else:
                self.node(g, [], scope)

    def model(self, g: Graph) -> None:
        self.expect("model")
        self.expect("(")
        toks = self.toks
        info = g.model
        seen: set[str] = set()
        while toks[self.i] != ")":
            at = self.i
            key = toks[self.i]
            if key in seen:
                raise self.error(f"model field {key!r} given twice", at)
            seen.add(key)
            self.i += 1
            self.expect("=")
            if key in ("ir_version", "model_version"):
                setattr(info, key, self.integer())
            elif key in ("producer_name", "producer_version", "doc_string"):
                setattr(info, key, self.string())
            elif key == "metadata":
                self.expect("{")
                while toks[self.i] != "}":
                    k = self.string("a metadata key")
                    self.expect(":")
                    info.metadata[k] = self.string("a metadata value")
                    if toks[self.i] != ",":
                        break
                    self.i += 1
                self.expect("}")
            else:
                raise self.error(f"unknown model field {key!r}", at)
            if toks[self.i] != ",":
                break
            self.i += 1
        self.expect(")")

    def parse(self) -> Graph:
        model_at = self.i if self.toks[self.i] == "model" else None
        if model_at is not None:
            # The model line comes first, but its facts belong to the graph: parse it, then re-apply.
            holder = Graph()
            self.model(holder)
        g = self.graph(None)
        if model_at is not None:
            g.model = holder.model
        if self.toks[self.i] != "":
            raise self.error(f"expected end of input after the graph, found {self.describe(self.i)}")
        return g


def _array(items: list[Any], skeleton: str, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """The numpy array of a dense literal; ``ValueError`` when it does not fit ``shape``."""
    numel = 1
    for d in shape:
        numel *= d
    if skeleton == "":
        if len(items) != 1:
            raise ValueError("expected one scalar")
        splat = True
    else:
        splat = False
        if len(items) != numel:
            raise ValueError(f"{len(items)} elements for a shape of {numel}")
        flat = "[" + ",".join([""] * numel) + "]" if numel else "[]"
        if skeleton != flat and skeleton != _skeleton(shape):
            raise ValueError("brackets do not match the shape")
    np_dtype = dtype.numpy
    if dtype == DType.STRING:
        values: list[Any] = []
        for x in items:
            if not isinstance(x, str) or not (x[:1] == '"' or x.startswith('b"')):
                raise ValueError(f"expected a string, found {x!r}")
            values.append(unquote(x) if x[0] == '"' else unquote_bytes(x))
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    elif dtype == DType.BOOL:
        table = {"true": True, "false": False}
        try:
            arr = np.array([table[x] for x in items], dtype=np.bool_)
        except (KeyError, TypeError):
            raise ValueError("expected true or false") from None
    elif dtype.is_integer:
        for x in items:
            if not isinstance(x, str) or not _INT(x):
                raise ValueError(f"expected an integer, found {x!r}")
        wide = np.array([int(x) for x in items], dtype=np.uint64 if dtype == DType.UINT64 else np.int64)
        arr = wide.astype(np_dtype)
        if not np.array_equal(arr.astype(wide.dtype), wide):
            raise ValueError(f"a value is out of range for {dtype.short}")
    elif dtype in (DType.COMPLEX64, DType.COMPLEX128):
        part = np.dtype(np.float32 if dtype == DType.COMPLEX64 else np.float64)
        if not all(isinstance(x, tuple) for x in items):
            raise ValueError("expected (real,imag) pairs")
        arr = np.empty(len(items), dtype=np_dtype)
        arr.real = floats_from_text([x[0] for x in items], part)
        arr.imag = floats_from_text([x[1] for x in items], part)
    elif dtype.is_float:
        if not all(isinstance(x, str) for x in items):
            raise ValueError("expected float values")
        arr = floats_from_text(items, np_dtype)
    else:
        raise ValueError(f"cannot read {dtype.name} elements")
    if splat:
        return np.broadcast_to(arr.reshape(()), shape).copy()
    return arr.reshape(shape)


__all__ = ["parse_graph", "unquote", "unquote_bytes"]
