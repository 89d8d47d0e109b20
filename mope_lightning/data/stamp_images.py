"""Stamp images as an image encoder reads them: a PNG with an alpha channel, or an SVG drawing, flattened onto a
white background (Tux Paint's blank canvas) and written as an RGB PNG under the dataset's cache folder, once.

Encoders read RGB; converting a transparent PNG to RGB keeps whatever colour its invisible pixels hold (often
black), so the transparent part must be composited first. SVGs are rendered with CairoSVG (it needs the cairo
library, present on Debian-based systems); where it is not importable, `svg_renderer_missing()` says why and the
reader leaves SVG stamps out with a counted note.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree

from PIL import Image

from mope_lightning.data.cache import write_cache_file

BACKGROUND = (255, 255, 255)  # white, Tux Paint's blank canvas
SVG_SIDE = 256  # an SVG is rendered with its longer side this many pixels (MobileNetV2 reads 224)
RENDER_VERSION = 1  # in the cache folder's name: renders of an older recipe are never reused


def svg_renderer_missing() -> Optional[str]:
    """Why SVG stamps cannot be rendered here, or None when CairoSVG works."""
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: cairocffi finds no cairo library
        return (
            f"CairoSVG is not usable ({type(exc).__name__}: {exc}); `pip install cairosvg` (it needs the cairo "
            "library: `apt-get install libcairo2`)"
        )
    return None


def _svg_png(data: bytes, scale: float) -> bytes:
    import cairosvg
    from defusedxml import DefusedXmlException

    try:
        return cairosvg.svg2png(bytestring=data, scale=scale)
    except DefusedXmlException:
        # Illustrator-made SVGs declare their namespaces as internal entities (<!ENTITY ns_svg "...">), which
        # CairoSVG's safe parser refuses. The standard library's expat expands internal entities (bounded against
        # amplification) and never fetches external ones, so a round trip through it gives a plain SVG.
        return cairosvg.svg2png(bytestring=ElementTree.tostring(ElementTree.fromstring(data)), scale=scale)


def open_stamp(path: Path) -> Image.Image:
    """The stamp as an RGBA image (an SVG rendered with its longer side `SVG_SIDE` pixels)."""
    if path.suffix.lower() != ".svg":
        with Image.open(path) as img:
            return img.convert("RGBA")
    data = path.read_bytes()
    with Image.open(io.BytesIO(_svg_png(data, 1.0))) as natural:
        side = max(natural.size)
        if side == SVG_SIDE:
            return natural.convert("RGBA")
    with Image.open(io.BytesIO(_svg_png(data, SVG_SIDE / side))) as img:
        return img.convert("RGBA")


def flatten(img: Image.Image) -> Optional[Image.Image]:
    """The RGBA image composited onto `BACKGROUND` as RGB; None when no pixel is visible."""
    if img.getchannel("A").getextrema()[1] == 0:
        return None
    canvas = Image.new("RGBA", img.size, (*BACKGROUND, 255))
    canvas.alpha_composite(img)
    return canvas.convert("RGB")


def render_stamp(source: Path, target: Path) -> Optional[str]:
    """Write the flattened stamp `source` to `target` (kept while newer than the source); what is wrong with the
    stamp's image, or None."""
    try:
        if target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            return None
        flat = flatten(open_stamp(source))
    except Exception as exc:  # PIL and CairoSVG raise many types for broken files (OSError, ValueError, ParseError)
        return f"cannot read image ({type(exc).__name__}: {exc}); replace the file with a valid PNG or SVG"
    if flat is None:
        return "the image is fully transparent (no visible pixel); replace it or remove the stamp"
    write_cache_file(target, lambda fh: flat.save(fh, "PNG"), binary=True)  # a DataError naming data.cache_dir
    return None
