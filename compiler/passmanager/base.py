"""The Pass base class and the context passes run in.

A pass is a small frozen dataclass: a kebab-case ``name``, a one-line
summary (its docstring's first line), typed option fields, and
``run(graph, ctx) -> bool`` that says whether it changed anything::

    @register_pass
    @dataclass(frozen=True)
    class FoldConstants(Pass):
        \"\"\"Evaluates nodes whose inputs are all constants.\"\"\"

        name: ClassVar[str] = "fold"
        limit: int = field(default=1 << 26, metadata={"doc": "largest folded output, bytes"})

        def run(self, graph: Graph, ctx: PassContext) -> bool: ...

Options are strings, numbers or booleans so a pipeline string can carry
them; anything else (calibration data, the target) lives on the
:class:`PassContext`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kiln.ir.core import Graph

logger = logging.getLogger(__name__)


class Pass:
    """Base class of every pass (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        if not dataclasses.is_dataclass(cls):
            return []
        return [f for f in dataclasses.fields(cls) if f.init]

    def option_values(self) -> dict[str, Any]:
        """Options that differ from their defaults, in declaration order."""
        values: dict[str, Any] = {}
        for f in self.options():
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING  # type: ignore[misc]
            )
            if value != default:
                values[f.name] = value
        return values


@dataclass
class PassContext:
    """Everything a pass may need that is not an option.

    Attributes:
        target: the codegen target name (``onnx``, ``ncnn`` ...) or ``None``.
        fold_limit: the largest constant (bytes) folding may create.
        calibration: calibration data or results, for quantization.
        debug_rules: whether rewrite rules explain refused matches.
        stats: counters that passes bump (``ctx.bump("fold.nodes")``).
        analyses: cached analyses, dropped whenever a pass reports a change.
        extra: free-form room for plugins.
    """

    target: str | None = None
    fold_limit: int = 1 << 30  # 1 GiB: folds real weights, refuses absurd expansions
    calibration: Any = None
    debug_rules: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    analyses: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def bump(self, counter: str, amount: int = 1) -> None:
        self.stats[counter] = self.stats.get(counter, 0) + amount

    def analysis(self, key: str, compute: Callable[[], Any]) -> Any:
        """A cached analysis result, computed on first request since the last change."""
        if key not in self.analyses:
            self.analyses[key] = compute()
        return self.analyses[key]

    def invalidate(self) -> None:
        self.analyses.clear()
