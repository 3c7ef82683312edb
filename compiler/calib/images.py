"""Image preprocessing for calibration: a folder of images -> model inputs.

Steps, in order (each optional):

1. decode (Pillow) as RGB, or as grayscale when the input has one channel;
2. resize to ``size = (H, W)`` (default: the input's static H and W), by ``mode``:

   * ``stretch``: to exactly H x W;
   * ``shorter``: the shorter side to ``max(H, W)``, aspect kept (then crop);
   * ``fit``: aspect kept, as large as fits inside H x W, the rest padded;
   * ``height``: PP-OCR's text-line resize: height H, width
     ``min(W, ceil(H * w / h))``, the rest of the width padded;
   * ``none``: keep the decoded size;

3. center crop to ``crop = (H, W)``;
4. ``x = x * scale`` (default ``1/255``), then ``(x - mean) / std`` per channel
   (in the channel order of the decoded RGB image);
5. channel order ``rgb`` or ``bgr`` (OpenCV/PaddleOCR models read BGR);
6. padding (``fit``/``height``) with ``pad`` (default 0) after normalization,
   at the right and bottom, as PaddleOCR does;
7. layout ``nchw`` or ``nhwc`` (default: guessed from the input's shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kiln.errors import UsageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
RESIZE_MODES = ("stretch", "shorter", "fit", "height", "none")


@dataclass(frozen=True)
class ImageOptions:
    """How calibration images become input tensors (see the module doc)."""

    size: tuple[int, int] | None = None
    mode: str = "stretch"
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    channels: str = "rgb"
    layout: str | None = None
    pad: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise UsageError(f"image resize mode {self.mode!r}: choose from {', '.join(RESIZE_MODES)}")
        if self.channels not in ("rgb", "bgr"):
            raise UsageError(f"image channel order {self.channels!r}: choose rgb or bgr")
        if self.layout not in (None, "nchw", "nhwc"):
            raise UsageError(f"image layout {self.layout!r}: choose nchw or nhwc")
        if any(s == 0 for s in self.std):
            raise UsageError("image std must not contain 0")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def guess_layout(shape: tuple | None) -> tuple[str, int | None, int | None, int | None]:
    """(layout, channels, height, width) guessed from a 4-D input shape (dim 0 is the batch)."""
    if shape is None or len(shape) != 4:
        return "nchw", None, None, None
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[1] in (1, 3, 4):
        return "nchw", dims[1], dims[2], dims[3]
    if dims[3] in (1, 3, 4):
        return "nhwc", dims[3], dims[1], dims[2]
    return "nchw", dims[1], dims[2], dims[3]


def load_image(path: Path, options: ImageOptions, input_shape: tuple | None) -> np.ndarray:
    """One preprocessed image, without the batch axis, as float32."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is in the calib/test extras
        raise UsageError("calibration images need Pillow (pip install pillow)") from None
    layout, channels, in_h, in_w = guess_layout(input_shape)
    layout = options.layout or layout
    size = options.size or ((in_h, in_w) if in_h and in_w else None)
    gray = channels == 1
    try:
        with Image.open(path) as source:
            img, valid = _resize(source.convert("L" if gray else "RGB"), size, options.mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"calibration image {path}: cannot read it ({exc})") from None
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if options.crop is not None:
        arr = _center_crop(arr, options.crop)
        valid = (min(valid[0], arr.shape[0]), min(valid[1], arr.shape[1]))
    arr = arr * np.float32(options.scale)
    c = arr.shape[2]
    mean = np.asarray(options.mean if len(options.mean) in (1, c) else options.mean[:c], dtype=np.float32)
    std = np.asarray(options.std if len(options.std) in (1, c) else options.std[:c], dtype=np.float32)
    arr = (arr - mean) / std
    if options.channels == "bgr" and c == 3:
        arr = arr[:, :, ::-1]
    if valid != arr.shape[:2]:
        arr[valid[0]:, :, :] = options.pad
        arr[:, valid[1]:, :] = options.pad
    if layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _resize(img, size: tuple[int, int] | None, mode: str):  # type: ignore[no-untyped-def]
    """Resizes a PIL image; returns it and the (h, w) of its valid (unpadded) part."""
    from PIL import Image

    w, h = img.size
    if size is None or mode == "none":
        return img, (h, w)
    th, tw = size
    resample = Image.Resampling.BILINEAR
    if mode == "stretch":
        return img.resize((tw, th), resample), (th, tw)
    if mode == "shorter":
        ratio = max(th, tw) / min(w, h)
        nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
        return img.resize((nw, nh), resample), (nh, nw)
    if mode == "fit":
        ratio = min(th / h, tw / w)
        nh, nw = max(1, min(th, round(h * ratio))), max(1, min(tw, round(w * ratio)))
    else:  # height
        nh, nw = th, max(1, min(tw, math.ceil(th * w / h)))
    canvas = Image.new(img.mode, (tw, th))
    canvas.paste(img.resize((nw, nh), resample), (0, 0))
    return canvas, (nh, nw)


def _center_crop(arr: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    ch, cw = crop
    h, w = arr.shape[:2]
    if ch > h or cw > w:
        raise UsageError(f"center crop {ch}x{cw} is larger than the resized image {h}x{w}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[top:top + ch, left:left + cw]
