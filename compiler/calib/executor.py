"""The calibration executor: onnxruntime on the exported IR, streaming batch by batch.

The graph is exported with :func:`kiln.to_onnx` and every tensor to calibrate
is added as a graph output.  Each batch runs once; each returned activation
is reduced into its :class:`~kiln.calib.histogram.TensorHistogram` and
dropped, so memory is at most two batches' activations plus the fixed-size
histograms, whatever the number of samples.  With ``histograms=False``
(``minmax``) only min, max and counts are kept.

Lanes.  On a machine with two or more cores the batches go to two *lanes*:
threads that each take the next batch, run it on one shared session with
half the cores, and reduce its activations into their own statistics, which
merge exactly at the end.  Both onnxruntime and the histogram kernels release
the GIL, so one lane's histograms run while the other lane's batch runs, and
onnxruntime's pool threads neither wait on a busy core nor pay for waking up
between the small ops of a small model.  On two cores, entropy calibration
of 64 samples takes 6-23% less wall time than one session on both cores with
the histograms on a helper thread beside it (PP-OCR det 1.81 -> 1.47x float
inference, cls 3.96 -> 3.05x, rec and timm resnet50 6%;
``benchmarks/results/calib*.md``).  The price is memory: each lane's run
holds its own onnxruntime buffers besides the arrays it returns (resnet50 at
batch 8: peak RSS 1.6 -> 3.3 GB; still bounded, whatever the number of
samples); a smaller ``--calib-batch`` lowers it.

``workers > 1`` splits the selected samples into chunks handed to worker
processes (``spawn``: no onnxruntime state is forked), each with its own
session and ``cores / workers`` threads.  Each chunk comes back as
histograms, which merge exactly (:mod:`kiln.calib.histogram`), so the result
is identical to a single-process run.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.calib.data import InputSpec, Source, batch_size_for, input_specs, iter_batches, iter_samples, select
from kiln.calib.histogram import NUM_BINS, CalibrationStats
from kiln.calib.progress import ProgressBar
from kiln.errors import KilnError, UsageError

logger = logging.getLogger(__name__)

def float_values(graph: Any) -> list[str]:
    """Names of the float tensors of the root graph: inputs, then node outputs in order."""
    names: list[str] = []
    for v in graph.inputs:
        if _is_float(v):
            names.append(v.name)
    for node in graph:
        for out in node.outputs:
            if _is_float(out):
                names.append(out.name)
    return names


def _is_float(value: Any) -> bool:
    from kiln.ir.dtypes import DType

    return value.dtype in (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)


def calibration_model(graph: Any, tensors: Iterable[str] | None = None) -> tuple[Any, list[str], list[str]]:
    """The graph as ONNX with every tensor to calibrate added as an output.

    Returns:
        (the ModelProto, output names to fetch, graph input names to observe from the feed).
    """
    import onnx
    from kiln.exporter import to_onnx
    from kiln.frontend.convert import type_to_proto

    wanted = list(dict.fromkeys(tensors)) if tensors is not None else float_values(graph)
    inputs = {v.name for v in graph.inputs}
    by_name = graph.value_by_name()
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise UsageError(f"cannot calibrate tensor {missing[0]!r}: the graph has no such value")
    proto = to_onnx(graph)
    existing = {o.name for o in proto.graph.output}
    fetch: list[str] = [o.name for o in proto.graph.output if o.name in set(wanted)]
    observed_inputs = [n for n in wanted if n in inputs]
    for name in wanted:
        if name in inputs or name in existing:
            continue
        value = by_name[name]
        if value.is_constant:
            continue
        info = onnx.ValueInfoProto(name=name)
        if value.type is not None:
            info.type.CopyFrom(type_to_proto(value.type))
        proto.graph.output.append(info)
        fetch.append(name)
    return proto, fetch, observed_inputs


def make_session(model: Any, threads: int | None = None, basic: bool = False,
                 initializers: dict[str, Any] | None = None) -> Any:
    """An onnxruntime CPU session on a path, bytes or ModelProto; ``basic``: only onnxruntime's basic graph
    optimizations (a session made for a few runs, where the full optimizer's time would outweigh what it
    saves); ``initializers``: the arrays of a ModelProto's detached initializers
    (:func:`kiln.runtime.onnxruntime.detach_initializers`), read in place."""
    import onnxruntime as ort
    from kiln.runtime.onnxruntime import session

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # onnxruntime's pool threads spin between ops by default; the histogram thread runs beside them
    # (see _run), and spinning threads would take its core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return session(model, options=options, initializers=initializers)
    except KilnError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise KilnError(f"onnxruntime cannot load the calibration model: {' '.join(str(cause).split())}") from exc


@dataclass
class _Job:
    """What a shard needs: picklable, and holding no array data."""

    model_path: str
    fetch: list[str]
    observed_inputs: list[str]
    source: Source
    specs: list[InputSpec]
    batch_size: int
    static_batch: bool
    num_bins: int
    threads: int | None
    histograms: bool = True
    lanes: int = 1


def _run(job: _Job, session: Any, indices: Sequence[int] | None, count: int | None,
         on_batch: Callable[[int], None] | None = None, lanes: int = 1) -> CalibrationStats:
    """Runs the selected samples' batches on ``session`` over ``lanes`` threads (module doc), each batch
    reduced by the lane that ran it and dropped; returns the merged statistics."""
    batches = iter_batches(iter_samples(job.source, indices, count, job.specs), job.specs, job.batch_size,
                           static_batch=job.static_batch)
    parts = [CalibrationStats(num_bins=job.num_bins, histograms=job.histograms) for _ in range(max(1, lanes))]
    lock = threading.Lock()  # guards the batch iterator and the progress callback
    stop = threading.Event()  # set when a lane ends, by running out of batches or by an error

    def next_batch() -> tuple[dict[str, Any], int] | None:
        with lock:
            return None if stop.is_set() else next(batches, None)

    def lane(stats: CalibrationStats) -> None:
        try:
            while (item := next_batch()) is not None:
                feed, n = item
                try:
                    outputs = session.run(job.fetch, feed)
                except Exception as exc:
                    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feed.items())
                    raise KilnError(f"onnxruntime failed on a calibration batch ({shapes}): "
                                    f"{' '.join(str(exc).split())}") from exc
                for name, arr in zip(job.fetch, outputs):
                    stats.observe(name, arr)
                for name in job.observed_inputs:
                    stats.observe(name, feed[name])
                del outputs, feed
                with lock:
                    stats.samples += n
                    if on_batch is not None:
                        on_batch(n)
        finally:
            stop.set()

    if len(parts) == 1:
        lane(parts[0])
    else:
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="kiln-calib-lane") as pool:
            lanes_running = [pool.submit(lane, stats) for stats in parts]
            try:
                for done in lanes_running:
                    done.result()  # a lane's error (a bad sample, a failed run) is raised here
            finally:
                stop.set()  # also on Ctrl-C in this thread: the lanes end after their current batch
    for other in parts[1:]:
        parts[0].merge(other)
    return parts[0]


def calibration_lanes(workers: int = 1) -> tuple[int, int | None]:
    """(lanes, onnxruntime threads per lane) for a process that has ``1 / workers`` of this machine's cores:
    two lanes of half the cores each where there are two cores or more (module doc), else one lane on
    onnxruntime's default threads."""
    cores = max(1, available_cores() // max(1, workers))
    if cores < 2:
        return 1, (1 if workers > 1 else None)
    return 2, cores // 2


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Worker-process state (one session per process).
_WORKER: dict[str, Any] = {}


def _worker_init(job: _Job) -> None:
    _WORKER["job"] = job
    _WORKER["session"] = make_session(job.model_path, job.threads)


def _worker_run(indices: list[int]) -> dict[str, Any]:
    job: _Job = _WORKER["job"]
    return _run(job, _WORKER["session"], indices, None, lanes=job.lanes).state()


def collect(
    graph: Any,
    source: Source,
    *,
    tensors: Iterable[str] | None = None,
    count: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    workers: int = 1,
    num_bins: int = NUM_BINS,
    progress: bool | None = None,
    specs: Sequence[InputSpec] | None = None,
    histograms: bool = True,
) -> CalibrationStats:
    """Runs ``graph`` on the calibration samples and returns the statistics of ``tensors``.

    Args:
        graph: a kiln graph (float).
        source: the samples (:func:`kiln.calib.data.open_source`).
        tensors: value names to calibrate (default: every float tensor).
        count: use a seeded random subsample of this many samples.
        seed: the subsample's seed.
        batch_size: samples per run (default: the model's static batch, else 1).
        workers: processes to spread the samples over (1: this process).
        num_bins: stored histogram bins per tensor.
        progress: draw a progress bar on stderr (default: when it is a terminal).
        specs: the graph's inputs (default: read from ``graph``).
        histograms: collect histograms (False: min, max and counts only, enough for ``minmax``).
    """
    specs = list(specs) if specs is not None else input_specs(graph)
    batch = batch_size_for(specs, batch_size)
    static = any(s.batch is not None for s in specs)
    indices = select(source, count, seed)
    total = len(indices) if indices is not None else (min(count, source.length) if count and source.length
                                                        else count or source.length)
    model, fetch, observed = calibration_model(graph, tensors)
    workers = max(1, int(workers))
    if workers > 1 and indices is None:
        raise UsageError("--calib-workers needs calibration data kiln can index (files, a folder, arrays), "
                         "not a one-shot iterable")
    if workers > 1 and indices is not None and len(indices) <= batch:
        workers = 1
    bar = ProgressBar(total, enabled=progress)
    try:
        if workers == 1:
            from kiln.runtime.onnxruntime import constant_arrays, detach_initializers

            lanes, threads = calibration_lanes()
            job = _Job("", fetch, observed, source, specs, batch, static, num_bins, threads, histograms, lanes)
            # The weights reach onnxruntime as the graph's own arrays, not through a serialized copy.
            session = make_session(model, threads,
                                   initializers=detach_initializers(model, constant_arrays(graph)))
            stats = _run(job, session, indices, count if indices is None else None, bar.update, lanes)
        else:
            assert indices is not None
            stats = _collect_parallel(model.SerializeToString(), fetch, observed, source, specs, batch, static,
                                      num_bins, indices, workers, bar, histograms)
    finally:
        bar.close()
    if stats.samples == 0:
        raise UsageError(f"calibration data {source.describe()} gave no samples")
    logger.info("calibrated %d tensors on %d samples (%.1f samples/s)", len(stats), stats.samples, bar.rate)
    return stats


def _collect_parallel(model: bytes, fetch: list[str], observed: list[str], source: Source,
                      specs: list[InputSpec], batch: int, static: bool, num_bins: int,
                      indices: list[int], workers: int, bar: ProgressBar, histograms: bool = True) -> CalibrationStats:
    import multiprocessing

    lanes, threads = calibration_lanes(workers)
    per_chunk = max(batch, math.ceil(len(indices) / (workers * 4)))
    per_chunk = math.ceil(per_chunk / batch) * batch
    chunks = [indices[i:i + per_chunk] for i in range(0, len(indices), per_chunk)]
    stats = CalibrationStats(num_bins=num_bins, histograms=histograms)
    with tempfile.TemporaryDirectory(prefix="kiln-calib-") as tmp:
        path = Path(tmp) / "calibration.onnx"
        path.write_bytes(model)
        job = _Job(os.fspath(path), fetch, observed, source, specs, batch, static, num_bins, threads, histograms,
                   lanes)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(job,)) as pool:
            pending = {pool.submit(_worker_run, chunk): len(chunk) for chunk in chunks}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    n = pending.pop(fut)
                    stats.merge(CalibrationStats.from_state(fut.result()))
                    bar.update(n)
    return stats
