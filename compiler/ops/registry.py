"""The op registry: ``(domain, op, version)`` -> :class:`OpSchema`.

For the ``onnx`` dialect the arity and attribute facts come from the ONNX
specification shipped with the installed ``onnx`` package (``onnx.defs``),
so kiln knows every op of every opset that package knows.  kiln adds to
that its own type/shape inference (``kiln.ops.inference``) and numpy
references (``kiln.ops.reference``).

The ``kiln`` dialect (ops that fusion creates) registers with :func:`kiln_op`;
each declares a decomposition into ONNX ops, which is how any IR state can be
exported to a runnable ONNX model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from kiln.ir.core import AttrKind, canonical_domain

if TYPE_CHECKING:
    from kiln.ir.core import Node, Value
    from kiln.ops.builder import OpBuilder
    from kiln.ops.inference import InferContext
    from kiln.ir.types import Type

InferFn = Callable[["InferContext"], "list[Type | None]"]
DecomposeFn = Callable[["OpBuilder", "Node"], "list[Value]"]


@dataclass(frozen=True)
class AttrSpec:
    """One attribute an op accepts."""

    name: str
    kind: AttrKind
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class OpSchema:
    """What kiln knows about one op at one version range."""

    domain: str
    op: str
    since_version: int
    min_inputs: int
    max_inputs: int
    min_outputs: int
    max_outputs: int
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    doc: str = ""
    deterministic: bool = True
    decompose: DecomposeFn | None = None
    """kiln ops: how to express the op with ONNX ops (required for kiln ops)."""
    infer: InferFn | None = None
    """kiln ops: type/shape inference (ONNX ops use ``kiln.ops.inference``)."""
    function_domain_ops: tuple[str, ...] = ()

    @property
    def op_id(self) -> str:
        return f"{'onnx' if self.domain == '' else self.domain}.{self.op}"

    def attr_default(self, name: str) -> Any:
        spec = self.attrs.get(name)
        return None if spec is None else spec.default


# --------------------------------------------------------------------------- kiln dialect

_KILN_OPS: dict[str, OpSchema] = {}

KILN_OPSET_VERSION = 1


def kiln_op(
    op: str,
    *,
    inputs: tuple[int, int],
    outputs: tuple[int, int] = (1, 1),
    attrs: dict[str, AttrSpec] | None = None,
    decompose: DecomposeFn,
    infer: InferFn | None = None,
    doc: str = "",
) -> OpSchema:
    """Registers a ``kiln.<op>``; its decomposition is mandatory (DESIGN section 2)."""
    if op in _KILN_OPS:
        raise ValueError(f"kiln op kiln.{op} registered twice")
    schema = OpSchema(
        domain="kiln",
        op=op,
        since_version=KILN_OPSET_VERSION,
        min_inputs=inputs[0],
        max_inputs=inputs[1],
        min_outputs=outputs[0],
        max_outputs=outputs[1],
        attrs=dict(attrs or {}),
        doc=doc,
        decompose=decompose,
        infer=infer,
    )
    _KILN_OPS[op] = schema
    return schema


def kiln_ops() -> dict[str, OpSchema]:
    _load_kiln_dialect()
    return dict(_KILN_OPS)


@functools.cache
def _load_kiln_dialect() -> None:
    import importlib

    try:
        importlib.import_module("kiln.ops.kiln_dialect")
    except ModuleNotFoundError as exc:
        if exc.name != "kiln.ops.kiln_dialect":
            raise


# --------------------------------------------------------------------------- lookup

_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def lookup(domain: str, op: str, version: int | None) -> OpSchema | None:
    """The schema of ``domain.op`` in effect at opset ``version``, or ``None`` if unknown."""
    domain = canonical_domain(domain)
    if domain == "kiln":
        _load_kiln_dialect()
        return _KILN_OPS.get(op)
    return _onnx_schema(domain, op, version if version is not None else 10_000)


@functools.lru_cache(maxsize=4096)
def _onnx_schema(domain: str, op: str, version: int) -> OpSchema | None:
    import onnx.defs

    try:
        spec = onnx.defs.get_schema(op, max_inclusive_version=version, domain=domain)
    except onnx.defs.SchemaError:
        return None
    attrs: dict[str, AttrSpec] = {}
    for name, a in spec.attributes.items():
        default = None
        if a.default_value is not None and a.default_value.type != 0:
            import onnx.helper

            default = onnx.helper.get_attribute_value(a.default_value)
            if isinstance(default, bytes):
                default = default.decode("utf-8", "replace")
        attrs[name] = AttrSpec(name, AttrKind(int(a.type)), bool(a.required), default)
    return OpSchema(
        domain=domain,
        op=op,
        since_version=spec.since_version,
        min_inputs=spec.min_input,
        max_inputs=spec.max_input,
        min_outputs=spec.min_output,
        max_outputs=spec.max_output,
        attrs=attrs,
        doc=spec.doc or "",
        deterministic=op not in _NONDETERMINISTIC,
    )


def newest_onnx_opset() -> int:
    """The newest default-domain opset the installed ``onnx`` package knows."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def schema_for(node: "Node") -> OpSchema | None:
    return lookup(node.domain, node.op, node.version)
