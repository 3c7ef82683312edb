"""PP-OCR-like calibration images, generated: text-line crops (cls, rec) and text pages (det); and
scene-like images for ImageNet classifiers (``natural``).

No image ships with rapidocr_onnxruntime, so the tests and benchmarks draw their own, the way
text-recognition data sets are synthesized: random words in a TrueType font (DejaVu when the system
has it, else Pillow's built-in font), dark on light or light on dark, random size, position, slight
rotation, blur and noise; a quarter of the line crops are turned by 180 degrees (what the PP-OCR
angle classifier detects).  Deterministic for a seed.

    write_images(folder, kind="line", count=64, seed=0)   # PNG files line_0000.png ...
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts")
_ALPHABET = string.ascii_letters + string.digits + "    .,:;-/()%$#"


def _fonts() -> list[str]:
    found: list[str] = []
    for d in _FONT_DIRS:
        p = Path(d)
        if p.is_dir():
            found.extend(sorted(str(f) for f in p.rglob("*.ttf") if "Sans" in f.name or "Serif" in f.name))
        if found:
            break
    return found


def _font(size: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    fonts = _fonts()
    if fonts:
        return ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size)
    return ImageFont.load_default(size=size)


def _words(rng: np.random.Generator, low: int, high: int) -> str:
    n = int(rng.integers(low, high))
    return "".join(_ALPHABET[int(i)] for i in rng.integers(0, len(_ALPHABET), n)).strip() or "kiln"


def _colors(rng: np.random.Generator) -> tuple[int, int]:
    light, dark = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    return (light, dark) if rng.random() < 0.8 else (dark, light)


def _finish(img, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    from PIL import Image, ImageFilter

    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, rng.uniform(2, 10), arr.shape)
    tint = rng.uniform(0.85, 1.15, size=3)
    arr = np.clip(arr * tint, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def text_line(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """One text-line crop (like a detected box cut out of a photo): RGB, height 24-64 px."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(18, 48))
    font = _font(size, rng)
    text = _words(rng, 3, 24)
    bg, fg = _colors(rng)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    img = Image.new("RGB", (max(w, 8), max(h, 8)), (bg, bg, bg))
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, fill=(fg, fg, fg), font=font)
    if rng.random() < 0.3:
        img = img.rotate(float(rng.uniform(-3, 3)), expand=False, fillcolor=(bg, bg, bg))
    if rng.random() < 0.25:
        img = img.rotate(180)
    return _finish(img, rng)


def text_page(rng: np.random.Generator, size: tuple[int, int] = (320, 320)):  # type: ignore[no-untyped-def]
    """A page or sign with several text lines on a textured background (for the detector)."""
    from PIL import Image, ImageDraw

    h, w = size
    base = rng.integers(120, 256, size=3)
    grad = np.linspace(0.8, 1.1, h)[:, None, None] * base[None, None, :]
    img = Image.fromarray(np.clip(np.broadcast_to(grad, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        shade = tuple(int(c) for c in rng.integers(60, 256, size=3))
        draw.rectangle([x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))], fill=shade)
    y = int(rng.integers(2, 20))
    while y < h - 16:
        size_px = int(rng.integers(12, 36))
        font = _font(size_px, rng)
        x = int(rng.integers(0, w // 3))
        fg = tuple(int(c) for c in rng.integers(0, 80, size=3))
        draw.text((x, y), _words(rng, 4, 30), fill=fg, font=font)
        y += size_px + int(rng.integers(4, 30))
    return _finish(img, rng)


def natural(rng: np.random.Generator, size: tuple[int, int] = (256, 256)):  # type: ignore[no-untyped-def]
    """A scene-like photo for ImageNet classifiers: sky-to-ground gradient, textured (1/f) noise, soft
    blobs and shapes of random colours, blur and sensor noise; not a real photo, but with the smooth
    regions, edges and colour statistics that make CNN activations look like they do on photos."""
    from PIL import Image, ImageDraw, ImageFilter

    h, w = size
    top, bottom = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = (1 - t) * top[None, None, :] + t * bottom[None, None, :] + np.zeros((h, w, 3))
    # 1/f noise: natural images' power spectrum
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    for c in range(3):
        spectrum = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / f
        field = np.real(np.fft.ifft2(spectrum))
        arr[:, :, c] += field / (field.std() + 1e-9) * rng.uniform(10, 40)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    return _finish(img, rng)


def write_images(folder: str | Path, kind: str = "line", count: int = 64, seed: int = 0) -> list[Path]:
    """Writes ``count`` PNG images of ``kind`` ("line", "page" or "natural") into ``folder``; returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    makers = {"line": text_line, "page": text_page, "natural": natural}
    if kind not in makers:
        raise ValueError(f"unknown image kind {kind!r}")
    for i in range(count):
        img = makers[kind](rng)
        path = out / f"{kind}_{i:04d}.png"
        img.save(path)
        paths.append(path)
    return paths
