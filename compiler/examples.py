"""Models that need no download: the light model-zoo graphs shipped inside the ``onnx`` package.

    kiln compile "$(python -m kiln.examples resnet50)" -o out/
    python -m kiln.examples --list
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def light_zoo_dir() -> Path:
    import onnx

    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def example_names() -> list[str]:
    return sorted(p.stem.removeprefix("light_") for p in light_zoo_dir().glob("light_*.onnx"))


def example_path(name: str) -> Path:
    """The path of a shipped example model (``resnet50``, ``squeezenet``, ...)."""
    path = light_zoo_dir() / f"light_{name.removeprefix('light_')}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"no example model {name!r}; choose one of: {', '.join(example_names())}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="resnet50")
    parser.add_argument("--list", action="store_true", help="list the example models")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(example_names()))
        return 0
    try:
        print(example_path(args.name))
    except FileNotFoundError as exc:
        print(f"kiln: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
