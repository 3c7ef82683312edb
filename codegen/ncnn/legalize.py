"""Graph-level ncnn rules applied to the lowered layer list.

ncnn lets a blob feed exactly one consumer: a blob read by several layers (or read by a
layer and also extracted as a graph output) gets a ``Split`` layer right after its
producer, and each reader takes its own copy (``Split`` copies nothing; its tops share
the data).  The pipeline text the target contributes to the pass manager is here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from kiln.codegen.ncnn.lower import Lowered
from kiln.codegen.ncnn.param import Layer, fresh_name

# Run after the preset and the precision passes.  ``target-fusions`` raises the ops ncnn
# has single layers for (activations into Conv/Gemm, LayerNorm, GELU, Swish, HardSwish,
# attention, channel shuffle); ``fuse-convtranspose-act`` gives Deconvolution its activation.
# No constant folding here: after ``quantize`` it would turn the int8 weights back into float.
PIPELINE = "target-fusions,fuse-convtranspose-act,remove-noops,dce"


def legalize_pipeline(options: Mapping[str, Any] | None = None) -> str:
    """The passes that make IR expressible as ncnn layers."""
    return PIPELINE


def insert_splits(lowered: Lowered) -> None:
    """Gives every blob with several readers a Split layer, in place."""
    readers: Counter[str] = Counter()
    for layer in lowered.layers:
        readers.update(layer.inputs)
    for out in lowered.outputs:
        readers[out.blob] += 1
    shared = {blob for blob, n in readers.items() if n > 1}
    if not shared:
        return
    result: list[Layer] = []
    copies: dict[str, list[str]] = {}
    taken = {name for layer in lowered.layers for name in layer.outputs}
    layer_names = {layer.name for layer in lowered.layers}

    def add_split(blob: str) -> None:
        tops = [fresh_name(f"{blob}_splitncnn_{i}", taken) for i in range(readers[blob])]
        copies[blob] = list(reversed(tops))  # popped from the end: readers in order
        result.append(Layer("Split", fresh_name(f"splitncnn_{blob}", layer_names), [blob], tops))

    for layer in lowered.layers:
        if layer.inputs:
            layer.inputs = [copies[b].pop() if b in copies else b for b in layer.inputs]
        result.append(layer)
        for top in layer.outputs:
            if top in shared:
                add_split(top)
    for out in lowered.outputs:
        if out.blob in copies:
            out.blob = copies[out.blob].pop()
    lowered.layers[:] = result


def count_blobs(layers: list[Layer]) -> int:
    return len({name for layer in layers for name in layer.outputs})
