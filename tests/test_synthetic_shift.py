"""The public/private distribution shift of ``synthetic-faces`` (issue 26, item 6): the split's public
identities get another population and rendering style; private images stay bit for bit; keys change
with the shift and only with it; bad values are refused naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inversion_bench.config import load_suite
from inversion_bench.data.splits import SplitSpec, load_collection, make_splits
from inversion_bench.data.synthetic import PublicShift, SyntheticFaces
from inversion_bench.data.synthetic_traits import identity_traits, image_params, shifted_tone
from inversion_bench.errors import ConfigError
from inversion_bench.plan import make_plan
from tests.conftest import tiny_suite

SPLIT = SplitSpec(private_identities=4, public_identities="rest", test_fraction=0.25, seed=3)


def _faces(shift: dict | None = None, n: int = 10, per: int = 6) -> SyntheticFaces:
    params = {"num_identities": n, "images_per_identity": per, "public_shift": shift}
    return SyntheticFaces(SyntheticFaces.Params(**params))


def _by_identity(collection, ident: int) -> torch.Tensor:
    return collection.images_u8[collection.targets == ident]


def _public_private(plugin: SyntheticFaces) -> tuple[list[int], list[int]]:
    names, counts = plugin.listing()
    sp = make_splits(load_collection(_faces(), 16, SPLIT), SPLIT)
    index = {n: i for i, n in enumerate(names)}
    return [index[n] for n in sp.public_names], [index[n] for n in sp.private_names]


def test_private_images_stay_bit_for_bit_and_public_ones_change():
    plain = _faces().load_for_split(16, SPLIT)
    shifted = _faces({"colour_cast": 0.2, "light": 0.3, "pose": 1.3, "skin": 1.0}).load_for_split(16, SPLIT)
    public, private = _public_private(_faces())
    assert len(private) == 4 and len(public) == 6
    for ident in private:
        assert torch.equal(_by_identity(plain, ident), _by_identity(shifted, ident))
    for ident in public:
        assert not torch.equal(_by_identity(plain, ident), _by_identity(shifted, ident))
    assert torch.equal(_faces().load(16).images_u8, plain.images_u8)  # no shift: load and load_for_split agree


def test_colour_cast_warms_the_public_images_as_documented():
    """Only the light's red and blue gains change: green is bit for bit the same, red rises, blue falls."""
    c = 0.2
    plain = _faces().load_for_split(32, SPLIT)
    warm = _faces({"colour_cast": c}).load_for_split(32, SPLIT)
    public, _ = _public_private(_faces())
    a = torch.cat([_by_identity(plain, i) for i in public]).float() / 255
    b = torch.cat([_by_identity(warm, i) for i in public]).float() / 255
    assert torch.equal(a[:, 1], b[:, 1])
    # Red is multiplied by 1 + c before the contrast step (x - 0.5) * k + 0.5 and the clip to [0, 1], which
    # pull the measured ratio of the means towards 1; its direction and size stay clear.
    red_gain = (b[:, 0].mean() / a[:, 0].mean()).item()
    blue_gain = (b[:, 2].mean() / a[:, 2].mean()).item()
    assert red_gain > 1.05 and blue_gain < 0.9
    hue = (b[:, 0] - b[:, 2]).mean() - (a[:, 0] - a[:, 2]).mean()  # a warmer image: red minus blue grows
    assert hue.item() > 0.08


def test_skin_shift_draws_darker_tones_with_the_same_geometry():
    shift = PublicShift(skin=1.3)
    assert shifted_tone(0.25, shift) == pytest.approx(0.25 ** math.exp(-1.3))
    assert shifted_tone(0.25, None) == 0.25 and shifted_tone(0.0, shift) == 0.0 and shifted_tone(1.0, shift) == 1.0
    # the tone position U^exp(-skin) has mean 1 / (1 + exp(-skin)): 0.786 for skin 1.3 (0.5 without)
    rng = np.random.default_rng(0)
    tones = np.array([shifted_tone(float(u), shift) for u in rng.uniform(0.0, 1.0, 20_000)])
    assert tones.mean() == pytest.approx(1 / (1 + math.exp(-1.3)), abs=0.01)
    lum_plain, lum_shift = [], []
    for ident in range(200):
        a, b = identity_traits(0, ident), identity_traits(0, ident, shift)
        assert (a.face_w, a.jaw, a.hair_style, a.glasses) == (b.face_w, b.jaw, b.hair_style, b.glasses)
        lum_plain.append(a.skin.mean())
        lum_shift.append(b.skin.mean())
    assert np.mean(lum_shift) < np.mean(lum_plain) - 0.05  # the anchors run from light to dark


def test_pose_and_light_scale_the_drawn_nuisance_without_new_draws():
    tr = identity_traits(0, 1)
    shift = PublicShift(pose=1.4, light=0.25)
    for image in range(30):
        a, b = image_params(0, 1, image, tr), image_params(0, 1, image, tr, shift=shift)
        assert b["yaw"] == pytest.approx(min(1.5, max(-1.5, a["yaw"] * 1.4)))
        assert b["rot"] == pytest.approx(min(0.4, max(-0.4, a["rot"] * 1.4)))
        assert b["light_amp"] == pytest.approx(a["light_amp"] + 0.25)
        assert b["bright"] == a["bright"] and np.array_equal(b["bg0"], a["bg0"])
        assert a["rng"].standard_normal() == b["rng"].standard_normal()  # the pixel noise is the same


def _keys(write_suite, shift: dict | None) -> tuple[str, str, str]:
    params = {"num_identities": 10, "images_per_identity": 12, "seed": 0}
    if shift is not None:
        params["public_shift"] = shift
    suite = tiny_suite(dataset={**tiny_suite()["dataset"], "params": params})
    plan = make_plan(load_suite(write_suite(suite)))
    return plan.data_key, plan.evaluator_key, plan.suite_hash


def test_data_key_changes_with_the_shift_and_only_with_it(write_suite):
    plain = _keys(write_suite, None)
    assert SyntheticFaces(SyntheticFaces.Params()).params.model_dump(mode="json") == {
        "num_identities": 60, "images_per_identity": 40, "seed": 0, "noise": 0.03, "variation": 1.0}
    shifted = _keys(write_suite, {"colour_cast": 0.1})
    other = _keys(write_suite, {"colour_cast": 0.1, "skin": 0.5})
    assert len({plain[0], shifted[0], other[0]}) == 3
    assert plain[1] != shifted[1] and plain[2] != shifted[2]  # downstream keys follow


@pytest.mark.parametrize(("shift", "field"), [
    ({"colour_cast": 0.9}, "dataset.params.public_shift.colour_cast"),
    ({"pose": 0.1}, "dataset.params.public_shift.pose"),
    ({"light": -0.2}, "dataset.params.public_shift.light"),
    ({"tint": 0.1}, "dataset.params.public_shift.tint"),
    ({}, "dataset.params.public_shift"),
    ({"pose": 1.0}, "dataset.params.public_shift"),
])
def test_invalid_shifts_are_refused_naming_the_field(write_suite, shift, field):
    with pytest.raises(ConfigError) as err:
        _keys(write_suite, shift)
    assert field in str(err.value)
    if shift in ({}, {"pose": 1.0}):
        assert "no-shift value" in str(err.value)


def test_load_without_the_split_refuses_a_shift():
    with pytest.raises(ConfigError, match=r"dataset\.params\.public_shift: .*split"):
        _faces({"light": 0.1}).load(16)
