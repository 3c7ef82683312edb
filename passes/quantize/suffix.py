"""Running only what quantizing one layer changes: the shortcut of the sensitivity measurement.

A layer's sensitivity (:mod:`kiln.passes.quantize.sensitivity`) is the model's output SQNR with only that
layer quantized.  Every node that does not depend on the layer computes exactly what the float model
computes, so it need not run again for each layer.  :class:`SuffixRuns` runs the float model once per
probe sample and keeps the values that cross into each layer's *suffix* (the layer and every node that
depends on it); each layer is then measured by running its suffix alone, on those values, with the same
Q/DQ patch as the whole-model measurement.  The figures are the whole-model ones (the same nodes compute
the same values; onnxruntime may pick another kernel layout for a cut graph, which moves a value in its
last float bits); a layer halfway down a network costs about half a run instead of a whole one.

What it holds: the values some suffix of a group of consecutive layers reads from outside itself, for
every probe sample, at most :data:`MAX_RECORD_BYTES` (sized on the first sample); one float run records
each group.  A layer whose own values would not fit, and every layer of a graph with subgraphs (an If or
Loop body reads outer values by name, which a cut would have to follow), runs the whole model instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from kiln.passes.quantize.placement import Layer

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 256 << 20
"""The most the recorded crossing values of a group of layers, all probe samples together, may take."""


def _has_subgraphs(graph: Any) -> bool:
    return any(attr.HasField("g") or len(attr.graphs) for node in graph.node for attr in node.attribute)


def _reach(nodes: Sequence[Any], seeds: set[int]) -> list[int]:
    """Indices of the seed nodes and of every node that reads (transitively) what they write, in order
    (``nodes`` is topologically sorted, as kiln exports it)."""
    reached: list[int] = []
    written: set[str] = set()
    first = min(seeds)
    for i in range(first, len(nodes)):
        node = nodes[i]
        if i in seeds or any(name in written for name in node.input if name):
            reached.append(i)
            written.update(node.output)
    return reached


def _crossing(nodes: Sequence[Any], kept: list[int], constants: set[str], initializers: set[str]) -> list[str]:
    """What the ``kept`` nodes read from outside themselves (initializers and Constant-node outputs aside), in
    first-read order."""
    written = {name for i in kept for name in nodes[i].output}
    seen: dict[str, None] = {}
    for i in kept:
        for name in nodes[i].input:
            if name and name not in written and name not in initializers and name not in constants:
                seen.setdefault(name, None)
    return list(seen)


class SuffixRuns:
    """The probe's float values at the layers' cuts, and the means to measure a layer on its suffix alone.

    The layers are taken in groups, in order, whose crossing values for all probe samples fit in
    :data:`MAX_RECORD_BYTES`; each group's values are recorded by one float run when its first layer is
    measured, and dropped for the next group's.  A layer whose own values do not fit runs the whole model.
    """

    def __init__(self, probe: Any, crossing: dict[str, list[str]], groups: list[list[str]],
                 constants: dict[str, Any]) -> None:
        self.probe = probe
        self.crossing = crossing  # layer name -> the values its suffix reads from outside
        self.groups = groups  # per group: the values to record
        self.group_of: dict[str, int] = {}  # layer name -> its group (absent: too large, the whole model runs)
        self.constants = constants  # Constant-node output -> the node
        self.records: list[dict[str, np.ndarray]] = []  # per probe feed: value name -> float array
        self.recorded = -1  # the group whose values self.records holds

    @staticmethod
    def prepare(probe: Any, layers: Sequence[Layer]) -> SuffixRuns | None:
        """Plans the groups of ``layers`` from one float run on the first probe sample; None where the shortcut
        does not apply (subgraphs)."""
        graph = probe.base.graph
        if _has_subgraphs(graph) or not layers:
            return None
        nodes = list(graph.node)
        index_of = {out: i for i, node in enumerate(nodes) for out in node.output}
        constants = {node.output[0]: node for node in nodes if node.op_type == "Constant" and not node.input}
        initializers = {init.name for init in graph.initializer}
        crossing: dict[str, list[str]] = {}
        for layer in layers:
            start = index_of.get(layer.node.outputs[0].name)
            if start is None:
                return None
            crossing[layer.name] = _crossing(nodes, _reach(nodes, {start}), set(constants), initializers)
        runs = SuffixRuns(probe, crossing, [], constants)
        wanted = list(dict.fromkeys(name for names in crossing.values() for name in names))
        first = runs._record(wanted, probe.feeds[:1])[0]
        share = {name: first[name].nbytes * len(probe.feeds) for name in wanted}  # all samples, if alike
        group: dict[str, None] = {}
        for layer in layers:
            own = crossing[layer.name]
            if sum(share[name] for name in own) > MAX_RECORD_BYTES:
                logger.info("sensitivity: %s reads %.0f MB of values at its cut (over %.0f MB): it runs the whole "
                            "model", layer.name, sum(share[n] for n in own) / 2**20, MAX_RECORD_BYTES / 2**20)
                continue
            grown = {**group, **dict.fromkeys(own)}
            if sum(share[name] for name in grown) > MAX_RECORD_BYTES:
                runs.groups.append(list(group))
                grown = dict.fromkeys(own)
            group = grown
            runs.group_of[layer.name] = len(runs.groups)
        if group:
            runs.groups.append(list(group))
        return runs

    def _record(self, names: list[str], feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Per feed, the float values of ``names`` (one run of the float model with them as outputs); the probe's
        float outputs on the way, where it has none yet."""
        from onnx import helper

        probe = self.probe
        graph_inputs = {v.name for v in probe.base.graph.input}
        fetch = [name for name in names if name not in graph_inputs]  # the graph's inputs come from the feeds
        outputs = probe.outputs if probe._reference is None and feeds is probe.feeds else []
        recorder = probe._copy()
        declared = {v.name for v in recorder.graph.output}
        types = {v.name: v for v in recorder.graph.value_info}
        for name in fetch:
            if name not in declared:
                recorder.graph.output.append(types[name] if name in types else helper.make_empty_tensor_value_info(name))
        records: list[dict[str, np.ndarray]] = []
        reference: list[np.ndarray] = []
        for feed, got in zip(feeds, probe._run_each(recorder, fetch + outputs, feeds=feeds)):
            record = dict(zip(fetch, got[:len(fetch)]))
            record.update((name, np.asarray(feed[name])) for name in names if name in graph_inputs)
            records.append(record)
            reference.extend(got[len(fetch):])
        if outputs:
            probe._reference = reference
        return records

    def output_sqnr(self, layer: Layer) -> float:
        """The model's output SQNR (all outputs, all probe samples) with only ``layer`` quantized."""
        from kiln.passes.quantize.sensitivity import _TAG, _patch
        from kiln.quant.metrics import sqnr_db
        from onnx import helper

        probe = self.probe
        group = self.group_of.get(layer.name)
        if group is None:
            return float(probe.output_sqnr([layer]))
        if group != self.recorded:
            self.records, self.recorded = [], -1  # the last group's values go before the next group's come
            self.records, self.recorded = self._record(self.groups[group], probe.feeds), group
        model = probe._copy()
        _patch(model, [layer], probe.ranges)
        graph = model.graph
        nodes = list(graph.node)
        seeds = {i for i, node in enumerate(nodes)
                 if node.output and (node.output[0].startswith(_TAG) or node.output[0] == layer.node.outputs[0].name)}
        kept = _reach(nodes, seeds)
        kept_set = set(kept)
        reads = {name for i in kept for name in nodes[i].input}
        constant_nodes = [node for i, node in enumerate(nodes)
                          if i not in kept_set and node.output and node.output[0] in self.constants
                          and node.output[0] in reads]
        crossing = self.crossing[layer.name]
        written = {name for i in kept for name in nodes[i].output}
        outputs = [name for name in probe.outputs if name in written]
        if not outputs:  # the layer reaches no output: quantizing it changes nothing the model returns
            return math.inf
        first = self.records[0]
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(first[name].dtype),
                                                [None] * first[name].ndim) for name in crossing]
        del graph.node[:]
        graph.node.extend(constant_nodes + [nodes[i] for i in kept])
        del graph.input[:]
        graph.input.extend(inputs)
        kept_outputs = [o for o in graph.output if o.name in written]
        del graph.output[:]
        graph.output.extend(kept_outputs)
        session = probe._session(model)
        got: list[np.ndarray] = []
        position = {name: k for k, name in enumerate(probe.outputs)}
        reference = probe.reference
        width = len(probe.outputs)
        for f, record in enumerate(self.records):
            values = session.run(outputs, {name: record[name] for name in crossing})
            row = list(reference[f * width:(f + 1) * width])  # outputs the layer does not reach stay float
            for name, value in zip(outputs, values):
                row[position[name]] = value
            got.extend(row)
        return sqnr_db(reference, got)
