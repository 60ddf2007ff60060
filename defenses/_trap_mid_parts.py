"""Trap-MID's math and its trigger/discriminator update (used by :mod:`inversion_bench.defenses.trap_mid`).

Pure functions (hand-checked in ``tests/test_trap_mid.py``):

- :func:`blend`: trigger injection ``x' = alpha * t_y' + (1 - alpha) * x``;
- :func:`balanced_trapdoor_labels`: the trapdoor classes of one epoch (every class equally often);
- :func:`trapdoor_training_loss`: the classifier's loss ``(1 - beta) CE(f(x), y) + beta CE(f(x'), y')``;
- :func:`discriminator_loss`, :func:`trigger_loss`: the naturalness game between triggered and clean images;
- :func:`signed_step`: the trigger update ``clamp(t - step * sign(grad), 0, 1)``.

:class:`TrapdoorState` holds the per-class triggers and the discriminator and performs one update of
both on a batch (the first half of each step of the authors' ``engine.train``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion_bench.errors import DivergedError
from inversion_bench.interfaces import Classifier


def blend(images: Tensor, triggers: Tensor, alpha: float) -> Tensor:
    """Injects one trigger per image: ``alpha * triggers + (1 - alpha) * images`` (both [N, 3, H, W] in [0, 1])."""
    if triggers.shape != images.shape:
        raise ValueError(f"blend: triggers {tuple(triggers.shape)} must match the images {tuple(images.shape)}")
    return alpha * triggers + (1.0 - alpha) * images


def balanced_trapdoor_labels(n: int, num_classes: int, g: torch.Generator) -> Tensor:
    """``n`` trapdoor classes in random order, every class ``n // C`` times plus ``n % C`` distinct extra ones."""
    full, rest = divmod(n, num_classes)
    labels = torch.cat([torch.arange(num_classes).repeat(full), torch.randperm(num_classes, generator=g)[:rest]])
    return labels[torch.randperm(n, generator=g)]


def trapdoor_training_loss(clean_logits: Tensor, labels: Tensor, trap_logits: Tensor, trap_labels: Tensor,
                           beta: float) -> Tensor:
    """The classifier's objective: ``(1 - beta) * CE(clean, y) + beta * CE(triggered, y_trapdoor)``."""
    return (1.0 - beta) * F.cross_entropy(clean_logits, labels) + beta * F.cross_entropy(trap_logits, trap_labels)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE of the discriminator: clean images are real (1), triggered ones fake (0), averaged over both."""
    logits = torch.cat([real_logits, fake_logits]).flatten()
    targets = torch.cat([torch.ones(real_logits.shape[0]), torch.zeros(fake_logits.shape[0])]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, targets)


def trigger_loss(trap_logits: Tensor, trap_labels: Tensor, disc_logits: Tensor | None) -> Tensor:
    """What the triggers minimise: ``CE(f(aug(x')), y')`` plus, with a discriminator, ``BCE(D(x'), real)``."""
    loss = F.cross_entropy(trap_logits, trap_labels)
    if disc_logits is not None:
        loss = loss + F.binary_cross_entropy_with_logits(disc_logits.flatten(), torch.ones_like(disc_logits.flatten()))
    return loss


def signed_step(triggers: Tensor, grad: Tensor, step: float) -> Tensor:
    """One signed-gradient descent step on the triggers, kept in [0, 1]."""
    return (triggers - step * grad.sign()).clamp(0.0, 1.0)


def make_discriminator(model: Classifier) -> Classifier:
    """The naturalness discriminator: the target's architecture with one output logit.

    A copy of ``model`` before training (so a pretrained backbone is shared, as in the reference,
    which builds the same architecture with the same pretrained weights) with a fresh 1-logit head.
    """
    disc = copy.deepcopy(model)
    disc.head = nn.Linear(model.feature_dim, 1).to(next(model.parameters()).device)
    disc.num_classes = 1
    return disc


class TrapdoorState:
    """Per-class triggers ([C, 3, H, W] in [0, 1]) and the discriminator, updated once per model step.

    Args:
        triggers: the initial triggers (the reference draws them uniformly from [0, 1]).
        alpha: blend ratio of :func:`blend`.
        step: signed-gradient step of the triggers (0 keeps them fixed).
        discriminator: the naturalness discriminator (None: no discriminator term).
        disc_optimizer: its optimiser (the target's recipe, as in the reference).
        augment: the training augmentation applied to triggered images before the classifier.
        autocast: the run's autocast context factory.
    """

    def __init__(self, triggers: Tensor, alpha: float, step: float, discriminator: nn.Module | None,
                 disc_optimizer: torch.optim.Optimizer | None, augment: Callable[[Tensor], Tensor],
                 autocast: Callable) -> None:
        self.triggers = triggers
        self.alpha, self.step = alpha, step
        self.disc, self.disc_opt = discriminator, disc_optimizer
        self.augment, self.autocast = augment, autocast
        self.seconds = 0.0
        self.updates = 0
        self.sums = {"trigger_loss": 0.0, "disc_loss": 0.0}

    def inject(self, images: Tensor, trap_labels: Tensor) -> Tensor:
        """The images with the triggers of ``trap_labels`` blended in."""
        return blend(images, self.triggers[trap_labels.to(self.triggers.device)], self.alpha)

    def update(self, model: nn.Module, images: Tensor, trap_labels: Tensor, lr: float) -> None:
        """Trains the discriminator one step, then moves the triggers one signed step (model in eval mode).

        Raises:
            DivergedError: when the discriminator's or the triggers' loss is NaN or inf.
        """
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            trig = self.triggers.detach().requires_grad_(True)
            trap = blend(images, trig[trap_labels], self.alpha)
            disc_logits = self._discriminator_step(images, trap, lr)
            with self.autocast():
                logits = model(self.augment(trap)).float()
            loss = trigger_loss(logits, trap_labels, disc_logits)
            if not torch.isfinite(loss):
                raise DivergedError(f"trap-mid: the trigger loss became {float(loss.detach())} at trigger update "
                                    f"{self.updates + 1}")
            (grad,) = torch.autograd.grad(loss, trig)
            self.triggers = signed_step(self.triggers, grad, self.step).detach()
            self.sums["trigger_loss"] += float(loss.detach())
        finally:
            model.train(was_training)
        self.updates += 1
        self.seconds += time.perf_counter() - t0

    def _discriminator_step(self, images: Tensor, trap: Tensor, lr: float) -> Tensor | None:
        """One discriminator step (clean = real, triggered = fake); returns D's logits of ``trap`` (eval mode)."""
        if self.disc is None:
            return None
        self.disc.train()
        for group in self.disc_opt.param_groups:
            group["lr"] = lr
        with self.autocast():
            out = self.disc(torch.cat([images, trap.detach()])).float()
        d_loss = discriminator_loss(out[: images.shape[0]], out[images.shape[0]:])
        if not torch.isfinite(d_loss):
            raise DivergedError(f"trap-mid: the discriminator loss became {float(d_loss.detach())} at trigger "
                                f"update {self.updates + 1}")
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        self.sums["disc_loss"] += float(d_loss.detach())
        self.disc.eval()
        with self.autocast():
            return self.disc(trap).float()

    @torch.no_grad()
    def trapdoor_accuracy(self, model: nn.Module, images: Tensor, g: torch.Generator, batch_size: int = 256) -> float:
        """Fraction of ``images`` with a balanced random trigger that ``model`` classifies as the trigger's class."""
        model.eval()
        labels = balanced_trapdoor_labels(len(images), self.triggers.shape[0], g)
        device = self.triggers.device
        hits = 0
        for i in range(0, len(images), batch_size):
            x, y = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            with self.autocast():
                hits += int((model(self.inject(x, y)).argmax(1) == y).sum())
        return hits / max(len(images), 1)
