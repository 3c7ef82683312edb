"""``kiln.save``: writes a graph as an ONNX file, atomically and deterministically.

The model is written to a temporary name in the destination folder and
renamed into place, so a failure (an unexportable op, a full disk, a crash)
leaves the old file, or no file, never half of a new one.  The same graph
gives byte-identical files.

External data goes into one file, ``<stem>.data`` beside the model, when asked
(``external_data=True``) or automatically when the weights would not fit in
protobuf's 2 GB limit.  Tensors of at least ``size_threshold`` bytes are
moved there, each at a 64-byte aligned offset; the locations written into the
model are that file's bare name, so the pair can be moved together.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from kiln.errors import ExportError
from kiln.exporter.convert import KilnLowering, _Exporter, tensor_bytes
from kiln.ir.core import Graph
from kiln.ir.dtypes import DType
from kiln.ir.gcpause import paused_gc
from kiln.ir.tensor import Tensor

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
AUTO_EXTERNAL_BYTES = PROTOBUF_LIMIT - 2**27
"""Constants above this total (2 GB less 128 MB for the graph itself) go to external data."""
ALIGN = 64


class _DataFile:
    """The external-data sink: appends tensors to one open file."""

    def __init__(self, fileobj, location: str, threshold: int) -> None:  # type: ignore[no-untyped-def]
        self.f = fileobj
        self.location = location
        self.threshold = threshold
        self.offset = 0
        self.count = 0

    def place(self, proto: onnx.TensorProto, tensor: Tensor) -> bool:
        if tensor.dtype == DType.STRING or tensor.nbytes < self.threshold:
            return False
        data = tensor_bytes(tensor)
        pad = (-self.offset) % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        length = data.nbytes if isinstance(data, memoryview) else len(data)
        self.f.write(data)
        proto.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", str(self.offset)),
            ("length", str(length)),
        ):
            entry = proto.external_data.add()
            entry.key = key
            entry.value = value
        self.offset += length
        self.count += 1
        return True


def constant_bytes(graph: Graph) -> int:
    """Total size of the constants of ``graph`` and its subgraphs."""
    return sum(
        v.const.nbytes for g in graph.all_graphs() for v in g.constants.values() if v.const is not None
    )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pin_sources(graph: Graph, data_path: str) -> None:
    """Maps lazily loaded tensors that live in ``data_path`` before that file is replaced.

    A memory map keeps the old file's contents alive after the rename, so
    saving over the model's own external data does not corrupt the graph.
    """
    if not os.path.exists(data_path):
        return
    real = os.path.realpath(data_path)
    for g in graph.all_graphs():
        for v in g.constants.values():
            t = v.const
            if (
                t is not None
                and t.external is not None
                and not t.loaded
                and os.path.realpath(t.external.path) == real
            ):
                t.numpy()


def _remove(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def save(
    graph: Graph,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    kiln_ops: str = "functions",
    lower: KilnLowering | None = None,
) -> list[Path]:
    """Writes ``graph`` to ``path`` as ONNX; returns the files written (the model first).

    Args:
        graph: the graph.
        path: the model file; its folder must exist.
        external_data: ``True`` moves tensors of ``size_threshold`` bytes or more
            to ``<stem>.data``; ``None`` does so only when the model would
            exceed protobuf's 2 GB limit; ``False`` never (and fails on such a model).
        size_threshold: smallest tensor, in bytes, that goes to external data.
        kiln_ops: how kiln ops are written, see :func:`kiln.exporter.to_onnx`.
        lower: a hook writing kiln ops as other ops first (the onnx target's ``--onnx-contrib``).

    Raises:
        ExportError: the graph cannot be written; nothing is left behind.
    """
    target = Path(os.fspath(path)).absolute()
    folder = target.parent
    if not folder.is_dir():
        raise ExportError(f"folder {str(folder)!r} does not exist", file=str(target))
    stem = target.stem or target.name
    data_name = f"{stem}.data"
    if data_name == target.name:
        data_name = f"{target.name}.data"
    data_path = folder / data_name
    if external_data is None:
        external_data = constant_bytes(graph) > AUTO_EXTERNAL_BYTES
        if external_data:
            logger.info("weights exceed 2 GB: writing external data to %s", data_path)
    model_tmp: str | None = None
    data_tmp: str | None = None
    written: list[Path] = [target]
    try:
        fd, model_tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        if external_data:
            fd, data_tmp = tempfile.mkstemp(dir=folder, prefix=f".{data_name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f, paused_gc():
                sink = _DataFile(f, data_name, size_threshold)
                model = _Exporter(graph, kiln_ops=kiln_ops, sink=sink, lower=lower).model()
                f.flush()
                os.fsync(f.fileno())
            if sink.count == 0:
                _remove(data_tmp)
                data_tmp = None
        else:
            with paused_gc():
                model = _Exporter(graph, kiln_ops=kiln_ops, lower=lower).model()
        try:
            blob = model.SerializeToString(deterministic=True)
        except Exception as exc:  # noqa: BLE001 - protobuf refuses messages over 2 GB
            raise ExportError(
                f"the model does not fit in one protobuf ({exc}); save it with external_data=True",
                file=str(target),
            ) from None
        if len(blob) > PROTOBUF_LIMIT:
            raise ExportError(
                "the model exceeds protobuf's 2 GB limit; save it with external_data=True", file=str(target)
            )
        with open(model_tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        mode = 0o666 & ~_umask()
        if data_tmp is not None:
            _pin_sources(graph, str(data_path))
            os.chmod(data_tmp, mode)
            os.replace(data_tmp, data_path)
            data_tmp = None
            written.append(data_path)
        os.chmod(model_tmp, mode)
        os.replace(model_tmp, target)
        model_tmp = None
    except BaseException:
        _remove(model_tmp)
        _remove(data_tmp)
        raise
    return written
