"""``compile(model, target, out_dir, ...)``: load, optimize, legalize, emit.

The one function behind ``kiln compile`` and ``kiln.compile``::

    result = compile("resnet50.onnx", "onnx", "out", level=2)
    print(result.summary())   # kiln: resnet50.onnx -> out/resnet50.onnx  nodes 122 -> 57 ...

Targets are a table: a name maps to the package ``kiln.codegen.<name>``,
which provides ``legalize_pipeline(options) -> str``,
``emit(graph, out_dir, stem, options) -> list[Path]`` and, where its
``--fp16``/``--int8`` mean something else than the generic passes (ncnn and
TFLite store float16 *weights*), ``precision_pipeline(int8, fp16, qopts)``.
The optimization pipeline (a preset or the caller's text), the precision
passes and the target's legalization run as one pipeline under one pass
manager.  ``emit`` always finds ``fp16``, ``int8``, ``input_shapes`` and ``pipeline`` (the whole pipeline text) in
its options, then the user's target options (:data:`TARGET_OPTIONS`).

Artifacts are emitted into a private staging folder inside ``out_dir`` and
renamed into place only when everything succeeded, so a failure leaves no
file behind (and no ``out_dir`` when this call created it).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kiln.driver.options import (
    InputShapes,
    ShapeRanges,
    format_size,
    parse_input_shape_ranges,
    parse_input_shapes,
    require_file,
    shapes_for_load,
)
from kiln.errors import UsageError
from kiln.ir.core import Graph

# Target name -> the package that generates code for it (see kiln.codegen).
TARGETS: dict[str, str] = {
    "onnx": "kiln.codegen.onnx",
    "ncnn": "kiln.codegen.ncnn",
    "tflite": "kiln.codegen.tflite",
    "tensorrt": "kiln.codegen.tensorrt",
}

# Target options the command line offers; each target's ``emit`` refuses the
# ones that are not for it, so ``--nhwc-io -t ncnn`` is a clear error.
TARGET_OPTIONS: dict[str, str] = {
    "nhwc_io": "--nhwc-io",
    "int8_io": "--int8-io",
    "param_bin": "--param-bin",
    "c_header": "--c-header",
    "onnx_contrib": "--onnx-contrib",
    "workspace": "--workspace",
    "timing_cache": "--timing-cache",
    "builder_optimization_level": "--builder-optimization-level",
    "strongly_typed": "--strongly-typed",
}

# Keys every target's ``emit`` finds in its options, whatever the user asked.
STANDARD_OPTIONS = ("fp16", "int8", "input_shapes", "pipeline")

DEFAULT_LEVEL = 2


@dataclass
class CompileResult:
    """What :func:`compile` did.

    Attributes:
        source: the model as given (a path, or ``None`` for an in-memory graph).
        target: the target name.
        out_dir: the output folder as given.
        artifacts: the files written, the main artifact first.
        level: the preset level, or ``None`` when a pipeline was given.
        pipeline: the pipeline text that ran (optimization, then legalization).
        nodes_before / nodes_after: node counts, subgraphs included.
        size_before / size_after: bytes on disk (model plus its external data;
            the artifacts); ``size_before`` is ``None`` for an in-memory graph.
        seconds: wall time of the whole call.
        stats: the counters passes bumped on the pass context.
        report: the pass manager's ``PassReport`` (``None`` when no pass ran).
        graph: the optimized graph.
        calibration: with ``int8``, what quantization decided and measured
            (:class:`kiln.calib.table.CalibrationResult`; its ``report()`` is
            the per-layer report ``kiln compile`` prints).
    """

    source: str | None
    target: str
    out_dir: str
    artifacts: list[Path]
    level: int | None
    pipeline: str
    nodes_before: int
    nodes_after: int
    size_before: int | None
    size_after: int
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    report: Any = field(default=None, repr=False)
    graph: Graph | None = field(default=None, repr=False)
    calibration: Any = field(default=None, repr=False)

    def summary(self) -> str:
        """The one line ``kiln compile`` prints."""
        shown = os.path.join(self.out_dir, self.artifacts[0].name) if self.artifacts else self.out_dir
        if len(self.artifacts) > 1:
            shown += f" (+{len(self.artifacts) - 1} files)"
        before = format_size(self.size_before) if self.size_before is not None else "?"
        label = f"O{self.level}" if self.level is not None else "pipeline"
        stopped = getattr(self.report, "stopped_after", None)
        tail = f", stopped after {stopped}" if stopped else ""
        return (
            f"kiln: {self.source or '<graph>'} -> {shown}  nodes {self.nodes_before} -> {self.nodes_after}"
            f"  size {before} -> {format_size(self.size_after)}  {self.seconds:.2f} s  ({label}, {self.target}{tail})"
        )


def target_module(target: str) -> Any:
    """The codegen package of ``target``; a :class:`UsageError` for an unknown name."""
    if target not in TARGETS:
        raise UsageError(f"unsupported target {target!r} (supported: {', '.join(sorted(TARGETS))})")
    try:
        return importlib.import_module(TARGETS[target])
    except ModuleNotFoundError as exc:
        if exc.name != TARGETS[target]:
            raise
        raise UsageError(f"target {target!r} is not part of this kiln build") from None


def compile(
    model: str | os.PathLike[str] | Graph,
    target: str = "onnx",
    out_dir: str | os.PathLike[str] | None = None,
    *,
    level: int | None = DEFAULT_LEVEL,
    pipeline: str | None = None,
    input_shapes: InputShapes | Sequence[str] | None = None,
    fold_limit: int | None = None,
    debug_rules: bool = False,
    verify_each: bool = True,
    time_passes: bool = False,
    print_ir_after: Sequence[str] = (),
    print_ir_after_change: bool = False,
    dump_ir_dir: str | os.PathLike[str] | None = None,
    stop_after: str | None = None,
    load_passes: Iterable[str | os.PathLike[str]] = (),
    options: Mapping[str, Any] | None = None,
    stem: str | None = None,
    log: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
    int8: bool = False,
    fp16: bool = False,
    calibration: Any = None,
    quantize_options: Mapping[str, Any] | None = None,
) -> CompileResult:
    """Compiles ``model`` for ``target`` into ``out_dir``.

    Args:
        model: an ONNX file, or a loaded :class:`Graph` (optimized in place).
        target: a name from :data:`TARGETS`.
        out_dir: the output folder; created when missing.
        level: the preset ``O0``..``O3``; ignored when ``pipeline`` is given.
        pipeline: a pipeline string that replaces the preset.
        input_shapes: input name -> dims (ints or symbol names), or
            ``--input-shape`` strings (``"x:1,3,224,224"``); for the
            tensorrt target a dim may also be a ``(min, opt, max)`` range
            (``"x:1..8,3,224,224"``), which becomes its optimization profile.
        fold_limit: the largest constant (bytes) folding may create.
        debug_rules: log what every rewrite rule tried, refused and applied.
        verify_each: verify the IR after every pass.
        time_passes, print_ir_after, print_ir_after_change, dump_ir_dir,
            stop_after: pass-manager instruments; their output goes to ``log``.
        load_passes: plugin files whose passes to register first.
        options: target options.
        stem: the artifact's base name; defaults to the model file's stem
            (``model`` for a Graph: names inside a model never become paths).
        log: where instruments write (default ``sys.stderr``).
        progress: called with a short text as each stage starts.
        int8: quantize to int8 (the ``quantize`` pass after the optimization
            pipeline); ``calibration`` (a :class:`kiln.calib.CalibrationConfig`,
            statistics or a table) feeds it, ``quantize_options`` are its
            options; the calibration tables are written beside the model
            (``<stem>.calib.json``, ``.trt.cache``, ``.ncnn.table``).
        fp16: convert float32 to float16 (the ``fp16`` pass).

    Raises:
        kiln.errors.KilnError: any user-caused failure (the subclass says what).
    """
    start = time.perf_counter()
    log = log if log is not None else sys.stderr
    note = progress or (lambda _text: None)
    codegen = target_module(target)
    if out_dir is None:
        raise UsageError("compile needs an output folder (-o OUTDIR)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {os.fspath(out_dir)}: exists and is not a folder")
    # A target that builds for a range of shapes (TensorRT's optimization
    # profiles) takes NAME:MIN..MAX dims: the model loads with those dims
    # symbolic, and the target gets the ranges.
    if getattr(codegen, "SHAPE_RANGES", False):
        ranges = _as_shape_ranges(input_shapes)
        shapes, target_shapes = shapes_for_load(ranges), ranges
    else:
        shapes = _as_input_shapes(input_shapes)
        target_shapes = shapes

    source: str | None = None
    if not isinstance(model, Graph):
        source = os.fspath(model)
        require_file(source)
    stem = stem or (Path(source).stem if source else "model")
    if not stem or stem in (".", "..") or os.sep in stem or (os.altsep and os.altsep in stem):
        raise UsageError(f"artifact name {stem!r} is not a plain file name")

    from kiln.calib.cli import precision_pipeline

    if int8 and calibration is None:
        raise UsageError("int8 quantization needs calibration data (--calib DATA)")
    target_options = _target_options(options, int8=int8, fp16=fp16, input_shapes=target_shapes)
    # A target may give the precision flags its own meaning: ncnn's and
    # TFLite's --fp16 store weights in float16 rather than converting the graph.
    precision_for = getattr(codegen, "precision_pipeline", precision_pipeline)
    precision = precision_for(int8, fp16, quantize_options)
    level, full_text, parsed = _prepare_pipeline(
        codegen, level, pipeline, load_passes, precision, target_options
    )
    target_options["pipeline"] = full_text  # what made the artifact, for targets that record it (TFLite metadata)
    instruments = _instruments(
        time_passes=time_passes,
        print_ir_after=list(print_ir_after),
        print_ir_after_change=print_ir_after_change,
        dump_ir_dir=dump_ir_dir,
        stop_after=stop_after,
        log=log,
    )

    if isinstance(model, Graph):
        graph = model
    else:
        note(f"loading {source}")
        graph = _load(source, shapes)  # type: ignore[arg-type]
    _check_shape_names(graph, shapes, source)
    nodes_before = count_nodes(graph)
    size_before = _source_bytes(source, graph) if source else None

    from kiln.passmanager.base import PassContext
    from kiln.passmanager.manager import PassManager

    ctx = PassContext(target=target, debug_rules=debug_rules, calibration=calibration)
    if fold_limit is not None:
        ctx.fold_limit = fold_limit
    report = None
    if parsed is not None:
        note("optimizing")
        if progress is not None:
            instruments.append(_progress_instrument(progress))
        report = PassManager(parsed, verify_each=verify_each, instruments=instruments).run(graph, ctx)
    nodes_after = count_nodes(graph)

    note(f"writing {target}")
    protect = {os.path.realpath(p) for p in _source_files(source, graph)} if source else set()
    calibrated = ctx.extra.get("calibration") if int8 else None
    extra = calibrated.files(stem) if calibrated is not None else None
    artifacts = _emit(codegen, graph, out, stem, target_options, protect, extra)
    return CompileResult(
        source=source,
        target=target,
        out_dir=os.fspath(out_dir),
        artifacts=artifacts,
        level=level,
        pipeline=full_text,
        nodes_before=nodes_before,
        nodes_after=nodes_after,
        size_before=size_before,
        size_after=sum(p.stat().st_size for p in artifacts),
        seconds=time.perf_counter() - start,
        stats=dict(ctx.stats),
        report=report,
        graph=graph,
        calibration=calibrated,
    )


# --------------------------------------------------------------------------- helpers


def _prepare_pipeline(
    codegen: Any,
    level: int | None,
    pipeline: str | None,
    load_passes: Iterable[str | os.PathLike[str]],
    precision: str = "",
    target_options: Mapping[str, Any] | None = None,
) -> tuple[int | None, str, Any]:
    """Registers plugin files, then parses preset-or-pipeline plus the target's legalization.

    Parsing comes before the (possibly long) model load, so a typo fails fast.
    Returns the level (``None`` for a custom pipeline), the full text, and the
    parsed pipeline (``None`` when there is nothing to run).
    """
    from kiln.passmanager import registry
    from kiln.passmanager.pipeline import Pipeline

    for plugin in load_passes:
        registry.load_pass_file(require_file(plugin, "--load-pass"))
    if pipeline is not None:
        level, opt_text = None, pipeline
    else:
        level = DEFAULT_LEVEL if level is None else level
        opt_text = _preset(level)
    legalize = codegen.legalize_pipeline(dict(target_options or {}))
    parts = (opt_text.strip(), precision.strip(), legalize.strip())
    full_text = ",".join(t for t in parts if t)
    return level, full_text, Pipeline.parse(full_text) if full_text else None


def _target_options(
    options: Mapping[str, Any] | None, *, int8: bool, fp16: bool, input_shapes: Mapping[str, Any]
) -> dict[str, Any]:
    """The options ``emit`` receives: the standard keys, then the user's truthy target options."""
    merged: dict[str, Any] = {"fp16": fp16, "int8": int8, "input_shapes": dict(input_shapes)}
    for key, value in (options or {}).items():
        if key in STANDARD_OPTIONS:
            raise UsageError(f"target option {key!r} is set by compile() itself")
        if value not in (None, False):
            merged[key] = value
    return merged


def _preset(level: int) -> str:
    """Preset ``-O<level>`` as pipeline text: its bundle name (``O2``)."""
    from kiln.passmanager.presets import preset_name

    try:
        return preset_name(level)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _progress_instrument(progress: Callable[[str], None]) -> Any:
    """An instrument that reports each pass as it starts."""
    from kiln.passmanager.instruments import PassInstrument

    class _Progress(PassInstrument):
        def before_pass(self, pass_: Any, graph: Graph, run: Any) -> None:
            progress(f"optimizing: {pass_.name} (pass {len(run.records) + 1}, {len(graph)} nodes)")

    return _Progress()


def _instruments(
    *,
    time_passes: bool,
    print_ir_after: list[str],
    print_ir_after_change: bool,
    dump_ir_dir: str | os.PathLike[str] | None,
    stop_after: str | None,
    log: TextIO,
) -> list[Any]:
    """The pass-manager instruments the options ask for; those that print write to ``log``."""
    from kiln.passmanager import instruments as ins

    chosen: list[Any] = []
    if time_passes:
        chosen.append(ins.TimePasses(stream=log))
    if print_ir_after:
        chosen.append(ins.PrintIRAfter(print_ir_after, stream=log))
    if print_ir_after_change:
        chosen.append(ins.PrintIRAfterChange(stream=log))
    if dump_ir_dir is not None:
        chosen.append(ins.DumpIRDir(dump_ir_dir))
    if stop_after:
        chosen.append(ins.StopAfter(stop_after))
    return chosen


def load_model(path: str | os.PathLike[str], input_shapes: InputShapes | Sequence[str] | None = None) -> Graph:
    """Loads an ONNX file through the frontend after checking the file and the shapes."""
    source = os.fspath(path)
    require_file(source)
    shapes = _as_input_shapes(input_shapes)
    graph = _load(source, shapes)
    _check_shape_names(graph, shapes, source)
    return graph


def _load(source: str, shapes: InputShapes) -> Graph:
    from kiln import frontend

    if shapes:
        return frontend.load(source, input_shapes=shapes)
    return frontend.load(source)


def _as_input_shapes(value: InputShapes | Sequence[str] | None) -> InputShapes:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): tuple(v) for k, v in value.items()}
    if isinstance(value, str):
        value = [value]
    return parse_input_shapes(value)


def _as_shape_ranges(value: ShapeRanges | Sequence[str] | None) -> ShapeRanges:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): tuple(tuple(d) if isinstance(d, (list, tuple)) else d for d in v) for k, v in value.items()}
    if isinstance(value, str):
        value = [value]
    return parse_input_shape_ranges(value)


def _check_shape_names(graph: Graph, shapes: InputShapes, source: str | None) -> None:
    names = [v.name for v in graph.inputs]
    for name in shapes:
        if name not in names:
            listed = ", ".join(names) or "none"
            raise UsageError(f"--input-shape names {name!r}, which is not an input (inputs: {listed})", file=source)


def count_nodes(graph: Graph) -> int:
    """Nodes of the graph and of every subgraph."""
    return sum(1 for _ in graph.walk())


def _source_files(source: str, graph: Graph) -> list[str]:
    """The model file and every external-data file its constants map."""
    files = [source]
    seen = {os.path.realpath(source)}
    for g in graph.all_graphs():
        for value in g.constants.values():
            ext = value.const.external if value.const is not None else None
            if ext is not None and os.path.realpath(ext.path) not in seen:
                seen.add(os.path.realpath(ext.path))
                files.append(ext.path)
    return files


def _source_bytes(source: str, graph: Graph) -> int:
    return sum(os.path.getsize(p) for p in _source_files(source, graph) if os.path.exists(p))


def _emit(
    codegen: Any,
    graph: Graph,
    out: Path,
    stem: str,
    options: Mapping[str, Any] | None,
    protect: set[str],
    extra: Mapping[str, str] | None = None,
) -> list[Path]:
    """Emits into a staging folder inside ``out`` and renames the files into place.

    ``extra`` maps more file names to their text (the calibration tables).
    """
    created = _missing_parents(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kiln-", dir=out)).resolve()
    try:
        listed = [(staging / p).resolve() for p in codegen.emit(graph, staging, stem, dict(options or {}))]
        for name, text in (extra or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
            listed.append((staging / name).resolve())
        files = listed + sorted(p for p in staging.rglob("*") if p.is_file() and p not in listed)
        moves = [(f, out / f.relative_to(staging)) for f in files]
        for _, dest in moves:
            if os.path.realpath(dest) in protect:
                raise UsageError(f"refusing to overwrite the input {dest}; choose another -o")
        for src, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        return [dest for _, dest in moves]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its missing ancestors, outermost first (what mkdir will create)."""
    missing: list[Path] = []
    p = folder.absolute()
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    return list(reversed(missing))
