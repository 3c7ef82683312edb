"""Optimization presets ``O0``..``O3``: named bundles over the built-in pass names.

A preset is only a pipeline string; it registers as a bundle, so it can
appear inside other pipelines (``O2,fuse-conv-bn``) and is parsed when used.
A preset naming a pass that is not (yet) registered fails with a clear error
when it is run, and the other presets are unaffected.

Later issues add to ``O2`` (fusion, layout) by editing :data:`PRESETS`;
``O3`` builds on ``O2``.  ``O2`` runs only the fusions that are exact (up to
the rounding of folded weights) and never add nodes -- ``fuse-bn``,
``fuse-bias``, ``fuse-pad``; activation fusion (``fuse-act``, which creates
``kiln.ConvAct``/``kiln.GemmAct``) belongs to the targets' legalization
pipelines, not to the ONNX presets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.passmanager.registry import PassRegistry

PRESETS: dict[str, tuple[str, str]] = {
    "O0": ("", "No optimization."),
    "O1": ("remove-noops,fold-shapes,fold,dce", "One round of cleanup and constant folding."),
    "O2": (
        "repeat{max=4}(remove-noops,fold-shapes,fold,fold-if,fuse-bn,fuse-bias,fuse-pad,cse,dce)",
        "Cleanup, folding, exact layer fusions (BatchNorm, bias, Pad) and common subexpressions to a fixed point.",
    ),
    "O3": ("O2", "Everything in O2 (more aggressive passes land here)."),
}
"""Preset name -> (pipeline string, summary)."""


def register_presets(registry: PassRegistry) -> None:
    """Registers every preset as a bundle of ``registry``."""
    for name, (pipeline, summary) in PRESETS.items():
        registry.add_bundle(name, pipeline, summary=summary, provider="kiln.passmanager.presets")


def preset_name(level: int) -> str:
    """``2`` -> ``"O2"``; raises ``ValueError`` for a level with no preset."""
    name = f"O{level}"
    if isinstance(level, bool) or not isinstance(level, int) or name not in PRESETS:
        raise ValueError(f"optimization level must be one of 0, 1, 2, 3, not {level!r}")
    return name
