"""PPA's HD-CelebA crop: CelebA's in-the-wild images aligned by 68 landmarks to 224 x 224 (pure functions).

Plug & Play Attacks (Struppek et al., ICML 2022) and the label smoothing paper (Struppek et al., ICLR
2024) train their CelebA targets on a custom crop of CelebA's *in-the-wild* images (``img_celeba``), not
the aligned 178 x 218 ``img_align_celeba``: HD-CelebA-Cropper at face factor 0.65, 224 x 224, bicubic,
its other settings at their defaults (LukasStruppek/Plug-and-Play-Attacks @
3087a4f098a389ff3c144b5a17db9aad408e425a, README.md line 126). Their loader
(``datasets/celeba.py``, ``CustomCelebA.__getitem__``) reads ``img_align_celeba/<name>.jpg`` and falls back
to ``<name>.png``: the crops replace the aligned images under the same folder name, as PNG.

The cropper (LynnHo/HD-CelebA-Cropper @ c42244e83075aa680eb02004bbd0e6e8665f2b94, ``align.py`` and
``cropper.py``; re-implemented here, facts only): the 68 landmarks of each image (its ``landmark.txt``,
``<name> x1 y1 ... x68 y68`` per line) and a normalised 68-point template (``standard_landmark_68pts.txt``),
both from the cropper's ``annotations.zip``. Defaults kept by PPA: ``move_h`` 0.25, ``move_w`` 0 (added to
the template's y and x), ``align_type`` similarity, ``mode`` edge (border replicated), ``order`` 3
(bicubic). The template is placed at ``template * max(h, w) * face_factor + (w // 2, h // 2)`` in the output
and the similarity transform from output to source is the least-squares fit of the template onto the
image's landmarks (what ``cv2.estimateAffinePartial2D`` with an infinite RANSAC threshold converges to:
every point an inlier, refined on all of them); the image is warped through it (``WARP_INVERSE_MAP``).

One difference, stated: the warp here is Pillow's bicubic (Keys a = -0.5), OpenCV's ``INTER_CUBIC`` uses
a = -0.75, so pixel values differ slightly from the cropper's files while the geometry (which pixel comes
from where) is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

PPA_SIZE = 224
PPA_FACE_FACTOR = 0.65
CROPPER_MOVE = (0.25, 0.0)  # (move_h, move_w): align.py defaults
LANDMARKS = 68
MAX_PAD_FACTOR = 4  # a crop reaching further than 4 output sizes beyond the image: landmarks are wrong


@dataclass(frozen=True)
class HdCrop:
    """One image's crop: its landmarks and the template (both ``LANDMARKS`` x 2, flattened x, y pairs)."""

    landmarks: tuple[float, ...]
    template: tuple[float, ...]
    size: int = PPA_SIZE
    face_factor: float = PPA_FACE_FACTOR
    move: tuple[float, float] = CROPPER_MOVE


def target_points(template: np.ndarray, size: int, face_factor: float,
                  move: tuple[float, float] = CROPPER_MOVE) -> np.ndarray:
    """Where the template's points go in a ``size`` x ``size`` output (cropper.py's ``trg_landmarks``)."""
    std = np.asarray(template, dtype=np.float64).reshape(-1, 2).copy()
    std[:, 0] += move[1]
    std[:, 1] += move[0]
    return std * size * face_factor + np.array([size // 2, size // 2], dtype=np.float64)


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity ``[[a, -b, tx], [b, a, ty]]`` minimising ``sum |M (x, y, 1) - dst|^2`` over the
    point pairs (rotation, uniform scale, translation; least squares)."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"similarity_fit: {len(src)} and {len(dst)} points; need the same number, at least 2")
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def warp(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """``image`` warped to ``size`` x ``size``: output pixel (x, y) (integer = pixel centre, OpenCV's
    convention) is sampled bicubically at ``matrix @ (x, y, 1)``; outside the image the border is
    replicated (``BORDER_REPLICATE``).

    Raises:
        ValueError: the crop reaches further than ``MAX_PAD_FACTOR`` output sizes outside the image.
    """
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    pts = corners @ matrix.T
    reach = max(0.0, -pts[:, 0].min(), -pts[:, 1].min(), pts[:, 0].max() - (w - 1), pts[:, 1].max() - (h - 1))
    if reach > MAX_PAD_FACTOR * size:
        raise ValueError(f"the crop reaches {reach:.0f} pixels outside the {w} x {h} image; the landmarks do not "
                         "belong to this image")
    pad = int(math.ceil(reach)) + 3  # + the bicubic kernel's reach
    padded = Image.fromarray(np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    m = matrix.copy()
    m[:, 2] += pad
    # Pillow samples output pixel centre (x + 0.5, y + 0.5) at input position M (x + 0.5, y + 0.5) in its
    # continuous coordinates (pixel i spans [i, i + 1]); shift OpenCV's integer-centre matrix accordingly.
    c = m[0, 2] + 0.5 - 0.5 * (m[0, 0] + m[0, 1])
    f = m[1, 2] + 0.5 - 0.5 * (m[1, 0] + m[1, 1])
    return padded.transform((size, size), Image.Transform.AFFINE, (m[0, 0], m[0, 1], c, m[1, 0], m[1, 1], f),
                            resample=Image.Resampling.BICUBIC)


def align_crop(image: Image.Image, crop: HdCrop) -> Image.Image:
    """``image`` aligned by ``crop``'s landmarks onto the template: the HD-CelebA-Cropper crop."""
    trg = target_points(np.asarray(crop.template), crop.size, crop.face_factor, crop.move)
    matrix = similarity_fit(trg, np.asarray(crop.landmarks))
    return warp(image, matrix, crop.size)


def parse_landmark_line(line: str, n: int = LANDMARKS) -> tuple[str, tuple[float, ...]]:
    """``<name> x1 y1 ... xn yn`` -> (name, 2n numbers).

    Raises:
        ValueError: not ``2n`` numbers after the name (a truncated line), or a value that is no number.
    """
    parts = line.split()
    if len(parts) != 2 * n + 1:
        raise ValueError(f"{max(len(parts) - 1, 0)} numbers after the name, expected {2 * n} ({n} landmarks)")
    try:
        return parts[0], tuple(float(v) for v in parts[1:])
    except ValueError as exc:
        raise ValueError(f"not a number ({exc})") from None


def parse_template(text: str, n: int = LANDMARKS) -> tuple[float, ...]:
    """The template file's ``2n`` numbers (any whitespace layout, as ``np.genfromtxt(...).reshape(n, 2)``).

    Raises:
        ValueError: not ``2n`` numbers.
    """
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError as exc:
        raise ValueError(f"not a number ({exc})") from None
    if len(values) != 2 * n:
        raise ValueError(f"{len(values)} numbers, expected {2 * n} ({n} landmarks x, y)")
    return values
