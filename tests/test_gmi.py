"""GMI end to end on a tiny random target with a tiny DCGAN (and a tiny StyleGAN) prior."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from inversion_bench.attacks.generators.dcgan import DCGANPlugin
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAPlugin
from inversion_bench.attacks.gmi import GenerativeModelInversion, GMIParams
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import AttackContext, Generator, PriorContext, Reconstruction
from inversion_bench.models import build_classifier
from inversion_bench.registry import attacks

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402

IDS = torch.tensor([1, 2, 4])


def _prior(resolution: int = 16):
    torch.manual_seed(0)
    return DCGANPlugin(DCGANPlugin.Params(z_dim=8, g_width=4, d_width=4)).build(resolution).eval()


def _target() -> nn.Module:
    torch.manual_seed(1)
    return build_classifier("small-cnn", {"width": 4}, 6, 16, {}).eval()


def _ctx(seed: int = 0, batch_size: int = 64) -> AttackContext:
    return AttackContext(device=torch.device("cpu"), seed=seed, batch_size=batch_size, progress=False,
                         resolution=16)


def _run(seed: int = 0, batch_size: int = 64, prior: Generator | None = None, target=None,
         **kw) -> Reconstruction:
    params = GMIParams(**({"num_steps": 4, "num_restarts": 3} | kw))
    attack = GenerativeModelInversion(params)
    return attack.run(target or _target(), IDS, prior or _prior(), _ctx(seed, batch_size))


def test_registered_and_reference_defaults() -> None:
    assert attacks.get("gmi") is GenerativeModelInversion and GenerativeModelInversion.needs_prior
    p = GMIParams()
    assert (p.num_steps, p.lr, p.momentum, p.identity_weight, p.clip_range, p.num_restarts) == (
        1500, 0.02, 0.9, 100.0, 1.0, 5)
    with pytest.raises(ValueError, match="samples_per_target"):
        GMIParams(num_restarts=2, samples_per_target=3)


def test_end_to_end_and_deterministic() -> None:
    target = _target()
    state = {k: v.clone() for k, v in target.state_dict().items()}
    rec = _run(target=target)
    assert rec.images.shape == (3, 3, 16, 16)
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.labels.tolist() == [1, 2, 4]
    assert rec.latents is not None and rec.latents.abs().max() <= 1.0  # z clipped to [-1, 1]
    assert len(rec.trace["loss"]) == 4 and len(rec.trace["grad_cosine"]) == 3
    assert rec.info["num_restarts"] == 3 and "selection_confidence" in rec.info
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in target.parameters())
    again = _run(target=target)
    assert torch.equal(rec.images, again.images) and rec.trace == again.trace
    assert not torch.equal(rec.images, _run(seed=1, target=target).images)


def test_keeps_best_restart() -> None:
    rec = _run(num_steps=0, num_restarts=4, samples_per_target=2)
    assert rec.labels.tolist() == [1, 1, 2, 2, 4, 4]
    target = _target()
    with torch.no_grad():
        conf = target(rec.images).softmax(1)[torch.arange(6), rec.labels]
    assert (conf[0::2] >= conf[1::2] - 1e-6).all()  # best first
    assert rec.info["selection_confidence"] >= rec.info["mean_confidence_all_restarts"] - 1e-6


def test_small_batches_and_loss_choices() -> None:
    rec = _run(batch_size=4, prior_loss="softplus", loss="poincare")
    assert rec.images.shape == (3, 3, 16, 16)


class _Sharp(nn.Module):
    """The tiny target with logits scaled up, so that its confidences react to the images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _target()

    def forward(self, x):
        return 50 * self.net(x)


def test_optimisation_raises_confidence() -> None:
    # tiny random nets barely react to z: larger steps than the reference's lr / 100
    rec = _run(num_steps=10, num_restarts=2, prior_weight=0.0, target=_Sharp(), reference_batch_size=1,
               lr=0.1)
    assert rec.trace["confidence"][-1] > rec.trace["confidence"][0]
    assert rec.trace["loss"][-1] < rec.trace["loss"][0]


def test_requires_a_discriminator(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="discriminator"):
        _run(prior=_NoDisc())
    with pytest.raises(ConfigError, match="prior"):
        GenerativeModelInversion(GMIParams()).run(_target(), IDS, None, _ctx())


def test_with_stylegan_prior(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump(tiny_stylegan.make_pickle_dict(), f)
    ctx = PriorContext(public=None, resolution=16, seed=0, device=torch.device("cpu"), weights={"g": path},
                       progress=False)
    prior = StyleGAN2ADAPlugin(StyleGAN2ADAPlugin.Params(pickle="g")).fit(ctx)
    rec = _run(prior=prior)
    assert rec.images.shape == (3, 3, 16, 16) and rec.latents.shape == (3, 8)


class _NoDisc(Generator):
    z_dim = w_dim = 4
    resolution = 16

    def sample_z(self, n, generator):
        return torch.randn(n, 4, generator=generator)

    def synthesize(self, w):
        return torch.sigmoid(w.mean(1)).view(-1, 1, 1, 1).expand(-1, 3, 16, 16)


def test_divergence_raises() -> None:
    class NaNTarget(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 6)

        def forward(self, x):
            out = self.lin(x.mean((2, 3)))
            return out * float("nan") if torch.is_grad_enabled() else out

    with pytest.raises(DivergedError, match="gmi"):
        _run(target=NaNTarget())


def test_no_identities() -> None:
    params = GMIParams(num_steps=2, num_restarts=2)
    no_ids = torch.tensor([], dtype=torch.long)
    rec = GenerativeModelInversion(params).run(_target(), no_ids, _prior(), _ctx())
    assert rec.images.shape == (0, 3, 16, 16) and rec.labels.shape == (0,)
