"""kiln's IR: types, values, nodes, graphs, the verifier and the text form."""

from kiln.ir.core import (
    KILN_DOMAIN,
    ONNX_DOMAIN,
    Attr,
    AttrKind,
    Graph,
    Location,
    ModelInfo,
    Node,
    Use,
    Value,
    canonical_domain,
)
from kiln.ir.dtypes import DType
from kiln.ir.tensor import ExternalLocation, Tensor
from kiln.ir.types import Dim, OptionalType, SequenceType, Shape, TensorType, Type, format_type, parse_type


def verify(graph: Graph, *, check_schemas: bool = True) -> None:
    """Checks the IR invariants; raises ``kiln.errors.VerificationError``."""
    from kiln.ir.verifier import verify as _verify

    _verify(graph, check_schemas=check_schemas)


def print_ir(graph: Graph, *, inline_constants: bool = False) -> str:
    """The graph's text form (see ``kiln.ir.printer``)."""
    from kiln.ir.printer import print_graph

    return print_graph(graph, inline_constants=inline_constants)


def parse_ir(text: str) -> Graph:
    """Parses the text form back into a graph (see ``kiln.ir.parser``)."""
    from kiln.ir.parser import parse_graph

    return parse_graph(text)


__all__ = [
    "Attr",
    "AttrKind",
    "DType",
    "Dim",
    "ExternalLocation",
    "Graph",
    "KILN_DOMAIN",
    "Location",
    "ModelInfo",
    "Node",
    "ONNX_DOMAIN",
    "OptionalType",
    "SequenceType",
    "Shape",
    "Tensor",
    "TensorType",
    "Type",
    "Use",
    "Value",
    "canonical_domain",
    "format_type",
    "parse_ir",
    "parse_type",
    "print_ir",
    "verify",
]
