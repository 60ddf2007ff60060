"""The one shared training loop for targets and evaluation models.

Recipe knobs follow the label smoothing paper's setup (Struppek et al., ICLR 2024, building on
Plug & Play Attacks, ICML 2022): Adam or SGD, MultiStepLR with milestones given as fractions of the
training (0.75 and 0.9 for 100 epochs), random resized crop, colour jitter and horizontal flip. The
length is ``epochs`` or, instead, ``steps`` (optimiser steps; milestones are then fractions of the
steps); ``steps`` does not appear in the recipe's dump when unset, so older cache keys stay valid.
Finding 2 of the prototype: negative label smoothing needs the learning rate during its ramp, so
the schedule is step-wise, never cosine by default.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench import augment
from inversion_bench.data import LabeledImages
from inversion_bench.errors import DivergedError

log = logging.getLogger(__name__)

Criterion = Callable[[Tensor, Tensor, float], Tensor]
# batches(epoch, g) -> the (images, labels) batches of one epoch (see Trainer.fit)
BatchSource = Callable[[int, torch.Generator], Iterable[tuple[Tensor, Tensor]]]


class Augmentation(BaseModel):
    """Training-time augmentation (applied per sample, on the batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    random_resized_crop: tuple[float, float] | None = Field(
        (0.85, 1.0), description="scale range of the random resized crop (None: off)")
    crop_ratio: tuple[float, float] = Field((1.0, 1.0), description="aspect ratio range of the crop")
    flip: bool = Field(True, description="random horizontal flip")
    color_jitter: tuple[float, float, float, float] | None = Field(
        (0.2, 0.2, 0.1, 0.1), description="brightness, contrast, saturation, hue (None: off)")


class TrainingRecipe(BaseModel):
    """How a classifier is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(30, ge=1, description="training epochs (leave out when steps is given)")
    steps: int | None = Field(None, ge=1, description="training length in optimiser steps instead of epochs "
                              "(milestones are then fractions of the steps)")
    batch_size: int = Field(64, ge=1, description="training batch size")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="initial learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    milestones: list[float] = Field([0.75, 0.9], description="MultiStepLR milestones, fractions of the epochs "
                                    "(or of the steps)")
    gamma: float = Field(0.1, gt=0, le=1, description="learning-rate factor at each milestone")
    augmentation: Augmentation = Field(default_factory=Augmentation)
    aux_loss_weight: float = Field(0.4, ge=0, description="weight of auxiliary logits' loss (Inception)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes (0: in-process batches)")

    @model_validator(mode="before")
    @classmethod
    def _one_length(cls, data: Any) -> Any:
        """Exactly one of ``epochs`` and ``steps``: with ``steps``, ``epochs`` is None."""
        if isinstance(data, dict) and data.get("steps") is not None:
            if data.get("epochs") is not None:
                raise ValueError(f"steps ({data['steps']}) and epochs ({data['epochs']}) are both given: the "
                                 "training length is one of them; remove epochs or steps")
            data = {**data, "epochs": None}
        return data

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainingRecipe:
        if self.epochs is None and self.steps is None:
            raise ValueError("epochs is None: give the training length as epochs or as steps")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("steps and epochs are both given: give one of them")
        for m in self.milestones:
            if not 0 < m < 1:
                raise ValueError(f"milestones are fractions of the training in (0, 1), got {m}")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset_length(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves out whichever of ``epochs``/``steps`` is None: recipes in epochs dump (hence key,
        ``plan.make_plan``) as before ``steps`` existed."""
        data = handler(self)
        for name in ("epochs", "steps"):
            if data.get(name, 0) is None:
                data.pop(name)
        return data


@dataclass
class RunSettings:
    """Device-side settings shared by every job of a run."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    progress: bool = True
    eval_batch_size: int = 256

    def autocast(self):
        if not self.amp:
            return nullcontext()
        dtype = torch.bfloat16 if (self.device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


@dataclass
class TrainResult:
    test_accuracy: float
    train_accuracy: float
    history: list[dict[str, float]]
    seconds: float
    images_per_second: float
    logit_std: float  # spread of the test logits: shows whether training changed the model


def lr_at_epoch(recipe: TrainingRecipe, epoch: int) -> float:
    """The MultiStepLR learning rate during ``epoch`` (0-based) of a recipe in epochs."""
    if recipe.epochs is None:
        raise ValueError("lr_at_epoch: the recipe is given in steps; use lr_at_step")
    n_drops = sum(1 for m in recipe.milestones if epoch >= round(m * recipe.epochs))
    return recipe.lr * recipe.gamma**n_drops


def lr_at_step(recipe: TrainingRecipe, step: int) -> float:
    """The MultiStepLR learning rate at optimiser ``step`` (0-based) of a recipe in steps."""
    if recipe.steps is None:
        raise ValueError("lr_at_step: the recipe is given in epochs; use lr_at_epoch")
    n_drops = sum(1 for m in recipe.milestones if step >= round(m * recipe.steps))
    return recipe.lr * recipe.gamma**n_drops


def augment_batch(images: Tensor, aug: Augmentation, g: torch.Generator) -> Tensor:
    x = images
    if aug.random_resized_crop is not None:
        x = augment.random_resized_crop(x, g, scale=aug.random_resized_crop, ratio=aug.crop_ratio,
                                        flip_p=0.5 if aug.flip else 0.0)
    elif aug.flip:
        x = augment.horizontal_flip(x, g)
    if aug.color_jitter is not None:
        b, c, s, h = aug.color_jitter
        x = augment.color_jitter(x, g, b, c, s, h)
    return x


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, data: LabeledImages) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.data.images([i])[0], self.data.labels[i]


def iterate(data: LabeledImages, batch_size: int, *, shuffle: bool, g: torch.Generator, workers: int = 0,
            pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of ``data``: in-process, or through a DataLoader with worker processes."""
    if workers == 0:
        yield from data.batches(batch_size, shuffle=shuffle, generator=g)
        return
    order = torch.randperm(len(data), generator=g) if shuffle else torch.arange(len(data))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_Indexed(data), order.tolist()), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=pin_memory, persistent_workers=False)
    yield from loader


@torch.no_grad()
def predict_logits(model: nn.Module, data: LabeledImages, settings: RunSettings) -> Tensor:
    model.eval()
    outs = []
    for images, _ in data.batches(settings.eval_batch_size):
        with settings.autocast():
            outs.append(model(images.to(settings.device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Top-k accuracy (fraction in [0, 1])."""
    if logits.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return float((topk == labels.view(-1, 1)).any(dim=1).float().mean())


def bars_wanted(requested: bool, stream: TextIO | None = None) -> bool:
    """Progress bars only when ``requested`` (``run.progress``, ``--no-progress``) and ``stream`` (default stderr)
    is a terminal: in CI and cluster logs the run logs one line per pair and training a heartbeat instead."""
    return bool(requested and getattr(sys.stderr if stream is None else stream, "isatty", lambda: False)())


HEARTBEAT_S = 30.0
"""Without progress bars (``--no-progress``, stderr no terminal) training logs a line at least this often (s)."""


class _Progress:
    """The training progress bar; without one (``--no-progress``) a log line every :data:`HEARTBEAT_S` seconds."""

    def __init__(self, desc: str, total: int, show: bool) -> None:
        self.desc, self.total, self.show, self.done, self.postfix = desc, total, show, 0, ""
        self.bar = tqdm(total=total, disable=not show, desc=desc, leave=False)
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        now = time.perf_counter()
        if not self.show and now - self.last >= HEARTBEAT_S:
            self.last = now
            log.info("%s: %d/%d batches (%.0f %%)%s, %.0f s", self.desc, self.done, self.total,
                     100 * self.done / max(self.total, 1), self.postfix, now - self.t0)

    def set_postfix(self, **values: str) -> None:
        self.bar.set_postfix(**values)
        self.postfix = ", last epoch " + " ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        self.bar.close()


class Trainer:
    """Trains a classifier on ``train`` and measures it on ``test``."""

    def __init__(self, recipe: TrainingRecipe, train: LabeledImages, test: LabeledImages,
                 settings: RunSettings, seed: int, desc: str = "train", public: LabeledImages | None = None) -> None:
        self.recipe = recipe
        self.train = train
        self.test = test
        self.public = public  # the attacker's public data (for defenses that pretrain on it, e.g. TL-DMI)
        self.settings = settings
        self.seed = seed
        self.desc = desc
        self.result: TrainResult | None = None

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        r = self.recipe
        if r.optimizer == "adam":
            return torch.optim.Adam(params, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)

    def _batch_loss(self, model: nn.Module, fwd: Callable[[Tensor], Tensor], criterion: Criterion,
                    images: Tensor, labels: Tensor, progress: float,
                    g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Augments one training batch (drawing from ``g``), moves it to the device and computes its loss.

        Args:
            model: the model being trained (its ``training_outputs`` gives auxiliary logits, when it has one).
            fwd: the model's forward pass (compiled when ``settings.compile``).
            criterion: ``criterion(logits, targets, progress)``.
            images, labels: the batch and its labels, on the CPU.
            progress: fraction of the training done, passed to ``criterion``.
            g: the generator of the augmentation.

        Returns:
            The loss (auxiliary losses weighted by ``recipe.aux_loss_weight``), main logits, labels on the device.
        """
        r, s = self.recipe, self.settings
        x = augment_batch(images, r.augmentation, g).to(s.device, non_blocking=True)
        y = labels.to(s.device, non_blocking=True)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with s.autocast():
            if hasattr(model, "training_outputs") and not s.compile:
                logits, aux = model.training_outputs(x)
            else:
                logits, aux = fwd(x), []
            loss = criterion(logits.float(), y, progress)
            for a in aux:
                loss = loss + r.aux_loss_weight * criterion(a.float(), y, progress)
        return loss, logits, y

    def fit(self, model: nn.Module, criterion: Criterion,
            optimizer: torch.optim.Optimizer | None = None,
            step_hook: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None,
            batches: BatchSource | None = None) -> TrainResult:
        """Trains ``model`` in place with ``criterion(logits, targets, progress)``.

        Args:
            batches: ``batches(epoch, g)`` yields the (images, labels) batches of one epoch, e.g. the
                Poisson-sampled batches of DP-SGD (default: shuffled batches of ``recipe.batch_size``).
                Empty batches are skipped.

        Raises:
            DivergedError: when the loss becomes NaN or inf.
        """
        r, s = self.recipe, self.settings
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        model.to(s.device)
        if s.channels_last:
            model.to(memory_format=torch.channels_last)
        fwd = torch.compile(model) if s.compile else model
        opt = optimizer or self.make_optimizer([p for p in model.parameters() if p.requires_grad])
        history: list[dict[str, float]] = []
        n_batches = math.ceil(len(self.train) / r.batch_size)
        total = r.steps if r.steps is not None else r.epochs * n_batches
        t0 = time.perf_counter()
        bar = _Progress(self.desc, total, s.progress)
        state = {"step": 0, "seen": 0}
        epoch = 0
        while (epoch < r.epochs) if r.steps is None else (state["step"] < r.steps):
            if r.steps is None:
                for group in opt.param_groups:
                    group["lr"] = lr_at_epoch(r, epoch)
            epoch_batches = (batches(epoch, g) if batches is not None else
                             iterate(self.train, r.batch_size, shuffle=True, g=g, workers=r.workers,
                                     pin_memory=s.device.type == "cuda"))
            stats = self._epoch(model, fwd, criterion, opt, step_hook, epoch_batches, epoch, n_batches, g,
                                state, bar)
            if stats is None:  # an epoch without a single non-empty batch: steps would never be reached
                bar.close()
                raise RuntimeError(f"{self.desc}: epoch {epoch + 1} had no training batch")
            history.append({"epoch": epoch + 1, **stats, "lr": opt.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_accuracy']:.2f}")
            epoch += 1
        seen = state["seen"]
        bar.close()
        seconds = time.perf_counter() - t0
        logits = predict_logits(model, self.test, s)  # in eval mode
        if not torch.isfinite(logits).all():
            raise DivergedError(f"{self.desc}: the trained model outputs NaN or inf logits")
        self.result = TrainResult(
            test_accuracy=accuracy(logits, self.test.labels),
            train_accuracy=history[-1]["train_accuracy"],
            history=history,
            seconds=seconds,
            images_per_second=seen / max(seconds, 1e-9),
            logit_std=float(logits.std(dim=1).mean()),
        )
        length = f"{r.epochs} epochs" if r.steps is None else f"{r.steps} steps ({epoch} epochs)"
        log.info("%s: test accuracy %.3f after %s (%.1f s)", self.desc, self.result.test_accuracy, length, seconds)
        return self.result

    def _epoch(self, model: nn.Module, fwd: Callable[[Tensor], Tensor], criterion: Criterion,
               opt: torch.optim.Optimizer, step_hook: Callable[[nn.Module, torch.optim.Optimizer], None] | None,
               epoch_batches: Iterable[tuple[Tensor, Tensor]], epoch: int, n_batches: int,
               g: torch.Generator, state: dict[str, int], bar: _Progress) -> dict[str, float] | None:
        """Trains one epoch (with ``recipe.steps``: stops when the steps are done; the learning rate is
        set per step). ``state`` counts optimiser steps and images over epochs. Returns the epoch's
        loss and train accuracy, None when it had no non-empty batch."""
        r = self.recipe
        model.train()
        # float64 sums on the device (adding as Python floats would), read once per epoch: no sync per step
        (tot_loss, correct), count = torch.zeros(2, dtype=torch.float64, device=self.settings.device), 0
        for b, (images, labels) in enumerate(epoch_batches):
            if len(labels) == 0:
                continue
            if r.steps is None:
                progress = (epoch + min(b / n_batches, 1.0 - 1e-9)) / r.epochs
            else:
                if state["step"] >= r.steps:
                    break
                progress = state["step"] / r.steps
                for group in opt.param_groups:
                    group["lr"] = lr_at_step(r, state["step"])
            loss, logits, y = self._batch_loss(model, fwd, criterion, images, labels, progress, g)
            if not torch.isfinite(loss):
                bar.close()
                raise DivergedError(f"{self.desc}: training diverged at epoch {epoch + 1}, "
                                    f"batch {b + 1} (loss {float(loss.detach())})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step_hook is not None:
                step_hook(model, opt)
            opt.step()
            tot_loss += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
            state["seen"] += len(y)
            state["step"] += 1
            bar.update(1)
        if count == 0:
            return None
        return {"loss": float(tot_loss) / count, "train_accuracy": int(correct) / count}


def cross_entropy(logits: Tensor, targets: Tensor, progress: float) -> Tensor:
    """Plain cross-entropy with the criterion signature."""
    return F.cross_entropy(logits, targets)
