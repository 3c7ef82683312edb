"""kiln.calib: calibration data, the streaming executor, histograms, calibrators and tables.

::

    import kiln
    from kiln.calib import calibrate

    graph = kiln.load("model.onnx")
    result = calibrate(graph, "calib_images/", "entropy", count=256, workers=2,
                       image=ImageOptions(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    result.ranges["conv1_out"].threshold

Quantizing goes through the ``quantize`` pass, which reads a
:class:`CalibrationConfig` (or a finished :class:`CalibrationResult`) from
``PassContext.calibration``::

    ctx = kiln.PassContext(calibration=CalibrationConfig("calib.npy", count=64))
    kiln.optimize(graph, pipeline="O2,quantize{calibrator=entropy}", ctx=ctx)
    ctx.extra["calibration"].write("out", "model")   # the JSON, TensorRT and ncnn tables

See :mod:`kiln.calib.histogram` (exact merging), :mod:`kiln.calib.kl`
(TensorRT's KL search), :mod:`kiln.calib.calibrators`, :mod:`kiln.calib.data`
(sources), :mod:`kiln.calib.executor` (streaming, workers) and
:mod:`kiln.calib.table` (file formats).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.calib.calibrators import (
    CALIBRATORS,
    DEFAULT_PERCENTILE,
    ENTROPY_FLOOR_DB,
    TensorRange,
    compute_ranges,
)
from kiln.calib.data import InputSpec, Source, input_specs, open_source
from kiln.calib.executor import collect
from kiln.calib.histogram import NUM_BINS, CalibrationStats, TensorHistogram
from kiln.calib.images import ImageOptions
from kiln.calib.table import CalibrationResult, LayerInfo, WeightScales, read_json


@dataclass
class CalibrationConfig:
    """Calibration data and how to read it; what ``PassContext.calibration`` holds for ``quantize``.

    Attributes:
        data: a path (``.npy``, ``.npz``, a folder of them or of images, a
            ``.json`` calibration table to reuse), ``"random"``/``"random:N"``,
            arrays by input name, an iterable of samples, a
            :class:`~kiln.calib.data.Source`, or precomputed
            :class:`CalibrationStats` / :class:`CalibrationResult`.
        count: a seeded random subsample of this many samples.
        seed: the subsample's (and random data's) seed.
        batch_size: samples per onnxruntime run (default: the model's batch, else 1).
        workers: processes (``--calib-workers``).
        image: preprocessing of image folders.
        progress: draw a progress bar (default: when stderr is a terminal).
        random_shapes: input shapes for ``random`` data where the model's are dynamic.
    """

    data: Any
    count: int | None = None
    seed: int = 0
    batch_size: int | None = None
    workers: int = 1
    image: ImageOptions | None = None
    progress: bool | None = None
    random_shapes: Mapping[str, Sequence[int]] | None = None

    def source(self, specs: Sequence[InputSpec]) -> Source:
        return open_source(self.data, specs, image_options=self.image, random_shapes=self.random_shapes,
                           seed=self.seed)

    def collect(self, graph: Any, tensors: Iterable[str] | None = None, *, histograms: bool = True) -> CalibrationStats:
        """Runs the executor on ``graph`` for ``tensors`` (all float tensors by default).

        ``histograms=False`` collects min, max and counts only (``minmax``).
        """
        specs = input_specs(graph)
        return collect(graph, self.source(specs), tensors=tensors, count=self.count, seed=self.seed,
                       batch_size=self.batch_size, workers=self.workers, progress=self.progress, specs=specs,
                       histograms=histograms)


def calibrate(graph: Any, data: Any, calibrator: str = "entropy", *, count: int | None = None, seed: int = 0,
              batch_size: int | None = None, workers: int = 1, image: ImageOptions | None = None,
              tensors: Iterable[str] | None = None, percentile: float = DEFAULT_PERCENTILE,
              progress: bool | None = None, entropy_floor: float = ENTROPY_FLOOR_DB) -> CalibrationResult:
    """Calibrates the float tensors of ``graph`` on ``data``; returns their ranges.

    Args: as :class:`CalibrationConfig`, plus ``calibrator`` (one of
    :data:`CALIBRATORS`), ``tensors`` (value names; default every float
    tensor), ``percentile`` (for ``percentile``) and ``entropy_floor`` (the
    entropy calibrator's guard, :mod:`kiln.calib.calibrators`; 0: TensorRT's
    search alone).
    """
    start = time.perf_counter()
    config = CalibrationConfig(data, count=count, seed=seed, batch_size=batch_size, workers=workers,
                               image=image, progress=progress)
    stats = data if isinstance(data, CalibrationStats) else config.collect(graph, tensors,
                                                                          histograms=calibrator != "minmax")
    ranges = compute_ranges(stats, calibrator, percentile=percentile, entropy_floor=entropy_floor)
    return CalibrationResult(calibrator, stats.samples, ranges, seconds=time.perf_counter() - start)


__all__ = [
    "CALIBRATORS",
    "NUM_BINS",
    "CalibrationConfig",
    "CalibrationResult",
    "CalibrationStats",
    "ImageOptions",
    "InputSpec",
    "LayerInfo",
    "Source",
    "TensorHistogram",
    "TensorRange",
    "WeightScales",
    "calibrate",
    "collect",
    "compute_ranges",
    "input_specs",
    "open_source",
    "read_json",
]
