"""Per-identity traits and per-image nuisance of the ``synthetic-faces`` dataset.

Every identity has stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style and
colour, accessories) drawn from ``numpy.random.default_rng([seed, identity])``; every image adds
its own nuisance (pose, scale, lighting, expression, background, clothing, accessories worn or not)
drawn from ``numpy.random.default_rng([seed, identity, image])``. Nothing here depends on the
resolution, so an identity looks the same at every resolution, and adding identities leaves the
earlier ones untouched. The drawing lives in :mod:`inversion_bench.data.synthetic_render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from inversion_bench.registry import PluginParams

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

# Per-image nuisance at variation=1 (calibrated: a 4-stage CNN trained for 30 epochs on 20
# identities x 32 images at 32 px reaches roughly 85-95% test accuracy).
_VARIATION_SCALE = 1.25


class PublicShift(PluginParams):
    """How the public identities (the attacker's data) differ from the private ones.

    Real protocols draw the two from different collections (FFHQ's Flickr photos for the prior,
    CelebA's or FaceScrub's press photos for the target): other people and other cameras. A shift
    renders the identities the split makes public as another population photographed another way;
    private identities are rendered exactly as without it. Each field at its default changes nothing.
    """

    colour_cast: float = Field(0.0, ge=-0.5, le=0.5, description="colour balance of the light: red gain x(1 + c), "
                               "blue gain x(1 - c), green unchanged (> 0 warm, < 0 cold)")
    light: float = Field(0.0, ge=0.0, le=1.0, description="added to the amplitude of the directional light "
                         "(per image U(0, 0.69) at variation 1): a stronger side light")
    pose: float = Field(1.0, ge=0.5, le=2.0, description="multiplies head yaw and in-plane rotation "
                        "(clipped to the renderer's range, yaw +-1.5, rotation +-0.4)")
    skin: float = Field(0.0, ge=-3.0, le=3.0, description="skin-tone position t in [0, 1] (light to dark) drawn as "
                        "U^exp(-skin) instead of U: > 0 darker on average, < 0 lighter, every tone still possible")

    @model_validator(mode="after")
    def _shifts_something(self) -> PublicShift:
        if (self.colour_cast, self.light, self.pose, self.skin) == (0.0, 0.0, 1.0, 0.0):
            raise ValueError("every field is at its no-shift value (colour_cast 0, light 0, pose 1, skin 0); "
                             "leave public_shift out for no shift")
        return self


def shifted_tone(t: float, shift: PublicShift | None) -> float:
    """The skin-tone position ``t`` in [0, 1] under ``shift`` (``t ** exp(-skin)``; unchanged without one)."""
    if shift is None or shift.skin == 0.0:
        return t
    return t ** math.exp(-shift.skin)


def shift_image(p: dict[str, object], shift: PublicShift) -> None:
    """Applies ``shift``'s rendering style to one image's nuisance ``p`` (in place; no random draw)."""
    p["tint_r"] = float(p["tint_r"]) * (1.0 + shift.colour_cast)  # type: ignore[arg-type]
    p["tint_b"] = float(p["tint_b"]) * (1.0 - shift.colour_cast)  # type: ignore[arg-type]
    p["light_amp"] = float(p["light_amp"]) + shift.light  # type: ignore[arg-type]
    p["yaw"] = min(1.5, max(-1.5, float(p["yaw"]) * shift.pose))  # type: ignore[arg-type]
    p["rot"] = min(0.4, max(-0.4, float(p["rot"]) * shift.pose))  # type: ignore[arg-type]


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


def identity_traits(seed: int, identity: int, shift: PublicShift | None = None) -> FaceTraits:
    """Draws the traits of ``identity`` from ``default_rng([seed, identity])`` (skin tone under ``shift``)."""
    rng = np.random.default_rng([seed, identity])
    u = rng.uniform
    face_w = u(0.44, 0.56)
    face_h = face_w * u(1.12, 1.38)
    t = shifted_tone(u(0.0, 1.0), shift) * (len(_SKIN) - 1)
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


# The per-image scalars that the renderer turns into [B, 1, 1] tensors (see ``image_params``).
IMAGE_KEYS = (
    "rot", "yaw", "tx", "ty", "scale", "bright", "contrast", "light_dir", "light_amp",
    "tint_r", "tint_g", "tint_b", "smile", "mouth_open", "eye_open", "gaze", "brow_raise",
    "bg_dir", "bg_tex", "bg_freq", "bg_phase", "bg_amp", "shoulder", "hair_vol", "hairline",
    "glasses_on", "glasses_round", "glasses_size", "lens_opacity", "hat_on", "hat_cap", "earrings_on",
)  # fmt: skip


def image_params(
    seed: int, identity: int, image: int, traits: FaceTraits, variation: float = 1.0,
    shift: PublicShift | None = None,
) -> dict[str, object]:
    """Draws the nuisance of one image from ``default_rng([seed, identity, image])``.

    Pose, lighting, expression, background and clothing vary freely; accessories are worn in most
    (not all) images of an identity that owns them, and now and then a random hat or sunglasses
    appear on anyone. The generator is returned under ``"rng"`` (positioned after the
    parameters) for the pixel noise, so the parameters are the same at every resolution. A ``shift``
    changes the drawn values afterwards (:func:`shift_image`), never the draws.
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
    if shift is not None:
        shift_image(p, shift)
    p["rng"] = rng
    return p
