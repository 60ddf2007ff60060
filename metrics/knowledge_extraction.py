"""Knowledge extraction score: how much a fresh classifier learns from an attack's reconstructions alone.

Struppek, Hintersdorf & Kersting, "Be Careful What You Smooth For: Label Smoothing Can Be a Privacy
Shield but Also a Catalyst for Model Inversion Attacks", ICLR 2024 (the score xi): a student
classifier is trained *only* on the reconstructions of an attack, each labelled with the identity it
was reconstructed for, and then classifies real private images of the attacked identities. Its
top-1 accuracy on the private *test* images is the score: the better the reconstructions capture
what distinguishes the identities, the higher it is. Unlike attack accuracy it needs no evaluation
model, and it rewards diverse, identity-specific reconstructions rather than images that merely
fool one classifier. Chance level is 1 / (number of attacked identities).

Reference implementation: ``knowledge_extraction_score.py`` of github.com/LukasStruppek/Plug-and-Play-Attacks
(the authors' repository, which holds the ICLR 2024 code; file added in commit
93f75a727c2858ea89adc7a9dab96f65da6e3e46, read at commit 3087a4f098a389ff3c144b5a17db9aad408e425a).
Its recipe, the defaults here: ResNet-50 (ImageNet-initialised there; set
``architecture_params: {pretrained: <weights name>}`` for that, nothing is downloaded), 75 epochs,
batch size 32, SGD (lr 0.1, momentum 0.9, weight decay 1e-4), cosine annealing per epoch down to
1e-4, random resized crop (scale 0.8-1.0, ratio 1) and horizontal flip, no colour jitter; one class
per attacked identity; evaluated on the attacked identities' test images (``extraction_score_test``;
the reference also reports the training images, kept here in the details as ``score_on_train``).
Scale it down only through the parameters (e.g. ``architecture: small-cnn``, fewer epochs, Adam)
at CPU scale.

The student is trained with the project's training loop (:class:`inversion_bench.training.Trainer`)
from a seed derived from the pair's seed, so a rerun gives the same value; the global random state
of the caller is left as it was.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from inversion_bench.data import FaceCollection, LabeledImages
from inversion_bench.errors import MetricUnavailableError, UnknownPluginError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import PluginParams, architectures, metrics
from inversion_bench.training import (
    Augmentation,
    RunSettings,
    Trainer,
    TrainingRecipe,
    accuracy,
    cross_entropy,
    predict_logits,
)


class _FloatImages(FaceCollection):
    """Reconstructions as a collection (kept in float: no uint8 rounding of the attack's pixels)."""

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        self.images_f = images.detach().float().cpu().clamp(0, 1)
        self.targets = targets.long().cpu()
        self.identity_names = [str(int(c)) for c in self.targets.unique()]
        self.resolution = int(images.shape[-1])

    def __len__(self) -> int:
        return int(self.targets.numel())

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        return self.images_f[torch.as_tensor(indices, dtype=torch.long)]


def relabel(labels: Tensor, classes: Sequence[int]) -> Tensor:
    """Maps each label ``classes[k]`` to ``k`` (labels outside ``classes`` map to -1)."""
    lut = {int(c): k for k, c in enumerate(classes)}
    return torch.tensor([lut.get(int(v), -1) for v in labels.tolist()], dtype=torch.long)


def student_split(data: LabeledImages, classes: Sequence[int], name: str) -> LabeledImages:
    """The images of ``data`` whose label is in ``classes``, relabelled 0..len(classes)-1."""
    sub = data.of_labels(list(classes))
    return LabeledImages(sub.collection, sub.indices, relabel(sub.labels, classes), name)


def derived_seed(seed: int, salt: str) -> int:
    """A seed for one purpose, derived from the pair's seed (differs from the target's own seed)."""
    return zlib.crc32(f"{salt}:{seed}".encode()) & 0x7FFFFFFF


class CosineLR:
    """A ``Trainer.fit`` step hook: sets the learning rate of the current epoch to
    ``min_lr + (lr - min_lr) (1 + cos(pi epoch / epochs)) / 2`` (PyTorch's CosineAnnealingLR with
    ``T_max = epochs``, stepped once per epoch as in the reference)."""

    def __init__(self, lr: float, min_lr: float, epochs: int, batches_per_epoch: int) -> None:
        self.lr, self.min_lr, self.epochs = lr, min_lr, epochs
        self.batches_per_epoch = max(batches_per_epoch, 1)
        self.calls = 0

    def lr_at(self, epoch: int) -> float:
        return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2

    def __call__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        lr = self.lr_at(self.calls // self.batches_per_epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        self.calls += 1


class KnowledgeExtractionParams(PluginParams):
    architecture: str = Field("resnet50", description="student architecture (a registered architecture name)")
    architecture_params: dict[str, Any] = Field(
        default_factory=dict, description="its parameters (e.g. {pretrained: <weights name>}, {width: 16})")
    epochs: int = Field(75, ge=1, description="training epochs of the student")
    batch_size: int = Field(32, ge=1, description="training batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="optimiser")
    lr: float = Field(0.1, gt=0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule over the epochs")
    min_lr: float = Field(1e-4, ge=0, description="final learning rate of the cosine schedule")
    random_resized_crop: tuple[float, float] | None = Field(
        (0.8, 1.0), description="scale range of the random resized crop (aspect ratio 1; None: off)")
    flip: bool = Field(True, description="random horizontal flip")
    color_jitter: tuple[float, float, float, float] | None = Field(
        None, description="brightness, contrast, saturation, hue (None: off, as in the reference)")

    @model_validator(mode="after")
    def _check_architecture(self) -> KnowledgeExtractionParams:
        try:
            cls = architectures.get(self.architecture)
        except UnknownPluginError as exc:  # a validation error naming the known architectures
            raise ValueError(str(exc)) from exc
        cls.Params(**self.architecture_params)
        return self

    def recipe(self) -> TrainingRecipe:
        return TrainingRecipe(
            epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, milestones=[],
            augmentation=Augmentation(random_resized_crop=self.random_resized_crop, crop_ratio=(1.0, 1.0),
                                      flip=self.flip, color_jitter=self.color_jitter))


@metrics.register("knowledge_extraction")
class KnowledgeExtraction(Metric):
    """Accuracy on the attacked identities' private test images of a classifier trained only on the
    reconstructions (Struppek et al., ICLR 2024); lower is better for the defender."""

    Params = KnowledgeExtractionParams
    outputs = {"knowledge_extraction": MetricOutput(better="lower", unit="share")}

    def required_weights(self) -> dict[str, str]:
        p = self.params
        arch = architectures.get(p.architecture)
        return arch(arch.Params(**p.architecture_params)).required_weights()

    def student(self, num_classes: int, resolution: int, ctx: MetricContext) -> nn.Module:
        p = self.params
        arch = architectures.get(p.architecture)
        return arch(arch.Params(**p.architecture_params)).build(num_classes, resolution, ctx.weights)

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        p = self.params
        classes = sorted({int(c) for c in ctx.attacked} or {int(c) for c in rec.labels.unique()})
        if rec.images.shape[0] == 0 or not classes:
            raise MetricUnavailableError("knowledge extraction: the attack returned no images")
        if ctx.private_test is None:
            raise MetricUnavailableError("knowledge extraction: no private test split to evaluate the student on")
        keep = torch.isin(rec.labels.cpu(), torch.tensor(classes))
        train = LabeledImages(_FloatImages(rec.images[keep], rec.labels.cpu()[keep]),
                              torch.arange(int(keep.sum())), relabel(rec.labels.cpu()[keep], classes),
                              "reconstructions")
        test = student_split(ctx.private_test, classes, "private test (attacked identities)")
        if len(train) == 0 or len(test) == 0:
            raise MetricUnavailableError("knowledge extraction: no reconstructions of, or no private test "
                                         "images of, the attacked identities")
        seed = derived_seed(ctx.seed, "knowledge_extraction")
        settings = RunSettings(device=ctx.device, progress=False, eval_batch_size=ctx.batch_size)
        recipe = p.recipe()
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = self.student(len(classes), test.resolution, ctx)
            trainer = Trainer(recipe, train, test, settings, seed, desc="knowledge extraction")
            hook = (CosineLR(p.lr, p.min_lr, p.epochs, math.ceil(len(train) / p.batch_size))
                    if p.schedule == "cosine" else None)
            t0 = time.perf_counter()
            result = trainer.fit(model, cross_entropy, step_hook=hook)
            seconds = time.perf_counter() - t0
        details: dict[str, Any] = {
            "n_train": len(train), "n_test": len(test), "identities": len(classes),
            "chance": 1.0 / len(classes),
            "standard_error": math.sqrt(result.test_accuracy * (1 - result.test_accuracy) / len(test)),
            "student_train_accuracy": result.train_accuracy, "seconds": seconds,
            "architecture": p.architecture,
        }
        if ctx.private_train is not None:
            real_train = student_split(ctx.private_train, classes, "private train (attacked identities)")
            if len(real_train):
                details["score_on_train"] = accuracy(predict_logits(model, real_train, settings), real_train.labels)
        return MetricResult(values={"knowledge_extraction": float(result.test_accuracy)}, details=details)
