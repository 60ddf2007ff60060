"""Overhead of the trainer's step against a bare training loop on the same batches.

For each model, one process times (a) :class:`inversion_bench.training.Trainer` as the suite runs it
(a target through its label smoothing defense's ``fit``; the evaluation model with the plain
cross-entropy :mod:`inversion_bench.products.classifier` passes), with its data loading, per-sample
augmentation, progress bookkeeping and per-step statistics, a recipe of ``--steps`` optimiser steps;
its step time is the training loop's own clock (``TrainResult.seconds``, which leaves out the final
test evaluation) over the steps; and (b) a bare loop over exactly the batches the trainer saw (drawn
and augmented beforehand with the trainer's generator): forward, the same loss, backward, optimiser
step. (a) and (b) alternate over ``--repeats`` rounds on the same thread count and the median time per
step is reported, so a busy machine slows both alike; the default clock is the process's CPU time,
which a shared machine's other processes do not inflate when torch runs on one thread. The ratio
a / b is the trainer's overhead (target: at most 1.15).

Models: the quickstart's target (small-cnn, width 32) and evaluation model (small-resnet, width
16), batch 64 on 32 px synthetic faces as ``suites/quickstart.yaml`` trains them, and torchvision's
ResNet-18 at 64 px (batch 64).

Usage::

    python benchmarks/train_speed.py --threads 1 --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import alternating_medians  # noqa: E402 (benchmarks/, the script's folder)

from inversion_bench.data import LabeledImages  # noqa: E402
from inversion_bench.data.splits import SplitSpec, make_splits  # noqa: E402
from inversion_bench.data.synthetic import SyntheticFaces  # noqa: E402
from inversion_bench.defenses.label_smoothing import LabelSmoothing  # noqa: E402
from inversion_bench.registry import REGISTRIES  # noqa: E402
from inversion_bench.training import (  # noqa: E402
    RunSettings,
    Trainer,
    TrainingRecipe,
    augment_batch,
    iterate,
    predict_logits,
)


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    arch_params: dict
    resolution: int
    batch_size: int
    defense_alpha: float | None  # None: no defense (the evaluation model's plain cross-entropy)


CASES = (
    Case("quickstart target (small-cnn w32, LS a=0.1)", "small-cnn", {"width": 32}, 32, 64, 0.1),
    Case("quickstart evaluation (small-resnet w16)", "small-resnet", {"width": 16}, 32, 64, None),
    Case("ResNet-18 64 px (LS a=0.1)", "resnet18", {"input_size": 64}, 64, 64, 0.1),
)


def quickstart_private(resolution: int) -> tuple[LabeledImages, LabeledImages]:
    """The quickstart's private train and test splits at ``resolution``."""
    coll = SyntheticFaces(SyntheticFaces.Params(num_identities=60, images_per_identity=40, seed=0)).load(resolution)
    sp = make_splits(coll, SplitSpec(private_identities=20, public_identities="rest", test_fraction=0.25, seed=42))
    return sp.private_train, sp.private_test


def build_model(case: Case, num_classes: int) -> torch.nn.Module:
    arch = REGISTRIES["architectures"].get(case.arch)
    return arch(arch.Params(**case.arch_params)).build(num_classes, case.resolution, {})


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def trainer_step(case: Case, model: torch.nn.Module, recipe: TrainingRecipe, train: LabeledImages,
                 test: LabeledImages, seed: int, clock: Callable[[], float]) -> float:
    """Seconds per step of the trainer, run as ``products.classifier`` runs it: the time of ``fit``
    less that of its closing test evaluation (timed again right after, on the same model)."""
    settings = RunSettings(progress=False)
    trainer = Trainer(recipe, train, test, settings, seed, desc=case.name)
    t0 = clock()
    if case.defense_alpha is not None:
        defense = LabelSmoothing(LabelSmoothing.Params(alpha=case.defense_alpha))
        defense.fit(model, trainer)
    else:
        trainer.fit(model, lambda lo, y, pr: torch.nn.functional.cross_entropy(lo, y))
    t1 = clock()
    predict_logits(model, test, settings)
    t2 = clock()
    return ((t1 - t0) - (t2 - t1)) / recipe.steps


def trainer_batches(recipe: TrainingRecipe, train: LabeledImages, seed: int) -> list[tuple[Tensor, Tensor]]:
    """The augmented batches the trainer draws for ``recipe`` (same generator, same order)."""
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[Tensor, Tensor]] = []
    while len(out) < recipe.steps:
        for images, labels in iterate(train, recipe.batch_size, shuffle=True, g=g):
            if len(out) == recipe.steps:
                break
            out.append((augment_batch(images, recipe.augmentation, g), labels))
    return out


def bare_step(model: torch.nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
              batches: list[tuple[Tensor, Tensor]], lr: float, clock: Callable[[], float]) -> float:
    """Seconds per step of forward, loss, backward and Adam step over ``batches``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = clock()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (clock() - t0) / len(batches)


def compare(case: Case, steps: int, repeats: int, clock: Callable[[], float], seed: int = 0) -> float:
    train, test = quickstart_private(case.resolution)
    recipe = TrainingRecipe(steps=steps, batch_size=case.batch_size, optimizer="adam", lr=1e-3)
    model = build_model(case, int(train.labels.max()) + 1)
    batches = trainer_batches(recipe, train, seed)
    if case.defense_alpha is not None:
        defense = LabelSmoothing(LabelSmoothing.Params(alpha=case.defense_alpha))
        progress = 0.9  # past the warm-up: the full smoothing loss, as in most of a run

        def loss_fn(lo: Tensor, y: Tensor) -> Tensor:
            return defense.criterion(lo, y, progress)
    else:
        loss_fn = torch.nn.functional.cross_entropy
    ta, tb = alternating_medians(lambda: trainer_step(case, model, recipe, train, test, seed, clock),
                                 lambda: bare_step(model, loss_fn, batches, recipe.lr, clock), repeats)
    ratio = ta / tb
    print(f"{case.name:45s} batch {case.batch_size}: trainer {1e3 * ta:8.2f} ms/step | bare {1e3 * tb:8.2f} ms/step"
          f" | ratio {ratio:.3f}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds; the median is reported")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: process CPU time (robust on a shared machine with --threads 1); wall: elapsed time")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    ap.add_argument("--max-ratio", type=float, default=1.15, help="exit 1 when a ratio exceeds this")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps x {args.repeats} rounds, cpu, "
          f"{args.clock} clock")
    worst = 0.0
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        worst = max(worst, compare(case, args.steps, args.repeats, CLOCKS[args.clock]))
    print(f"worst ratio {worst:.3f} (target <= {args.max_ratio})")
    return 0 if worst <= args.max_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
