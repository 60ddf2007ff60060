"""LoFt / CALoR: the low-rank head's filtering and gradient against independent computations, the
confidence adaptation loss against hand-computed values, and the defense on the built-in architectures."""

from __future__ import annotations

import math

import pytest
import torch

from inversion_bench.defenses.loft import (
    LoFt,
    LowRankHead,
    bn_scale,
    confidence_optimum,
    effective_map,
    filtered_variance_fraction,
    head_jacobian,
    inverse_focal_loss,
    row_space_projector,
)
from inversion_bench.errors import ConfigError
from inversion_bench.models import SmallCNN, build_classifier
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_row_space_projector_hand_computed():
    # A = [[1, 1, 0]]: its row space is span{(1, 1, 0)/sqrt 2}, so P = [[.5, .5, 0], [.5, .5, 0], [0, 0, 0]]
    a = torch.tensor([[1.0, 1.0, 0.0]])
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(row_space_projector(a), expected, atol=1e-6)


def test_row_space_projector_is_the_svd_projector_idempotent_and_of_rank_r():
    g = torch.Generator().manual_seed(0)
    r, d = 3, 7
    a = torch.randn(r, d, generator=g, dtype=torch.float64)
    p = row_space_projector(a)
    _, s, vh = torch.linalg.svd(a, full_matrices=False)  # independent: V_r V_r^T
    assert torch.allclose(p, vh.T @ vh, atol=1e-10)
    assert torch.allclose(p @ p, p, atol=1e-10)  # idempotent
    assert torch.allclose(p, p.T, atol=1e-10)  # orthogonal projector
    assert torch.linalg.matrix_rank(p) == r and math.isclose(float(torch.trace(p)), r, abs_tol=1e-9)
    f = torch.randn(d, generator=g, dtype=torch.float64)
    assert torch.allclose(a @ f, a @ (p @ f), atol=1e-10)  # A only sees P f
    # a rank-deficient A (two equal rows): rank 1
    a2 = torch.stack([a[0], a[0]])
    assert torch.linalg.matrix_rank(row_space_projector(a2)) == 1


def test_filtered_variance_fraction_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # keeps the first coordinate
    feats = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])  # around (0, 1): (1, 1), (-1, -1)
    assert filtered_variance_fraction(feats, torch.tensor([0.0, 1.0]), p) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="do not vary"):
        filtered_variance_fraction(torch.ones(2, 2), torch.ones(2), p)


def test_head_filters_the_null_space_and_its_jacobian_is_low_rank():
    torch.manual_seed(0)
    d, r, c = 12, 3, 5
    head = LowRankHead(d, r, c)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        head[0].running_mean.copy_(torch.randn(d))
        head[0].running_var.copy_(torch.rand(d) + 0.5)
        head[0].weight.copy_(torch.rand(d) + 0.5)
        head[0].bias.copy_(torch.randn(d))
    head.eval()
    bn = head[0]
    a = effective_map(head[1].weight.detach(), bn_scale(bn.weight.detach(), bn.running_var, bn.eps))
    assert torch.allclose(a, head.effective_map())
    assert torch.allclose(a, head[1].weight.detach() @ torch.diag(bn.weight.detach() / torch.sqrt(bn.running_var
                                                                                                   + bn.eps)))
    p = row_space_projector(a)
    f = torch.randn(4, d)
    u = torch.randn(4, d)
    with torch.no_grad():  # moving f along the null space of A changes nothing
        assert torch.allclose(head(f), head(f + u @ (torch.eye(d) - p).T), atol=1e-5)
        assert not torch.allclose(head(f), head(f + u @ p.T), atol=1e-3)
    # the gradient of the logits w.r.t. the features: closed form = autograd, rank r
    x = f[0].clone().requires_grad_(True)
    auto = torch.autograd.functional.jacobian(lambda v: head(v.unsqueeze(0)).squeeze(0), x)
    h = head[1](head[0](f[:1])).squeeze(0).detach()
    closed = head_jacobian(a, head[3].weight.detach(), h)
    assert closed.shape == (c, d) and torch.allclose(auto, closed, atol=1e-5)
    assert torch.linalg.matrix_rank(closed) == r


def test_inverse_focal_loss_hand_computed():
    # two classes, logits (log 3, 0): p_y = 3/4 for target 0, 1/4 for target 1
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 1])
    gamma, alpha = 2.0, 0.5
    per = [alpha * (3 / 4) ** 2 * math.log(3 / 4), alpha * (1 / 4) ** 2 * math.log(1 / 4)]
    assert float(inverse_focal_loss(logits, targets, gamma, alpha)) == pytest.approx(sum(per) / 2, rel=1e-6)
    # label smoothing 0.2 adds 0.2 * mean_k(-log p_k) and scales the focal term by 0.8
    smooth = -(math.log(3 / 4) + math.log(1 / 4)) / 2
    expected = sum(0.8 * v + 0.2 * smooth for v in per) / 2
    assert float(inverse_focal_loss(logits, targets, gamma, alpha, 0.2)) == pytest.approx(expected, rel=1e-6)


def test_confidence_adaptation_targets_exp_minus_one_over_gamma():
    assert confidence_optimum(8.0) == pytest.approx(0.8824969, rel=1e-6)
    # the loss over the true-class probability (two classes) is minimal at exp(-1/gamma), not at 1
    ps = torch.linspace(0.5, 0.999, 4000)
    logits = torch.stack([torch.log(ps), torch.log(1 - ps)], dim=1)
    losses = torch.stack([inverse_focal_loss(lo.unsqueeze(0), torch.tensor([0]), 8.0, 0.25) for lo in logits])
    assert float(ps[losses.argmin()]) == pytest.approx(confidence_optimum(8.0), abs=1e-3)
    with pytest.raises(ValueError):
        confidence_optimum(0.0)


def test_defaults_are_the_references():
    p = LoFt.Params()
    assert (p.neck_dim, p.activation, p.ca_epochs, p.ca_lr, p.ca_gamma, p.ca_alpha) == (50, "tanh", 0, 2e-5, 8.0, 0.25)


def test_neck_must_be_narrower_than_the_features():
    model = SmallCNN(SmallCNN.Params(width=4)).build(DEFENSE_CLASSES, 16, {})  # 32 features
    with pytest.raises(ConfigError, match=r"neck_dim=50 is not below the feature dimension 32.*neck_dim below 32"):
        LoFt(LoFt.Params()).configure_model(model)


@pytest.mark.parametrize("arch, params, resolution", [
    ("small-cnn", {"width": 8}, 16), ("small-resnet", {"width": 8}, 16), ("mlp", {}, 16),
    ("vgg16-64", {}, 64), ("facenet64", {}, 64), ("resnet18", {"input_size": 32}, 32),
])
def test_head_replaced_on_builtin_architectures(arch, params, resolution):
    torch.manual_seed(0)
    model = build_classifier(arch, params, DEFENSE_CLASSES, resolution, {})
    r = min(4, model.feature_dim - 1)
    model = LoFt(LoFt.Params(neck_dim=r)).configure_model(model)
    assert isinstance(model.head, LowRankHead) and model.head[1].weight.shape == (r, model.feature_dim)
    model.eval()
    x = torch.rand(2, 3, resolution, resolution)
    with torch.no_grad():
        assert model(x).shape == (2, DEFENSE_CLASSES)
        assert model.features(x).shape == (2, model.feature_dim)  # the body's output, as in the reference


def test_fit_with_confidence_adaptation_reports_and_keeps_one_result(defense_splits):
    torch.manual_seed(0)
    model = SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {})  # 64 features
    defense = LoFt(LoFt.Params(neck_dim=4, ca_epochs=2, ca_lr=0.01))
    model = defense.configure_model(model)
    trainer = Trainer(TrainingRecipe(epochs=2, batch_size=16), defense_splits.private_train,
                      defense_splits.private_test, RunSettings(progress=False), seed=0, desc="loft")
    defense.fit(model, trainer)
    rep = defense.report()
    assert rep["neck_dim"] == 4 and rep["head_rank"] == 4
    assert 0.0 < rep["filtered_variance_fraction"] < 1.0  # a rank-4 head cannot see all of 64 dimensions
    assert 0.0 <= rep["lrc_test_accuracy"] <= 1.0
    assert [h["epoch"] for h in trainer.result.history] == [1, 2, 3, 4]
    assert trainer.result.history[-1]["lr"] == pytest.approx(0.01 * 0.1)  # second CA epoch: after the 0.6 milestone


def test_training_batch_of_one_uses_running_statistics():
    head = LowRankHead(6, 2, 3)
    head.train()
    out = head(torch.randn(1, 6))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
