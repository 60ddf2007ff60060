"""Drawing primitives of the ``synthetic-faces`` dataset: the canvas and approximate signed distances.

Shapes are painted back to front as soft coverage masks computed from approximate signed
distances (a one-pixel linear ramp at the render resolution). A :class:`Canvas` holds a batch of
images of one identity with their face-frame coordinates; small features are painted on cropped
:class:`View` windows of it. The per-image background and lighting, which do not depend on the
identity, are painted here too; the face itself is painted by
:mod:`~inversion_bench.data.synthetic_render`. Only exactly rounded float operations touch the
pixel grid, so the output is bit-identical for a given seed whatever the batch or thread layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from inversion_bench.data.synthetic_traits import IMAGE_KEYS

# Vertical position of the face centre in the face frame (image coordinates span -1..1).
_FACE_Y = 0.10
# Face-frame to image magnification before the per-image scale.
_ZOOM = 1.08
# Paint small features on cropped windows (exact: a window always contains the whole shape).
_WINDOWS = True


class View:
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


class Canvas(View):
    """A batch of images of one identity, with the per-image parameters as [B, 1, 1] tensors."""

    def __init__(self, params: list[dict[str, object]], size: int) -> None:
        b = len(params)
        self.size = size
        self.np = {k: np.array([float(p[k]) for p in params]) for k in IMAGE_KEYS}  # type: ignore[arg-type]
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

    def window(self, cu: float | np.ndarray, cv: float | np.ndarray, hu: float, hv: float) -> View:
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
        return View(
            self.u[:, rows, cols],
            self.v[:, rows, cols],
            self.img[:, :, rows, cols],
            self.inv_px,
            (rows, cols),
        )


def paint_background(cv: Canvas, params: list[dict[str, object]]) -> None:
    """Background: two-colour gradient plus optional stripes or a soft checker texture."""
    p = cv.p
    bg0 = cv.colours(params, "bg0")
    bg1 = cv.colours(params, "bg1")
    dx, dy = p["bg_dx"], p["bg_dy"]
    t = ((cv.x * dx + cv.y * dy) * 0.5 + 0.5).clamp_(0.0, 1.0)
    cv.img.copy_(bg0 + (bg1 - bg0) * t.unsqueeze(1))
    for kind in (1, 2):
        sel = np.nonzero(cv.np["bg_tex"] == kind)[0]
        if len(sel) == 0:
            continue
        idx = torch.from_numpy(sel)
        freq, phase = p["bg_freq"][idx], p["bg_phase"][idx]
        if kind == 1:
            tex = tri((cv.x * dy[idx] - cv.y * dx[idx]) * freq + phase)
        else:
            tex = tri(cv.x * freq + phase) * tri(cv.y * freq - phase)
        tex = (tex - 0.5).mul_(p["bg_amp"][idx])
        cv.img.index_add_(0, idx, tex.unsqueeze(1).expand(-1, 3, -1, -1))


def apply_lighting(cv: Canvas) -> None:
    """Lighting: directional gradient, brightness, colour tint and contrast."""
    p = cv.p
    img = cv.img
    shade = (cv.x * p["light_dx"] + cv.y * p["light_dy"]) * p["light_amp"] + 1.0
    img.mul_(shade.mul_(p["bright"]).unsqueeze(1))
    tint = torch.cat([p["tint_r"], p["tint_g"], p["tint_b"]], dim=1).unsqueeze(-1)  # [B, 3, 1, 1]
    img.mul_(tint)
    img.sub_(0.5).mul_(p["contrast"].unsqueeze(1)).add_(0.5)


def ellipse(u: Tensor, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
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


def circle(u: Tensor, v: Tensor, radius: float) -> Tensor:
    """Signed distance to the circle of ``radius`` centred at the origin."""
    return (u * u + v * v).sqrt_().sub_(radius)


def superellipse(u: Tensor, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
    """Approximate signed distance to a rounded rectangle (|u/a|^4 + |v/b|^4 = 1)."""
    ua = u / a
    vb = v / b
    ua = ua * ua
    vb = vb * vb
    r = (ua * ua + vb * vb).sqrt_().sqrt_()
    d = (r - 1.0).mul_(torch.minimum(torch.as_tensor(a), torch.as_tensor(b)))
    return torch.maximum(d, torch.maximum(u.abs() - a, v.abs() - b))


def capsule(u: Tensor, v: Tensor, half_len: float, radius: float) -> Tensor:
    """Signed distance to a horizontal capsule centred at the origin."""
    q = (u.abs() - (half_len - radius)).clamp_(min=0.0)
    return (q * q + v * v).sqrt_().sub_(radius)


def sq(t: Tensor) -> Tensor:
    """The element-wise square ``t * t``."""
    return t * t


def band(v: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """Signed distance (vertical) to ``lo < v < hi``."""
    return torch.maximum(lo - v, v - hi)


def tri(t: Tensor) -> Tensor:
    """Smooth periodic wave in [0, 1] with period 2 (a smoothstepped triangle wave)."""
    w = (t - (t * 0.5).floor_().mul_(2.0)).sub_(1.0).abs_()  # exact ops only (no fused remainder)
    return w * w * (3.0 - 2.0 * w)
