"""IF-GMI: the L1-ball projection, the layered synthesis of both priors, and the attack end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import NaNOnGradTarget
from torch import Tensor, nn

from inversion_bench.attacks.common.layered import (
    LayeredSynthesis,
    l1_deviation_projection,
    project_l1_ball,
)
from inversion_bench.attacks.common.views import FixedView
from inversion_bench.attacks.generators.dcgan import DCGANPlugin
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAGenerator
from inversion_bench.attacks.if_gmi import IFGMIAttack, IFGMIParams, StageRunner, pack, stage_projection, unpack
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import AttackContext, Reconstruction
from inversion_bench.models import build_classifier
from inversion_bench.registry import attacks

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a busy 2-core machine

IDS = torch.tensor([0, 3, 5])


def _dcgan(resolution: int = 16):
    torch.manual_seed(0)
    return DCGANPlugin(DCGANPlugin.Params(z_dim=8, g_width=4, d_width=4)).build(resolution).eval()


def _stylegan(seed: int = 0) -> StyleGAN2ADAGenerator:
    nets = tiny_stylegan.make_block_pickle_dict(seed)
    return StyleGAN2ADAGenerator(nets["G_ema"], nets["D"]).eval()


class _Sharp(nn.Module):
    """A tiny random target with logits scaled up, so that its confidences react to the images."""

    def __init__(self, scale: float = 50.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = build_classifier("small-cnn", {"width": 4}, 6, 16, {}).eval()
        self.scale = scale
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.net(x)


def _ctx(seed: int = 0, batch_size: int = 64) -> AttackContext:
    return AttackContext(device=torch.device("cpu"), seed=seed, batch_size=batch_size, progress=False,
                         resolution=16)


def _params(**kw) -> IFGMIParams:
    base = {"search_space_size": 24, "num_candidates": 4, "samples_per_target": 2, "iterations": 2,
            "steps": [3, 2, 2]}
    return IFGMIParams(**(base | kw))


def _run(prior=None, target=None, seed: int = 0, batch_size: int = 64, **kw) -> Reconstruction:
    return IFGMIAttack(_params(**kw)).run(target or _Sharp(), IDS, prior if prior is not None else _dcgan(),
                                          _ctx(seed, batch_size))


# ----------------------------------------------------------------------------- L1-ball projection
def test_project_l1_ball_hand_values() -> None:
    x = torch.tensor([[3.0, -1.0, 0.5],    # rho 1, theta 1 -> [2, 0, 0]
                      [1.0, -1.0, 0.5],    # rho 3, theta (2.5 - 2) / 3 -> [5/6, -5/6, 1/3]
                      [0.2, -0.3, 0.1]])   # inside (L1 0.6): unchanged
    out = project_l1_ball(x, 2.0)
    expected = torch.tensor([[2.0, 0.0, 0.0], [5 / 6, -5 / 6, 1 / 3], [0.2, -0.3, 0.1]])
    assert torch.allclose(out, expected, atol=1e-6)
    # radius 1: [1, -1, 0.5] -> rho 2, theta 0.5 -> [0.5, -0.5, 0]; rows are independent; shape kept
    assert torch.allclose(project_l1_ball(torch.tensor([[[1.0, -1.0, 0.5]]]), 1.0),
                          torch.tensor([[[0.5, -0.5, 0.0]]]), atol=1e-6)
    assert torch.equal(project_l1_ball(torch.zeros(2, 4), 1.0), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="radius"):
        project_l1_ball(x, 0.0)


def test_projection_is_the_nearest_point_of_the_ball() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 5, 5, generator=g) * 3
    p = project_l1_ball(x, 4.0)
    assert torch.allclose(p.flatten(1).abs().sum(1), torch.full((16,), 4.0), atol=1e-4)
    # no point of the ball sampled at random is closer
    for _ in range(20):
        q = project_l1_ball(torch.randn(16, 2, 5, 5, generator=g), 4.0)
        assert bool(((x - p).flatten(1).norm(dim=1) <= (x - q).flatten(1).norm(dim=1) + 1e-5).all())


def test_deviation_projection_around_the_origin() -> None:
    origin = torch.tensor([[10.0, 10.0]])
    moved = torch.tensor([[13.0, 9.0]])  # deviation [3, -1], radius 2 -> [2, 0]
    assert torch.allclose(l1_deviation_projection(moved, origin, 2.0), torch.tensor([[12.0, 10.0]]))
    assert torch.equal(l1_deviation_projection(moved, origin, 0.0), moved)  # <= 0: unconstrained


def test_pack_and_stage_projection() -> None:
    w, f = torch.tensor([[1.0, 2.0]]), torch.arange(8.0).view(1, 2, 2, 2)
    packed = pack(w, f)
    assert packed.shape == (1, 10)
    w2, f2 = unpack(packed, w.shape[1:], f.shape[1:])
    assert torch.equal(w2, w) and torch.equal(f2, f)
    assert unpack(pack(w, None), w.shape[1:], None)[1] is None
    project = stage_projection(packed, w.shape[1:], f.shape[1:], radius_w=1.0, radius_f=0.5,
                               constrain=lambda v: v.clamp(max=1.5))
    moved = pack(w + torch.tensor([[3.0, 0.0]]), f + 1.0)  # w deviates [3, 0], f by 1 in 8 entries
    w3, f3 = unpack(project(moved), w.shape[1:], f.shape[1:])
    assert torch.allclose(w3, torch.tensor([[1.5, 1.5]]))  # [2, 2] after the ball, then the constraint
    assert torch.allclose(f3, f + 0.0625)  # the 8 equal deviations shrink to 0.5 / 8 each


# ----------------------------------------------------------------------------- layered synthesis
@pytest.mark.parametrize("resolution", [16, 32])
def test_dcgan_layers_reproduce_the_generator(resolution: int) -> None:
    prior = _dcgan(resolution)
    assert isinstance(prior, LayeredSynthesis) and prior.num_layers == resolution.bit_length() - 2  # 4, 8, ... R px
    z = prior.sample_z(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = prior.synthesize(z)
        assert torch.equal(prior.synthesize_from(0, None, z), full)
        f = None
        for layer in range(1, prior.num_layers):
            f = prior.features(z, layer, layer - 1, f)
            assert torch.equal(f, prior.features(z, layer))
            assert torch.equal(prior.synthesize_from(layer, f, z), full)
    with pytest.raises(ValueError, match="block range"):
        prior.features(z, prior.num_layers + 1)
    with pytest.raises(ValueError, match="previous block"):
        prior.synthesize_from(1, None, z)


def test_stylegan_layers_walk_the_official_blocks() -> None:
    prior = _stylegan()
    assert isinstance(prior, LayeredSynthesis) and prior.num_layers == 3
    w = prior.map(prior.sample_z(3, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        full = prior.synthesize_unclipped(w)
        assert torch.equal(prior.synthesize_from(0, None, w), full)  # the whole walk is the official forward
        assert torch.equal(prior.synthesize_from(0, None, w.unsqueeze(1).expand(-1, prior.num_ws, -1)), full)
        f1 = prior.features(w, 1)
        assert f1.shape == (3, 4, 4, 4)
        assert torch.equal(prior.features(w, 2, 1, f1), prior.features(w, 2))
        # a restart at block l drops the RGB skip of the blocks before it (the reference's set_layer):
        # it changes the image, and without b4's ToRGB the restart is the full synthesis again
        assert not torch.allclose(prior.synthesize_from(1, f1, w), full)
        prior.g.synthesis.b4.torgb.weight.zero_()
        prior.g.synthesis.b4.torgb.bias.zero_()
        assert torch.allclose(prior.synthesize_from(1, f1, w), prior.synthesize_unclipped(w), atol=1e-6)


def test_stylegan_without_blocks_is_refused() -> None:
    nets = tiny_stylegan.make_pickle_dict()  # the flat stand-in: no b4, b8, ... blocks
    prior = StyleGAN2ADAGenerator(nets["G_ema"], nets["D"]).eval()
    with pytest.raises(ConfigError, match="block_resolutions"):
        IFGMIAttack(_params()).run(_Sharp(), IDS, prior, _ctx())


# ------------------------------------------------------------------------------------ the attack
def test_registered_and_reference_defaults() -> None:
    assert attacks.get("if-gmi") is IFGMIAttack
    assert IFGMIAttack.needs_prior and IFGMIAttack.access == "white-box"
    p = IFGMIParams()
    assert (p.search_space_size, p.num_candidates, p.samples_per_target) == (2000, 50, 50)
    assert p.steps == [50, 10, 10, 10, 10, 10, 10, 10]
    assert p.radius_features == p.radius_w == [1000, 2000, 3000, 4000, 5000, 6000, 8000, 8000]
    assert (p.lr, p.betas, p.loss, p.clip, p.crop_scale, p.crop_ratio) == (
        0.005, (0.1, 0.1), "poincare", False, (0.9, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="radius_features has 8 entries but steps has 9 stages"):
        IFGMIParams(steps=[1] * 9)
    with pytest.raises(ValueError, match="radius_w has 1 entries"):
        IFGMIParams(steps=[1, 1], radius_w=[5.0])
    with pytest.raises(ValueError, match="samples_per_target"):
        IFGMIParams(num_candidates=4, samples_per_target=5)


def _confidence(target: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    with torch.no_grad():
        return target(images).softmax(1).gather(1, labels.view(-1, 1)).flatten()


@pytest.mark.parametrize(("make_prior", "clip"), [(_dcgan, False), (_stylegan, True)], ids=["dcgan", "stylegan"])
def test_attack_beats_random_prior_samples(make_prior, clip: bool) -> None:
    """The tiny block StyleGAN has no output non-linearity: ``clip`` keeps its optimised images in range."""
    prior, target = make_prior(), _Sharp()
    state = {k: v.clone() for k, v in target.state_dict().items()}
    rec = _run(prior, target, search_space_size=16, num_candidates=4, samples_per_target=2,
               steps=[20, 20, 20], lr=0.2, radius_features=[0, 1000, 1000], radius_w=[0, 0, 0], clip=clip)
    assert rec.images.shape == (6, 3, 16, 16) and float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.labels.tolist() == [0, 0, 3, 3, 5, 5] and rec.latents.shape == (6, prior.w_dim)
    assert [len(rec.trace[k]) for k in ("loss", "confidence", "grad_cosine")] == [60, 60, 57]
    # random prior samples scored for the same identities
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        samples = prior.synthesize(prior.constrain(prior.map(prior.sample_z(60, g))))
    random_conf = float(_confidence(target, samples, IDS.repeat(20)).mean())
    attack_conf = float(_confidence(target, rec.images, rec.labels).mean())
    assert attack_conf > max(3 * random_conf, random_conf + 0.1), (attack_conf, random_conf)
    # the feature stages go beyond what the search and stage 0 (PPA's w optimisation) reached
    stage = rec.info["stage_confidence"]
    assert len(stage) == 3 and stage[-1] > max(stage[0], rec.info["search_confidence"]) + 0.05
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None and p.requires_grad for p in target.parameters())


def test_features_stay_in_their_l1_ball() -> None:
    prior, target = _dcgan(), _Sharp()
    p = _params(steps=[0, 5], lr=0.5, radius_features=[0, 0.3], radius_w=[0, 0.2])
    runner = StageRunner(prior, target, FixedView(), p, torch.Generator().manual_seed(0), _ctx())
    w = prior.constrain(prior.sample_z(4, torch.Generator().manual_seed(1)))  # as the search returns them
    with torch.no_grad():
        f0 = prior.features(w, 1)
    w1, f1 = runner.optimise(1, w, f0, IDS.repeat(2)[:4])
    dev = (f1 - f0).flatten(1).abs().sum(1)
    assert bool((dev <= 0.3 + 1e-4).all()) and bool((dev > 0.29).all())  # moved up to the radius
    assert torch.equal(w1, w)  # DCGAN's w enters block 0 only: no gradient after stage 0


def test_deterministic_and_seeded() -> None:
    a, b, c = _run(), _run(), _run(seed=1)
    assert torch.equal(a.images, b.images) and a.trace == b.trace
    assert not torch.equal(a.images, c.images)
    small = _run(batch_size=5)  # 12 candidates in batches of 5
    assert small.images.shape == (6, 3, 16, 16)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="prior"):
        IFGMIAttack(_params()).run(_Sharp(), IDS, None, _ctx())
    with pytest.raises(ConfigError, match="steps has 4 stages"):
        _run(steps=[1, 1, 1, 1])  # the 16 px DCGAN has 3 blocks

    with pytest.raises(DivergedError, match="if-gmi stage 0"):
        _run(target=NaNOnGradTarget())


def test_zero_steps_and_no_identities() -> None:
    rec = _run(steps=[0, 0])
    assert rec.images.shape == (6, 3, 16, 16) and rec.trace == {"loss": [], "confidence": [], "grad_cosine": []}
    empty = IFGMIAttack(_params()).run(_Sharp(), torch.tensor([], dtype=torch.long), _dcgan(), _ctx())
    assert empty.images.shape == (0, 3, 16, 16) and empty.labels.shape == (0,)
