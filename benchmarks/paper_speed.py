"""Throughput of the paper-scale models: training images/s and PPA optimisation steps/s.

Measures, on the chosen device, with the suite's execution settings (AMP, channels-last):
  * training: images per second of the shared trainer's step (ResNet-152 at 224 px, and
    Inception-v3 at 299 px with auxiliary logits), with the paper's augmentation;
  * attack: PPA optimisation steps per second (a batch of candidates through the StyleGAN2-ADA
    adapter, the centre crop/resize and random resized crop, the ResNet-152 target, backward, Adam).

The generator is a small module with the StyleGAN2-ADA interface (tests/tiny_stylegan.py) loaded
through the real adapter, since the FFHQ pickle is not distributed with the project: the attack
figure therefore measures the target's share of a PPA step. Randomly initialised networks.

    python benchmarks/paper_speed.py --device cpu --batch 8
    python benchmarks/paper_speed.py --device cuda --amp --channels-last --batch 64
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from inversion_bench.data import LabeledImages, TensorFaces  # noqa: E402
from inversion_bench.interfaces import AttackContext, PriorContext  # noqa: E402
from inversion_bench.models import build_classifier  # noqa: E402
from inversion_bench.registry import attacks, generators, load_plugins  # noqa: E402
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_split(n: int, classes: int, res: int) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    col = TensorFaces(imgs, labels, [f"id{i}" for i in range(classes)])
    return LabeledImages(col, torch.arange(n), labels, "bench")


def train_speed(arch: str, res: int, args, settings: RunSettings) -> float:
    data = fake_split(args.batch * (args.steps + 1), 16, res)
    model = build_classifier(arch, {}, 16, res, {})
    recipe = TrainingRecipe(epochs=1, batch_size=args.batch)
    trainer = Trainer(recipe, data, fake_split(args.batch, 16, res), settings, seed=0, desc=arch)
    # warm-up (cuDNN autotuning, allocator), then the timed epoch
    Trainer(recipe, fake_split(args.batch, 16, res), fake_split(args.batch, 16, res), settings, 0).fit(
        model, lambda lo, y, p: torch.nn.functional.cross_entropy(lo, y))
    result = trainer.fit(model, lambda lo, y, p: torch.nn.functional.cross_entropy(lo, y))
    return result.images_per_second


def attack_speed(args, settings: RunSettings) -> float:
    import tiny_stylegan

    load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "g.pkl"
        with open(pkl, "wb") as fh:
            pickle.dump(tiny_stylegan.make_pickle_dict(resolution=256), fh)
        gen_plugin = generators.get("stylegan2-ada")
        plugin = gen_plugin(gen_plugin.Params(pickle=str(pkl), code_dir=str(ROOT / "tests")))
        ctx = PriorContext(public=fake_split(2, 2, 32), resolution=224, seed=0, device=settings.device, weights={})
        prior = plugin.fit(ctx).to(settings.device)
        target = build_classifier("resnet152", {}, 16, 224, {}).to(settings.device).eval()
        if settings.channels_last:
            target = target.to(memory_format=torch.channels_last)
        ppa = attacks.get("ppa")
        actx = AttackContext(device=settings.device, seed=0, batch_size=args.batch, amp=settings.amp,
                             progress=False, resolution=224)
        ids = torch.arange(max(1, args.batch // 2))

        def run(steps: int) -> float:
            params = ppa.Params(search_space_size=args.batch, num_candidates=2, num_steps=steps, center_crop=200,
                                resize=224, samples_per_target=1, iterations=1, batch_size=args.batch)
            sync(settings.device)
            t0 = time.perf_counter()
            ppa(params).run(target, ids, prior, actx)
            sync(settings.device)
            return time.perf_counter() - t0

        run(1)  # warm-up
        base = run(0)
        timed = run(args.steps)
        return args.steps / max(timed - base, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed training batches / attack steps")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    settings = RunSettings(device=device, amp=args.amp, channels_last=args.channels_last, progress=False,
                           eval_batch_size=args.batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"device {name}; batch {args.batch}; amp {args.amp}; channels_last {args.channels_last}; "
          f"torch {torch.__version__}")
    print(f"train resnet152 @224: {train_speed('resnet152', 224, args, settings):8.1f} images/s")
    print(f"train inception_v3 @299: {train_speed('inception_v3', 299, args, settings):8.1f} images/s")
    print(f"ppa step (batch {args.batch}, resnet152 target): {attack_speed(args, settings):8.2f} steps/s")


if __name__ == "__main__":
    main()
