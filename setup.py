"""Packaging for kiln.

The repository keeps its top level fixed (``compiler/``, ``passes/``,
``codegen/``, ``csrc/``), so this file maps those folders onto the import
names: ``compiler`` -> ``kiln``, ``passes`` -> ``kiln.passes``, ``codegen`` ->
``kiln.codegen``, and builds the Cython kernels in ``csrc/`` into
``kiln._kernels``.  If the extension cannot be built (no compiler), kiln falls
back to its numpy kernels; set ``KILN_REQUIRE_KERNELS=1`` to make that fatal.
"""

from __future__ import annotations

import os

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOTS = {"kiln": "compiler", "kiln.passes": "passes", "kiln.codegen": "codegen"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = os.path.join(folder, *sub.split("."))
    return packages, package_dir


def _extensions() -> list:
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError:
        return []
    from setuptools import Extension

    ext = Extension(
        "kiln._kernels",
        sources=["csrc/kernels.pyx"],
        include_dirs=[numpy.get_include(), "csrc"],
        depends=["csrc/stats_simd.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    return cythonize([ext], language_level="3", compiler_directives={"boundscheck": False, "wraparound": False})


class OptionalBuildExt(build_ext):
    """Builds the kernels, but lets kiln install without them (numpy fallback)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the fallback"
            if os.environ.get("KILN_REQUIRE_KERNELS"):
                raise
            print(f"kiln: Cython kernels not built ({exc}); the numpy fallback will be used")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("KILN_REQUIRE_KERNELS"):
                raise
            print(f"kiln: Cython kernel {ext.name} not built ({exc}); the numpy fallback will be used")


packages, package_dir = _packages()

setup(
    name="kiln",
    version="0.1.0",
    description="A graph-optimization compiler for neural networks: ONNX in; ONNX, NCNN, TFLite and TensorRT out",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "numpy>=1.26",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "ml_dtypes>=0.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "hypothesis>=6",
            "filecheck>=1.0",
            "mypy",
            "rapidocr-onnxruntime>=1.3",
            "onnxslim",
            # timm exports for the real-model tests: the CPU build of torch
            # (a local wheel here), onnxscript for the dynamo exporter, and
            # timm's own needs; timm itself goes in with --no-deps (README).
            "torch==2.13.0",
            "onnxscript",
            "pyyaml",
            "huggingface_hub",
            "safetensors",
            "matplotlib",  # kiln inspect --memory --plot
            # The targets' own runtimes, so every artifact is checked where it runs:
            # ncnn's Python package and LiteRT's interpreter (with the TFLite
            # schema bindings the tflite writer uses).  TensorRT's type stubs and
            # its bindings wheel go in with --no-deps (README): their libraries
            # come from NVIDIA's index, and the tests only read their names.
            "ncnn",
            "ai-edge-litert",
            "flatbuffers",
        ],
        "bench": ["onnxslim", "onnxsim", "onnxoptimizer", "rapidocr-onnxruntime>=1.3", "pnnx", "ncnn", "ai-edge-litert"],
        "ncnn": ["ncnn"],
        "tflite": ["ai-edge-litert", "flatbuffers"],
        "tensorrt": ["tensorrt"],
        "plot": ["matplotlib"],
        "calib": ["pillow>=10"],  # calibration from a folder of images (kiln.calib.images)
    },
    entry_points={
        "console_scripts": ["kiln = kiln.driver.cli:main"],
        # The one group every pass provider registers through, kiln's own passes included
        # (kiln.passmanager.registry): a Pass class, a module, or a function to call.
        "kiln.passes": ["kiln-builtin = kiln.passes:register_builtins"],
    },
    zip_safe=False,
)
