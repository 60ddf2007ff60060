"""LOMMA's model augmentation: surrogate classifiers distilled from the target on public images.

Nguyen, Tran, Hoang, Cheung, "Re-thinking Model Inversion Attacks Against Deep Neural Networks"
(CVPR 2023), Sec. 4.2: the attacker trains N surrogate ("augmented") models by knowledge
distillation from the target on the public data and inverts the ensemble of target and surrogates.
The reference code (github.com/sutd-visual-computing-group/Re-thinking_MI, commit
ed4b6b8900e4d7fed8f70d7e6a444893963d920e, ``engine.py: train_augmodel`` and
``config/celeba/training_augmodel/*.json``) trains each student with

    loss = KLDiv(log_softmax(s(x) / T), softmax(t(x) / T), reduction="sum") / T^2 / batch_size

on un-augmented public images (``dataloader.py``, mode ``gan``: crop and resize only), batch size
64, SGD (lr 0.01, momentum 0.9, weight decay 1e-4), StepLR(step 20 epochs, gamma 0.5), 20 epochs,
temperature 1; the students are EfficientNet-B0/B1/B2 (ImageNet-pretrained torchvision models).

Here the teacher is the target exactly as the attack sees it (the module passed to the attack, i.e.
behind the defense's ``postprocess``): its outputs on the public images are computed once (eval
mode) and every student is trained against them. Students are built from the repository's
registered architectures (``SurrogateSpec``); each one is built and trained under its own seed
derived from the job seed (:func:`surrogate_seed`), inside ``torch.random.fork_rng`` so the global
random state of the caller is left as it was.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.data import LabeledImages
from inversion_bench.errors import DivergedError
from inversion_bench.models import build_classifier

__all__ = ["DistillSettings", "SurrogateSpec", "agreement", "distill", "surrogate_seed", "teacher_outputs",
           "train_surrogates"]


class SurrogateSpec(BaseModel):
    """A surrogate architecture: a registered architecture name and its parameters.

    In a suite either a bare name (``small-cnn``) or ``{name: small-cnn, params: {width: 16}}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="registered architecture (bench list architectures)")
    params: dict[str, Any] = Field(default_factory=dict, description="the architecture's parameters")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DistillSettings(Protocol):
    """The distillation settings an attack's parameters carry (see ``LommaParams``)."""

    augment_epochs: int
    augment_batch_size: int
    augment_lr: float
    augment_momentum: float
    augment_weight_decay: float
    augment_lr_step: int
    augment_lr_gamma: float
    augment_temperature: float


def surrogate_seed(seed: int, index: int) -> int:
    """The seed of surrogate ``index`` of a job with seed ``seed`` (a 63-bit hash of both)."""
    digest = hashlib.sha256(f"lomma-surrogate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@torch.no_grad()
def teacher_outputs(target: nn.Module, public: LabeledImages, batch_size: int, device: torch.device) -> Tensor:
    """The target's outputs (logits as the attack sees them) on every public image, [N, C] float32 on the CPU."""
    outs = [target(images.to(device)).float().cpu() for images, _ in public.batches(batch_size)]
    return torch.cat(outs)


def _kd_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """The reference's distillation loss: summed KL divergence / T^2 / batch size."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p, teacher_probs, reduction="sum")
    return kl / (temperature * temperature) / student_logits.shape[0]


def distill(student: nn.Module, public: LabeledImages, teacher_probs: Tensor, settings: DistillSettings,
            *, generator: torch.Generator, device: torch.device, progress: bool = False,
            desc: str = "distill") -> list[float]:
    """Trains ``student`` in place on ``public`` towards ``teacher_probs`` ([N, C], softmax(t / T)).

    Returns the mean loss of every epoch. Raises DivergedError on a NaN or inf loss.
    """
    s = settings
    student.to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=s.augment_lr, momentum=s.augment_momentum,
                          weight_decay=s.augment_weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=s.augment_lr_step, gamma=s.augment_lr_gamma)
    n, bs = len(public), s.augment_batch_size
    history = []
    with tqdm(total=s.augment_epochs * math.ceil(n / bs), desc=desc, disable=not progress, leave=False) as bar:
        for epoch in range(s.augment_epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, bs):
                pos = order[start : start + bs]
                images = public.images(pos).to(device)
                loss = _kd_loss(student(images), teacher_probs[pos].to(device), s.augment_temperature)
                if not torch.isfinite(loss):
                    raise DivergedError(f"{desc}: distillation diverged at epoch {epoch + 1} (loss {float(loss)})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * pos.numel()
                bar.update(1)
            sched.step()
            history.append(total / max(n, 1))
    student.eval()
    student.requires_grad_(False)
    return history


@torch.no_grad()
def agreement(model: nn.Module, public: LabeledImages, teacher: Tensor, batch_size: int,
              device: torch.device) -> float:
    """Fraction of public images on which ``model``'s top-1 class equals the teacher's (``teacher``: [N, C])."""
    preds = [model(images.to(device)).argmax(1).cpu() for images, _ in public.batches(batch_size)]
    return float((torch.cat(preds) == teacher.argmax(1)).float().mean()) if preds else 0.0


def train_surrogates(target: nn.Module, public: LabeledImages, specs: list[SurrogateSpec], count: int,
                     settings: DistillSettings, *, seed: int, resolution: int, device: torch.device,
                     batch_size: int = 64, weights: Mapping[str, Any] | None = None,
                     progress: bool = False) -> tuple[list[nn.Module], dict[str, Any]]:
    """``count`` surrogates distilled from ``target`` (in eval mode) on ``public``.

    Surrogate ``i`` has architecture ``specs[i % len(specs)]``, is built for the target's number of
    classes at ``resolution`` and is trained with seed ``surrogate_seed(seed, i)``.

    Returns:
        The surrogates (eval mode, no parameter gradients, on ``device``) and a summary: their
        architectures, final distillation losses and top-1 agreement with the target on ``public``.
    """
    was_training = target.training
    target.eval()
    try:
        teacher = teacher_outputs(target, public, batch_size, device)
    finally:
        target.train(was_training)
    if not torch.isfinite(teacher.softmax(1)).all():
        raise DivergedError("lomma: the target's outputs on the public images are NaN or inf")
    probs = F.softmax(teacher / settings.augment_temperature, dim=1)
    models, losses, agree = [], [], []
    fork_devices = [device] if device.type == "cuda" else []
    for i in range(count):
        spec = specs[i % len(specs)]
        s_seed = surrogate_seed(seed, i)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(s_seed)
            model = build_classifier(spec.name, spec.params, teacher.shape[1], resolution, weights or {})
            history = distill(model, public, probs, settings, generator=torch.Generator().manual_seed(s_seed),
                              device=device, progress=progress, desc=f"lomma surrogate {i + 1}/{count}")
        models.append(model)
        losses.append(round(history[-1], 6) if history else None)
        agree.append(round(agreement(model, public, teacher, batch_size, device), 4))
    info = {"augment_architectures": [specs[i % len(specs)].name for i in range(count)],
            "augment_final_loss": losses, "augment_agreement": agree}
    return models, info
