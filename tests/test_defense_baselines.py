"""Random erasing (MIDRE), online label smoothing and output Gaussian noise: transforms, losses and
training against hand-computed values (tiny tensors and data)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from inversion_bench.defenses.output import (
    GaussianNoise,
    gaussian_noise_logits,
    noised_log_probabilities,
    noised_probabilities,
)
from inversion_bench.defenses.random_erasing import (
    RandomErasing,
    apply_erasing,
    erase_box,
    erase_boxes,
    random_erase,
)
from inversion_bench.defenses.robust_smoothing import (
    OnlineLabelSmoothing,
    accumulate_correct,
    ols_loss,
    soft_label_loss,
    updated_soft_labels,
)
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import PostprocessedClassifier
from inversion_bench.models import SmallCNN
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")

# torch.rand(..., generator=torch.Generator().manual_seed(0)), drawn one at a time:
U0 = [0.4963, 0.7682, 0.0885, 0.1320, 0.3074, 0.6341]


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _trainer(splits, epochs: int = 2) -> Trainer:
    recipe = TrainingRecipe(epochs=epochs, batch_size=16)
    return Trainer(recipe, splits.private_train, splits.private_test, RunSettings(progress=False), seed=0,
                   desc="baseline test")


def _model(width: int = 8):
    torch.manual_seed(0)
    return SmallCNN(SmallCNN.Params(width=width)).build(DEFENSE_CLASSES, 16, {})


# ------------------------------------------------------------------------------------------------
# random erasing
# ------------------------------------------------------------------------------------------------
def test_seed0_uniforms_are_the_ones_the_hand_values_use():
    assert torch.rand(6, generator=_g()).tolist() == pytest.approx(U0, abs=1e-4)


def test_erase_boxes_hand_values():
    # 6x6 images, area 36/9 = 4 at ratio 1 -> a 2x2 square (the area and ratio draws U0[1], U0[2]
    # cannot change it). Image 0: U0[0] = 0.496 < p = 0.5 -> erased; top = floor(0.132 * 5) = 0,
    # left = floor(0.3074 * 5) = 1. Image 1: U0[5] = 0.634 >= 0.5 -> kept.
    boxes = erase_boxes(2, 6, 6, _g(), p=0.5, scale=(1 / 9, 1 / 9), ratio=(1.0, 1.0))
    assert boxes.tolist() == [[0, 1, 2, 2], [0, 0, 0, 0]]


def test_erase_box_aspect_ratio_hand_values():
    # 8x8, area 16, ratio h/w = 2.25: h = round(sqrt(36)) = 6, w = round(sqrt(7.11)) = 3;
    # top = floor(0.132 * (8 - 6 + 1)) = 0, left = floor(0.3074 * (8 - 3 + 1)) = 1
    assert erase_box(8, 8, _g(), p=1.0, scale=(0.25, 0.25), ratio=(2.25, 2.25)) == (0, 1, 6, 3)


def test_erase_box_gives_up_after_ten_tries_like_torchvision():
    # area 0.9..0.95 of 4x4: side round(sqrt(14.4..15.2)) = 4, never < 4 -> nothing erased after
    # 1 (probability) + 10 x 2 (area, ratio) draws
    g = _g()
    assert erase_box(4, 4, g, p=1.0, scale=(0.9, 0.95), ratio=(1.0, 1.0)) == (0, 0, 0, 0)
    reference = _g()
    reference_next = torch.rand(22, generator=reference)[21]
    assert float(torch.rand(1, generator=g)) == float(reference_next)


def test_erase_box_probability_zero_draws_one_number_and_erases_nothing():
    g = _g()
    assert erase_boxes(3, 8, 8, g, p=0.0, scale=(0.1, 0.4), ratio=(1.0, 1.0)).tolist() == [[0, 0, 0, 0]] * 3
    assert float(torch.rand(1, generator=g)) == pytest.approx(U0[3], abs=1e-4)


def test_apply_erasing_fills_exactly_the_rectangle():
    images = torch.zeros(1, 3, 4, 4)
    out = apply_erasing(images, torch.tensor([[1, 2, 2, 2]]), (0.1, 0.2, 0.3))
    expected = torch.zeros(1, 3, 4, 4)
    for c, v in enumerate((0.1, 0.2, 0.3)):
        expected[0, c, 1:3, 2:4] = v
    assert torch.equal(out, expected)
    assert torch.equal(images, torch.zeros(1, 3, 4, 4))  # the input is not changed in place


def test_random_erase_which_pixels():
    x = torch.rand(2, 3, 6, 6, generator=_g(5)) + 2.0  # no pixel equals the fill by chance
    out, boxes = random_erase(x, _g(), p=0.5, scale=(1 / 9, 1 / 9), ratio=(1.0, 1.0), value=(0.0, 0.5, 1.0))
    assert boxes.tolist() == [[0, 1, 2, 2], [0, 0, 0, 0]]
    erased = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    erased[0, 0, 0:2, 1:3] = True
    assert torch.equal(out[:, 1:2] == 0.5, erased)
    assert torch.equal(out[~erased.expand_as(out)], x[~erased.expand_as(x)])


def test_random_erasing_params_defaults_and_checks():
    p = RandomErasing.Params()
    assert (p.p, p.scale, p.ratio, p.value) == (1.0, (0.1, 0.4), (1.0, 1.0), (0.485, 0.456, 0.406))
    for bad in ({"scale": (0.5, 0.2)}, {"scale": (0.0, 0.4)}, {"scale": (0.1, 1.0)}, {"ratio": (2.0, 1.0)},
                {"p": 1.5}):
        with pytest.raises(ValidationError):
            RandomErasing.Params(**bad)


def test_random_erasing_trains_on_erased_inputs_and_leaves_no_hook(defense_splits):
    defense = RandomErasing(RandomErasing.Params(scale=(0.25, 0.25)))  # 16 px: an 8x8 square per image
    model = _model()
    seen: list[torch.Tensor] = []
    model.body[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
    defense.fit(model, _trainer(defense_splits, epochs=1))
    fill = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    filled = (seen[0] == fill).all(dim=1).sum(dim=(1, 2))  # pixels at the fill value, per image
    assert (filled >= 64).all()
    assert len(model.body._forward_pre_hooks) == 0
    model.eval()
    x = defense_splits.private_test.images()
    with torch.no_grad():
        assert not (model.prepare(x) == fill).all(dim=1).any()  # evaluation sees the images as they are
    report = defense.report()
    assert report["erased_area_fraction"] == pytest.approx(0.25)
    assert report["extra_parameters"] == 0 and report["erasing_seconds"] >= 0


def test_random_erasing_names_the_problem_for_flattened_inputs():
    hook = RandomErasing(RandomErasing.Params())._hook(_g())
    body = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="image input"):
        hook(body, (torch.zeros(2, 4),))


# ------------------------------------------------------------------------------------------------
# online label smoothing
# ------------------------------------------------------------------------------------------------
LOGITS = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])  # p = (1/6, 2/6, 3/6)


def test_soft_label_loss_hand_value():
    soft = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    expected = -(0.2 * math.log(1 / 6) + 0.3 * math.log(2 / 6) + 0.5 * math.log(3 / 6))
    assert float(soft_label_loss(LOGITS, torch.tensor([2]), soft)) == pytest.approx(expected, abs=1e-6)
    hard = -math.log(3 / 6)
    assert float(ols_loss(LOGITS, torch.tensor([2]), soft, 0.5)) == pytest.approx(0.5 * hard + 0.5 * expected,
                                                                                    abs=1e-6)
    assert float(ols_loss(LOGITS, torch.tensor([2]), soft, 1.0)) == pytest.approx(hard, abs=1e-6)


def test_soft_label_loss_with_one_hot_rows_is_cross_entropy():
    logits = torch.randn(5, 4, generator=_g())
    y = torch.tensor([0, 3, 1, 1, 2])
    assert float(soft_label_loss(logits, y, torch.eye(4))) == pytest.approx(float(F.cross_entropy(logits, y)),
                                                                           abs=1e-6)


def test_accumulate_correct_and_update_hand_values():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)],  # target 2, predicted 2: counted
                           [0.0, math.log(2.0), math.log(3.0)],  # target 0, predicted 2: not counted
                           [math.log(3.0), 0.0, 0.0]])           # target 0, p = (3/5, 1/5, 1/5): counted
    y = torch.tensor([2, 0, 0])
    sums, counts = torch.zeros(3, 3), torch.zeros(3)
    accumulate_correct(logits, y, sums, counts)
    assert torch.allclose(sums, torch.tensor([[0.6, 0.2, 0.2], [0.0, 0.0, 0.0], [1 / 6, 2 / 6, 3 / 6]]), atol=1e-6)
    assert counts.tolist() == [1.0, 0.0, 1.0]
    accumulate_correct(logits[2:], y[2:], sums, counts)  # class 0 seen twice: the mean stays
    soft = updated_soft_labels(sums, counts)
    expected = torch.tensor([[0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3], [1 / 6, 2 / 6, 3 / 6]])
    assert torch.allclose(soft, expected, atol=1e-6)


def test_ols_first_epoch_is_weighted_cross_entropy():
    ols = OnlineLabelSmoothing(OnlineLabelSmoothing.Params())
    assert ols.params.hard_weight == 0.5
    logits = torch.randn(4, 3, generator=_g())
    y = torch.tensor([0, 1, 2, 0])
    assert float(ols.criterion(logits, y, 0.0)) == pytest.approx(0.5 * float(F.cross_entropy(logits, y)), abs=1e-6)


def test_ols_learns_soft_labels_per_epoch(defense_splits):
    ols = OnlineLabelSmoothing(OnlineLabelSmoothing.Params())
    model = _model()
    ols.fit(model, _trainer(defense_splits, epochs=3))
    soft = ols._soft
    assert soft.shape == (DEFENSE_CLASSES, DEFENSE_CLASSES)
    assert soft.sum(dim=1).tolist() == pytest.approx([1.0] * DEFENSE_CLASSES, abs=1e-5)
    report = ols.report()
    assert 0.0 < report["ols_target_mass"] <= 1.0 and report["soft_label_entries"] == DEFENSE_CLASSES**2


# ------------------------------------------------------------------------------------------------
# Gaussian noise on the outputs
# ------------------------------------------------------------------------------------------------
def test_noised_probabilities_hand_values():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    noise = torch.tensor([[0.1, -0.4, 0.0], [-0.6, -0.5, -0.3]])
    # row 0: (0.6, -0.1 -> 0, 0.2) / 0.8; row 1: every value <= 0 -> zeros
    out = noised_probabilities(probs, noise)
    assert torch.allclose(out, torch.tensor([[0.75, 0.0, 0.25], [0.0, 0.0, 0.0]]), atol=1e-6)


def test_noised_log_probabilities_softmax_is_the_noised_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    noise = torch.tensor([[0.1, -0.4, 0.0], [-0.6, -0.5, -0.3]])
    seen = torch.softmax(noised_log_probabilities(logits, noise), dim=1)
    assert torch.allclose(seen, torch.tensor([[0.75, 0.0, 0.25], [1 / 3, 1 / 3, 1 / 3]]), atol=1e-6)


def test_gaussian_noise_logits_seed0_hand_values():
    # randn from seed 0: (1.5410, -0.2934, -2.1788); x 0.2 -> (0.3082, -0.0587, -0.4358)
    # (0.5, 0.3, 0.2) + noise = (0.8082, 0.2413, -0.2358 -> 0), sum 1.0495
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    seen = torch.softmax(gaussian_noise_logits(logits, 0.2, _g()), dim=1)
    assert seen.tolist()[0] == pytest.approx([0.8082 / 1.0495, 0.2413 / 1.0495, 0.0], abs=1e-3)


def test_gaussian_noise_defense_fresh_noise_per_call_reproducible_per_instance():
    d = GaussianNoise(GaussianNoise.Params())
    assert (d.params.scale, d.params.seed) == (0.2, 0) and d.has_postprocess
    logits = torch.randn(4, 5, generator=_g(1))
    first, second = d.postprocess(logits), d.postprocess(logits)
    assert not torch.equal(first, second)
    again = GaussianNoise(GaussianNoise.Params()).postprocess(logits)
    assert torch.equal(first, again)
    other_seed = GaussianNoise(GaussianNoise.Params(seed=1)).postprocess(logits)
    assert not torch.equal(first, other_seed)
    with pytest.raises(ValidationError):
        GaussianNoise.Params(scale=0.0)


def test_gaussian_noise_behind_postprocess_keeps_gradients_and_shapes():
    model = _model()
    model.eval()
    d = GaussianNoise(GaussianNoise.Params())
    seen = PostprocessedClassifier(model, d.postprocess)
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = seen(x)
    assert out.shape == (3, DEFENSE_CLASSES) and torch.isfinite(out).all()
    probs = torch.softmax(out, dim=1)
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    probs[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert d.report() == {"extra_parameters": 0, "training_overhead_seconds": 0.0}
