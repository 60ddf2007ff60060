"""The trainer trains exactly as a plain loop does: at a fixed seed its weights and per-epoch history
equal, bit for bit, those of an independently written loop over the same batches (shuffle and
augmentation drawn from one generator seeded with the seed, the criterion, Adam, the step-wise
learning rate). The trainer's speed-ups (statistics summed on the device, constants cached) must
never change what it trains."""

from __future__ import annotations

import hashlib

import pytest
import torch

from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.data.synthetic import SyntheticFaces
from inversion_bench.defenses.label_smoothing import LabelSmoothing
from inversion_bench.registry import REGISTRIES
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe, augment_batch, lr_at_epoch


def _weights_hash(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(v.detach().contiguous().numpy().tobytes()
                                   for v in model.state_dict().values())).hexdigest()


def _model(arch: str):
    torch.manual_seed(0)
    cls = REGISTRIES["architectures"].get(arch)
    return cls(cls.Params(width=8)).build(6, 16, {})


def _reference_fit(model, recipe: TrainingRecipe, train, criterion, seed: int) -> list[dict[str, float]]:
    """The training the trainer promises, written out as a plain loop (epochs, one CPU device)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
    n_batches = -(-len(train) // recipe.batch_size)
    history = []
    for epoch in range(recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(recipe, epoch)
        model.train()
        losses, hits, count = [], 0, 0
        for b, (images, labels) in enumerate(train.batches(recipe.batch_size, shuffle=True, generator=g)):
            x = augment_batch(images, recipe.augmentation, g)
            logits = model(x)
            loss = criterion(logits, labels, (epoch + min(b / n_batches, 1.0 - 1e-9)) / recipe.epochs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item() * len(labels))
            hits += int((logits.argmax(1) == labels).sum())
            count += len(labels)
        total = 0.0
        for v in losses:  # left to right, as a running Python sum
            total += v
        history.append({"epoch": epoch + 1, "loss": total / count, "train_accuracy": hits / count,
                        "lr": opt.param_groups[0]["lr"]})
    return history


@pytest.mark.parametrize("arch", ["small-cnn", "small-resnet"])
def test_the_trainer_trains_bit_for_bit_as_a_plain_loop(arch, one_thread):
    coll = SyntheticFaces(SyntheticFaces.Params(num_identities=9, images_per_identity=10, seed=0)).load(16)
    sp = make_splits(coll, SplitSpec(private_identities=6, public_identities="rest", test_fraction=0.3, seed=1))
    # hue jitter on, negative smoothing ramping in: every augmentation and the progress argument matter
    recipe = TrainingRecipe(epochs=3, batch_size=16, milestones=[0.5])
    defense = LabelSmoothing(LabelSmoothing.Params(alpha=-0.05, warmup_start=0.2, warmup_end=0.6))

    model = _model(arch)
    trainer = Trainer(recipe, sp.private_train, sp.private_test, RunSettings(progress=False), seed=3)
    defense.fit(model, trainer)

    reference = _model(arch)
    history = _reference_fit(reference, recipe, sp.private_train, defense.criterion, seed=3)

    assert _weights_hash(model) == _weights_hash(reference)
    assert trainer.result.history == history
    assert history[-1]["lr"] == pytest.approx(1e-4)
