"""Trap-MID: a trapdoor that model inversion attacks fall into instead of the private features.

Liu and Chen, "Trap-MID: Trapdoor-based Defense against Model Inversion Attacks", NeurIPS 2024
(arXiv:2411.08460). Algorithm and defaults follow the authors' code, github.com/ntuaislab/Trap-MID
at commit 3d59377536a5638a9cb5542ab0fb3fdf35b43461 (``train.py``, ``engine.py``,
``config/celeba/classify_trap.json``).

Every class ``c`` owns a trigger ``t_c``, an image of the input's size (no generator network: the
triggers themselves are the trainable parameters, drawn uniformly from [0, 1]). A triggered image
is the blend ``x' = alpha * t_c + (1 - alpha) * x``. Every training step of the target, with a
batch ``(x, y)`` and trapdoor classes ``y'`` (each class equally often per epoch, independent of
``y``):

1. trigger update (target in eval mode): the discriminator ``D`` (the target's architecture with
   one logit, trained with the target's optimiser) takes one BCE step with clean images as real
   and triggered ones as fake; then every trigger moves one signed-gradient step
   ``t <- clamp(t - step * sign(grad), 0, 1)`` on ``CE(f(aug(x')), y') + BCE(D(x'), real)``:
   the trapdoor must work (effectiveness) and look natural (naturalness);
2. target update on the clean and the (new) triggered batch, both augmented, in one forward:
   ``(1 - beta) * CE(f(aug(x)), y) + beta * CE(f(aug(x')), y')``.

Defaults (the authors' configs for CelebA and MNIST, paper Sec. 5.1): ``alpha = 0.02``,
``beta = 0.2``, trigger step 0.01 per model step, discriminator on.

Deviations, all forced by the benchmark's shared setup: the augmentation of both halves is the
suite's training recipe (the reference uses random resized crop 0.8-1, flip and 30 degree rotation
only when it trains a trapdoor); the final model is kept (the reference keeps the epoch of best
test accuracy); the discriminator starts from a copy of the target's initial weights (the reference
builds the same architecture anew, with the same pretrained backbone where there is one). The
feature-level discriminator of the reference (off in every shipped config) is not implemented.
``update_every`` > 1 (trigger and discriminator updates every k-th model step; reference: 1) is a
scale-down knob. The record's ``train_accuracy`` is the clean half's.

``report()``: ``trapdoor_test_accuracy`` (private test images with a random trigger, each class
equally often, classified as the trigger's class), ``trapdoor_train_accuracy`` (last epoch),
parameter counts of the triggers and the discriminator, measured seconds of the trigger and
discriminator updates and of the model steps, and ``trap_overhead_ratio_estimate``: (model steps +
updates) / (model steps / 2), an upper estimate of the factor against undefended training (a model
step sees the clean and the triggered half; on CPUs its cost grows less than linearly in the batch).
Neither the triggers nor the discriminator are part of the target's state dict; the triggers stay
on the defense object (``state.triggers``) after ``fit``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.defenses._trap_mid_parts import (
    TrapdoorState,
    balanced_trapdoor_labels,
    make_discriminator,
    trapdoor_training_loss,
)
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer, augment_batch, iterate


@defenses.register("trap-mid", aliases=("trap_mid",))
class TrapMID(Defense):
    """Trap-MID (Liu & Chen, NeurIPS 2024): per-class blended triggers trained as a trapdoor that misleads inversion."""

    class Params(PluginParams):
        alpha: float = Field(0.02, gt=0.0, lt=1.0, description="blend ratio of the triggers (x' = a t + (1 - a) x)")
        beta: float = Field(0.2, ge=0.0, le=1.0, description="weight of the trapdoor loss ((1 - b) CE + b CE_trap)")
        optimize_triggers: bool = Field(True, description="train the triggers (False: fixed random triggers)")
        trigger_step: float = Field(0.01, gt=0.0, description="signed-gradient step of the triggers per update")
        discriminator: bool = Field(True, description="naturalness discriminator on triggered images")
        update_every: int = Field(1, ge=1, description="update triggers and discriminator every k-th model step "
                                  "(reference: 1; larger: cheaper)")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self.state: TrapdoorState | None = None
        self._split = 0  # clean images at the front of the current batch (0: not a Trap-MID batch)
        self._counted = True
        self._epoch_counts: list[list[int]] = []  # per epoch: [clean hits, clean count, trap hits, trap count]
        self._report: dict[str, float] = {}

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        p, r, s = self.params, trainer.recipe, trainer.settings
        train = trainer.train
        if len(train) == 0:
            raise ConfigError("trap-mid: the private training split is empty")
        model.to(s.device)
        self.state = self._make_state(model, trainer)
        optimizer = trainer.make_optimizer([q for q in model.parameters() if q.requires_grad])
        timing, counter = {"model_s": 0.0}, {"steps": 0}
        self._epoch_counts = []

        def batches(epoch: int, g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
            self._epoch_counts.append([0, 0, 0, 0])
            trap_labels = balanced_trapdoor_labels(len(train), model.num_classes, g)
            start = 0
            for images, labels in iterate(train, r.batch_size, shuffle=True, g=g, workers=r.workers):
                n = len(labels)
                y_trap = trap_labels[start:start + n].to(s.device)
                start += n
                x = images.to(s.device)
                if p.optimize_triggers and counter["steps"] % p.update_every == 0:
                    self.state.update(model, x, y_trap, optimizer.param_groups[0]["lr"])
                counter["steps"] += 1
                with torch.no_grad():
                    x_trap = self.state.inject(x, y_trap)
                self._split, self._counted = n, False
                t0 = time.perf_counter()
                yield torch.cat([x, x_trap]), torch.cat([labels.to(s.device), y_trap])
                timing["model_s"] += time.perf_counter() - t0
            self._split = 0

        try:
            result = trainer.fit(model, self.criterion, optimizer=optimizer, batches=batches)
        finally:
            self._split = 0
        self._finish(model, trainer, result, timing["model_s"])
        return model

    def _make_state(self, model: Classifier, trainer: Trainer) -> TrapdoorState:
        """Uniform random triggers at the training images' size and, with ``discriminator``, D and its optimiser."""
        p, s = self.params, trainer.settings
        shape = tuple(trainer.train.images([0]).shape[1:])
        g = torch.Generator().manual_seed(trainer.seed)
        triggers = torch.rand((model.num_classes, *shape), generator=g).to(s.device)
        disc = disc_opt = None
        if p.discriminator and p.optimize_triggers:
            torch.manual_seed(trainer.seed)  # the head's draw (the trainer reseeds before training)
            disc = make_discriminator(model)
            disc_opt = trainer.make_optimizer(disc.parameters())
        aug_g = torch.Generator().manual_seed(trainer.seed + 1)
        augmentation = trainer.recipe.augmentation
        return TrapdoorState(triggers, p.alpha, p.trigger_step, disc, disc_opt,
                             lambda x: augment_batch(x, augmentation, aug_g), s.autocast)

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        n = self._split
        if n == 0 or logits.shape[0] != 2 * n:  # not a Trap-MID batch (e.g. evaluation): plain CE
            return super().criterion(logits, targets, progress)
        if not self._counted and self._epoch_counts:  # the main logits (auxiliary ones come second)
            self._counted = True
            hits = (logits.detach().argmax(1) == targets).long()
            counts = self._epoch_counts[-1]
            counts[0] += int(hits[:n].sum())
            counts[1] += n
            counts[2] += int(hits[n:].sum())
            counts[3] += n
        return trapdoor_training_loss(logits[:n], targets[:n], logits[n:], targets[n:], self.params.beta)

    def _finish(self, model: Classifier, trainer: Trainer, result, model_seconds: float) -> None:
        """Clean train accuracy into the trainer's result; trapdoor accuracy and costs into the report."""
        for entry, (ch, cn, th, tn) in zip(result.history, self._epoch_counts, strict=False):
            entry["train_accuracy"] = ch / max(cn, 1)
            entry["trapdoor_train_accuracy"] = th / max(tn, 1)
        result.train_accuracy = result.history[-1]["train_accuracy"]
        st = self.state
        g = torch.Generator().manual_seed(trainer.seed + 2)
        trap_acc = st.trapdoor_accuracy(model, trainer.test.images(), g, trainer.settings.eval_batch_size)
        disc_params = sum(q.numel() for q in st.disc.parameters()) if st.disc is not None else 0
        baseline_est = model_seconds / 2.0  # the model step sees twice the images of an undefended step
        self._report = {
            "trapdoor_test_accuracy": trap_acc,
            "trapdoor_train_accuracy": result.history[-1]["trapdoor_train_accuracy"],
            "trap_trigger_parameters": float(st.triggers.numel()),
            "trap_discriminator_parameters": float(disc_params),
            "trap_update_seconds": st.seconds,
            "trap_model_step_seconds": model_seconds,
            "trap_train_seconds": result.seconds,
            "trap_overhead_ratio_estimate": (model_seconds + st.seconds) / baseline_est if baseline_est > 0 else 1.0,
            "trap_trigger_updates": float(st.updates),
        }
        if st.updates:
            self._report["trap_trigger_loss"] = st.sums["trigger_loss"] / st.updates
            if st.disc is not None:
                self._report["trap_discriminator_loss"] = st.sums["disc_loss"] / st.updates
        self.state.disc = self.state.disc_opt = None  # free the discriminator; the triggers stay

    def report(self) -> dict[str, float]:
        return dict(self._report)
