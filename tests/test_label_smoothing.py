import math

import pytest
import torch
from pydantic import ValidationError

from inversion_bench.defenses.label_smoothing import LabelSmoothing, smoothing_loss, warmup_alpha


def test_smoothing_loss_hand_computed():
    # logits (0, ln 2, ln 3) -> p = (1/6, 2/6, 3/6); target class 2
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])
    y = torch.tensor([2])
    nll = -math.log(3 / 6)
    uniform = -(math.log(1 / 6) + math.log(2 / 6) + math.log(3 / 6)) / 3
    for alpha in (0.0, 0.1, -0.05, 1.0, -2.0):
        expected = (1 - alpha) * nll + alpha * uniform
        assert float(smoothing_loss(logits, y, alpha)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.3, 1.0])
def test_smoothing_matches_torch_for_nonnegative_alpha(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=g) * 3
    y = torch.randint(0, 7, (16,), generator=g)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=alpha)(logits, y)
    assert float(smoothing_loss(logits, y, alpha)) == pytest.approx(float(ref), abs=1e-6)


def test_warmup_schedule_values():
    a = -0.05
    assert warmup_alpha(a, 0.0) == 0.0
    assert warmup_alpha(a, 0.49) == 0.0
    assert warmup_alpha(a, 0.5) == 0.0
    assert warmup_alpha(a, 0.625) == pytest.approx(-0.025)
    assert warmup_alpha(a, 0.75) == pytest.approx(-0.05)
    assert warmup_alpha(a, 0.99) == pytest.approx(-0.05)
    assert warmup_alpha(a, 0.3, start=0.2, end=0.2) == a


def test_defense_uses_warmup_only_for_negative_alpha():
    neg = LabelSmoothing(LabelSmoothing.Params(alpha=-0.05))
    pos = LabelSmoothing(LabelSmoothing.Params(alpha=0.1))
    assert neg.alpha_at(0.1) == 0.0 and neg.alpha_at(0.9) == pytest.approx(-0.05)
    assert pos.alpha_at(0.1) == pytest.approx(0.1)
    forced = LabelSmoothing(LabelSmoothing.Params(alpha=0.1, warmup=True))
    assert forced.alpha_at(0.1) == 0.0


def test_alpha_bounds_and_types():
    with pytest.raises(ValidationError):
        LabelSmoothing.Params(alpha=1.5)
    with pytest.raises(ValidationError):
        LabelSmoothing.Params(alpha=0.1, warmup_start=0.8, warmup_end=0.5)
