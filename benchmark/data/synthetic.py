"""Procedurally rendered face-like identities (the ``synthetic-faces`` dataset).

Every identity has stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style and
colour, accessories) drawn from ``numpy.random.default_rng([seed, identity])``; every image adds
its own nuisance (pose, scale, lighting, expression, background, clothing, pixel noise) drawn
from ``numpy.random.default_rng([seed, identity, image])``. Nothing depends on the resolution
except the pixel grid, so an identity looks the same at 32 and at 128 pixels, and adding
identities leaves the earlier ones untouched.

Shapes are painted back to front as soft coverage masks computed from approximate signed
distances (a one-pixel linear ramp at the render resolution), on a supersampled grid that is then
box-filtered down to the requested resolution. Only exactly rounded float operations touch the
pixel grid, so the output is bit-identical for a given seed whatever the batch or thread layout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from inversion_bench.data import DatasetPlugin, FaceCollection, TensorFaces
from inversion_bench.errors import ConfigError
from inversion_bench.registry import PluginParams, datasets
from pydantic import Field
from torch import Tensor

log = logging.getLogger(__name__)

# Colour anchors. Skin and hair colours are interpolated and jittered, so neighbouring identities
# overlap in colour and colour alone does not tell them apart.
_SKIN = np.array(
    [
        [0.98, 0.87, 0.78],
        [0.93, 0.76, 0.64],
        [0.84, 0.64, 0.50],
        [0.71, 0.51, 0.37],
        [0.55, 0.38, 0.26],
        [0.38, 0.25, 0.17],
    ]
)
_HAIR = np.array(
    [
        [0.08, 0.07, 0.07],  # black
        [0.22, 0.14, 0.09],  # dark brown
        [0.40, 0.26, 0.15],  # brown
        [0.55, 0.27, 0.13],  # auburn
        [0.80, 0.40, 0.15],  # ginger
        [0.83, 0.68, 0.40],  # blonde
        [0.93, 0.85, 0.62],  # light blonde
        [0.60, 0.60, 0.60],  # grey
        [0.90, 0.90, 0.88],  # white
    ]
)
_HAIR_P = np.array([0.22, 0.22, 0.16, 0.08, 0.06, 0.10, 0.05, 0.07, 0.04])
_IRIS = np.array(
    [
        [0.22, 0.12, 0.06],  # dark brown
        [0.42, 0.26, 0.12],  # brown
        [0.50, 0.42, 0.20],  # hazel
        [0.28, 0.50, 0.30],  # green
        [0.25, 0.48, 0.78],  # blue
        [0.50, 0.56, 0.62],  # grey
    ]
)
_IRIS_P = np.array([0.30, 0.22, 0.12, 0.11, 0.17, 0.08])

HAIR_STYLES = ("short", "long", "bald", "receding", "fringe", "side-part", "curly", "buzz")
_HAIR_STYLE_P = np.array([0.20, 0.18, 0.07, 0.09, 0.14, 0.14, 0.10, 0.08])

# Vertical position of the face centre in the face frame (image coordinates span -1..1).
_FACE_Y = 0.10
# Face-frame to image magnification before the per-image scale.
_ZOOM = 1.08
# Sideways shift of the inner features per unit of yaw.
_SHIFT = 0.07
# Images are drawn at (at least) this many pixels, then box-filtered down to the resolution.
_SS_TARGET = 64
# Per-image nuisance at variation=1 (calibrated: a 4-stage CNN trained for 30 epochs on 20
# identities x 32 images at 32 px reaches roughly 85-95% test accuracy).
_VARIATION_SCALE = 1.25
# Paint small features on cropped windows (exact: a window always contains the whole shape).
_WINDOWS = True


@dataclass(frozen=True)
class FaceTraits:
    """The stable appearance of one identity (face-frame units; the image spans -1..1)."""

    face_w: float
    face_h: float
    jaw: float
    forehead: float
    skin: np.ndarray
    ear_size: float
    neck_w: float
    eye_v: float
    eye_dx: float
    eye_w: float
    eye_aspect: float
    iris_r: float
    iris: np.ndarray
    lash: float
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_angle: float
    brow_arch: float
    brow_colour: np.ndarray
    nose_len: float
    nose_w: float
    mouth_gap: float
    mouth_w: float
    lip_thick: float
    lip_colour: np.ndarray
    hair_style: str
    hair_colour: np.ndarray
    hair_volume: float
    hairline: float
    temple: float
    part: float
    long_back: bool
    back_len: float
    beard: str
    glasses: str
    glasses_colour: np.ndarray
    glasses_tint: np.ndarray
    glasses_size: float
    earrings: bool
    earring_colour: np.ndarray
    hat: str
    hat_colour: np.ndarray
    mole: tuple[float, float, float] | None


def _pick(rng: np.random.Generator, table: np.ndarray, p: np.ndarray) -> np.ndarray:
    return table[int(rng.choice(len(table), p=p / p.sum()))]


def identity_traits(seed: int, identity: int) -> FaceTraits:
    """Draws the traits of ``identity`` from ``default_rng([seed, identity])``."""
    rng = np.random.default_rng([seed, identity])
    u = rng.uniform
    face_w = u(0.44, 0.56)
    face_h = face_w * u(1.12, 1.38)
    t = u(0.0, 1.0) * (len(_SKIN) - 1)
    k = min(int(t), len(_SKIN) - 2)
    skin = _SKIN[k] + (_SKIN[k + 1] - _SKIN[k]) * (t - k)
    skin = np.clip(skin * (1.0 + rng.normal(0.0, 0.035, 3)), 0.0, 1.0)
    hair = _pick(rng, _HAIR, _HAIR_P) * u(0.82, 1.12) * (1.0 + rng.normal(0.0, 0.06, 3))
    hair = np.clip(hair, 0.02, 0.97)
    iris = np.clip(_pick(rng, _IRIS, _IRIS_P) * (1.0 + rng.normal(0.0, 0.1, 3)), 0.0, 1.0)
    lipstick = rng.uniform() < 0.15
    if lipstick:
        lip = np.array([u(0.55, 0.85), u(0.05, 0.25), u(0.10, 0.40)])
    else:
        lip = np.clip(skin * np.array([0.82, 0.55, 0.55]) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
    style = str(rng.choice(HAIR_STYLES, p=_HAIR_STYLE_P))
    long_p = {"long": 1.0, "fringe": 0.5, "side-part": 0.35, "curly": 0.4}.get(style, 0.0)
    long_back = bool(rng.uniform() < long_p)
    brow_colour = hair * 0.7 if style not in ("bald",) else skin * 0.45
    if hair.mean() > 0.7:  # light hair still gives visible brows
        brow_colour = hair * 0.55
    eye_w = u(0.10, 0.145)
    beard = str(
        rng.choice(["none", "full", "goatee", "moustache", "stubble"], p=[0.62, 0.12, 0.08, 0.1, 0.08])
    )
    glasses = str(rng.choice(["none", "round", "square", "sun"], p=[0.68, 0.13, 0.13, 0.06]))
    hat = str(rng.choice(["none", "beanie", "cap"], p=[0.86, 0.07, 0.07]))
    mole = None
    if rng.uniform() < 0.3:
        mole = (u(-0.75, 0.75), u(-0.1, 0.6), u(0.014, 0.024))
    return FaceTraits(
        face_w=face_w,
        face_h=face_h,
        jaw=u(0.0, 0.42),
        forehead=u(0.0, 0.2),
        skin=skin,
        ear_size=u(0.85, 1.2),
        neck_w=u(0.42, 0.6),
        eye_v=-face_h * u(0.06, 0.22),
        eye_dx=face_w * u(0.36, 0.50),
        eye_w=eye_w,
        eye_aspect=u(0.42, 0.68),
        iris_r=eye_w * u(0.42, 0.58),
        iris=iris,
        lash=u(0.010, 0.022),
        brow_gap=u(0.035, 0.09),
        brow_len=eye_w * u(1.0, 1.45),
        brow_thick=u(0.014, 0.04),
        brow_angle=u(-0.22, 0.3),
        brow_arch=u(0.0, 0.04),
        brow_colour=brow_colour,
        nose_len=face_h * u(0.28, 0.46),
        nose_w=u(0.045, 0.085),
        mouth_gap=u(0.09, 0.15),
        mouth_w=face_w * u(0.25, 0.42),
        lip_thick=u(0.016, 0.04),
        lip_colour=lip,
        hair_style=style,
        hair_colour=hair,
        hair_volume=u(1.0, 1.1) if style != "curly" else u(1.22, 1.4),
        hairline=-face_h * u(0.45, 0.68),
        temple=u(0.15, 0.55),
        part=u(-1.0, 1.0),
        long_back=long_back,
        back_len=u(0.9, 1.6),
        beard=beard,
        glasses=glasses,
        glasses_colour=rng.choice([rng.uniform(0.0, 0.25, 3), rng.uniform(0.1, 0.9, 3)]),
        glasses_tint=rng.uniform(0.3, 0.9, 3),
        glasses_size=u(1.35, 1.7),
        earrings=bool(rng.uniform() < 0.2),
        earring_colour=rng.choice([np.array([0.85, 0.7, 0.25]), np.array([0.8, 0.8, 0.82])]),
        hat=hat,
        hat_colour=rng.uniform(0.05, 0.95, 3),
        mole=mole,
    )


_IMAGE_KEYS = (
    "rot", "yaw", "tx", "ty", "scale", "bright", "contrast", "light_dir", "light_amp",
    "tint_r", "tint_g", "tint_b", "smile", "mouth_open", "eye_open", "gaze", "brow_raise",
    "bg_dir", "bg_tex", "bg_freq", "bg_phase", "bg_amp", "shoulder", "hair_vol", "hairline",
    "glasses_on", "glasses_round", "glasses_size", "lens_opacity", "hat_on", "hat_cap", "earrings_on",
)  # fmt: skip


def image_params(
    seed: int, identity: int, image: int, traits: FaceTraits, variation: float = 1.0
) -> dict[str, object]:
    """Draws the nuisance of one image from ``default_rng([seed, identity, image])``.

    Pose, lighting, expression, background and clothing vary freely; accessories are worn in most
    (not all) images of an identity that owns them, and now and then a random hat or sunglasses
    appear on anyone. The generator is returned under ``"rng"`` (positioned after the
    parameters) for the pixel noise, so the parameters are the same at every resolution.
    """
    rng = np.random.default_rng([seed, identity, image])
    v = variation * _VARIATION_SCALE
    vc = min(v, 1.5)  # expression and yaw saturate
    u = rng.uniform
    p: dict[str, object] = {
        "rot": min(0.4, max(-0.4, rng.normal(0.0, 0.14 * v))),
        "yaw": u(-1.0, 1.0) * vc,
        "tx": u(-0.1, 0.1) * v,
        "ty": u(-0.08, 0.08) * v,
        "scale": 1.0 + u(-0.12, 0.12) * v,
        "bright": 1.0 + u(-0.35, 0.25) * v,
        "contrast": 1.0 + u(-0.35, 0.15) * v,
        "light_dir": u(0.0, 2.0 * math.pi),
        "light_amp": u(0.0, 0.55) * v,
        "tint_r": 1.0 + rng.normal(0.0, 0.06 * v),
        "tint_g": 1.0 + rng.normal(0.0, 0.04 * v),
        "tint_b": 1.0 + rng.normal(0.0, 0.06 * v),
        "smile": u(-0.4, 1.0) * vc,
        "mouth_open": max(0.0, u(-0.6, 1.0)) * vc,
        "eye_open": max(0.12, 1.0 - max(0.0, rng.normal(0.0, 0.25 * v))),
        "gaze": u(-0.3, 0.3) * vc,
        "brow_raise": u(-0.02, 0.035) * v,
        "bg_dir": u(0.0, 2.0 * math.pi),
        "bg_tex": float(rng.integers(0, 3)),
        "bg_freq": u(2.0, 9.0),
        "bg_phase": u(0.0, 2.0),
        "bg_amp": u(0.04, 0.2) * vc,
        "shoulder": u(0.9, 1.15),
        "hair_vol": 1.0 + u(-0.03, 0.03) * v,
        "hairline": traits.hairline + u(-0.025, 0.025) * v,
    }
    bg0 = rng.uniform(0.05, 0.95, 3)
    p["bg0"] = bg0 + (bg0.mean() - bg0) * u(0.0, 0.5)  # partly desaturated
    p["bg1"] = np.clip(p["bg0"] + rng.normal(0.0, 0.25 * v, 3), 0.0, 1.0)  # type: ignore[operator]
    p["clothes"] = rng.uniform(0.05, 0.95, 3)
    # Glasses: the identity's own (mostly worn), else occasional random sunglasses.
    random_sun = u() < 0.04
    if traits.glasses != "none":
        worn = u() < (0.7 if traits.glasses == "sun" else 0.85)
        p.update(glasses_on=float(worn), glasses_round=float(traits.glasses == "round"))
        p.update(glasses_size=traits.glasses_size, glasses_frame=traits.glasses_colour)
        sun = traits.glasses == "sun"
        p["glasses_tint"] = traits.glasses_tint * (0.15 if sun else 1.0)
        p["lens_opacity"] = 0.85 if sun else 0.15
    else:
        p.update(glasses_on=float(random_sun), glasses_round=float(u() < 0.5), glasses_size=u(1.4, 1.7))
        p.update(
            glasses_frame=rng.uniform(0.0, 0.3, 3), glasses_tint=rng.uniform(0.0, 0.15, 3), lens_opacity=0.85
        )
    # Hats: the identity's own (worn in about 60% of the images), else an occasional random one.
    if traits.hat != "none":
        p.update(hat_on=float(u() < 0.6), hat_cap=float(traits.hat == "cap"), hat_colour=traits.hat_colour)
    else:
        p.update(hat_on=float(u() < 0.05), hat_cap=float(u() < 0.5), hat_colour=rng.uniform(0.05, 0.95, 3))
    p["earrings_on"] = float(traits.earrings and u() < 0.75)
    p["rng"] = rng
    return p


class _View:
    """Face-frame coordinates and pixels of a (possibly cropped) batch of images being painted."""

    def __init__(self, u: Tensor, v: Tensor, img: Tensor, inv_px: Tensor, box: tuple[slice, slice]) -> None:
        self.box = box  # rows and columns of the full canvas
        self.u = u  # [B, h, w] horizontal face-frame coordinate
        self.v = v  # [B, h, w] vertical face-frame coordinate, 0 = face centre, down is positive
        self.img = img  # [B, 3, h, w], painted in place
        self.inv_px = inv_px  # [B, 1, 1] pixels per face-frame unit

    def crop(self, t: Tensor) -> Tensor:
        """The part of a full-canvas tensor [..., S, S] under this view."""
        return t[..., self.box[0], self.box[1]]

    def cover(self, d: Tensor) -> Tensor:
        """Coverage of a shape with signed distance ``d`` (negative inside), one-pixel ramp."""
        return (0.5 - d * self.inv_px).clamp_(0.0, 1.0)

    def paint(
        self, alpha: Tensor, colour: Tensor | np.ndarray | Sequence[float], opacity: float = 1.0
    ) -> None:
        """Composites ``colour`` over the image with coverage ``alpha`` [B, h, w]."""
        if not isinstance(colour, Tensor):
            colour = torch.tensor(np.asarray(colour, dtype=np.float32)).view(1, 3, 1, 1)
        a = alpha.unsqueeze(1)
        if opacity != 1.0:
            a = a * opacity
        self.img.add_((colour - self.img).mul_(a))


class _Canvas(_View):
    """A batch of images of one identity, with the per-image parameters as [B, 1, 1] tensors."""

    def __init__(self, params: list[dict[str, object]], size: int) -> None:
        b = len(params)
        self.size = size
        self.np = {k: np.array([float(p[k]) for p in params]) for k in _IMAGE_KEYS}  # type: ignore[arg-type]
        self.np["scale"] = self.np["scale"] * _ZOOM
        # Trigonometry on per-image scalars in float64 (math), never on the pixel grid.
        for key, fn, angle in (
            ("cos", np.cos, "rot"), ("sin", np.sin, "rot"),
            ("bg_dx", np.cos, "bg_dir"), ("bg_dy", np.sin, "bg_dir"),
            ("light_dx", np.cos, "light_dir"), ("light_dy", np.sin, "light_dir"),
        ):  # fmt: skip
            self.np[key] = fn(self.np[angle])
        self.p = {k: torch.tensor(a, dtype=torch.float32).view(b, 1, 1) for k, a in self.np.items()}
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
        self.x = coords.view(1, 1, size)
        self.y = coords.view(1, size, 1)
        xs = self.x - self.p["tx"]
        ys = self.y - self.p["ty"]
        sc = self.p["scale"]
        u = (self.p["cos"] * xs + self.p["sin"] * ys) / sc
        v = (self.p["cos"] * ys - self.p["sin"] * xs) / sc - _FACE_Y
        full = (slice(0, size), slice(0, size))
        super().__init__(u, v, torch.empty(b, 3, size, size), sc * (size / 2.0), full)

    def colours(self, params: list[dict[str, object]], key: str) -> Tensor:
        """A per-image colour as a [B, 3, 1, 1] tensor."""
        return torch.tensor(np.stack([p[key] for p in params]), dtype=torch.float32).view(-1, 3, 1, 1)  # type: ignore[arg-type]

    def window(self, cu: float | np.ndarray, cv: float | np.ndarray, hu: float, hv: float) -> _View:
        """The pixels that can see the face-frame box centred at (cu, cv) with half sizes (hu, hv).

        Used for small features: a shape must lie inside the box, which is widened by a few
        pixels, so that cropping never changes a pixel.
        """
        if not _WINDOWS:
            return self
        n = self.np
        s, c, si = n["scale"], n["cos"], n["sin"]
        xs, ys = [], []
        for du in (-hu, hu):
            for dv in (-hv, hv):
                fu = cu + du + np.zeros_like(s)
                fy = cv + dv + _FACE_Y + np.zeros_like(s)
                xs.append(s * (c * fu - si * fy) + n["tx"])
                ys.append(s * (si * fu + c * fy) + n["ty"])
        half = self.size / 2.0
        x0 = int(np.floor((np.min(xs) + 1.0) * half - 0.5)) - 2
        x1 = int(np.ceil((np.max(xs) + 1.0) * half - 0.5)) + 3
        y0 = int(np.floor((np.min(ys) + 1.0) * half - 0.5)) - 2
        y1 = int(np.ceil((np.max(ys) + 1.0) * half - 0.5)) + 3
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = max(x0, min(self.size, x1)), max(y0, min(self.size, y1))
        rows, cols = slice(y0, y1), slice(x0, x1)
        return _View(
            self.u[:, rows, cols],
            self.v[:, rows, cols],
            self.img[:, :, rows, cols],
            self.inv_px,
            (rows, cols),
        )


def _ellipse(u: Tensor, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
    """Approximate signed distance to the ellipse with semi-axes ``a`` (along u) and ``b``."""
    ua = u / a
    vb = v / b
    r = (ua * ua + vb * vb).sqrt_()
    ga = ua.div_(a)
    gb = vb.div_(b)
    grad = (ga * ga + gb * gb).sqrt_().div_(r + 1e-9)
    lo = 1.0 / torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    d = (r - 1.0).div_(torch.maximum(grad, lo))
    # The first-order estimate is poor far from flat ellipses; the bounding box is a lower bound.
    return torch.maximum(d, torch.maximum(u.abs() - a, v.abs() - b))


def _circle(u: Tensor, v: Tensor, radius: float) -> Tensor:
    return (u * u + v * v).sqrt_().sub_(radius)


def _superellipse(u: Tensor, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
    """Approximate signed distance to a rounded rectangle (|u/a|^4 + |v/b|^4 = 1)."""
    ua = u / a
    vb = v / b
    ua = ua * ua
    vb = vb * vb
    r = (ua * ua + vb * vb).sqrt_().sqrt_()
    d = (r - 1.0).mul_(torch.minimum(torch.as_tensor(a), torch.as_tensor(b)))
    return torch.maximum(d, torch.maximum(u.abs() - a, v.abs() - b))


def _capsule(u: Tensor, v: Tensor, half_len: float, radius: float) -> Tensor:
    """Signed distance to a horizontal capsule centred at the origin."""
    q = (u.abs() - (half_len - radius)).clamp_(min=0.0)
    return (q * q + v * v).sqrt_().sub_(radius)


def _sq(t: Tensor) -> Tensor:
    return t * t


def _band(v: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """Signed distance (vertical) to ``lo < v < hi``."""
    return torch.maximum(lo - v, v - hi)


def _tri(t: Tensor) -> Tensor:
    """Smooth periodic wave in [0, 1] with period 2 (a smoothstepped triangle wave)."""
    w = (t - (t * 0.5).floor_().mul_(2.0)).sub_(1.0).abs_()  # exact ops only (no fused remainder)
    return w * w * (3.0 - 2.0 * w)


def _render(tr: FaceTraits, params: list[dict[str, object]], size: int) -> Tensor:
    """Renders one identity's images at ``size`` pixels: float [B, 3, size, size], roughly in [0, 1]."""
    cv = _Canvas(params, size)
    p = cv.p
    u, v = cv.u, cv.v
    img = cv.img
    W, H = tr.face_w, tr.face_h
    yaw_np = cv.np["yaw"]

    # Background: two-colour gradient plus optional stripes or a soft checker texture.
    bg0 = cv.colours(params, "bg0")
    bg1 = cv.colours(params, "bg1")
    dx, dy = p["bg_dx"], p["bg_dy"]
    t = ((cv.x * dx + cv.y * dy) * 0.5 + 0.5).clamp_(0.0, 1.0)
    img.copy_(bg0 + (bg1 - bg0) * t.unsqueeze(1))
    for kind in (1, 2):
        sel = np.nonzero(cv.np["bg_tex"] == kind)[0]
        if len(sel) == 0:
            continue
        idx = torch.from_numpy(sel)
        freq, phase = p["bg_freq"][idx], p["bg_phase"][idx]
        if kind == 1:
            tex = _tri((cv.x * dy[idx] - cv.y * dx[idx]) * freq + phase)
        else:
            tex = _tri(cv.x * freq + phase) * _tri(cv.y * freq - phase)
        tex = (tex - 0.5).mul_(p["bg_amp"][idx])
        img.index_add_(0, idx, tex.unsqueeze(1).expand(-1, 3, -1, -1))

    skin = tr.skin
    hair = tr.hair_colour
    yaw = p["yaw"]
    shift = yaw * _SHIFT  # inner features move sideways with the (approximate) head turn
    shift_np = yaw_np * _SHIFT
    fu = u - yaw * 0.02  # the face outline moves a little

    # Hair behind the head (long styles).
    back_h = H * (0.55 * tr.back_len + 0.5)
    back_v = H * 0.55 * tr.back_len - H * 0.55
    if tr.long_back:
        cv.paint(
            cv.cover(_ellipse(u, v - back_v, W * 1.28 * tr.hair_volume * p["hair_vol"], back_h)), hair * 0.85
        )

    # Neck and shoulders with a V neckline.
    neck = torch.maximum(u.abs() - W * tr.neck_w, H * 0.3 - v)
    cv.paint(cv.cover(neck), skin * 0.78)
    sh = p["shoulder"]
    d = _ellipse(u, v - (H + 0.62), W * 2.3 * sh, 0.5 * sh)
    notch = (v - (H + 0.16)) - u.abs() * 0.9  # skin shows where notch < 0
    cv.paint(cv.cover(torch.maximum(d, -notch)), cv.colours(params, "clothes"))
    if tr.long_back:  # long hair falls in front of the shoulders
        d = torch.maximum(
            _ellipse(u, v - back_v, W * 1.28 * tr.hair_volume * p["hair_vol"], back_h), W * 0.82 - u.abs()
        )
        cv.paint(cv.cover(d), hair * 0.95)

    # Ears (each slides towards the back of the head as the head turns).
    ear_v = tr.eye_v + H * 0.1
    ear_a, ear_b = 0.075 * tr.ear_size, 0.12 * tr.ear_size
    for side in (-1.0, 1.0):
        ear_u = side * W * 0.97
        w = cv.window(ear_u - yaw_np * 0.07, ear_v, ear_a + 0.03, ear_b + 0.03)
        eu = w.u + yaw * 0.07 - ear_u
        ev = w.v - ear_v
        w.paint(w.cover(_ellipse(eu, ev, ear_a, ear_b)), skin * 0.92)
        w.paint(w.cover(_ellipse(eu + side * ear_a * 0.15, ev, ear_a * 0.45, ear_b * 0.6)), skin * 0.7, 0.5)

    # Face: an ellipse that narrows towards the jaw (and a little towards the forehead).
    vn = v / H
    below = vn.clamp(0.0, 1.0)
    above = (-vn).clamp_(0.0, 1.0)
    width = (1.0 - tr.jaw * below * below).mul_(1.0 - tr.forehead * above * above).mul_(W)
    fw = fu / width
    r = (fw * fw + vn * vn).sqrt_()
    face_d = (r - 1.0).mul_(min(W, H) * 0.9)
    face_a = cv.cover(face_d)
    cv.paint(face_a, skin)
    cv.paint(face_a * (r - 0.55).clamp_(0.0, 0.45), skin * 0.7, 0.9)  # darker towards the edge

    # Beards.
    mouth_v = tr.eye_v + tr.nose_len + tr.mouth_gap
    beard_col = hair * 0.9
    if tr.beard in ("full", "stubble"):
        bu = (u - shift) / W
        top = mouth_v - 0.12 - 0.25 * H * (bu * bu)
        d = torch.maximum(face_d, top - v)
        cv.paint(cv.cover(d), beard_col, 0.9 if tr.beard == "full" else 0.35)
    if tr.beard == "goatee":
        w = cv.window(shift_np, mouth_v + 0.09, tr.mouth_w * 0.75 + 0.03, 0.13)
        d = _ellipse(w.u - shift, w.v - (mouth_v + 0.09), tr.mouth_w * 0.75, 0.1)
        w.paint(w.cover(d), beard_col, 0.9)
    if tr.beard in ("full", "goatee", "moustache"):
        mv = mouth_v - tr.lip_thick - 0.022
        w = cv.window(shift_np, mv, tr.mouth_w * 1.1 + 0.03, 0.08)
        mu = w.u - shift
        w.paint(
            w.cover(_capsule(mu, w.v - mv + _sq(mu / tr.mouth_w) * 0.02, tr.mouth_w * 1.1, 0.028)),
            beard_col,
            0.95,
        )

    # Nose: a shaded tip, nostrils and a side shadow along the bridge.
    tip_v = tr.eye_v + tr.nose_len
    nw = tr.nose_w
    w = cv.window(shift_np * 1.5, (tr.eye_v + tip_v) * 0.5, nw * 1.2 + 0.03, tr.nose_len * 0.5 + nw + 0.03)
    nu = w.u - shift * 1.5
    w.paint(w.cover(_ellipse(nu, w.v - (tip_v - nw * 0.25), nw, nw * 0.62)), skin * 0.8, 0.6)
    for side in (-1.0, 1.0):
        w.paint(w.cover(_ellipse(nu - side * nw * 0.5, w.v - tip_v, nw * 0.3, nw * 0.18)), skin * 0.35, 0.75)
    ridge = torch.maximum((nu - nw * 0.55).abs_().sub_(0.012), _band(w.v, tr.eye_v + 0.04, tip_v - nw * 0.5))
    w.paint(w.cover(ridge), skin * 0.7, 0.5)

    # Mouth: upper and lower lips between curves that rise at the corners when smiling.
    mw = tr.mouth_w
    w = cv.window(shift_np, mouth_v, mw + 0.04, 0.13)
    mu = w.u - shift
    mv = w.v
    mu2 = _sq(mu / mw)
    prof = (1.0 - mu2).clamp_(0.0, 1.0)
    centre = mouth_v - p["smile"] * 0.045 * mu2 + p["smile"] * 0.012
    half_open = p["mouth_open"] * 0.03 * prof
    lip = prof.sqrt() * tr.lip_thick
    across = mu.abs() - mw
    up = torch.maximum(_band(mv, centre - half_open - lip, centre - half_open), across)
    lo = torch.maximum(_band(mv, centre + half_open, centre + half_open + lip * 1.25), across)
    gap = torch.maximum(_band(mv, centre - half_open, centre + half_open), across)
    w.paint(w.cover(gap), (0.22, 0.05, 0.05))
    w.paint(w.cover(torch.minimum(up, lo)), tr.lip_colour)
    line = torch.maximum((mv - centre).abs_().sub_(half_open).sub_(0.007), across * 1.1 + 0.01)
    w.paint(w.cover(line), tr.lip_colour * 0.45, 0.8)

    # Eyes: white, iris, pupil, lid outline; the eye on the far side narrows as the head turns.
    ew0, eh0 = tr.eye_w, tr.eye_w * tr.eye_aspect
    gw, gh = ew0 * tr.glasses_size, ew0 * tr.glasses_size * 0.78
    for side in (-1.0, 1.0):
        w = cv.window(shift_np + side * tr.eye_dx, tr.eye_v, ew0 * 1.3 + 0.04, eh0 + 0.04)
        ew = (1.0 - 0.15 * side * yaw) * ew0
        eh = eh0 * p["eye_open"]
        eu = w.u - shift - side * tr.eye_dx
        ev = w.v - tr.eye_v
        white = _ellipse(eu, ev, ew, eh)
        white_a = w.cover(white)
        w.paint(white_a, (0.95, 0.94, 0.9))
        iu = eu - p["gaze"] * ew * 0.45
        w.paint(torch.minimum(white_a, w.cover(_circle(iu, ev, tr.iris_r))), tr.iris)
        w.paint(torch.minimum(white_a, w.cover(_circle(iu, ev, tr.iris_r * 0.45))), (0.03, 0.03, 0.03))
        upper = (ev * -1.0 * w.inv_px + 0.5).clamp_(0.0, 1.0).mul_(0.6).add_(0.4)
        lid = w.cover(white.abs_().sub_(tr.lash))
        w.paint(lid.mul_(upper), (0.08, 0.05, 0.04), 0.9)

        # Brow: a slightly arched capsule above the eye, tilted by the identity's brow angle.
        bc = tr.eye_v - eh0 - tr.brow_gap
        w = cv.window(
            shift_np + side * (tr.eye_dx + ew0 * 0.1),
            bc - 0.03,
            tr.brow_len + 0.04,
            tr.brow_len * 0.35 + tr.brow_thick + 0.13,
        )
        bu = w.u - shift - side * (tr.eye_dx + ew0 * 0.1)
        bv = w.v - bc + p["brow_raise"]
        ang = tr.brow_angle * side
        ca, sa = math.cos(ang), math.sin(ang)
        ru = ca * bu + sa * bv
        rv = ca * bv - sa * bu + tr.brow_arch * (1.0 - _sq(ru / tr.brow_len))
        w.paint(w.cover(_capsule(ru, rv, tr.brow_len, tr.brow_thick)), tr.brow_colour, 0.95)

    if tr.mole is not None:
        mx, my, mr = tr.mole[0] * W * 0.7, tr.mole[1] * H * 0.8, tr.mole[2]
        w = cv.window(shift_np + mx, my, mr + 0.03, mr + 0.03)
        w.paint(
            torch.minimum(w.cover(_circle(w.u - shift - mx, w.v - my, mr)), w.crop(face_a)), skin * 0.3, 0.9
        )

    # Glasses (per image: worn or not, shape, colours): tinted lenses, rims, bridge and temples.
    if cv.np["glasses_on"].any():
        on = p["glasses_on"]
        rnd = p["glasses_round"]
        frame = cv.colours(params, "glasses_frame")
        tint = cv.colours(params, "glasses_tint")
        gs = p["glasses_size"] * ew0
        gw_np = cv.np["glasses_size"].max() * ew0
        gw, gh = gs, gs * 0.78
        for side in (-1.0, 1.0):
            w = cv.window(
                shift_np + side * (tr.eye_dx + W) * 0.5,
                tr.eye_v,
                (W - tr.eye_dx) * 0.5 + gw_np + 0.05,
                gw_np + 0.05,
            )
            gu = w.u - shift - side * tr.eye_dx
            gv = w.v - tr.eye_v - 0.01
            d = _ellipse(gu, gv, gw, gh).mul_(rnd).add_(_superellipse(gu, gv, gw, gh).mul_(1.0 - rnd))
            w.paint(w.cover(d).mul_(on * p["lens_opacity"]), tint)
            w.paint(w.cover(d.abs_().sub_(0.014)).mul_(on), frame)
            temple = torch.maximum(
                _band(gu * side, gw, W * 0.98 - tr.eye_dx), (gv + gh * 0.4).abs_().sub_(0.011)
            )
            w.paint(w.cover(temple).mul_(on), frame)
        w = cv.window(shift_np, tr.eye_v - gw_np * 0.2, tr.eye_dx + 0.03, 0.06)
        bridge = torch.maximum(
            (w.v - tr.eye_v + gh * 0.25).abs_().sub_(0.011),
            (w.u - shift).abs_().sub_(gw * -1.0 + tr.eye_dx + 0.01),
        )
        w.paint(w.cover(bridge).mul_(on), frame)

    # Earrings.
    if cv.np["earrings_on"].any():
        for side in (-1.0, 1.0):
            ear_u = side * W * 0.97
            w = cv.window(ear_u - yaw_np * 0.07, ear_v + ear_b * 0.95, 0.06, 0.06)
            d = _circle(w.u + yaw * 0.07 - ear_u, w.v - (ear_v + ear_b * 0.95), 0.024)
            w.paint(w.cover(d).mul_(p["earrings_on"]), tr.earring_colour)

    _paint_hair(cv, tr, fu)

    # Hats (per image): a beanie with a folded band, or a cap with a brim.
    if cv.np["hat_on"].any():
        on = p["hat_on"]
        cap = p["hat_cap"]
        colour = cv.colours(params, "hat_colour")
        line = p["hairline"]
        crown = torch.maximum(_superellipse(u, v + H * 0.82, W * 1.14, H * 0.62), v - (line + 0.03))
        cv.paint(cv.cover(crown).mul_(on), colour)
        band = torch.maximum(_band(v, line - 0.12, line + 0.03), u.abs() - W * 1.14)
        cv.paint(cv.cover(band).mul_(on * (1.0 - cap)), colour * 0.75)
        brim = _ellipse(u - shift * 2.0, v - (line + 0.03), W * 1.3, 0.06)
        cv.paint(cv.cover(brim).mul_(on * cap), colour * 0.8)

    # Lighting: directional gradient, brightness, colour tint and contrast.
    shade = (cv.x * p["light_dx"] + cv.y * p["light_dy"]) * p["light_amp"] + 1.0
    img.mul_(shade.mul_(p["bright"]).unsqueeze(1))
    tint = torch.cat([p["tint_r"], p["tint_g"], p["tint_b"]], dim=1).unsqueeze(-1)  # [B, 3, 1, 1]
    img.mul_(tint)
    img.sub_(0.5).mul_(p["contrast"].unsqueeze(1)).add_(0.5)
    return img


def _paint_hair(cv: _Canvas, tr: FaceTraits, fu: Tensor) -> None:
    """Paints the hair in front of the face for the identity's style."""
    v = cv.v
    W, H = tr.face_w, tr.face_h
    hair = tr.hair_colour
    vol = cv.p["hair_vol"] * tr.hair_volume
    hairline = cv.p["hairline"]
    style = tr.hair_style
    if style == "bald":
        # Tufts of hair above the ears, following the head outline.
        outer = _ellipse(fu, v + H * 0.12, W * 1.06, H * 0.95)
        tuft = _ellipse(fu.abs() - W, v - (tr.eye_v - H * 0.12), 0.12, H * 0.26)
        cv.paint(cv.cover(torch.maximum(outer, tuft)), hair, 0.9)
        return
    cap_d = _ellipse(fu, v + H * 0.12, W * 1.07 * vol, H * 1.0 * vol)
    if style == "curly":
        # Bumpy outline: cos(k * angle) through the Chebyshev recurrence (exact float ops only).
        vc = v + H * 0.12
        c1 = fu / (fu * fu + vc * vc).sqrt_().add_(1e-6)
        t0, t1 = torch.ones_like(c1), c1
        for _ in range(9):
            t0, t1 = t1, (c1 * t1).mul_(2.0).sub_(t0)
        cap_d = cap_d + t1 * 0.025
    un = fu / W
    if style == "fringe":
        brow = tr.eye_v - tr.eye_w * tr.eye_aspect - tr.brow_gap
        line = _tri(un * 6.0).mul_(0.015).add_(brow - 0.02) + H * 0.8 * _sq(un * un)
    elif style == "side-part":
        line = hairline + H * tr.temple * un * un + 0.18 * H * (un * tr.part).clamp(min=-0.4)
    elif style == "receding":
        line = hairline - H * 0.22 + H * 0.9 * un * un
    else:  # short, long, curly, buzz
        line = hairline + H * tr.temple * un * un
    d = torch.maximum(cap_d, v - line)
    cv.paint(cv.cover(d), hair, 0.6 if style == "buzz" else 1.0)
    if style == "side-part":
        pu = fu - W * 0.45 * math.copysign(1.0, tr.part)  # parting line
        d = torch.maximum(pu.abs() - 0.01, torch.maximum(cap_d, v - (hairline - 0.05)))
        cv.paint(cv.cover(d), hair * 0.6, 0.8)
    if tr.long_back and style in ("long", "fringe", "side-part", "curly"):
        # Strands falling beside the cheeks.
        side_d = torch.maximum(W * 0.84 - fu.abs(), _ellipse(fu, v - H * 0.1, W * 1.12 * vol, H * 1.05))
        cv.paint(cv.cover(torch.maximum(side_d, v - H * 0.7)), hair)


def render_identity(
    seed: int,
    identity: int,
    images: Sequence[int] | int,
    resolution: int,
    *,
    noise: float = 0.03,
    variation: float = 1.0,
    chunk: int = 20,
) -> Tensor:
    """Renders images of one identity as uint8 [n, 3, R, R].

    Args:
        seed: dataset seed.
        identity: identity index (its traits come from ``default_rng([seed, identity])``).
        images: image indices to render, or a count (``range(images)``).
        resolution: output size in pixels.
        noise: standard deviation of the Gaussian pixel noise (images in [0, 1]).
        variation: multiplies the per-image nuisance (pose, lighting, expression, background).
        chunk: images rendered together (memory vs. speed; does not change the output).
    """
    if isinstance(images, int):
        images = range(images)
    with _single_threaded():
        return _render_identity(seed, identity, list(images), resolution, noise, variation, chunk)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Runs torch ops on the calling thread only (restores the thread count afterwards).

    The renderer issues many small tensor ops: intra-op threads mostly wait on each other, badly
    so on a busy machine. :meth:`SyntheticFaces.load` renders identities on parallel threads instead.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _render_identity(
    seed: int,
    identity: int,
    image_list: list[int],
    resolution: int,
    noise: float,
    variation: float,
    chunk: int,
) -> Tensor:
    tr = identity_traits(seed, identity)
    ss = max(1, math.ceil(_SS_TARGET / resolution))  # supersampling factor
    out = []
    for start in range(0, len(image_list), chunk):
        params = [image_params(seed, identity, j, tr, variation) for j in image_list[start : start + chunk]]
        with torch.no_grad():
            hi = _render(tr, params, resolution * ss)
            lo = F.avg_pool2d(hi, ss) if ss > 1 else hi
        if noise > 0:
            nz = np.stack(
                [
                    p["rng"].standard_normal((3, resolution, resolution), dtype=np.float32)  # type: ignore[union-attr]
                    for p in params
                ]
            )
            lo.add_(torch.from_numpy(nz).mul_(noise))
        out.append(lo.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8))
    return torch.cat(out) if out else torch.empty(0, 3, resolution, resolution, dtype=torch.uint8)


@datasets.register("synthetic-faces")
class SyntheticFaces(DatasetPlugin):
    """Procedurally rendered face-like identities (no download; deterministic from the seed).

    Each identity has stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style
    and colour, glasses, beard, earrings, hat); each image varies pose, scale, lighting,
    expression, background, clothing and pixel noise. 60 identities x 40 images at 64 px take a
    few seconds on a laptop CPU.
    """

    version = "1"

    class Params(PluginParams):
        num_identities: int = Field(60, ge=2, le=100_000, description="number of identities (classes)")
        images_per_identity: int = Field(40, ge=1, le=10_000, description="images rendered per identity")
        seed: int = Field(0, ge=0, description="seed of the traits and of every image")
        noise: float = Field(
            0.03, ge=0.0, le=0.5, description="std of the Gaussian pixel noise (pixels in [0, 1])"
        )
        variation: float = Field(
            1.0, ge=0.0, le=2.0, description="scales per-image pose/lighting/expression/background variation"
        )

    def load(self, resolution: int) -> FaceCollection:
        """Renders the collection at ``resolution`` x ``resolution`` pixels."""
        prm = self.params
        assert isinstance(prm, SyntheticFaces.Params)
        if resolution < 8:
            raise ConfigError(f"dataset.resolution: synthetic-faces needs 8 pixels or more, got {resolution}")
        n_id, n_img = prm.num_identities, prm.images_per_identity
        images = torch.empty(n_id * n_img, 3, resolution, resolution, dtype=torch.uint8)
        start = time.perf_counter()

        def render(i: int) -> None:
            images[i * n_img : (i + 1) * n_img] = render_identity(
                prm.seed, i, n_img, resolution, noise=prm.noise, variation=prm.variation
            )

        # Identities are rendered on parallel threads, each running its tensor ops single-threaded.
        workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n_id, 8))
        with _single_threaded():
            if workers == 1:
                for i in range(n_id):
                    render(i)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(render, range(n_id)))
        targets = torch.arange(n_id).repeat_interleave(n_img)
        names = [f"id{i:04d}" for i in range(n_id)]
        log.info(
            "rendered %d synthetic faces at %d px in %.1f s",
            len(targets),
            resolution,
            time.perf_counter() - start,
        )
        return TensorFaces(images, targets, names)


def save_preview(
    collection: FaceCollection,
    path: str | Path,
    identities: int = 8,
    per_identity: int = 8,
    *,
    upscale: int = 1,
    pad: int = 2,
) -> Path:
    """Saves a PNG grid of a collection: one row per identity (the first ``identities`` ones).

    Args:
        collection: any face collection.
        path: where to write the PNG (parent folders are created).
        identities: number of rows.
        per_identity: images per row (the first ones of each identity).
        upscale: nearest-neighbour magnification, handy for looking at 32 px images.
        pad: pixels of white between images.

    Returns:
        The path written.
    """
    from PIL import Image

    r = collection.resolution
    n_rows = min(identities, len(collection.identity_names))
    rows: list[list[int]] = []
    for ident in range(n_rows):
        idx = torch.nonzero(collection.targets == ident).flatten()[:per_identity].tolist()
        rows.append(idx)
    n_cols = max((len(x) for x in rows), default=0)
    cell = r + pad
    grid = torch.ones(3, max(1, n_rows * cell + pad), max(1, n_cols * cell + pad))
    for ri, idx in enumerate(rows):
        if not idx:
            continue
        imgs = collection.get(idx)
        for ci, im in enumerate(imgs):
            y0, x0 = pad + ri * cell, pad + ci * cell
            grid[:, y0 : y0 + r, x0 : x0 + r] = im
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr)
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.Resampling.NEAREST)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pil.save(out)
    return out
