"""The ``tensorrt`` target: a TensorRT network-definition program, its weights, and a Q/DQ ONNX.

``kiln compile MODEL -t tensorrt -o OUT`` writes:

* ``<stem>.trt.py``: Python source that builds the network through the
  TensorRT 10/11 API (strongly typed, explicit quantization with
  ``add_quantize``/``add_dequantize``; nothing of the implicit-quantization
  API that TensorRT 11 removed), configures the builder (optimization profile
  from ``--input-shape NAME:MIN..MAX`` ranges, ``--workspace``,
  ``--builder-optimization-level``, ``max_aux_streams`` from kiln's
  multi-stream analysis) and serializes the engine;
* ``<stem>.weights.npz``: the weights it loads (``allow_pickle=False``);
* ``<stem>.qdq.onnx``: the same graph as ONNX for ``trtexec`` users: with
  ``--int8`` the Q/DQ form of kiln's ``quantize`` pass (TensorRT's placement
  rules), else the float model;
* where ``tensorrt`` imports and a GPU is present, also ``<stem>.engine`` and
  ``<stem>.timing.cache`` (the program is run right away).  Elsewhere the
  program is the artifact, and the engine is built later on a GPU machine in
  two commands::

      kiln compile model.onnx -t tensorrt -o out/
      python out/model.trt.py --engine out/model.engine --timing-cache out/model.timing.cache

``--fp16`` runs kiln's ``fp16`` pass, so the program's tensors are float16
(a strongly typed network takes its precision from its tensors);
``--strongly-typed`` is accepted and changes nothing, since the network
always is.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from kiln.codegen.tensorrt.lower import lower, supported_ops
from kiln.codegen.tensorrt.program import BuildSettings, Range, render
from kiln.errors import UsageError
from kiln.ir.core import Graph

logger = logging.getLogger(__name__)

SUFFIX = ".trt.py"
SHAPE_RANGES = True
"""``--input-shape`` dims may be ``MIN..MAX`` ranges: they become the optimization profile."""
_STANDARD = ("fp16", "int8", "input_shapes", "pipeline")
_OWN = ("workspace", "timing_cache", "builder_optimization_level", "strongly_typed")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._+-]+\Z")

__all__ = ["SUFFIX", "emit", "legalize_pipeline", "supported_ops"]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def legalize_pipeline(options: Mapping[str, Any] | None = None) -> str:
    """The fusions TensorRT has single layers for (activations into Conv/Gemm, LayerNorm, GELU, attention)."""
    return "target-fusions,lift-1d"


def emit(graph: Graph, out_dir: str | Path, stem: str, options: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes the program, its weights and the Q/DQ ONNX (and the engine where TensorRT runs).

    Returns the files written, the main one first: the engine when it was
    built, else the program.  Raises :class:`UsageError` for an option of
    another target or a dynamic input without a ``--input-shape`` range, and
    :class:`kiln.errors.UnsupportedOpError` naming the node for an op
    TensorRT cannot express.
    """
    opts = dict(options or {})
    unknown = sorted(k for k, v in opts.items() if k not in _STANDARD + _OWN and v not in (None, False))
    if unknown:
        raise UsageError(f"target tensorrt has no option {_flag(unknown[0])}")
    out = Path(out_dir)
    settings = _settings(graph, opts)
    lowering = lower(graph)
    source = f"{stem}.onnx" if _PLAIN_NAME.match(stem) else "the model"
    doc_stem = stem if _PLAIN_NAME.match(stem) else "model"
    text = render(doc_stem, source, lowering.lines, settings, f"{stem}.weights.npz")
    program = out / f"{stem}{SUFFIX}"
    program.write_text(text, encoding="utf-8")
    weights = out / f"{stem}.weights.npz"
    write_npz(weights, lowering.weights)
    qdq = out / f"{stem}.qdq.onnx"
    from kiln.exporter import save

    onnx_files = [Path(p) for p in save(graph, qdq)]
    files = [program, weights, *onnx_files]

    reason = _builder_unavailable()
    if reason is None:
        engine = out / f"{stem}.engine"
        cache = out / f"{stem}.timing.cache"
        _build_engine(program, engine, cache, opts.get("timing_cache"))
        return [engine, program, weights, *onnx_files, cache]
    logger.warning("tensorrt: no engine built (%s); build it on a TensorRT machine with: "
                   "python %s --engine %s.engine", reason, program.name, stem)
    return files


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` whose bytes depend only on the arrays (fixed zip timestamps)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def _settings(graph: Graph, opts: Mapping[str, Any]) -> BuildSettings:
    level = opts.get("builder_optimization_level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5):
        raise UsageError(f"--builder-optimization-level {level!r}: must be an integer from 0 to 5")
    workspace = opts.get("workspace")
    if workspace is not None and (isinstance(workspace, bool) or not isinstance(workspace, int) or workspace <= 0):
        raise UsageError(f"--workspace {workspace!r}: must be a positive byte count")
    return BuildSettings(
        profiles=profiles_for(graph, opts.get("input_shapes") or {}),
        workspace=workspace,
        optimization_level=level,
        aux_streams=aux_streams(graph),
    )


def profiles_for(graph: Graph, shapes: Mapping[str, Any]) -> dict[str, Range]:
    """The optimization profile: (min, opt, max) of every input that has dynamic dims.

    ``shapes`` maps input names to dims from ``--input-shape``: ints, symbol
    names, or ``(min, opt, max)`` ranges.  A dynamic input dim needs a range
    (or a fixed int) there; a range on a dim the model has fixed is refused.
    """
    profiles: dict[str, Range] = {}
    for value in graph.inputs:
        dims = value.shape or ()
        given = tuple(shapes.get(value.name, ()))
        if given and len(given) != len(dims):
            raise UsageError(f"--input-shape {value.name}: {len(given)} dims for an input of rank {len(dims)}")
        if all(isinstance(d, int) for d in dims):
            for i, g in enumerate(given):
                if isinstance(g, tuple) and not g[0] == g[1] == g[2] == dims[i]:
                    raise UsageError(f"--input-shape {value.name}: dim {i} is a range, but the model was "
                                     f"loaded with it fixed at {dims[i]}")
            continue
        lo: list[int] = []
        opt: list[int] = []
        hi: list[int] = []
        for i, d in enumerate(dims):
            g = given[i] if given else None
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif isinstance(g, tuple):
                lo.append(int(g[0])), opt.append(int(g[1])), hi.append(int(g[2]))
            elif isinstance(g, int):
                lo.append(g), opt.append(g), hi.append(g)
            else:
                shown = ",".join(str(x) for x in dims)
                raise UsageError(f"input {value.name!r} has dynamic dims ({shown}); TensorRT needs their range: "
                                 f"--input-shape {value.name}:MIN..MAX per dynamic dim (e.g. 1..8)")
        profiles[value.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profiles


def aux_streams(graph: Graph) -> int | None:
    """``max_aux_streams`` from kiln's multi-stream analysis (``None`` when it cannot run)."""
    from kiln.memory import aux_stream_count
    from kiln.memory.dataflow import MemoryPlanError, build_dataflow
    from kiln.memory.streams import analyze_streams

    planned = aux_stream_count(graph)
    if planned is not None:
        return planned
    try:
        flow = build_dataflow(graph)
    except MemoryPlanError as exc:  # dynamic sizes: TensorRT's own heuristic decides
        logger.debug("tensorrt: no stream analysis (%s)", exc)
        return None
    return analyze_streams(flow, list(range(len(flow.nodes)))).aux_streams


def _builder_unavailable() -> str | None:
    """Why the engine cannot be built here, or ``None`` when TensorRT and a GPU are present."""
    from kiln.runtime.tensorrt import unavailable_reason

    return unavailable_reason()


def _build_engine(program: Path, engine: Path, cache: Path, user_cache: str | None) -> None:
    """Runs the program's ``build`` in this process (TensorRT is importable here)."""
    import shutil

    spec = importlib.util.spec_from_file_location("kiln_trt_program", program)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if user_cache is not None and Path(user_cache).is_file():
        shutil.copyfile(user_cache, cache)
    module.build(engine, cache)
    if user_cache is not None:
        shutil.copyfile(cache, user_cache)
