"""Trap-MID (defenses/trap_mid.py, defenses/_trap_mid_parts.py): math against hand values, one trigger
update, and a tiny trained model whose trapdoor works."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from inversion_bench.defenses._trap_mid_parts import (
    TrapdoorState,
    balanced_trapdoor_labels,
    blend,
    discriminator_loss,
    make_discriminator,
    signed_step,
    trapdoor_training_loss,
    trigger_loss,
)
from inversion_bench.defenses.trap_mid import TrapMID
from inversion_bench.errors import DivergedError
from inversion_bench.models import SmallCNN
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_defaults_are_the_papers():
    p = TrapMID.Params()
    assert (p.alpha, p.beta, p.trigger_step) == (0.02, 0.2, 0.01)
    assert p.optimize_triggers and p.discriminator and p.update_every == 1


def test_blend_hand_values():
    images = torch.full((1, 3, 2, 2), 0.5)
    triggers = torch.tensor([1.0, 0.0, 0.25, 0.5]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = blend(images, triggers, 0.02)
    # 0.02 * t + 0.98 * 0.5
    assert torch.allclose(out[0, 0].flatten(), torch.tensor([0.51, 0.49, 0.495, 0.5]))
    with pytest.raises(ValueError, match="must match"):
        blend(images, torch.zeros(1, 3, 4, 4), 0.02)


def test_balanced_trapdoor_labels():
    g = torch.Generator().manual_seed(0)
    labels = balanced_trapdoor_labels(7, 3, g)
    assert labels.shape == (7,)
    counts = torch.bincount(labels, minlength=3)
    assert sorted(counts.tolist()) == [2, 2, 3]  # 7 = 2 * 3 + 1 extra class
    assert torch.bincount(balanced_trapdoor_labels(6, 3, g), minlength=3).tolist() == [2, 2, 2]
    again = balanced_trapdoor_labels(7, 3, torch.Generator().manual_seed(0))
    assert torch.equal(labels, again)


def test_trapdoor_training_loss_hand_values():
    clean = torch.tensor([[0.0, LN3]])  # p(class 1) = 3 / 4
    trap = torch.zeros(1, 2)  # p = 1 / 2
    loss = trapdoor_training_loss(clean, torch.tensor([1]), trap, torch.tensor([0]), beta=0.2)
    assert float(loss) == pytest.approx(0.8 * math.log(4 / 3) + 0.2 * LN2)
    only_trap = trapdoor_training_loss(clean, torch.tensor([1]), trap, torch.tensor([0]), beta=1.0)
    assert float(only_trap) == pytest.approx(LN2)


def test_discriminator_and_trigger_losses_hand_values():
    # real logit ln 3: -log sigmoid(ln 3) = ln(4/3); fake logit ln 3: -log(1 - 3/4) = ln 4
    d = discriminator_loss(torch.tensor([[LN3]]), torch.tensor([[LN3]]))
    assert float(d) == pytest.approx((math.log(4 / 3) + LN4) / 2)
    assert float(discriminator_loss(torch.zeros(2, 1), torch.zeros(3, 1))) == pytest.approx(LN2)
    trap = torch.zeros(2, 4)  # CE = ln 4
    assert float(trigger_loss(trap, torch.tensor([0, 3]), None)) == pytest.approx(LN4)
    # + BCE(D(x'), real) with D's logit ln 3: ln(4/3)
    assert float(trigger_loss(trap, torch.tensor([0, 3]), torch.full((2, 1), LN3))) == pytest.approx(
        LN4 + math.log(4 / 3))


def test_signed_step_hand_values():
    t = torch.tensor([0.5, 0.0, 1.0, 0.3, 0.95])
    grad = torch.tensor([1.0, 2.0, -3.0, 0.0, -1e-6])
    assert torch.allclose(signed_step(t, grad, 0.1), torch.tensor([0.4, 0.0, 1.0, 0.3, 1.0]))


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return SmallCNN(SmallCNN.Params(width=4)).build(3, 16, {})


def test_trigger_update_moves_triggers_and_trains_the_discriminator():
    model = _tiny_model()
    model.train()
    disc = make_discriminator(model)
    assert disc.head.out_features == 1 and disc.head is not model.head
    disc_before = [q.detach().clone() for q in disc.parameters()]
    model_before = [q.detach().clone() for q in model.parameters()]
    triggers = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    state = TrapdoorState(triggers.clone(), 0.02, 0.01, disc, torch.optim.SGD(disc.parameters(), lr=0.1),
                          lambda x: x, RunSettings().autocast)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    state.update(model, images, torch.tensor([0, 1, 2, 0]), lr=0.1)
    step = (state.triggers - triggers).abs()
    assert step.max() <= 0.01 + 1e-6 and step.max() > 0.009  # one signed step (clamped at the borders)
    assert 0.0 <= float(state.triggers.min()) and float(state.triggers.max()) <= 1.0
    assert model.training  # the update runs in eval mode and restores the mode
    assert all(torch.equal(a, b) for a, b in zip(model_before, model.parameters(), strict=True))
    assert all(q.grad is None for q in model.parameters())  # gradients only for the triggers
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, disc.parameters(), strict=True))
    assert state.updates == 1 and state.seconds > 0
    injected = state.inject(images[:1], torch.tensor([2]))
    assert torch.allclose(injected, 0.02 * state.triggers[2:3] + 0.98 * images[:1])


def test_trigger_update_raises_diverged_on_nan():
    model = _tiny_model()
    state = TrapdoorState(torch.rand(3, 3, 16, 16), 0.02, 0.01, None, None, lambda x: x,
                          RunSettings().autocast)
    images = torch.full((2, 3, 16, 16), float("nan"))
    with pytest.raises(DivergedError, match="trap-mid: the trigger loss"):
        state.update(model, images, torch.tensor([0, 1]), lr=0.1)


def test_criterion_splits_clean_and_triggered_halves():
    d = TrapMID(TrapMID.Params(beta=0.2))
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    targets = torch.tensor([1, 0])
    d._split = 1
    assert float(d.criterion(logits, targets, 0.0)) == pytest.approx(0.8 * math.log(4 / 3) + 0.2 * LN2)
    d._split = 0  # outside a Trap-MID batch: plain cross-entropy
    assert float(d.criterion(logits, targets, 0.0)) == pytest.approx(float(F.cross_entropy(logits, targets)))


def test_trained_tiny_model_has_a_working_trapdoor(defense_splits):
    """Triggered test images are classified as the trigger's class far above chance (1/6).

    42 training images give ~100 steps here against ~20k in the paper, so the trapdoor is made
    easier to learn through parameters only: a stronger blend, loss weight and trigger step.
    """
    defense = TrapMID(TrapMID.Params(alpha=0.2, beta=0.5, trigger_step=0.05))
    torch.manual_seed(0)
    model = defense.configure_model(SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {}))
    keys = sorted(model.state_dict())
    recipe = TrainingRecipe(epochs=18, batch_size=8, lr=3e-3)
    trainer = Trainer(recipe, defense_splits.private_train, defense_splits.private_test,
                      RunSettings(progress=False), seed=0, desc="trap-mid test")
    defense.fit(model, trainer)
    rep = defense.report()
    assert rep["trapdoor_test_accuracy"] >= 0.6, rep
    assert rep["trap_trigger_updates"] == 18 * math.ceil(len(defense_splits.private_train) / 8)
    assert rep["trap_trigger_parameters"] == DEFENSE_CLASSES * 3 * 16 * 16
    assert rep["trap_discriminator_parameters"] > 0 and rep["trap_update_seconds"] > 0
    assert 0.0 <= trainer.result.train_accuracy <= 1.0
    assert trainer.result.history[-1]["trapdoor_train_accuracy"] > 0.5
    assert sorted(model.state_dict()) == keys  # neither triggers nor discriminator live in the target
    assert trainer.result.test_accuracy > 0.5  # the clean task is still learnt
    triggers = defense.state.triggers
    assert triggers.shape == (DEFENSE_CLASSES, 3, 16, 16) and 0 <= float(triggers.min()) <= float(triggers.max()) <= 1


def test_fixed_triggers_without_discriminator_update_nothing(defense_splits):
    defense = TrapMID(TrapMID.Params(optimize_triggers=False))
    model = SmallCNN(SmallCNN.Params(width=4)).build(DEFENSE_CLASSES, 16, {})
    trainer = Trainer(TrainingRecipe(epochs=1, batch_size=16), defense_splits.private_train,
                      defense_splits.private_test, RunSettings(progress=False), seed=0)
    initial = torch.rand((DEFENSE_CLASSES, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    defense.fit(model, trainer)
    rep = defense.report()
    assert rep["trap_trigger_updates"] == 0 and rep["trap_discriminator_parameters"] == 0
    assert torch.equal(defense.state.triggers, initial)  # uniform [0, 1] draw of the job seed, never moved
