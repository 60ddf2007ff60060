"""LOMMA (Nguyen et al., CVPR 2023): logit loss + p_reg regulariser, surrogate distillation, GMI/PPA.

The target is a hand-made colour classifier (mean RGB -> linear head) and the public data solid
colours with noise, so that distilled surrogates and the attacks have something to learn in a
second; the prior renders solid colours from a 3-d latent.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from inversion_bench.attacks.common.distill import SurrogateSpec, surrogate_seed, teacher_outputs, train_surrogates
from inversion_bench.attacks.common.lomma import (
    IdentityTerm,
    estimate_p_reg,
    lomma_identity_loss,
    p_reg_penalty,
)
from inversion_bench.attacks.common.losses import cross_entropy_loss, logit_loss
from inversion_bench.attacks.gmi import GenerativeModelInversion, GMIParams
from inversion_bench.attacks.ppa import PlugAndPlayAttack, PPAParams
from inversion_bench.data import LabeledImages, TensorFaces
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import AttackContext, Classifier, Generator, PostprocessedClassifier
from inversion_bench.plan import _plugin_spec
from inversion_bench.store import content_key

CPU = torch.device("cpu")
IDS = torch.tensor([0, 1, 3, 4])
SURROGATES = [{"name": "small-cnn", "params": {"width": 4}}, {"name": "small-resnet", "params": {"width": 4}}]
FAST = {"augment_architectures": SURROGATES, "augment_epochs": 5}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run fastest on one thread (see conftest)."""


def _target(num_classes: int = 6) -> Classifier:
    """Mean colour (normalised to [-1, 1]) -> a fixed random linear head."""
    g = torch.Generator().manual_seed(3)
    head = nn.Linear(3, num_classes)
    with torch.no_grad():
        head.weight.copy_(3 * torch.randn(num_classes, 3, generator=g))
        head.bias.zero_()
    body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, head, feature_dim=3, num_classes=num_classes, input_size=16).eval()


def _public(n: int = 240) -> LabeledImages:
    g = torch.Generator().manual_seed(5)
    colours = torch.rand(n, 3, 1, 1, generator=g)
    images = (colours + 0.1 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)
    labels = torch.arange(n) % 8
    faces = TensorFaces((images * 255).round().to(torch.uint8), labels, [f"p{i}" for i in range(8)])
    return LabeledImages(faces, torch.arange(n), labels, "public")


class _ColourPrior(Generator):
    """Solid-colour images sigmoid(2 z) with a fixed texture; D prefers mid-grey (a mild realism term)."""

    z_dim = w_dim = 3
    resolution = 16

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("texture", 0.05 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7)))

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, 3, generator=generator) * 2 - 1

    def synthesize(self, w: Tensor) -> Tensor:
        return (torch.sigmoid(2 * w).view(-1, 3, 1, 1) + self.texture).clamp(0, 1)

    def discriminator_logits(self, images: Tensor) -> Tensor:
        return -((images.mean((2, 3)) - 0.5) ** 2).sum(1)

    @property
    def has_discriminator(self) -> bool:
        return True


def _ctx(seed: int = 0, public: LabeledImages | None = None) -> AttackContext:
    return AttackContext(device=CPU, seed=seed, batch_size=64, progress=False, resolution=16,
                         public=_public() if public is None else public)


def _confidence(target: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    with torch.no_grad():
        return target(images).softmax(1)[torch.arange(labels.numel()), labels]


# ------------------------------------------------------------------------------------------ losses
def test_logit_loss_and_p_reg_against_hand_computed_values() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    y = torch.tensor([2, 0])
    assert torch.equal(logit_loss(logits, y), torch.tensor([-3.0, -0.5]))
    feats = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    p_reg = torch.tensor([1.0, 0.0])
    # mean over the feature dimension, as the reference's torch.mean((phi - p_reg) ** 2)
    assert torch.allclose(p_reg_penalty(feats, p_reg), torch.tensor([(0 + 4) / 2, (1 + 0) / 2]))
    # -z_y + lambda * penalty
    assert torch.allclose(lomma_identity_loss([logits], y, feats, p_reg, 0.5), torch.tensor([-3 + 1.0, -0.5 + 0.25]))
    # augmentation: the identity loss averaged over the models, the regulariser once (target features)
    other = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    got = lomma_identity_loss([logits, other], y, feats, p_reg, 0.5)
    assert torch.allclose(got, torch.tensor([(-3 - 1) / 2 + 1.0, (-0.5 - 2) / 2 + 0.25]))
    assert torch.allclose(lomma_identity_loss([logits], y), torch.tensor([-3.0, -0.5]))  # weight 0: plain logit
    ce = lomma_identity_loss([logits, other], y, loss_fn=cross_entropy_loss)
    assert torch.allclose(ce, (cross_entropy_loss(logits, y) + cross_entropy_loss(other, y)) / 2)
    with pytest.raises(ValueError, match="features"):
        lomma_identity_loss([logits], y, None, p_reg, 1.0)


def test_p_reg_is_the_mean_public_feature_and_the_term_reads_the_head_input() -> None:
    target, public = _target(), _public(50)
    g = torch.Generator().manual_seed(0)
    full = estimate_p_reg(target, public, num_samples=5000, batch_size=16, device=CPU, generator=g)
    assert torch.allclose(full, target.features(public.images()).mean(0), atol=1e-6)
    part = estimate_p_reg(target, public, num_samples=10, batch_size=4, device=CPU, generator=g)
    assert part.shape == (3,) and not torch.allclose(part, full)
    x = public.images(range(6))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    wrapped = PostprocessedClassifier(target, lambda z: z - 1.0)  # what the attack sees
    loss, logits = IdentityTerm(wrapped, logit_loss, p_reg=full, weight=2.0)(x, y)
    assert torch.allclose(logits, target(x) - 1.0)
    expected = -(target(x) - 1.0)[torch.arange(6), y] + 2.0 * ((target.features(x) - full) ** 2).mean(1)
    assert torch.allclose(loss, expected, atol=1e-6)
    plain_loss, _ = IdentityTerm(wrapped, logit_loss)(x, y)  # no LOMMA: the plain loss
    assert torch.equal(plain_loss, logit_loss(wrapped(x), y))


# ------------------------------------------------------------------------------------ distillation
def test_surrogates_agree_with_the_target_more_than_chance() -> None:
    target, public = _target(), _public()
    params = GMIParams(augment_models=2, **FAST)
    rng = torch.random.get_rng_state()
    models, info = train_surrogates(target, public, list(params.augment_architectures), 2, params, seed=0,
                                    resolution=16, device=CPU)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's global random state is untouched
    teacher = teacher_outputs(target, public, 64, CPU).argmax(1)
    majority = float(torch.bincount(teacher).max()) / teacher.numel()  # always guessing the commonest class
    assert majority < 0.5 and info["augment_architectures"] == ["small-cnn", "small-resnet"]
    for model, agree in zip(models, info["augment_agreement"], strict=True):
        assert not model.training and all(not p.requires_grad for p in model.parameters())
        with torch.no_grad():
            measured = float((model(public.images()).argmax(1) == teacher).float().mean())
        assert math.isclose(measured, agree, abs_tol=1e-3) and agree > majority + 0.2
    again, _ = train_surrogates(target, public, list(params.augment_architectures), 1, params, seed=0,
                                resolution=16, device=CPU)
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), again[0].state_dict().values(),
                                                  strict=True))
    assert surrogate_seed(0, 0) != surrogate_seed(0, 1) != surrogate_seed(1, 0)


def test_params_off_by_default_and_existing_cache_keys_unchanged() -> None:
    # the keys of settings without LOMMA are those from before its parameters existed (computed at
    # commit e19be52); a change here invalidates every stored gmi/ppa reconstruction
    why = "the dumped gmi/ppa parameters changed: stored attacks of existing suites will be recomputed"
    assert content_key(_plugin_spec("attacks", "gmi", GMIParams())) == "e3761121eedf4f21", why
    assert content_key(_plugin_spec("attacks", "ppa", PPAParams())) == "0ed7156a7d59a316", why
    logit = GMIParams(loss="logit", num_steps=100)
    assert content_key(_plugin_spec("attacks", "gmi", logit)) == "d2d445edd5436268", why
    dumped = GMIParams(p_reg_weight=1.0).model_dump(mode="json")
    assert dumped["p_reg_weight"] == 1.0 and "p_reg_samples" in dumped and "augment_models" not in dumped
    on = GMIParams(loss="logit", augment_models=3, augment_architectures=["small-cnn"]).model_dump(mode="json")
    assert on["augment_architectures"] == [{"name": "small-cnn", "params": {}}] and on["augment_epochs"] == 20
    assert GMIParams(**on) == GMIParams(loss="logit", augment_models=3, augment_architectures=["small-cnn"])
    p = PPAParams()
    assert (p.p_reg_weight, p.augment_models, p.augment_epochs, p.augment_lr, p.augment_temperature) == (
        0.0, 0, 20, 0.01, 1.0)
    assert SurrogateSpec.model_validate("small-cnn") == SurrogateSpec(name="small-cnn")
    with pytest.raises(Exception, match="unknown architecture"):
        GMIParams(augment_architectures=["efficientnet_b0"])


# ------------------------------------------------------------------------------------------ attacks
def _gmi(seed: int = 0, **kw):
    params = {"num_steps": 30, "num_restarts": 3, "loss": "logit", "p_reg_weight": 1.0, "augment_models": 2,
              **FAST} | kw
    return GenerativeModelInversion(GMIParams(**params)).run(_target(), IDS, _ColourPrior(), _ctx(seed))


def test_gmi_with_lomma_beats_random_prior_samples_and_is_deterministic() -> None:
    rec = _gmi()
    base = _gmi(num_steps=0)  # the same restarts, not optimised: the best random prior sample per identity
    target = _target()
    conf, conf0 = _confidence(target, rec.images, rec.labels), _confidence(target, base.images, base.labels)
    assert float(conf.mean()) > float(conf0.mean()) + 0.2
    assert rec.trace["loss"][-1] < rec.trace["loss"][0]
    info = rec.info
    assert info["augment_models"] == 2 and info["augment_seconds"] > 0 and "p_reg_seconds" in info
    assert len(info["augment_agreement"]) == 2 and info["loss"] == "logit"
    again = _gmi()
    assert torch.equal(rec.images, again.images) and rec.trace == again.trace
    assert not torch.equal(rec.images, _gmi(seed=1).images)


def test_ppa_with_lomma_and_missing_public_data() -> None:
    params = PPAParams(search_space_size=40, num_candidates=4, num_steps=5, samples_per_target=2, iterations=2,
                       loss="logit", p_reg_weight=1.0, augment_models=1, lr=0.05, **FAST)
    rec = PlugAndPlayAttack(params).run(_target(), IDS, _ColourPrior(), _ctx())
    assert rec.images.shape == (8, 3, 16, 16) and rec.info["augment_architectures"] == ["small-cnn"]
    assert rec.info["augment_seconds"] > 0 and rec.trace["loss"][-1] < rec.trace["loss"][0]
    empty = LabeledImages(_public().collection, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                          "public")
    with pytest.raises(ConfigError, match="public"):
        PlugAndPlayAttack(params).run(_target(), IDS, _ColourPrior(), _ctx(public=empty))
