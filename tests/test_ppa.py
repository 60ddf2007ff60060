"""Plug & Play Attacks end to end on a tiny random target and a tiny DCGAN prior."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import NaNOnGradTarget
from torch import Tensor, nn

from inversion_bench.attacks.common.views import FixedView
from inversion_bench.attacks.generators.dcgan import DCGANPlugin
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAGenerator
from inversion_bench.attacks.ppa import PlugAndPlayAttack, PPAObjective, PPAParams
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import AttackContext, Generator, Reconstruction
from inversion_bench.models import build_classifier
from inversion_bench.registry import attacks

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402

IDS = torch.tensor([0, 3, 5])


def _prior(resolution: int = 16):
    torch.manual_seed(0)
    return DCGANPlugin(DCGANPlugin.Params(z_dim=8, g_width=4, d_width=4)).build(resolution).eval()


def _target(resolution: int = 16) -> nn.Module:
    torch.manual_seed(1)
    return build_classifier("small-cnn", {"width": 4}, 6, resolution, {}).eval()


def _ctx(seed: int = 0, batch_size: int = 64) -> AttackContext:
    return AttackContext(device=torch.device("cpu"), seed=seed, batch_size=batch_size, progress=False,
                         resolution=16)


def _params(**kw) -> PPAParams:
    base = {"search_space_size": 24, "num_candidates": 4, "num_steps": 3, "samples_per_target": 2,
            "iterations": 2}
    return PPAParams(**(base | kw))


def _run(seed: int = 0, batch_size: int = 64, prior=None, target=None, **kw) -> Reconstruction:
    attack = PlugAndPlayAttack(_params(**kw))
    return attack.run(target or _target(), IDS, prior or _prior(), _ctx(seed, batch_size))


def test_registered_and_reference_defaults() -> None:
    assert attacks.get("ppa") is PlugAndPlayAttack and PlugAndPlayAttack.needs_prior
    p = PPAParams()
    assert (p.search_space_size, p.num_candidates, p.samples_per_target, p.iterations) == (5000, 200, 50, 100)
    assert (p.lr, p.betas, p.loss, p.crop_scale, p.crop_ratio) == (0.005, (0.1, 0.1), "poincare", (0.9, 1.0),
                                                                 (1.0, 1.0))
    with pytest.raises(ValueError, match="samples_per_target"):
        PPAParams(num_candidates=4, samples_per_target=5)
    with pytest.raises(ValueError, match="search_space_size"):
        PPAParams(search_space_size=10, num_candidates=20, samples_per_target=5)


def test_end_to_end_and_deterministic() -> None:
    target = _target()
    state = {k: v.clone() for k, v in target.state_dict().items()}
    rec = _run(target=target)
    assert rec.images.shape == (6, 3, 16, 16) and rec.images.device.type == "cpu"
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.labels.tolist() == [0, 0, 3, 3, 5, 5] and rec.labels.dtype == torch.int64
    assert rec.latents is not None and rec.latents.shape == (6, 8)
    assert [len(rec.trace[k]) for k in ("loss", "confidence", "grad_cosine")] == [3, 3, 2]
    for key in ("num_steps", "num_candidates", "selection_confidence", "search_s", "optimize_s",
                "selection_s"):
        assert key in rec.info
    assert 0 <= rec.info["selection_confidence"] <= 1
    # the target is untouched: same weights, no gradients, flags restored
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None and p.requires_grad for p in target.parameters())
    assert not target.training
    again = _run(target=target)
    assert torch.equal(rec.images, again.images) and rec.trace == again.trace
    other = _run(seed=1, target=target)
    assert not torch.equal(rec.images, other.images)


def test_small_batches() -> None:
    rec = _run(batch_size=5)  # 12 candidates in batches of 5
    assert rec.images.shape == (6, 3, 16, 16)
    assert len(rec.trace["loss"]) == 3


def test_selection_only_baseline() -> None:
    rec = _run(num_steps=0)
    assert rec.images.shape == (6, 3, 16, 16)
    assert rec.trace == {"loss": [], "confidence": [], "grad_cosine": []}
    assert rec.info["num_steps"] == 0
    # without optimisation the kept latents are search candidates: samples of the prior
    prior = _prior()
    z = prior.constrain(prior.sample_z(24, _ctx().generator()))
    assert all(any(torch.allclose(w, zz) for zz in z) for w in rec.latents)


class _Sharp(nn.Module):
    """The tiny target with logits scaled up, so that its confidences react to the images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _target()

    def forward(self, x: Tensor) -> Tensor:
        return 50 * self.net(x)


@pytest.mark.parametrize("loss", ["poincare", "cross_entropy", "logit"])
def test_losses_raise_confidence(loss: str) -> None:
    rec = _run(loss=loss, num_steps=10, lr=0.1, crop_scale=(1.0, 1.0), num_candidates=2, samples_per_target=1,
               target=_Sharp())
    conf = rec.trace["confidence"]
    assert conf[-1] > conf[0]


def test_center_crop_and_resize() -> None:
    rec = _run(center_crop=12, resize=20)
    assert rec.images.shape == (6, 3, 20, 20) and rec.info["image_size"] == 20
    with pytest.raises(ConfigError, match="center_crop"):
        _run(center_crop=40)


def test_lr_schedule_and_discriminator_weight() -> None:
    rec = _run(lr_milestones=[1, 2], discriminator_weight=0.5, num_steps=3)
    assert rec.images.shape == (6, 3, 16, 16)


def test_needs_a_prior() -> None:
    with pytest.raises(ConfigError, match="prior"):
        PlugAndPlayAttack(_params()).run(_target(), IDS, None, _ctx())


def test_divergence_raises() -> None:
    with pytest.raises(DivergedError, match="ppa"):
        _run(target=NaNOnGradTarget())


def test_no_identities() -> None:
    attack = PlugAndPlayAttack(_params())
    rec = attack.run(_target(), torch.tensor([], dtype=torch.long), _prior(), _ctx())
    assert rec.images.shape == (0, 3, 16, 16) and rec.labels.shape == (0,)


# ------------------------------------------------------------------------------------- clipping
class _Raw(Generator):
    """A hand-made prior whose latent is the image: ``synthesize_unclipped(w) = w + 0.5``, mostly outside [0, 1]."""

    def __init__(self, resolution: int = 16) -> None:
        super().__init__()
        self.resolution, self.z_dim = resolution, 3 * resolution * resolution
        self.w_dim = self.z_dim

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def synthesize_unclipped(self, w: Tensor) -> Tensor:
        return w.view(-1, 3, self.resolution, self.resolution) + 0.5

    def synthesize(self, w: Tensor) -> Tensor:
        return self.synthesize_unclipped(w).clamp(0, 1)


class _Loud(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False) -> Tensor:
        return 3 * self.inner(ws, noise_mode=noise_mode, force_fp32=force_fp32)


def _loud_stylegan() -> StyleGAN2ADAGenerator:
    """The tiny StyleGAN2-ADA network of the tests with a raw synthesis output in [-3, 3]."""
    nets = tiny_stylegan.make_pickle_dict()
    nets["G_ema"].synthesis = _Loud(nets["G_ema"].synthesis)
    return StyleGAN2ADAGenerator(nets["G_ema"], nets["D"]).eval()


class _Recording(nn.Module):
    """The tiny target, recording the value range of the inputs it gets with gradients enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _target()
        self.grad_range = [float("inf"), float("-inf")]

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            x_ = x.detach()
            self.grad_range = [min(self.grad_range[0], float(x_.min())), max(self.grad_range[1], float(x_.max()))]
        return self.net(x)


def test_clip_default_is_the_reference() -> None:
    """The reference's configs set ``clip: false``; at that default the dump (the cache keys) is unchanged."""
    assert PPAParams().clip is False
    assert PPAParams().model_dump(mode="json") == {
        k: v for k, v in PPAParams(clip=True).model_dump(mode="json").items() if k != "clip"}
    assert "clip" not in PPAParams(num_steps=5).model_dump(mode="json")
    assert PPAParams(clip=True).model_dump(mode="json")["clip"] is True
    # LOMMA's unused fields are still left out, and appear when used
    dumped = PPAParams().model_dump(mode="json")
    assert "p_reg_samples" not in dumped and "augment_epochs" not in dumped
    assert "p_reg_samples" in PPAParams(p_reg_weight=1.0, clip=True).model_dump(mode="json")


def test_unclipped_gradient_reaches_out_of_range_pixels() -> None:
    prior, target = _Raw(), _target()
    w = torch.randn(4, prior.z_dim, generator=torch.Generator().manual_seed(0))
    out = (prior.synthesize_unclipped(w) < 0) | (prior.synthesize_unclipped(w) > 1)
    assert 0.3 < float(out.float().mean()) < 0.9
    grads = {}
    for clip in (True, False):
        objective = PPAObjective(prior, target, FixedView(), _params(clip=clip), torch.Generator().manual_seed(0))
        wc = w.clone().requires_grad_()
        loss, _ = objective(wc, torch.tensor([0, 3, 5, 0]))
        loss.sum().backward()
        grads[clip] = wc.grad.view_as(out)
    assert bool((grads[True][out] == 0).all())  # the clamp: no gradient for out-of-range pixels
    assert float((grads[False][out] != 0).float().mean()) > 0.9  # the reference's clip: false: they get one
    assert float((grads[True][~out] != 0).float().mean()) > 0.9


@pytest.mark.parametrize("prior", [_Raw, _loud_stylegan])
def test_unclipped_attack_returns_clamped_images(prior) -> None:
    recs = {}
    for clip in (False, True):
        target = _Recording()
        recs[clip] = _run(prior=prior(), target=target, clip=clip, num_steps=3, lr=0.05)
        images = recs[clip].images
        assert images.shape == (6, 3, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1
        assert recs[clip].info["clip"] is clip
        lo, hi = target.grad_range  # what the target saw in the optimisation
        assert (lo >= 0 and hi <= 1) if clip else (lo < 0 and hi > 1)
    # the candidate search is clipped either way (as the reference's); the optimisation differs
    assert recs[True].info["search_confidence"] == recs[False].info["search_confidence"]
    assert recs[True].trace["loss"] != recs[False].trace["loss"]


@pytest.mark.parametrize("discriminator_weight", [0.0, 0.5])
def test_clip_changes_nothing_for_dcgan(discriminator_weight: float) -> None:
    """DCGAN's tanh output never leaves [0, 1]: clip true and false give identical results."""
    a = _run(clip=True, discriminator_weight=discriminator_weight)
    b = _run(clip=False, discriminator_weight=discriminator_weight)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert torch.equal(a.labels, b.labels) and a.trace == b.trace
