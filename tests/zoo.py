# Optional dependencies, for the timm models only (CI runs exactly these; no other model needs them):
#   pip install torch==2.13.0                       # the local CPU wheel (2.13.0+cpu); a bare `torch` pulls CUDA
#   pip install --no-deps timm==1.0.31              # --no-deps: timm requires torchvision, which would pull CUDA
#   pip install pyyaml huggingface_hub safetensors  # timm's other requirements
#   pip install onnxscript==0.7.2                   # the dynamo exporter (torch.onnx.export(dynamo=True))
"""kiln's model zoo: the ONNX models that the tests and benchmarks run on.

    from zoo import get_model, list_models, available    # tests/ (or <repo>/tests, for benchmarks) on sys.path
    path = get_model("chain_10k")                          # python tests/zoo.py build [NAME|GROUP ...] prebuilds

Groups (``list_models(group)``):

* ``ppocr``: ppocr_det/_rec/_cls, the trained PP-OCR models shipped in ``rapidocr_onnxruntime``, used in place
  (dynamic shapes; ``example_inputs`` picks 1x3x320x320, 1x3x48x320, 1x3x48x192).
* ``light``: light_<name>, the ONNX model-zoo graphs in ``onnx/backend/test/data/light`` (opset 9, weights made
  by ConstantOfShape), used in place.
* ``timm``: timm_<arch>_ts / _dynamo, timm models with random weights (torch.manual_seed(0), pretrained=False,
  eval), input 1x3x224x224, from the TorchScript exporter (dynamo=False, opset 17) and the dynamo exporter
  (dynamo=True, opset 18, weights inline unless over 2 GB).  The dynamo exporter implements nothing below 18:
  asked for 17 it exports 18 and down-converts, which failed for 4 of the 5 archs (ReduceMean: "No initializer
  or constant input to node found") and left a mix of 17 and 18; so it gets 18, rather than its default 20
  (at 18 GELU is decomposed; 20 has a Gelu node).  Each export runs in a child process.
* ``bert``: bert_tiny_ts / _dynamo, a BERT-style encoder written here in torch (random weights,
  torch.manual_seed(0)): token + position + segment embeddings, 2 layers of hidden 128, 4 heads, FFN 512 with
  GELU, post-LayerNorm written out as mean/var/sqrt (the original BERT code's form, so raising has work to do),
  an additive attention mask from ``attention_mask``; inputs ``input_ids`` and ``attention_mask`` (int64
  1x32), output ``last_hidden_state`` 1x32x128.  Exported like the timm models (TorchScript opset 17, dynamo
  opset 18), in a child process.
* ``chain``: chain_1k/_10k/_100k, Conv(3x3, 8->8, bias) -> Add(const) -> Relu blocks, 999 / 9 999 / 99 999
  nodes, input 1x8x16x16, byte-for-byte deterministic; weights scaled so activations stay finite at any length.
* ``branchy``: six inception-like stages, each fanning out into 4 conv branches of different depths and widths,
  concatenated (for memory planning).  Input 1x16x32x32.

Built models are cached in ``zoo_dir()`` as ``<name>.onnx`` plus ``<name>.json`` (nodes, bytes, versions,
timings, checks).  A build is written to a temporary folder in the zoo, checked there (onnx.checker full_check,
else the basic check; one onnxruntime run on a random input, graph optimizations off so 100k nodes load in ~30 s
instead of minutes; timm outputs are compared with torch's) and only then renamed into place.  A failed build
writes ``<name>.failed.json``, and ``available()`` answers (False, reason) until the zoo recipe or a version of
torch, timm, onnxscript or onnx changes.  Missing packages, timeouts and killed children are not cached.

torchvision: every timm release imports it at import time (timm.data imports torchvision.transforms, and
timm.layers/timm.utils ``torchvision.ops.misc.FrozenBatchNorm2d``; checked in 0.1.30, 0.4.12, 0.6.13, 0.9.16,
1.0.3, 1.0.20, 1.0.31), so without it ``import timm`` fails (ModuleNotFoundError) and no timm version avoids it.
PyPI's torchvision wheels are CUDA builds: 0.28.0 (torch 2.13's) installed with --no-deps fails to import,
"RuntimeError: operator torchvision::nms does not exist", as its _C.so needs libtorch_cuda.so.  timm's model
code never calls torchvision, so ``_import_timm`` imports timm with a stub package standing in for torchvision
and drops it from sys.modules right after, so nothing else (torch's exporters) sees it.  A working torchvision
is used where there is one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ZOO_VERSION = 1  # bump when a recipe changes: every cached model and failure is rebuilt
OPSET = 17
DYNAMO_OPSET: int | None = 18  # its lowest native opset; None: its default (20 in torch 2.13)
EXPORT_TIMEOUT_S = 1800
_REPO = Path(__file__).resolve().parent.parent

PPOCR = {
    "ppocr_det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
    "ppocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "ppocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}
LIGHT = ("alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")
_LIGHT_FILES = {"alexnet": "light_bvlc_alexnet.onnx"}  # the rest are light_<name>.onnx
TIMM_BOTH = ("resnet50", "mobilenetv3_large_100", "efficientnet_b0", "vit_small_patch16_224", "convnext_tiny")
TIMM_TS_ONLY = ("mobilenetv2_100", "regnetx_016")
BERT = {"bert_tiny": {"vocab": 1000, "hidden": 128, "heads": 4, "layers": 2, "ffn": 512, "seq": 32}}
"""BERT-style encoders (tests/zoo.py's own torch code): name -> size."""
CHAINS = {"chain_1k": 333, "chain_10k": 3333, "chain_100k": 33333}  # blocks of 3 nodes


class ZooUnavailable(RuntimeError):
    """A model that cannot be had here; the message says why."""


class _Uncached(Exception):
    """A build failure that says nothing about the model (missing package, timeout, killed child)."""


class _ExportFailed(RuntimeError):
    """The export child raised; ``log`` is the tail of its stderr."""

    def __init__(self, reason: str, log: str) -> None:
        super().__init__(reason)
        self.log = log


# ----------------------------------------------------------------------------------------------- public API


def zoo_dir() -> Path:
    """The cache folder: $KILN_ZOO_DIR, or <repo>/.zoo (git-ignored)."""
    return Path(os.environ.get("KILN_ZOO_DIR") or _REPO / ".zoo")


_GROUPS: dict[str, list[str]] = {
    "ppocr": list(PPOCR),
    "light": [f"light_{n}" for n in LIGHT],
    "timm": [f"timm_{a}_{e}" for a in TIMM_BOTH for e in ("ts", "dynamo")] + [f"timm_{a}_ts" for a in TIMM_TS_ONLY],
    "chain": list(CHAINS),
    "branchy": ["branchy"],
    "bert": [f"{a}_{e}" for a in BERT for e in ("ts", "dynamo")],
}


def list_models(group: str | None = None) -> list[str]:
    """Model names, all or one group's: "ppocr", "light", "timm", "chain", "branchy", "bert"."""
    if group is None:
        return [n for names in _GROUPS.values() for n in names]
    if group not in _GROUPS:
        raise KeyError(f"unknown zoo group {group!r}; groups: {', '.join(_GROUPS)}")
    return list(_GROUPS[group])


def group_of(name: str) -> str:
    for group, names in _GROUPS.items():
        if name in names:
            return group
    raise KeyError(f"unknown zoo model {name!r}")


def get_model(name: str) -> Path:
    """Path to the model's .onnx, building and caching it on first use; ZooUnavailable if it can't be had."""
    group = group_of(name)
    if group in ("ppocr", "light"):
        path, why = _shipped(name)
        if path is None:
            raise ZooUnavailable(why)
        return path
    path = zoo_dir() / f"{name}.onnx"
    if _is_built(name):
        return path
    with _locked(name):
        if _is_built(name):  # another process built it while we waited
            return path
        failure = _cached_failure(name)
        if failure is not None:
            raise ZooUnavailable(failure)
        missing = _missing_deps(name)
        if missing:
            raise ZooUnavailable(missing)
        _build(name)
    return path


def available(name: str, *, build: bool = True) -> tuple[bool, str]:
    """(True, "") if the model can be had here, else (False, why).

    For a model not built yet, this builds it (the only sure way to know) unless ``build=False``, when a model
    whose packages are all there counts as available.
    """
    group = group_of(name)
    if group in ("ppocr", "light"):
        path, why = _shipped(name)
        return path is not None, why
    if _is_built(name):
        return True, ""
    failure = _cached_failure(name)
    if failure is not None:
        return False, failure
    missing = _missing_deps(name)
    if missing:
        return False, missing
    if not build:
        return True, ""
    try:
        get_model(name)
    except ZooUnavailable as exc:
        return False, str(exc)
    return True, ""


def model_info(name: str) -> dict[str, Any]:
    """What the zoo knows of a model (node count, bytes, timings...); builds it if needed."""
    path = get_model(name)
    meta = zoo_dir() / f"{name}.json"
    if group_of(name) not in ("ppocr", "light") and meta.exists():
        return dict(json.loads(meta.read_text()))
    return {"name": name, "nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
            "bytes": path.stat().st_size, "path": str(path)}


def text_page(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A synthetic page for the PP-OCR models: dark printed words on light paper, normalised as PP-OCR expects.

    Random noise drives PP-OCR det's output to ~1e-5 everywhere, where float
    reassociation alone shows as a large relative error; rendered text gives
    a real probability map.  Words are drawn with Pillow's built-in font
    (Pillow comes with rapidocr-onnxruntime).
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    words = ["kiln compiles", "ONNX graphs", "to NCNN 2026", "TFLite and", "TensorRT fast",
             "hello world 42", "text detection", "PP-OCR v4"]
    size = max(10, min(22, h // 2 - 2))
    font = ImageFont.load_default(size=size)
    pages = []
    for _ in range(n):
        img = Image.new("RGB", (w, h), (240, 240, 235))
        draw = ImageDraw.Draw(img)
        lines = max(1, h // (2 * size))
        for i in range(lines):
            word = words[int(rng.integers(0, len(words)))]
            draw.text((int(rng.integers(2, max(3, w // 8))), 2 + i * 2 * size), word, fill=(20, 20, 20), font=font)
        pages.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[:c])
    page = np.stack(pages)
    return ((page / 255.0 - 0.5) / 0.5).astype(np.float32)


def example_inputs(name_or_path: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a model: a synthetic text page for PP-OCR, token ids and a mask for BERT, else standard normal.

    Dynamic dims come from the zoo's defaults (else 1).
    """
    name = str(name_or_path)
    path = get_model(name) if name in list_models() else Path(name_or_path)
    model = onnx.load(str(path), load_external_data=False)
    known = {init.name for init in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in known:
            continue
        ttype = value.type.tensor_type
        default = PPOCR[name][1] if name in PPOCR else ()
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 (default[i] if i < len(default) else 1) for i, d in enumerate(ttype.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if dtype.kind in "iu" and value.name in _BERT_INPUTS:
            feed[value.name] = _bert_input(value.name, shape, rng).astype(dtype)
        elif name in PPOCR and len(shape) == 4:
            feed[value.name] = text_page(tuple(shape), seed).astype(dtype)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


_BERT_INPUTS = ("input_ids", "attention_mask")


def _bert_input(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Token ids below the smallest vocabulary, or a mask of ones with the last quarter padding (zeros)."""
    if name == "input_ids":
        return rng.integers(0, min(b["vocab"] for b in BERT.values()), shape)
    mask = np.ones(shape, np.int64)
    mask[..., shape[-1] - shape[-1] // 4:] = 0
    return mask


def run_onnxruntime(path: str | Path, feed: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """One CPU onnxruntime run, warnings silenced."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feed)]


# ----------------------------------------------------------------------------------------- shipped models


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package's __file__, found without importing it."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _shipped(name: str) -> tuple[Path | None, str]:
    if name in PPOCR:
        root = _package_dir("rapidocr_onnxruntime")
        if root is None:
            return None, "rapidocr_onnxruntime is not installed (pip install rapidocr-onnxruntime)"
        path = root / "models" / PPOCR[name][0]
    else:
        root = _package_dir("onnx")
        short = name.removeprefix("light_")
        assert root is not None
        path = root / "backend" / "test" / "data" / "light" / _LIGHT_FILES.get(short, f"light_{short}.onnx")
    return (path, "") if path.is_file() else (None, f"{path} does not exist in the installed package")


# ---------------------------------------------------------------------------------------- generated models


class _Graph:
    """A small, fast graph writer (protobuf fields filled directly: 100k nodes in ~2 s)."""

    def __init__(self, name: str, seed: int) -> None:
        self.graph = onnx.GraphProto(name=name)
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def const(self, array: np.ndarray) -> str:
        init = self.graph.initializer.add()
        init.name = f"w{len(self.graph.initializer)}"
        init.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        init.dims.extend(array.shape)
        init.raw_data = np.ascontiguousarray(array).tobytes()
        return init.name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        self.count += 1
        node = self.graph.node.add()
        node.op_type, node.name = op, f"{op.lower()}_{self.count}"
        node.input.extend(inputs)
        node.output.append(f"t{self.count}")
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
        return node.output[0]

    def conv(self, x: str, cin: int, cout: int, k: int, gain: float = 1.0) -> str:
        """Conv with bias, He-initialized (times ``gain``), same padding."""
        w = self.rng.standard_normal((cout, cin, k, k)) * (gain * np.sqrt(2.0 / (cin * k * k)))
        b = self.rng.standard_normal(cout) * 0.05
        inputs = [x, self.const(w.astype(np.float32)), self.const(b.astype(np.float32))]
        return self.node("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4)

    def model(self, x_shape: list[int], out_shape: list[int]) -> onnx.ModelProto:
        self.graph.node[-1].output[0] = "output"  # the last node is the graph's output (nothing reads it)
        self.graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape))
        self.graph.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape))
        model = helper.make_model(self.graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="kiln-zoo", producer_version=str(ZOO_VERSION))
        model.ir_version = 8
        return model


def _build_chain(blocks: int) -> onnx.ModelProto:
    g = _Graph(f"chain_{blocks}", seed=blocks)
    x = "input"
    for _ in range(blocks):
        # gain 0.5 makes each Conv contract, so the Add constants set a bounded, finite activation level
        y = g.conv(x, 8, 8, 3, gain=0.5)
        y = g.node("Add", [y, g.const(g.rng.uniform(0.0, 0.1, (1, 8, 1, 1)).astype(np.float32))])
        x = g.node("Relu", [y])
    return g.model([1, 8, 16, 16], [1, 8, 16, 16])


def _build_branchy() -> onnx.ModelProto:
    g = _Graph("branchy", seed=6)
    x, c = "input", 16

    def conv_relu(t: str, cin: int, cout: int, k: int) -> str:
        return g.node("Relu", [g.conv(t, cin, cout, k)])

    for stage in range(6):
        k = stage + 1
        b0 = conv_relu(x, c, 4 * k, 1)  # 1 conv
        b1 = conv_relu(conv_relu(x, c, 6 * k, 1), 6 * k, 8 * k, 3)  # 2 convs
        b2 = conv_relu(conv_relu(conv_relu(x, c, 2 * k, 1), 2 * k, 4 * k, 3), 4 * k, 4 * k, 3)  # 3 convs
        pooled = g.node("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        b3 = conv_relu(pooled, c, 2 * k, 1)  # pool + 1 conv
        x, c = g.node("Concat", [b0, b1, b2, b3], axis=1), 18 * k
        if stage in (1, 3):  # 32x32 -> 16x16 -> 8x8
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    w = g.const((g.rng.standard_normal((10, c)) / np.sqrt(c)).astype(np.float32))
    g.node("Gemm", [x, w, g.const(np.zeros(10, np.float32))], transB=1)
    return g.model([1, 16, 32, 32], [1, 10])


def _generate(name: str) -> onnx.ModelProto:
    """The in-memory graph of a generated model (chain_* or branchy)."""
    return _build_branchy() if name == "branchy" else _build_chain(CHAINS[name])


# ------------------------------------------------------------------------------------------------- timm


def _timm_recipe(name: str) -> tuple[str, str]:
    arch, _, exporter = name.removeprefix("timm_").rpartition("_")
    return arch, exporter


def _has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _missing_deps(name: str) -> str:
    group = group_of(name)
    if group not in ("timm", "bert"):
        return ""
    needed = ["torch", "timm", "yaml", "huggingface_hub", "safetensors"] if group == "timm" else ["torch"]
    if _timm_recipe(name)[1] == "dynamo":
        needed.append("onnxscript")
    missing = [m for m in needed if not _has_module(m)]
    if missing:
        return f"{name} needs {', '.join(missing)}, not installed (see the pip commands atop tests/zoo.py)"
    return ""


class _StubClass(type):
    """Any attribute of a stub is another stub class; calling one says torchvision is missing."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StubClass(attr, (), {"__module__": cls.__module__})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{cls.__module__}.{cls.__name__}: torchvision is not installed (kiln zoo stub)")


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StubClass(attr, (), {"__module__": self.__name__})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _purge(prefix: str) -> None:
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


def _import_timm() -> types.ModuleType:
    """``import timm``, with a stub standing in for torchvision while timm imports if torchvision won't."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a CUDA build on a CPU torch ("...torchvision::nms...")
        _purge("torchvision")
        stub = _TorchvisionStub()
        sys.meta_path.insert(0, stub)
        try:
            import timm
        finally:
            sys.meta_path.remove(stub)
            _purge("torchvision")
        return timm
    import timm

    return timm


def _bert_model(torch: Any, size: dict[str, int]) -> Any:
    """A BERT-style encoder (the original BERT code's layout), random weights from the current torch seed."""
    nn, hidden, heads = torch.nn, size["hidden"], size["heads"]
    head = hidden // heads

    class LayerNorm(nn.Module):  # written out, as in the original BERT code: raising has to find it
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(1 + 0.1 * torch.randn(hidden)), nn.Parameter(0.1 * torch.randn(hidden))

        def forward(self, x: Any) -> Any:
            u = x.mean(-1, keepdim=True)
            s = (x - u).pow(2).mean(-1, keepdim=True)
            return self.weight * ((x - u) / torch.sqrt(s + 1e-12)) + self.bias

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.up, self.down = nn.Linear(hidden, size["ffn"]), nn.Linear(size["ffn"], hidden)
            self.ln1, self.ln2 = LayerNorm(), LayerNorm()

        def split(self, t: Any) -> Any:
            return t.view(t.shape[0], t.shape[1], heads, head).permute(0, 2, 1, 3)

        def forward(self, x: Any, mask: Any) -> Any:
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (head ** 0.5) + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3)
            x = self.ln1(x + self.o(ctx.reshape(x.shape[0], x.shape[1], hidden)))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words, self.positions = nn.Embedding(size["vocab"], hidden), nn.Embedding(size["seq"], hidden)
            self.segments = nn.Embedding(2, hidden)
            self.ln = LayerNorm()
            self.layers = nn.ModuleList(Layer() for _ in range(size["layers"]))

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.words(input_ids) + self.positions(positions) + self.segments(torch.zeros_like(input_ids))
            x = self.ln(x)
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, mask)
            return x

    return Encoder().eval()


def _export_child(arch: str, exporter: str, out: Path) -> int:
    """Runs in a child process: export one timm (or zoo BERT) model to ``out``, a torch reference beside it."""
    try:
        import torch

        timm = _import_timm() if arch not in BERT else None
        if exporter == "dynamo":
            import onnxscript  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        print(f"import failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if arch in BERT:
        model = _bert_model(torch, BERT[arch])
        rng = np.random.default_rng(1)
        shape = [1, BERT[arch]["seq"]]
        args = tuple(torch.from_numpy(_bert_input(n, shape, rng)) for n in _BERT_INPUTS)
        names, output = list(_BERT_INPUTS), "last_hidden_state"
    else:
        assert timm is not None
        model = timm.create_model(arch, pretrained=False).eval()
        args = (torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)),)
        names, output = ["input"], "output"
    with torch.no_grad():
        ref = model(*args)
    start = time.perf_counter()
    if exporter == "ts":
        torch.onnx.export(model, args, str(out), opset_version=OPSET, dynamo=False,
                          input_names=names, output_names=[output])
    else:
        program = torch.onnx.export(model, args, dynamo=True, opset_version=DYNAMO_OPSET,
                                    input_names=names, output_names=[output])
        assert program is not None
        program.save(str(out), external_data=None)  # weights inline unless over 2 GB
    export_s = time.perf_counter() - start
    np.savez(out.parent / "ref.npz", output=ref.numpy(), **{n: a.numpy() for n, a in zip(names, args)})
    (out.parent / "export.json").write_text(json.dumps({"export_s": round(export_s, 2)}))
    return 0


def _export_timm(name: str, out: Path) -> dict[str, Any]:
    """Exports a timm model or a zoo BERT (``_export_child`` in a child process)."""
    arch, exporter = _timm_recipe(name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_export", arch, exporter, str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _Uncached(f"{name}: export timed out after {EXPORT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-30:]
        reason = f"{name}: {exporter} export of {arch} failed (exit {proc.returncode}): {(tail or ['?'])[-1]}"
        if proc.returncode != 1:  # 2: an import failed; < 0: killed (OOM?); neither is the model's fault
            raise _Uncached(reason)
        raise _ExportFailed(reason, "\n".join(tail))
    info = json.loads((out.parent / "export.json").read_text())
    ref = np.load(out.parent / "ref.npz")
    info.update({"arch": arch, "exporter": exporter, "opset": OPSET if exporter == "ts" else DYNAMO_OPSET})
    info["feed"], info["ref"] = {k: ref[k] for k in ref.files if k != "output"}, [ref["output"]]
    return info


# ------------------------------------------------------------------------------------------- cache/build


def _fingerprint() -> dict[str, Any]:
    versions: dict[str, Any] = {"zoo": ZOO_VERSION}
    for dist in ("torch", "timm", "onnxscript", "onnx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _is_built(name: str) -> bool:
    meta = zoo_dir() / f"{name}.json"
    if not (meta.exists() and (zoo_dir() / f"{name}.onnx").exists()):
        return False
    with contextlib.suppress(ValueError, OSError):
        return bool(json.loads(meta.read_text()).get("zoo_version") == ZOO_VERSION)
    return False


def _cached_failure(name: str) -> str | None:
    path = zoo_dir() / f"{name}.failed.json"
    with contextlib.suppress(ValueError, OSError):
        record = json.loads(path.read_text())
        if record.get("fingerprint") == _fingerprint():
            return str(record["reason"])
    return None


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder per model across processes (pytest-xdist workers, parallel benchmarks)."""
    zoo_dir().mkdir(parents=True, exist_ok=True)
    with open(zoo_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _verify(path: Path, feed: dict[str, np.ndarray] | None = None,
            ref: list[np.ndarray] | None = None) -> dict[str, Any]:
    """onnx.checker (full_check where it passes) and one onnxruntime run; raises if either fails."""
    info: dict[str, Any] = {}
    try:
        onnx.checker.check_model(str(path), full_check=True)
        info["checker"] = "full_check"
    except Exception as exc:  # noqa: BLE001 - fall back to the basic check, which must pass
        onnx.checker.check_model(str(path))
        info["checker"] = f"basic (full_check failed: {str(exc).splitlines()[0][:200]})"
    feed = feed if feed is not None else example_inputs(path)
    start = time.perf_counter()
    outputs = run_onnxruntime(path, feed, optimize=False)
    info["ort_s"] = round(time.perf_counter() - start, 2)
    info["outputs"] = [list(o.shape) for o in outputs]
    if not all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f"):
        raise RuntimeError(f"{path.name}: onnxruntime output is not finite")
    if ref is not None:
        info["max_abs_diff_vs_torch"] = float(max(np.abs(o - r).max() for o, r in zip(outputs, ref)))
    return info


def _build(name: str) -> None:
    """Build, check and install one model; on failure record why (unless the failure is environmental)."""
    root = zoo_dir()
    for stale in root.glob(f".tmp-{name}-*"):  # left by a crashed build (we hold the lock: none is live)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    out = tmp / f"{name}.onnx"
    start = time.perf_counter()
    try:
        if group_of(name) in ("timm", "bert"):
            info = _export_timm(name, out)
        else:
            gen_start = time.perf_counter()
            out.write_bytes(_generate(name).SerializeToString())
            info = {"generate_s": round(time.perf_counter() - gen_start, 2)}
        feed, ref = info.pop("feed", None), info.pop("ref", None)
        info.update(_verify(out, feed, ref))
        model = onnx.load(str(out), load_external_data=False)
        files = sorted(p for p in tmp.iterdir() if p.name.startswith(f"{name}.onnx"))
        info.update({"name": name, "zoo_version": ZOO_VERSION, "fingerprint": _fingerprint(),
                     "nodes": len(model.graph.node), "opsets": {o.domain or "ai.onnx": o.version
                                                                for o in model.opset_import},
                     "bytes": sum(p.stat().st_size for p in files), "files": [p.name for p in files],
                     "build_s": round(time.perf_counter() - start, 2)})
        for path in sorted(files, key=lambda p: p.name == out.name):  # the .onnx itself last
            os.replace(path, root / path.name)
        _write_atomic(root / f"{name}.json", json.dumps(info, indent=1, sort_keys=True))
        (root / f"{name}.failed.json").unlink(missing_ok=True)
    except _Uncached as exc:
        raise ZooUnavailable(str(exc)) from None
    except Exception as exc:  # any failure: this model is unavailable, the others are not
        reason = str(exc) if isinstance(exc, _ExportFailed) else f"{name}: {type(exc).__name__}: {exc}"
        record = {"reason": reason, "log": getattr(exc, "log", ""), "fingerprint": _fingerprint()}
        _write_atomic(root / f"{name}.failed.json", json.dumps(record, indent=1))
        raise ZooUnavailable(reason) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- CLI


def _main(argv: list[str]) -> int:
    """python tests/zoo.py [list | build NAME|GROUP ...]  (_export is the child side of a timm build)."""
    if argv[:1] == ["_export"]:
        return _export_child(argv[1], argv[2], Path(argv[3]))
    if argv[:1] == ["build"]:
        names = [n for arg in argv[1:] or list(_GROUPS) for n in (list_models(arg) if arg in _GROUPS else [arg])]
        failed = 0
        for name in names:
            start = time.perf_counter()
            ok, why = available(name)
            if ok:
                info = model_info(name)
                print(f"{name:34} ok  {info['nodes']:7d} nodes {info['bytes'] / 1e6:9.2f} MB"
                      f"  export {info.get('export_s', info.get('generate_s', '-'))} s"
                      f"  build {info.get('build_s', '-')} s  ({time.perf_counter() - start:.1f} s)", flush=True)
            else:
                failed += 1
                print(f"{name:34} UNAVAILABLE: {why}", flush=True)
        return 1 if failed else 0
    for name in list_models():
        ok, why = available(name, build=False)
        print(f"{group_of(name):8} {name:34} {'built' if _is_built(name) else ('ok' if ok else why)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
