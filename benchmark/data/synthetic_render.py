"""The face renderer of the ``synthetic-faces`` dataset: one identity's images, painted back to front.

:func:`render_images` paints a batch of images of one identity on a :class:`Canvas` in a fixed
order (background, hair behind the head, neck and shoulders, ears, face, beard, nose, mouth, eyes
and brows, mole, glasses, earrings, hair, hat), then applies the per-image lighting. Each step is
one function below; the order matters, since every shape is composited over what is already there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from inversion_bench.data.synthetic_draw import (
    Canvas,
    apply_lighting,
    band,
    capsule,
    circle,
    ellipse,
    paint_background,
    sq,
    superellipse,
    tri,
)
from inversion_bench.data.synthetic_traits import FaceTraits

# Sideways shift of the inner features per unit of yaw.
_SHIFT = 0.07


def render_images(tr: FaceTraits, params: list[dict[str, object]], size: int) -> Tensor:
    """Renders one identity's images at ``size`` pixels: float [B, 3, size, size], roughly in [0, 1]."""
    cv = Canvas(params, size)
    paint_background(cv, params)
    pose = _Pose.of(cv)
    _paint_body(cv, tr, params)
    _paint_ears(cv, tr, pose)
    face_d, face_a = _paint_face(cv, tr, pose)
    _paint_beard(cv, tr, pose, face_d)
    _paint_nose(cv, tr, pose)
    _paint_mouth(cv, tr, pose)
    for side in (-1.0, 1.0):
        _paint_eye(cv, tr, pose, side)
        _paint_brow(cv, tr, pose, side)
    _paint_mole(cv, tr, pose, face_a)
    _paint_glasses(cv, tr, pose, params)
    _paint_earrings(cv, tr, pose)
    _paint_hair(cv, tr, pose.fu)
    _paint_hat(cv, tr, pose, params)
    apply_lighting(cv)
    return cv.img


@dataclass(frozen=True)
class _Pose:
    """The (approximate) head turn of each image, shared by the painting steps."""

    yaw: Tensor  # [B, 1, 1]
    yaw_np: np.ndarray  # [B]
    shift: Tensor  # [B, 1, 1] sideways shift of the inner features
    shift_np: np.ndarray  # [B]
    fu: Tensor  # [B, S, S] horizontal coordinate of the face outline, which moves a little

    @classmethod
    def of(cls, cv: Canvas) -> _Pose:
        """The pose of the canvas' images."""
        yaw_np = cv.np["yaw"]
        yaw = cv.p["yaw"]
        shift = yaw * _SHIFT  # inner features move sideways with the (approximate) head turn
        shift_np = yaw_np * _SHIFT
        fu = cv.u - yaw * 0.02  # the face outline moves a little
        return cls(yaw=yaw, yaw_np=yaw_np, shift=shift, shift_np=shift_np, fu=fu)


def _ear_box(tr: FaceTraits) -> tuple[float, float, float]:
    """Vertical centre and the two semi-axes (across, along) of the ears."""
    return tr.eye_v + tr.face_h * 0.1, 0.075 * tr.ear_size, 0.12 * tr.ear_size


def _mouth_v(tr: FaceTraits) -> float:
    """Vertical position of the mouth."""
    return tr.eye_v + tr.nose_len + tr.mouth_gap


def _paint_body(cv: Canvas, tr: FaceTraits, params: list[dict[str, object]]) -> None:
    """Hair behind the head (long styles), neck and shoulders with a V neckline, long hair in front."""
    p = cv.p
    u, v = cv.u, cv.v
    W, H = tr.face_w, tr.face_h
    skin = tr.skin
    hair = tr.hair_colour
    # Hair behind the head (long styles).
    back_h = H * (0.55 * tr.back_len + 0.5)
    back_v = H * 0.55 * tr.back_len - H * 0.55
    if tr.long_back:
        cv.paint(
            cv.cover(ellipse(u, v - back_v, W * 1.28 * tr.hair_volume * p["hair_vol"], back_h)), hair * 0.85
        )

    # Neck and shoulders with a V neckline.
    neck = torch.maximum(u.abs() - W * tr.neck_w, H * 0.3 - v)
    cv.paint(cv.cover(neck), skin * 0.78)
    sh = p["shoulder"]
    d = ellipse(u, v - (H + 0.62), W * 2.3 * sh, 0.5 * sh)
    notch = (v - (H + 0.16)) - u.abs() * 0.9  # skin shows where notch < 0
    cv.paint(cv.cover(torch.maximum(d, -notch)), cv.colours(params, "clothes"))
    if tr.long_back:  # long hair falls in front of the shoulders
        d = torch.maximum(
            ellipse(u, v - back_v, W * 1.28 * tr.hair_volume * p["hair_vol"], back_h), W * 0.82 - u.abs()
        )
        cv.paint(cv.cover(d), hair * 0.95)


def _paint_ears(cv: Canvas, tr: FaceTraits, pose: _Pose) -> None:
    """Ears (each slides towards the back of the head as the head turns)."""
    W = tr.face_w
    skin = tr.skin
    ear_v, ear_a, ear_b = _ear_box(tr)
    for side in (-1.0, 1.0):
        ear_u = side * W * 0.97
        w = cv.window(ear_u - pose.yaw_np * 0.07, ear_v, ear_a + 0.03, ear_b + 0.03)
        eu = w.u + pose.yaw * 0.07 - ear_u
        ev = w.v - ear_v
        w.paint(w.cover(ellipse(eu, ev, ear_a, ear_b)), skin * 0.92)
        w.paint(w.cover(ellipse(eu + side * ear_a * 0.15, ev, ear_a * 0.45, ear_b * 0.6)), skin * 0.7, 0.5)


def _paint_face(cv: Canvas, tr: FaceTraits, pose: _Pose) -> tuple[Tensor, Tensor]:
    """Face: an ellipse that narrows towards the jaw (and a little towards the forehead).

    Returns:
        The face's signed distance and its coverage (both [B, S, S]), for the beard and the mole.
    """
    v = cv.v
    W, H = tr.face_w, tr.face_h
    skin = tr.skin
    vn = v / H
    below = vn.clamp(0.0, 1.0)
    above = (-vn).clamp_(0.0, 1.0)
    width = (1.0 - tr.jaw * below * below).mul_(1.0 - tr.forehead * above * above).mul_(W)
    fw = pose.fu / width
    r = (fw * fw + vn * vn).sqrt_()
    face_d = (r - 1.0).mul_(min(W, H) * 0.9)
    face_a = cv.cover(face_d)
    cv.paint(face_a, skin)
    cv.paint(face_a * (r - 0.55).clamp_(0.0, 0.45), skin * 0.7, 0.9)  # darker towards the edge
    return face_d, face_a


def _paint_beard(cv: Canvas, tr: FaceTraits, pose: _Pose, face_d: Tensor) -> None:
    """Beards: full or stubble over the lower face, goatee, moustache."""
    u, v = cv.u, cv.v
    W, H = tr.face_w, tr.face_h
    shift, shift_np = pose.shift, pose.shift_np
    mouth_v = _mouth_v(tr)
    beard_col = tr.hair_colour * 0.9
    if tr.beard in ("full", "stubble"):
        bu = (u - shift) / W
        top = mouth_v - 0.12 - 0.25 * H * (bu * bu)
        d = torch.maximum(face_d, top - v)
        cv.paint(cv.cover(d), beard_col, 0.9 if tr.beard == "full" else 0.35)
    if tr.beard == "goatee":
        w = cv.window(shift_np, mouth_v + 0.09, tr.mouth_w * 0.75 + 0.03, 0.13)
        d = ellipse(w.u - shift, w.v - (mouth_v + 0.09), tr.mouth_w * 0.75, 0.1)
        w.paint(w.cover(d), beard_col, 0.9)
    if tr.beard in ("full", "goatee", "moustache"):
        mv = mouth_v - tr.lip_thick - 0.022
        w = cv.window(shift_np, mv, tr.mouth_w * 1.1 + 0.03, 0.08)
        mu = w.u - shift
        w.paint(
            w.cover(capsule(mu, w.v - mv + sq(mu / tr.mouth_w) * 0.02, tr.mouth_w * 1.1, 0.028)),
            beard_col,
            0.95,
        )


def _paint_nose(cv: Canvas, tr: FaceTraits, pose: _Pose) -> None:
    """Nose: a shaded tip, nostrils and a side shadow along the bridge."""
    skin = tr.skin
    tip_v = tr.eye_v + tr.nose_len
    nw = tr.nose_w
    w = cv.window(
        pose.shift_np * 1.5, (tr.eye_v + tip_v) * 0.5, nw * 1.2 + 0.03, tr.nose_len * 0.5 + nw + 0.03
    )
    nu = w.u - pose.shift * 1.5
    w.paint(w.cover(ellipse(nu, w.v - (tip_v - nw * 0.25), nw, nw * 0.62)), skin * 0.8, 0.6)
    for side in (-1.0, 1.0):
        w.paint(w.cover(ellipse(nu - side * nw * 0.5, w.v - tip_v, nw * 0.3, nw * 0.18)), skin * 0.35, 0.75)
    ridge = torch.maximum((nu - nw * 0.55).abs_().sub_(0.012), band(w.v, tr.eye_v + 0.04, tip_v - nw * 0.5))
    w.paint(w.cover(ridge), skin * 0.7, 0.5)


def _paint_mouth(cv: Canvas, tr: FaceTraits, pose: _Pose) -> None:
    """Mouth: upper and lower lips between curves that rise at the corners when smiling."""
    p = cv.p
    mouth_v = _mouth_v(tr)
    mw = tr.mouth_w
    w = cv.window(pose.shift_np, mouth_v, mw + 0.04, 0.13)
    mu = w.u - pose.shift
    mv = w.v
    mu2 = sq(mu / mw)
    prof = (1.0 - mu2).clamp_(0.0, 1.0)
    centre = mouth_v - p["smile"] * 0.045 * mu2 + p["smile"] * 0.012
    half_open = p["mouth_open"] * 0.03 * prof
    lip = prof.sqrt() * tr.lip_thick
    across = mu.abs() - mw
    up = torch.maximum(band(mv, centre - half_open - lip, centre - half_open), across)
    lo = torch.maximum(band(mv, centre + half_open, centre + half_open + lip * 1.25), across)
    gap = torch.maximum(band(mv, centre - half_open, centre + half_open), across)
    w.paint(w.cover(gap), (0.22, 0.05, 0.05))
    w.paint(w.cover(torch.minimum(up, lo)), tr.lip_colour)
    line = torch.maximum((mv - centre).abs_().sub_(half_open).sub_(0.007), across * 1.1 + 0.01)
    w.paint(w.cover(line), tr.lip_colour * 0.45, 0.8)


def _paint_eye(cv: Canvas, tr: FaceTraits, pose: _Pose, side: float) -> None:
    """One eye (``side`` -1 or 1): white, iris, pupil, lid outline; the far eye narrows as the head turns."""
    p = cv.p
    shift = pose.shift
    ew0, eh0 = tr.eye_w, tr.eye_w * tr.eye_aspect
    w = cv.window(pose.shift_np + side * tr.eye_dx, tr.eye_v, ew0 * 1.3 + 0.04, eh0 + 0.04)
    ew = (1.0 - 0.15 * side * pose.yaw) * ew0
    eh = eh0 * p["eye_open"]
    eu = w.u - shift - side * tr.eye_dx
    ev = w.v - tr.eye_v
    white = ellipse(eu, ev, ew, eh)
    white_a = w.cover(white)
    w.paint(white_a, (0.95, 0.94, 0.9))
    iu = eu - p["gaze"] * ew * 0.45
    w.paint(torch.minimum(white_a, w.cover(circle(iu, ev, tr.iris_r))), tr.iris)
    w.paint(torch.minimum(white_a, w.cover(circle(iu, ev, tr.iris_r * 0.45))), (0.03, 0.03, 0.03))
    upper = (ev * -1.0 * w.inv_px + 0.5).clamp_(0.0, 1.0).mul_(0.6).add_(0.4)
    lid = w.cover(white.abs_().sub_(tr.lash))
    w.paint(lid.mul_(upper), (0.08, 0.05, 0.04), 0.9)


def _paint_brow(cv: Canvas, tr: FaceTraits, pose: _Pose, side: float) -> None:
    """One brow: a slightly arched capsule above the eye, tilted by the identity's brow angle."""
    shift, shift_np = pose.shift, pose.shift_np
    ew0, eh0 = tr.eye_w, tr.eye_w * tr.eye_aspect
    bc = tr.eye_v - eh0 - tr.brow_gap
    w = cv.window(
        shift_np + side * (tr.eye_dx + ew0 * 0.1),
        bc - 0.03,
        tr.brow_len + 0.04,
        tr.brow_len * 0.35 + tr.brow_thick + 0.13,
    )
    bu = w.u - shift - side * (tr.eye_dx + ew0 * 0.1)
    bv = w.v - bc + cv.p["brow_raise"]
    ang = tr.brow_angle * side
    ca, sa = math.cos(ang), math.sin(ang)
    ru = ca * bu + sa * bv
    rv = ca * bv - sa * bu + tr.brow_arch * (1.0 - sq(ru / tr.brow_len))
    w.paint(w.cover(capsule(ru, rv, tr.brow_len, tr.brow_thick)), tr.brow_colour, 0.95)


def _paint_mole(cv: Canvas, tr: FaceTraits, pose: _Pose, face_a: Tensor) -> None:
    """The identity's mole, if any (only where the face is)."""
    if tr.mole is None:
        return
    W, H = tr.face_w, tr.face_h
    mx, my, mr = tr.mole[0] * W * 0.7, tr.mole[1] * H * 0.8, tr.mole[2]
    w = cv.window(pose.shift_np + mx, my, mr + 0.03, mr + 0.03)
    w.paint(
        torch.minimum(w.cover(circle(w.u - pose.shift - mx, w.v - my, mr)), w.crop(face_a)), tr.skin * 0.3, 0.9
    )


def _paint_glasses(cv: Canvas, tr: FaceTraits, pose: _Pose, params: list[dict[str, object]]) -> None:
    """Glasses (per image: worn or not, shape, colours): tinted lenses, rims, bridge and temples."""
    if not cv.np["glasses_on"].any():
        return
    p = cv.p
    W = tr.face_w
    shift, shift_np = pose.shift, pose.shift_np
    ew0 = tr.eye_w
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
        d = ellipse(gu, gv, gw, gh).mul_(rnd).add_(superellipse(gu, gv, gw, gh).mul_(1.0 - rnd))
        w.paint(w.cover(d).mul_(on * p["lens_opacity"]), tint)
        w.paint(w.cover(d.abs_().sub_(0.014)).mul_(on), frame)
        temple = torch.maximum(band(gu * side, gw, W * 0.98 - tr.eye_dx), (gv + gh * 0.4).abs_().sub_(0.011))
        w.paint(w.cover(temple).mul_(on), frame)
    w = cv.window(shift_np, tr.eye_v - gw_np * 0.2, tr.eye_dx + 0.03, 0.06)
    bridge = torch.maximum(
        (w.v - tr.eye_v + gh * 0.25).abs_().sub_(0.011),
        (w.u - shift).abs_().sub_(gw * -1.0 + tr.eye_dx + 0.01),
    )
    w.paint(w.cover(bridge).mul_(on), frame)


def _paint_earrings(cv: Canvas, tr: FaceTraits, pose: _Pose) -> None:
    """Earrings (per image: worn or not), below the ears."""
    if not cv.np["earrings_on"].any():
        return
    W = tr.face_w
    ear_v, _, ear_b = _ear_box(tr)
    for side in (-1.0, 1.0):
        ear_u = side * W * 0.97
        w = cv.window(ear_u - pose.yaw_np * 0.07, ear_v + ear_b * 0.95, 0.06, 0.06)
        d = circle(w.u + pose.yaw * 0.07 - ear_u, w.v - (ear_v + ear_b * 0.95), 0.024)
        w.paint(w.cover(d).mul_(cv.p["earrings_on"]), tr.earring_colour)


def _paint_hair(cv: Canvas, tr: FaceTraits, fu: Tensor) -> None:
    """Paints the hair in front of the face for the identity's style."""
    v = cv.v
    W, H = tr.face_w, tr.face_h
    hair = tr.hair_colour
    vol = cv.p["hair_vol"] * tr.hair_volume
    hairline = cv.p["hairline"]
    style = tr.hair_style
    if style == "bald":
        # Tufts of hair above the ears, following the head outline.
        outer = ellipse(fu, v + H * 0.12, W * 1.06, H * 0.95)
        tuft = ellipse(fu.abs() - W, v - (tr.eye_v - H * 0.12), 0.12, H * 0.26)
        cv.paint(cv.cover(torch.maximum(outer, tuft)), hair, 0.9)
        return
    cap_d = ellipse(fu, v + H * 0.12, W * 1.07 * vol, H * 1.0 * vol)
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
        line = tri(un * 6.0).mul_(0.015).add_(brow - 0.02) + H * 0.8 * sq(un * un)
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
        side_d = torch.maximum(W * 0.84 - fu.abs(), ellipse(fu, v - H * 0.1, W * 1.12 * vol, H * 1.05))
        cv.paint(cv.cover(torch.maximum(side_d, v - H * 0.7)), hair)


def _paint_hat(cv: Canvas, tr: FaceTraits, pose: _Pose, params: list[dict[str, object]]) -> None:
    """Hats (per image): a beanie with a folded band, or a cap with a brim."""
    if not cv.np["hat_on"].any():
        return
    p = cv.p
    u, v = cv.u, cv.v
    W, H = tr.face_w, tr.face_h
    on = p["hat_on"]
    cap = p["hat_cap"]
    colour = cv.colours(params, "hat_colour")
    line = p["hairline"]
    crown = torch.maximum(superellipse(u, v + H * 0.82, W * 1.14, H * 0.62), v - (line + 0.03))
    cv.paint(cv.cover(crown).mul_(on), colour)
    brow_band = torch.maximum(band(v, line - 0.12, line + 0.03), u.abs() - W * 1.14)
    cv.paint(cv.cover(brow_band).mul_(on * (1.0 - cap)), colour * 0.75)
    brim = ellipse(u - pose.shift * 2.0, v - (line + 0.03), W * 1.3, 0.06)
    cv.paint(cv.cover(brim).mul_(on * cap), colour * 0.8)
