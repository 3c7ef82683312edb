"""kiln: a graph-optimization compiler for neural networks.

The public API is imported lazily, so ``import kiln`` stays cheap (no onnx,
no onnxruntime) until a name is first used::

    import kiln

    graph = kiln.load("model.onnx", input_shapes={"x": [1, 3, 224, 224]})
    kiln.save(graph, "out.onnx")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load": "kiln.frontend:load",
    "to_onnx": "kiln.exporter:to_onnx",
    "save": "kiln.exporter:save",
    "ir": "kiln.ir",
    "Pipeline": "kiln.passmanager.pipeline:Pipeline",
    "Pass": "kiln.passmanager.base:Pass",
    "PassContext": "kiln.passmanager.base:PassContext",
    "optimize": "kiln.api:optimize",
    "compile": "kiln.driver.compile:compile",
    "register_pass": "kiln.passmanager.registry:register_pass",
}
"""Public name -> ``"module:attribute"`` (or just ``"module"`` for a module)."""

if TYPE_CHECKING:
    from kiln import ir
    from kiln.exporter import save, to_onnx
    from kiln.frontend import load


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Pass", "PassContext", "Pipeline", "compile", "ir", "load", "optimize", "save", "to_onnx"]
