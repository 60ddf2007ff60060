"""Shared attack pieces: identity losses, gradient cosine/trace, candidate search, final selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from inversion_bench.attacks.common.losses import (
    cross_entropy_loss,
    identity_loss,
    logit_loss,
    poincare_loss,
    target_confidence,
)
from inversion_bench.attacks.common.optimize import frozen, optimize_latents
from inversion_bench.attacks.common.search import identity_confidences, search_candidates, top_candidates
from inversion_bench.attacks.common.selection import score_latents, select_per_identity, transform_scores
from inversion_bench.attacks.common.trace import StepTrace, cosine_series, gradient_cosine
from inversion_bench.attacks.common.views import FixedView
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Generator


# ----------------------------------------------------------------------------------------- losses
def test_poincare_hand_computed() -> None:
    # u = [2, -1, 1] / 4, ||u||^2 = 0.375; v = [0.9999, 0, 0], ||v||^2 = 0.99980001;
    # ||u - v||^2 = 0.4999^2 + 0.0625 + 0.0625 = 0.37490001;
    # delta = 2 * 0.37490001 / (0.625 * 0.00019999) = 5998.7001; arccosh(1 + delta) = 9.3926119
    loss = poincare_loss(torch.tensor([[2.0, -1.0, 1.0]]), torch.tensor([0]))
    assert loss.shape == (1,)
    assert float(loss[0]) == pytest.approx(9.392612, rel=1e-5)


def test_poincare_properties() -> None:
    y = torch.tensor([1, 1])
    good, bad = torch.tensor([[0.5, 10.0, -1.0]]), torch.tensor([[10.0, 0.5, -1.0]])
    losses = poincare_loss(torch.cat([good, bad]), y)
    assert losses[0] < losses[1]
    assert torch.isfinite(losses).all() and (losses >= 0).all()
    # scale invariance of the L1 normalisation
    assert torch.allclose(poincare_loss(3 * good, y[:1]), poincare_loss(good, y[:1]))


def test_other_losses() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
    y = torch.tensor([2, 0])
    ce = cross_entropy_loss(logits, y)
    expected = -torch.log_softmax(logits, 1)[torch.arange(2), y]
    assert torch.allclose(ce, expected)
    assert torch.allclose(logit_loss(logits, y), torch.tensor([-3.0, -0.5]))
    assert torch.allclose(target_confidence(logits, y), torch.exp(-expected))
    assert identity_loss("poincare") is poincare_loss
    with pytest.raises(ValueError, match="unknown identity loss"):
        identity_loss("hinge")


# ---------------------------------------------------------------------------------------- cosine
def test_gradient_cosine_known_sequence() -> None:
    grads = [
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
        torch.tensor([[1.0, 1.0], [0.0, -3.0]]),   # cos: 1/sqrt(2), -1
        torch.tensor([[2.0, 2.0], [5.0, 0.0]]),    # cos: 1, 0
        torch.tensor([[0.0, 0.0], [1.0, 0.0]]),    # cos: 0 (zero gradient), 1
    ]
    assert torch.allclose(gradient_cosine(grads[0], grads[1]), torch.tensor([1 / math.sqrt(2), -1.0]))
    series = cosine_series(grads)
    assert len(series) == 3
    assert series == pytest.approx([(1 / math.sqrt(2) - 1) / 2, 0.5, 0.5])
    with pytest.raises(ValueError):
        gradient_cosine(torch.zeros(2, 3), torch.zeros(3, 2))
    # rows are flattened: [N, L, D] gradients work too
    g = torch.randn(3, 2, 4)
    assert torch.allclose(gradient_cosine(g, 2 * g), torch.ones(3))


def test_step_trace_means_over_batches() -> None:
    trace = StepTrace(3, torch.device("cpu"))
    grads = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]])]
    trace.begin_batch(1)
    for s in range(3):
        trace.record(s, torch.tensor([float(s)]), torch.tensor([0.1 * s]), grads[s])
    trace.end_batch()
    trace.begin_batch(2)
    for s in range(3):
        trace.record(s, torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]), torch.ones(2, 2))
    trace.end_batch()
    out = trace.as_dict()
    assert out["loss"] == pytest.approx([(0 + 4) / 3, (1 + 4) / 3, (2 + 4) / 3])
    assert out["confidence"] == pytest.approx([1.0 / 3, 1.1 / 3, 1.2 / 3])
    # batch 1: cos 0 then 1; batch 2: always 1
    assert out["grad_cosine"] == pytest.approx([2 / 3, 1.0])
    assert all(isinstance(v, float) for series in out.values() for v in series)


def test_step_trace_divergence() -> None:
    trace = StepTrace(2, torch.device("cpu"))
    trace.begin_batch(1)
    trace.record(0, torch.tensor([1.0]), torch.tensor([0.5]), torch.ones(1, 2))
    trace.record(1, torch.tensor([float("nan")]), torch.tensor([0.5]), torch.ones(1, 2))
    with pytest.raises(DivergedError, match="step 2"):
        trace.end_batch("unit")
    assert StepTrace(0, torch.device("cpu")).as_dict() == {"loss": [], "confidence": [], "grad_cosine": []}


def test_optimize_latents_batches_and_restores() -> None:
    lin = nn.Linear(2, 5)
    target_w = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0], [3.0, -3.0], [0.2, 0.2]])

    def objective(w: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return ((w - target_w[y]) ** 2).sum(1), lin(w)

    def make(params):
        return torch.optim.SGD(params, lr=0.25), None

    labels = torch.tensor([0, 1, 2, 3, 4])
    trace = StepTrace(20, torch.device("cpu"))
    with frozen(lin):
        out = optimize_latents(torch.zeros(5, 2), labels, objective=objective, make_optimizer=make,
                               num_steps=20, batch_size=2, device=torch.device("cpu"), trace=trace,
                               project=lambda w: w.clamp(-2.5, 2.5))
    assert torch.allclose(out, target_w.clamp(-2.5, 2.5), atol=1e-3)
    assert lin.weight.requires_grad and lin.weight.grad is None and lin.training
    tr = trace.as_dict()
    assert len(tr["loss"]) == 20 and len(tr["grad_cosine"]) == 19
    assert tr["loss"][-1] < tr["loss"][0]


# --------------------------------------------------------------------------- fakes with known scores
class LevelPrior(Generator):
    """Latent [a, b] -> a uniform image of grey level sigmoid(a) (b is ignored)."""

    z_dim = w_dim = 2
    resolution = 8

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 2, generator=generator)

    def synthesize(self, w: Tensor) -> Tensor:
        return torch.sigmoid(w[:, :1]).view(-1, 1, 1, 1).expand(-1, 3, self.resolution, self.resolution)


class LevelTarget(nn.Module):
    """Logits [8 m, -8 m, 0] of the mean grey level m - 0.5: class 0 likes bright, class 1 dark."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([8 * m, -8 * m, torch.zeros_like(m)], dim=1)


def test_top_candidates_known_confidences() -> None:
    conf = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.7, 0.05]])
    idx = top_candidates(conf, 2)
    assert idx.tolist() == [[1, 3], [0, 2]]
    with pytest.raises(ConfigError, match="search_space_size"):
        top_candidates(conf, 5)


def test_search_candidates_keeps_best_latents() -> None:
    prior, target = LevelPrior(), LevelTarget()
    g = torch.Generator().manual_seed(5)
    z = prior.sample_z(40, torch.Generator().manual_seed(5))  # what the search will sample
    lat, labels, conf = search_candidates(prior, target, torch.tensor([0, 1]), search_space_size=40,
                                          num_candidates=3, view=FixedView(), batch_size=7, generator=g,
                                          device=torch.device("cpu"))
    assert lat.shape == (6, 2) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    brightest = z[z[:, 0].argsort(descending=True)[:3]]
    darkest = z[z[:, 0].argsort()[:3]]
    assert torch.allclose(lat[:3], brightest) and torch.allclose(lat[3:], darkest)
    assert (conf[:-1][:2] >= conf[1:3]).all()  # best first within an identity
    # the confidence is the softmax of the known logits (flip changes nothing for uniform images)
    m = torch.sigmoid(brightest[0, 0]) - 0.5
    expected = torch.softmax(torch.tensor([8 * m, -8 * m, 0.0]), 0)[0]
    assert float(conf[0]) == pytest.approx(float(expected), rel=1e-5)


def test_identity_confidences_averages_flip() -> None:
    class LeftRight(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            d = x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2 :].mean((1, 2, 3))
            return torch.stack([4 * d, -4 * d], 1)

    x = torch.zeros(1, 3, 4, 4)
    x[..., :2] = 1
    conf = identity_confidences(LeftRight(), x, torch.tensor([0, 1]), flip=True)
    assert torch.allclose(conf, torch.tensor([[0.5, 0.5]]), atol=1e-6)
    assert float(identity_confidences(LeftRight(), x, torch.tensor([0]), flip=False)) > 0.9


def test_final_selection_known_scores() -> None:
    prior, target = LevelPrior(), LevelTarget()
    latents = torch.tensor([[-2.0, 0], [1.0, 0], [3.0, 0], [0.5, 0], [-1.0, 0], [-3.0, 0], [0.0, 0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    g = torch.Generator().manual_seed(0)
    scores = score_latents(prior.synthesize, target, latents, labels, iterations=3, batch_size=3, generator=g,
                           device=torch.device("cpu"))
    # uniform images: crops and flips do not change the score, which is the known confidence
    m = torch.sigmoid(latents[:, 0]) - 0.5
    probs = torch.softmax(torch.stack([8 * m, -8 * m, torch.zeros_like(m)], 1), 1)
    assert torch.allclose(scores, probs[torch.arange(7), labels], atol=1e-5)
    keep = select_per_identity(scores, labels, torch.tensor([1, 0]), 2)
    assert keep.tolist() == [5, 4, 2, 1]
    assert select_per_identity(scores, labels, torch.tensor([0, 2]), 10).tolist() == [2, 1, 3, 0]


def test_transform_scores_random_crops_matter() -> None:
    class LeftBright(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
            return torch.stack([10 * left, torch.zeros_like(left)], 1)

    x = torch.zeros(2, 3, 16, 16)
    x[..., :8] = 1
    y = torch.tensor([0, 0])
    plain = transform_scores(LeftBright(), x, y, iterations=0, generator=torch.Generator().manual_seed(0))
    crops = transform_scores(LeftBright(), x, y, iterations=20, generator=torch.Generator().manual_seed(0))
    assert (crops < plain).all()  # flips move the bright half to the right in some transforms
    again = transform_scores(LeftBright(), x, y, iterations=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)


def test_fixed_view() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert FixedView()(x) is x
    assert FixedView(center_crop=24)(x).shape[-1] == 24
    assert torch.equal(FixedView(center_crop=24)(x), x[..., 4:28, 4:28])
    assert FixedView(center_crop=24, resize=16)(x).shape[-1] == 16
    assert FixedView(resize=64)(x).shape[-1] == 64
    assert FixedView(center_crop=24, resize=16).output_size(32) == 16
    with pytest.raises(ConfigError, match="center_crop"):
        FixedView(center_crop=40).check(32)


def test_ppa_and_if_gmi_parameters_share_their_search_and_selection_checks():
    import pydantic

    from inversion_bench.attacks.if_gmi import IFGMIParams
    from inversion_bench.attacks.ppa import PPAParams

    for cls in (PPAParams, IFGMIParams):
        with pytest.raises(pydantic.ValidationError, match=r"num_candidates \(9\) exceeds search_space_size \(8\)"):
            cls(search_space_size=8, num_candidates=9, samples_per_target=1)
        with pytest.raises(pydantic.ValidationError, match=r"samples_per_target \(5\) exceeds num_candidates \(4\)"):
            cls(search_space_size=8, num_candidates=4, samples_per_target=5)
        with pytest.raises(pydantic.ValidationError, match=r"selection_scale must satisfy 0 < low <= high <= 1, "
                                                           r"got \(0.5, 1.5\)"):
            cls(search_space_size=8, num_candidates=4, samples_per_target=1, selection_scale=(0.5, 1.5))
        cls(search_space_size=8, num_candidates=4, samples_per_target=4)
