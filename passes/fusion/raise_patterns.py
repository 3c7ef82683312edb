"""``raise-patterns``: every raising family in one rewrite run (what the presets use).

The families, each also a pass of its own (see its module for the math and the cases):

==========================  ==========================  =====================================
pass                        module                      raises to (ONNX op from opset / kiln)
==========================  ==========================  =====================================
``raise-norm``              :mod:`.norm`                LayerNormalization 17 / kiln.LayerNorm,
                                                        RMSNormalization 23 / kiln.RMSNorm
``raise-gelu``              :mod:`.gelu`                Gelu 20 / kiln.Gelu
``raise-swish``             :mod:`.swish`               Swish 24 / kiln.Swish, HardSwish 14 /
                                                        kiln.HardSwish, HardSigmoid
``raise-softmax``           :mod:`.softmax`             Softmax
``raise-attention``         :mod:`.attention`           Attention 23 / kiln.Attention
``fuse-gemm``               :mod:`.gemm`                Gemm
==========================  ==========================  =====================================

``raise-channel-shuffle`` (:mod:`.shuffle`) is not part of it: it always makes a kiln op and
saves onnxruntime nothing.  Softmax is raised before attention is matched (a decomposed softmax
inside attention is raised first, then the attention around it).  ``onnx-only=true`` raises only
where the model's opset has the ONNX op (the ONNX presets); with the default, the kiln op stands
in below that opset (target pipelines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kiln.passes.fusion._raise import RaisePass
from kiln.passes.fusion.attention import ATTENTION_RULES
from kiln.passes.fusion.gelu import GELU_RULES
from kiln.passes.fusion.gemm import GEMM_RULES
from kiln.passes.fusion.norm import NORM_RULES
from kiln.passes.fusion.softmax import SOFTMAX_RULES
from kiln.passes.fusion.swish import SWISH_RULES
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RuleSet

RAISE_RULES = RuleSet(
    [NORM_RULES, GELU_RULES, SWISH_RULES, SOFTMAX_RULES, ATTENTION_RULES, GEMM_RULES], name="raise-patterns"
)


@register_pass
@dataclass(frozen=True)
class RaisePatterns(RaisePass):
    """Raises decomposed LayerNorm/RMSNorm, GELU, Swish/HardSwish, Softmax, attention and Gemm to single ops."""

    name: ClassVar[str] = "raise-patterns"
    rules: ClassVar[RuleSet] = RAISE_RULES


__all__ = ["RAISE_RULES", "RaisePatterns"]
