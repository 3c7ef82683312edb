"""The ``kiln`` command: ``compile``, ``inspect``, ``verify`` and ``passes``.

Output discipline: results go to stdout (one summary line for ``compile``,
the report for the others); notes, instrument output and progress go to
stderr; every error is one ``kiln: error: ...`` line on stderr.

Exit status:
    0   success
    1   ``verify``: outputs differ beyond ``--rtol``
    2   an error the user can fix: bad usage, unreadable or invalid model,
        unknown pass, failed pass, export failure (every ``KilnError``)
    70  internal error: a bug in kiln (rerun with ``--debug`` for the traceback)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kiln.errors import KilnError, UsageError

EXIT_OK = 0
EXIT_DIFFER = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit status:
  0    success
  1    verify: outputs differ beyond --rtol
  2    error: bad usage, unreadable or invalid model, unknown or failing pass,
       export failure (one line on stderr; --debug adds the traceback)
  70   internal error, a bug in kiln: rerun with --debug and report the traceback
  130  interrupted
"""

_VERIFY_DESCRIPTION = """\
Runs MODEL on onnxruntime (CPU) and ARTIFACT on the runtime its suffix names
(.onnx: onnxruntime) with the same inputs, and reports for each output
(matched by name), with a = MODEL's output and b = ARTIFACT's:
  max_abs  max |a - b|
  max_rel  max |a - b| / max |a|  (error relative to the largest reference magnitude)
  sqnr_db  10 log10(sum a^2 / sum (a - b)^2), inf when equal
An output passes when max_rel <= --rtol. Inputs are random (floats standard
normal, integers in [0, 8), from --seed) unless --inputs gives them; symbolic
dims take their size from --input-shape, else 1 (with a note on stderr).
--json prints {"ok": bool, "outputs": {name: {"max_abs", "max_rel", "sqnr_db"}}}
(infinite values as Infinity). Exit 0 when ok, 1 when outputs differ, 2 on errors.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one ``kiln: error:`` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The ``kiln`` parser: global flags, then one subparser per command."""
    parser = _Parser(
        prog="kiln",
        description="kiln: a graph-optimization compiler for neural networks (ONNX in; ONNX out).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kiln {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors, and debug logging")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only results and errors")

    common = _Parser(add_help=False)
    # SUPPRESS: the same flags after the command, without resetting those given before it.
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of errors, and debug logging"
    )
    common.add_argument(
        "--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
        help="print only results and errors (no notes, no progress, no summary)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_compile(sub, common)
    _add_inspect(sub, common)
    _add_verify(sub, common)
    _add_passes(sub, common)
    return parser


def _add_compile(sub: Any, common: argparse.ArgumentParser) -> None:
    from kiln.driver.compile import TARGETS

    targets = ", ".join(sorted(TARGETS))
    p = sub.add_parser(
        "compile",
        parents=[common],
        help="optimize a model and write the artifact",
        description="Loads MODEL, optimizes it, and writes OUTDIR/<model stem>.<ext> atomically\n"
        "(nothing is written when anything fails); prints one summary line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="the ONNX model")
    p.add_argument("-t", "--target", default="onnx", metavar="TARGET", help=f"what to emit: {targets} (default onnx)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    levels = p.add_mutually_exclusive_group()
    levels.add_argument(
        "-O", dest="level", type=int, choices=(0, 1, 2, 3), metavar="LEVEL",
        help="optimization preset -O0..-O3 (default -O2)",
    )
    levels.add_argument("--pipeline", metavar="STR", help="pass pipeline replacing the preset, e.g. 'fold,dce'")
    _add_input_shape(p)
    p.add_argument("--fold-limit", metavar="BYTES", help="largest constant folding may create (e.g. 64M, 1G)")
    p.add_argument("--time-passes", action="store_true", help="report the time of each pass on stderr")
    p.add_argument("--debug-rules", action="store_true",
                   help="log, per node, every rewrite rule tried, refused (with the reason) and applied, on stderr")
    p.add_argument(
        "--print-ir-after", action="append", default=[], metavar="PASS[,PASS]",
        help="print the IR to stderr after these passes ('all': every pass; repeatable)",
    )
    p.add_argument(
        "--print-ir-after-change", action="store_true", help="print the IR to stderr after every pass that changed it"
    )
    p.add_argument(
        "--no-verify-each", dest="verify_each", action="store_false", help="do not verify the IR after every pass"
    )
    p.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR after every pass (and a reproducer) into DIR")
    p.add_argument("--stop-after", metavar="PASS", help="end the pipeline after the first run of PASS")
    p.add_argument(
        "--load-pass", action="append", default=[], metavar="FILE.py",
        help="register the passes defined in FILE.py (repeatable)",
    )
    from kiln.calib.cli import add_arguments as add_precision_arguments

    add_precision_arguments(p)
    _add_target_options(p)
    p.set_defaults(func=cmd_compile)


def _add_target_options(p: argparse.ArgumentParser) -> None:
    """Flags that only some targets take; the others refuse them by name."""
    g = p.add_argument_group("target options")
    g.add_argument("--nhwc-io", action="store_true", help="tflite: inputs and outputs in NHWC (no boundary Transpose)")
    g.add_argument("--int8-io", action="store_true", help="tflite with --int8: int8 inputs and outputs instead of float")
    g.add_argument("--param-bin", action="store_true", help="ncnn: also write the binary <stem>.param.bin")
    g.add_argument("--c-header", action="store_true", help="ncnn: also write the C headers <stem>.id.h and .mem.h")
    g.add_argument("--onnx-contrib", action="store_true",
                   help="onnx: emit onnxruntime's com.microsoft fused ops where they exist")
    g.add_argument("--workspace", metavar="SIZE", help="tensorrt: builder workspace limit (e.g. 1G)")
    g.add_argument("--timing-cache", metavar="FILE", help="tensorrt: timing cache to read and update")
    g.add_argument("--builder-optimization-level", type=int, metavar="N", choices=range(6),
                   help="tensorrt: builder optimization level 0..5")
    g.add_argument("--strongly-typed", action="store_true",
                   help="tensorrt: accepted for compatibility; kiln always builds a strongly typed network "
                        "(precision from the tensors kiln wrote, explicit Q/DQ for int8)")


def _target_option_values(args: argparse.Namespace) -> dict[str, object]:
    """The target options set on the command line, by compile()'s option names."""
    from kiln.driver.compile import TARGET_OPTIONS
    from kiln.driver.options import parse_size

    values: dict[str, object] = {key: getattr(args, key) for key in TARGET_OPTIONS}
    if values["workspace"] is not None:
        values["workspace"] = parse_size(str(values["workspace"]), "--workspace")
    return {key: value for key, value in values.items() if value not in (None, False)}


def _add_inspect(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="summarize a model",
        description="Prints a summary of MODEL: file, opsets, ir_version, producer, inputs and "
        "outputs with types, node count, constant count and bytes.",
    )
    p.add_argument("model", metavar="MODEL", help="the ONNX model")
    p.add_argument("--ops", action="store_true", help="add the op histogram, most frequent first")
    p.add_argument("--ir", action="store_true", help="add the text IR (with --memory: of the planned graph, offsets included)")
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object (file, ir_version, producer, opsets, inputs, outputs, nodes, "
        "constants, constant_bytes, ops; ir with --ir; memory with --memory)",
    )
    p.add_argument(
        "--fusions", action="store_true",
        help="optimize at -O LEVEL (default 2) and report what each fusion rule did: times applied, the "
        "ops it made, the nodes of the result it made (from their rule metadata) and how many source "
        "nodes they replace; with --json under \"fusions\"",
    )
    p.add_argument(
        "-t", "--target", metavar="TARGET",
        help="with --fusions: also run this target's legalization (its own fusions) after -O",
    )
    _add_input_shape(p)
    _add_memory(p)
    p.set_defaults(func=cmd_inspect)


def _add_memory(p: argparse.ArgumentParser) -> None:
    """``kiln inspect --memory``: the memory plan as a summary, a table, JSON and a plot."""
    g = p.add_argument_group(
        "memory plan",
        "--memory optimizes the model (-O, default -O2, as kiln compile does), then plans its activation "
        "memory (the plan-memory pass): the schedule, every tensor's arena offset, the arena against the "
        "lower bound (most bytes live at once) and the naive sum, the widest point, the streams. Shapes "
        "must be static: give symbolic dims with --input-shape. With --json the plan is under \"memory\" "
        "(arena_bytes, lower_bound_bytes, naive_bytes, and per tensor name, offset, size, first, last).",
    )
    g.add_argument("--memory", action="store_true", help="add the memory plan (a summary and the tensor table)")
    g.add_argument(
        "--plot", metavar="FILE.png",
        help="write the plan as a PNG timeline (tensors as rectangles over step x offset; needs matplotlib); "
        "implies --memory",
    )
    g.add_argument(
        "-O", dest="level", type=int, choices=(0, 1, 2, 3), default=2, metavar="LEVEL",
        help="with --memory: the optimization preset run before planning (default 2)",
    )
    g.add_argument(
        "--alignment", type=int, default=64, metavar="BYTES",
        help="with --memory: bytes every size and offset is rounded to (default 64)",
    )
    g.add_argument(
        "--no-reorder", dest="reorder", action="store_false",
        help="with --memory: plan the ONNX order, without the memory-aware scheduler",
    )


def _add_verify(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="compare an artifact with its model on the same inputs",
        description=_VERIFY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="the original ONNX model (the reference)")
    p.add_argument("artifact", metavar="ARTIFACT", help="the compiled artifact (.onnx)")
    _add_input_shape(p)
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random inputs (default 0)")
    p.add_argument("--inputs", metavar="FILE.npz", help="use these inputs (an .npz of arrays named as the inputs)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--rtol", type=float, default=1e-4, metavar="X", help="largest max_rel that passes (default 1e-4)")
    p.set_defaults(func=cmd_verify)


def _add_passes(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "passes",
        parents=[common],
        help="list every pass and bundle with its options",
        description="Lists every registered pass and bundle with its one-line summary and "
        "its options (name, type, default, doc).",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead")
    p.set_defaults(func=cmd_passes)


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME:D,D,...",
        help="set an input's shape; each D is an int or a symbol name, and for -t tensorrt also MIN..MAX or "
             "MIN..OPT..MAX (the optimization profile) (repeatable)",
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kiln")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


# --------------------------------------------------------------------------- commands


def cmd_compile(args: argparse.Namespace) -> int:
    from kiln.calib.cli import compile_kwargs as precision_kwargs
    from kiln.driver.compile import compile as compile_model
    from kiln.driver.options import parse_size
    from kiln.driver.progress import Progress

    precision = precision_kwargs(args)
    fold_limit = parse_size(args.fold_limit) if args.fold_limit is not None else None
    print_after = [name.strip() for item in args.print_ir_after for name in item.split(",") if name.strip()]
    writes_stderr = args.time_passes or print_after or args.print_ir_after_change or args.debug_rules
    progress = Progress(sys.stderr, enabled=False if args.quiet or writes_stderr else None)
    try:
        result = compile_model(
            args.model,
            args.target,
            args.output,
            level=args.level,
            pipeline=args.pipeline,
            input_shapes=args.input_shape,  # parsed by compile(): -t tensorrt also takes MIN..MAX ranges
            fold_limit=fold_limit,
            debug_rules=args.debug_rules,
            verify_each=args.verify_each,
            time_passes=args.time_passes,
            print_ir_after=print_after,
            print_ir_after_change=args.print_ir_after_change,
            dump_ir_dir=args.dump_ir_dir,
            stop_after=args.stop_after,
            load_passes=args.load_pass,
            options=_target_option_values(args),
            log=sys.stderr,
            progress=progress,
            **precision,
        )
    finally:
        progress.clear()
    if not args.quiet:
        report = result.calibration.report() if result.calibration is not None else ""
        if report:
            sys.stderr.write(report)
        print(result.summary())
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from kiln.driver.compile import load_model
    from kiln.driver.inspect_model import describe, format_ops, format_summary

    graph = load_model(args.model, args.input_shape)
    info = describe(graph, args.model)
    if args.target is not None and not args.fusions:
        raise UsageError("--target needs --fusions")
    fusions = None
    if args.fusions:
        from kiln.driver.inspect_model import fusion_report

        # --memory optimizes the graph too: the report gets a graph of its own
        fused_graph = load_model(args.model, args.input_shape) if (args.memory or args.plot) else graph
        fusions = fusion_report(fused_graph, level=args.level, target=args.target)
    memory = None
    if args.memory or args.plot:
        from kiln.driver.inspect_model import plan_model_memory

        memory = plan_model_memory(graph, level=args.level, alignment=args.alignment, reorder=args.reorder)
        if args.plot:
            from kiln.memory.plot import plot_plan

            plot_plan(memory.plan, args.plot, title=f"{os.path.basename(args.model)}: memory plan (-O{args.level})")
            if not args.quiet:
                print(f"kiln: note: memory plot written to {args.plot}", file=sys.stderr)
    ir_text = None
    if args.ir:
        from kiln.ir import print_ir

        ir_text = print_ir(graph)
    if args.json:
        if fusions is not None:
            info["fusions"] = fusions.as_json()
        if memory is not None:
            info["memory"] = memory.as_json()
        if ir_text is not None:
            info["ir"] = ir_text
        print(json.dumps(info, indent=2))
        return EXIT_OK
    parts = [format_summary(info)]
    if args.ops:
        parts.append(format_ops(info["ops"]))
    if fusions is not None:
        parts.append(fusions.text())
    if memory is not None:
        parts.append(memory.text(tensors=args.memory or not args.plot))
    if ir_text is not None:
        parts.append(ir_text.rstrip("\n"))
    print("\n\n".join(parts))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from kiln.driver.options import parse_input_shapes, require_file
    from kiln.driver.verify import load_inputs, runtime_for, verify

    shapes = parse_input_shapes(args.input_shape)
    require_file(args.model)
    require_file(args.artifact)
    runtime_for(args.artifact)  # an unknown suffix fails before any work
    inputs = load_inputs(require_file(args.inputs, "--inputs")) if args.inputs else None
    if not args.rtol >= 0:  # also refuses nan
        raise UsageError(f"--rtol {args.rtol}: must be a non-negative number")
    report = verify(args.model, args.artifact, input_shapes=shapes, seed=args.seed, inputs=inputs, rtol=args.rtol)
    if not args.quiet:
        for note in report.notes:
            print(f"kiln: note: {note}", file=sys.stderr)
    print(json.dumps(report.as_json()) if args.json else report.table())
    return EXIT_OK if report.ok else EXIT_DIFFER


def cmd_passes(args: argparse.Namespace) -> int:
    infos = _pass_list()
    if args.json:
        print(json.dumps(infos, indent=2))
        return EXIT_OK
    lines: list[str] = []
    for kind, title in (("pass", "passes"), ("bundle", "bundles"), ("structural", "structure")):
        group = [i for i in infos if i["kind"] == kind]
        if not group:
            continue
        if lines:
            lines.append("")
        lines.append(f"{title}:")
        width = max(len(i["name"]) for i in group)
        pad = " " * (width + 4)
        for info in group:
            lines.append(f"  {info['name']:<{width}}  {info['summary']}".rstrip())
            if info["pipeline"] is not None:
                lines.append(f"{pad}= {info['pipeline'] or '(no passes)'}")
            for opt in info["options"]:
                doc = f"  {opt['doc']}" if opt["doc"] else ""
                lines.append(f"{pad}{opt['name']}: {opt['type']} = {opt['default']}{doc}")
    print("\n".join(lines) if lines else "no passes are registered")
    return EXIT_OK


def _pass_list() -> list[dict[str, Any]]:
    """Every registered pass, bundle and structural element (``repeat``), by name.

    Options are listed as pipelines spell them: kebab-case key, type in
    words, default as pipeline text.
    """
    from kiln.passmanager.options import describe_default
    from kiln.passmanager.registry import available_passes

    return [
        {
            "name": info.name,
            "kind": info.kind,
            "summary": info.summary,
            "pipeline": info.pipeline,
            "options": [
                {"name": o.key, "type": o.type_text(), "default": describe_default(o), "doc": o.doc}
                for o in info.options()
            ],
        }
        for info in available_passes()
    ]


# --------------------------------------------------------------------------- main


class _StderrHandler(logging.Handler):
    """Writes ``kiln: warning: ...`` lines to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _one_line(record.getMessage()).removeprefix("kiln: ")
            sys.stderr.write(f"kiln: {record.levelname.lower()}: {message}\n")
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error(message: str) -> None:
    print(f"kiln: error: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``kiln`` command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # for errors raised before parsing finishes
    logger = logging.getLogger("kiln")
    handler = _StderrHandler()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        args = build_parser().parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        args.quiet = bool(getattr(args, "quiet", False))
        logger.setLevel(logging.DEBUG if debug else logging.ERROR if args.quiet else logging.WARNING)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except KilnError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kiln inspect --ir | head`
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - anything else is a bug in kiln
        if debug:
            traceback.print_exc()
        hint = "please report it with the traceback above" if debug else "rerun with --debug for the traceback"
        detail = _one_line(f"{type(exc).__name__}: {exc}")[:500]
        print(f"kiln: internal error (a bug in kiln): {detail} ({hint})", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
