"""Pillow images of any mode made RGB (shared by the file datasets)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(im: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB (16-bit and float greyscale are rescaled, alpha over white)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if arr.max(initial=0.0) > 255.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
