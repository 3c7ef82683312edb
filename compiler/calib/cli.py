"""The precision flags of ``kiln compile``: ``--int8``, ``--fp16``, ``--calib*``, ``--keep-float`` ...

:func:`add_arguments` adds them to the compile parser; :func:`compile_kwargs`
turns the parsed flags into the keyword arguments of
:func:`kiln.driver.compile.compile` (``int8``, ``fp16``, ``calibration``,
``quantize_options``); :func:`precision_pipeline` is the pipeline text the
driver appends after the optimization preset.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from kiln.calib.calibrators import CALIBRATORS, DEFAULT_PERCENTILE, ENTROPY_FLOOR_DB
from kiln.calib.images import RESIZE_MODES, ImageOptions
from kiln.errors import UsageError

_DEFAULTS: dict[str, Any] = {"calibrator": "entropy", "percentile": DEFAULT_PERCENTILE,
                             "entropy_floor": ENTROPY_FLOOR_DB, "skip_layers": (),
                             "skip_ops": (), "keep_float": 0, "min_sqnr": 0.0, "sensitivity_samples": 8, "check_samples": 32,
                             "report": True}
"""The quantize options the command sets, with the pass's defaults (a default is left out of the pipeline)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the precision and calibration flags to the ``compile`` parser."""
    g = p.add_argument_group("precision (int8 calibration, fp16)")
    g.add_argument("--int8", action="store_true",
                   help="quantize to int8 with Q/DQ (needs --calib); writes <stem>.calib.json, .trt.cache and "
                        ".ncnn.table beside the model")
    g.add_argument("--fp16", action="store_true", help="convert float32 to float16, keeping float32 where values overflow")
    g.add_argument("--calib", metavar="DATA",
                   help="calibration data: .npy ([N, ...] samples), .npz (by input name), a folder of them or of "
                        "images, a .calib.json table to reuse, or random[:N] (smoke runs only)")
    g.add_argument("--calib-table", metavar="FILE",
                   help="reuse the <stem>.calib.json of an earlier --int8 compile instead of calibrating (the "
                        "same ranges and the same layers kept in float)")
    g.add_argument("--calibrator", default="entropy", choices=CALIBRATORS,
                   help="how activation ranges are chosen (default entropy: TensorRT's KL search, guarded by "
                        "--entropy-floor)")
    g.add_argument("--calib-percentile", type=float, default=DEFAULT_PERCENTILE, metavar="P",
                   help=f"the percentile calibrator's P (default {DEFAULT_PERCENTILE})")
    g.add_argument("--entropy-floor", type=float, default=ENTROPY_FLOOR_DB, metavar="DB",
                   help="entropy: a tensor whose KL threshold leaves it below DB of SQNR on its own takes the "
                        f"mse threshold, if that is 3 dB better (default {ENTROPY_FLOOR_DB:g}; 0: TensorRT's search "
                        "alone)")
    g.add_argument("--calib-count", type=int, metavar="N", help="use a seeded random subsample of N samples")
    g.add_argument("--calib-seed", type=int, default=0, metavar="N", help="seed of the subsample (default 0)")
    g.add_argument("--calib-batch", type=int, metavar="N", help="samples per run (default: the model's batch, else 1)")
    g.add_argument("--calib-workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    g.add_argument("--keep-float", type=int, default=0, metavar="N",
                   help="keep the N layers whose quantization costs the most output SQNR in float")
    g.add_argument("--min-sqnr", type=float, default=0.0, metavar="DB",
                   help="keep the fewest most costly layers in float that bring the int8 output SQNR, measured on "
                        "calibration samples, to DB (mixed precision; e.g. 25)")
    g.add_argument("--probe-samples", type=int, default=8, metavar="N",
                   help="calibration samples for each layer's sensitivity (--keep-float, --min-sqnr) and the "
                        "per-layer report (default 8)")
    g.add_argument("--check-samples", type=int, default=32, metavar="N",
                   help="with --min-sqnr: calibration samples for the int8 output SQNR, its target and the "
                        "reported figure (default 32; otherwise the report uses --probe-samples)")
    g.add_argument("--skip-layers", default="", metavar="A,B", help="layer (node) names to keep in float")
    g.add_argument("--skip-ops", default="", metavar="OP,OP", help="op types to keep in float, e.g. Softmax,Add")
    img = p.add_argument_group("calibration images")
    img.add_argument("--calib-size", metavar="H,W", help="resize images to H,W (default: the input's static size)")
    img.add_argument("--calib-resize", default="stretch", choices=RESIZE_MODES,
                     help="stretch, shorter (side, then crop), fit (keep aspect, pad), height (PP-OCR text lines), none")
    img.add_argument("--calib-crop", metavar="H,W", help="center crop after resizing")
    img.add_argument("--calib-mean", metavar="M[,M,M]", help="per-channel mean subtracted after scaling (RGB order)")
    img.add_argument("--calib-std", metavar="S[,S,S]", help="per-channel std divided by after the mean")
    img.add_argument("--calib-scale", type=float, default=1.0 / 255.0, metavar="X", help="pixel scale (default 1/255)")
    img.add_argument("--calib-bgr", action="store_true", help="feed channels in BGR order (OpenCV/Paddle models)")
    img.add_argument("--calib-layout", choices=("nchw", "nhwc"), help="input layout (default: guessed from the shape)")


def _pair(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = [t.strip() for t in text.replace("x", ",").split(",")]
    if len(parts) != 2 or not all(t.isdigit() and int(t) > 0 for t in parts):
        raise UsageError(f"{flag} {text!r}: expected H,W (two positive integers)")
    return int(parts[0]), int(parts[1])


def _floats(text: str | None, flag: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected numbers separated by commas") from None
    if len(values) not in (1, 3, 4):
        raise UsageError(f"{flag} {text!r}: give 1 or one value per channel")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def compile_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``compile()`` keyword arguments the precision flags ask for (checked)."""
    from kiln.calib import CalibrationConfig

    if args.calib_table is not None:
        if args.calib is not None:
            raise UsageError("give --calib DATA (calibrate) or --calib-table FILE (reuse a table), not both")
        args.calib = args.calib_table
    if args.calib is not None and not args.int8:
        raise UsageError(f"{'--calib-table' if args.calib_table else '--calib'} is only used with --int8")
    if not args.int8:
        return {"fp16": args.fp16}
    if args.calib is None:
        raise UsageError("--int8 needs calibration data: --calib DATA (or --calib random for a smoke run), or "
                         "--calib-table FILE")
    if args.calib_table is not None and not args.calib_table.lower().endswith(".json"):
        raise UsageError(f"--calib-table {args.calib_table}: expected a .calib.json written by kiln compile --int8")
    for flag, value in (("--calib-count", args.calib_count), ("--calib-batch", args.calib_batch),
                        ("--calib-workers", args.calib_workers), ("--probe-samples", args.probe_samples),
                        ("--check-samples", args.check_samples)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    if args.keep_float < 0:
        raise UsageError(f"--keep-float {args.keep_float}: must be >= 0")
    if args.keep_float and args.min_sqnr:
        raise UsageError("give --keep-float N (how many layers) or --min-sqnr DB (what output SQNR), not both")
    if not 0 <= args.min_sqnr < 200:
        raise UsageError(f"--min-sqnr {args.min_sqnr}: expected decibels between 0 and 200")
    if not 0 < args.calib_percentile <= 100:
        raise UsageError(f"--calib-percentile {args.calib_percentile}: must be in (0, 100]")
    if not 0 <= args.entropy_floor < 200:
        raise UsageError(f"--entropy-floor {args.entropy_floor}: expected decibels between 0 and 200")
    calibration: Any
    if args.calib.lower().endswith(".json"):
        from kiln.calib.table import read_json

        calibration = read_json(args.calib)
    else:
        image = ImageOptions(
            size=_pair(args.calib_size, "--calib-size"),
            mode=args.calib_resize,
            crop=_pair(args.calib_crop, "--calib-crop"),
            mean=_floats(args.calib_mean, "--calib-mean", (0.0,)),
            std=_floats(args.calib_std, "--calib-std", (1.0,)),
            scale=args.calib_scale,
            channels="bgr" if args.calib_bgr else "rgb",
            layout=args.calib_layout,
        )
        calibration = CalibrationConfig(args.calib, count=args.calib_count, seed=args.calib_seed,
                                        batch_size=args.calib_batch, workers=args.calib_workers, image=image,
                                        progress=False if args.quiet else None)
    options = {
        "calibrator": args.calibrator,
        "percentile": args.calib_percentile,
        "entropy_floor": args.entropy_floor,
        "skip_layers": _names(args.skip_layers),
        "skip_ops": _names(args.skip_ops),
        "keep_float": args.keep_float,
        "min_sqnr": args.min_sqnr,
        "sensitivity_samples": args.probe_samples,
        "check_samples": args.check_samples,
    }
    return {"int8": True, "fp16": args.fp16, "calibration": calibration, "quantize_options": options}


def quantize_step(options: Mapping[str, Any] | None) -> str:
    """``quantize{...}`` with the options that differ from the pass's defaults."""
    from kiln.passmanager.options import quote

    parts: list[str] = []
    for key, value in (options or {}).items():
        if key not in _DEFAULTS:
            raise UsageError(f"unknown quantize option {key!r}")
        if value == _DEFAULTS[key] or (isinstance(value, (list, tuple)) and tuple(value) == _DEFAULTS[key]):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(quote(str(v)) for v in value)
        else:
            text = quote(str(value))
        parts.append(f"{key.replace('_', '-')}={text}")
    return "quantize{" + " ".join(parts) + "}" if parts else "quantize"


def precision_pipeline(int8: bool, fp16: bool, quantize_options: Mapping[str, Any] | None = None) -> str:
    """The pipeline text for the precision flags (empty when neither is set)."""
    steps = []
    if int8:
        steps.append(quantize_step(quantize_options))
    if fp16:
        steps.append("fp16")
    return ",".join(steps)
