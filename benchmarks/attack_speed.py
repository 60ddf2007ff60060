"""Overhead of the attack step against a bare forward/backward pass (PPA and GMI).

For each attack, one process times (a) the attack's optimisation step as the attacks run it
(:func:`inversion_bench.attacks.common.optimize.optimize_latents`: objective, summed loss, backward, trace with
gradient cosine, optimiser step, latent projection) and (b) a bare forward and backward pass
through the same generator and target at the same batch size, with the same per-step
augmentation (PPA: random resized crop; GMI: none) and, for GMI, the same discriminator pass.
(a) and (b) alternate over ``--repeats`` rounds and the median time per step is reported, so a
busy machine slows both alike. The overhead ratio is a / b (target: at most 1.15 on CPU).

Usage::

    python benchmarks/attack_speed.py --batch-size 64 --resolution 32 --steps 30 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import alternating_medians  # noqa: E402 (benchmarks/, the script's folder)

from inversion_bench import augment  # noqa: E402
from inversion_bench.attacks.common.losses import poincare_loss  # noqa: E402
from inversion_bench.attacks.common.optimize import frozen, optimize_latents  # noqa: E402
from inversion_bench.attacks.common.trace import StepTrace  # noqa: E402
from inversion_bench.attacks.common.views import FixedView  # noqa: E402
from inversion_bench.attacks.generators.dcgan import DCGANGenerator  # noqa: E402
from inversion_bench.attacks.gmi import GenerativeModelInversion, GMIObjective, GMIParams  # noqa: E402
from inversion_bench.attacks.ppa import PlugAndPlayAttack, PPAObjective, PPAParams, latent_projection  # noqa: E402
from inversion_bench.models import build_classifier  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_attack(objective, make_optimizer, project, w0: torch.Tensor, y: torch.Tensor, steps: int,
                device: torch.device, loss_scale: float = 1.0) -> float:
    """Seconds per step of the attacks' optimisation loop."""
    trace = StepTrace(steps, device)
    _sync(device)
    t0 = time.perf_counter()
    optimize_latents(w0, y, objective=objective, make_optimizer=make_optimizer, num_steps=steps,
                     batch_size=w0.shape[0], device=device, trace=trace, project=project,
                     loss_scale=loss_scale)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def time_bare(forward: Callable[[torch.Tensor], torch.Tensor], w0: torch.Tensor, steps: int,
              device: torch.device) -> float:
    """Seconds per forward + backward pass of ``forward`` (a scalar) with respect to the latents."""
    w = w0.to(device).clone().requires_grad_(True)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        w.grad = None
        forward(w).backward()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def compare(name: str, attack_fn: Callable[[], float], bare_fn: Callable[[], float], repeats: int,
            batch: int) -> float:
    ta, tb = alternating_medians(attack_fn, bare_fn, repeats)
    ratio = ta / tb
    print(f"{name:4s} batch {batch}: attack step {1 / ta:7.2f} steps/s ({1e3 * ta:7.2f} ms) | bare fwd+bwd "
          f"{1 / tb:7.2f} steps/s ({1e3 * tb:7.2f} ms) | overhead ratio {ratio:.3f}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32, choices=[16, 32, 64, 128])
    ap.add_argument("--steps", type=int, default=30, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--g-width", type=int, default=32, help="DCGAN widths (random init)")
    ap.add_argument("--target-width", type=int, default=32, help="small-cnn width")
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--attacks", default="ppa,gmi")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    prior = DCGANGenerator(100, args.g_width, args.g_width, args.resolution, latent_bound=2.0)
    prior = prior.to(device).eval()
    target = build_classifier("small-cnn", {"width": args.target_width}, args.num_classes, args.resolution,
                              {}).to(device).eval()
    g = torch.Generator().manual_seed(0)
    bs = args.batch_size
    w0 = prior.constrain(prior.sample_z(bs, g))
    y = torch.arange(bs) % args.num_classes
    y_dev = y.to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.resolution} px, DCGAN width "
          f"{args.g_width}, small-cnn width {args.target_width}, {args.steps} steps x {args.repeats} rounds")
    worst = 0.0
    with frozen(prior, target):
        if "ppa" in args.attacks:
            p = PPAParams(num_steps=args.steps)
            view = FixedView(p.center_crop, p.resize)
            attack = PlugAndPlayAttack(p)
            objective = PPAObjective(prior, target, view, p, g)

            def bare_ppa(w: torch.Tensor) -> torch.Tensor:
                x = augment.random_resized_crop(view(prior.synthesize(w)), g, scale=p.crop_scale,
                                                ratio=p.crop_ratio)
                return poincare_loss(target(x), y_dev).sum()

            worst = max(worst, compare(
                "ppa", lambda: time_attack(objective, attack.make_optimizer, latent_projection(prior), w0, y,
                                           args.steps, device),
                lambda: time_bare(bare_ppa, w0, args.steps, device), args.repeats, bs))
        if "gmi" in args.attacks:
            p = GMIParams(num_steps=args.steps)
            attack = GenerativeModelInversion(p)
            objective = GMIObjective(prior, target, p)

            def bare_gmi(w: torch.Tensor) -> torch.Tensor:
                images = prior.synthesize(w)
                return (-prior.discriminator_logits(images)).sum() + torch.nn.functional.cross_entropy(
                    target(images), y_dev, reduction="sum")

            worst = max(worst, compare(
                "gmi", lambda: time_attack(objective, attack.make_optimizer, attack.projection(prior), w0, y,
                                           args.steps, device, 1.0 / p.reference_batch_size),
                lambda: time_bare(bare_gmi, w0, args.steps, device), args.repeats, bs))
    print(f"worst overhead ratio {worst:.3f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
