"""Stage 1 of PLG-MI: top-n pseudo-labels and the pseudo label-guided conditional GAN.

Follows ``top_n_selection.py`` and ``train_cgan.py`` of github.com/LetheSec/PLG-MI-Attack at
3cf8735198d88f3d24c077c6035da541b721de7b (see :mod:`.plg_gan` for the networks and losses). One
iteration: one generator update on ``gen_hinge(D(G(z, y), y)) + alpha * L_inv(T(aug(G(z, y))), y)``
with fresh z ~ N(0, I) and labels y uniform over the target's classes, then ``n_dis``
discriminator updates on ``dis_hinge`` with a fresh fake batch and a batch of pseudo-labelled
public images (plus uniform noise in [0, 1/256), the reference's ``_noise_adder``), drawn from an
endless sequence of random permutations of the selected images. Adam (lr 2e-4, betas (0, 0.9)) for
both. The reference keeps the generator's graph for the discriminator's fake batch (its gradient
is zeroed before the next generator update); here that batch is made without a graph, which
changes nothing but the cost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attacks.common.optimize import frozen
from inversion_bench.attacks.common.plg_gan import (
    ConditionalGenerator,
    ProjectionDiscriminator,
    dis_hinge,
    gen_hinge,
    plg_augment,
    top_n_selection,
)
from inversion_bench.data import LabeledImages
from inversion_bench.errors import ConfigError, DivergedError

__all__ = ["pseudo_label", "train_cgan"]


def required_public(public: LabeledImages | None, attack: str, purpose: str) -> LabeledImages:
    """The attacker's public images an attack's stage 1 fits on; a ConfigError naming ``attack`` and ``purpose``
    when there are none."""
    if public is None or len(public) == 0:
        raise ConfigError(f"{attack} needs the attacker's public images (AttackContext.public) to {purpose}")
    return public


@contextlib.contextmanager
def fitting_against(target: nn.Module, device: torch.device) -> Iterator[None]:
    """Stage 1's frame (PLG-MI's cGAN, Diff-MI's diffusion model): the target on ``device``, frozen, and the
    global random state (CUDA's too on a GPU) restored afterwards, so the fit draws leave the run's stream as
    they found it."""
    target.to(device)
    fork = [device] if device.type == "cuda" else []
    with frozen(target), torch.random.fork_rng(devices=fork):
        yield


@torch.no_grad()
def public_confidences(target: nn.Module, public: LabeledImages, batch_size: int, device: torch.device) -> Tensor:
    """[N, C] softmax of the target's outputs on every public image (CPU, float32)."""
    probs = [target(images.to(device)).float().softmax(dim=1).cpu() for images, _ in public.batches(batch_size)]
    out = torch.cat(probs)
    if not torch.isfinite(out).all():
        raise DivergedError("plg-mi: the target's confidences on the public images are NaN or inf")
    return out


def pseudo_label(target: nn.Module, public: LabeledImages, top_n: int, batch_size: int,
                 device: torch.device) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Positions in ``public`` and pseudo-labels of the top-n selection, plus a summary for the info."""
    probs = public_confidences(target, public, batch_size, device)
    positions, labels = top_n_selection(probs, top_n)
    kept = probs[positions, labels]
    info = {"public_images": int(probs.shape[0]), "pseudo_labelled": int(positions.numel()),
            "pseudo_unique_images": int(positions.unique().numel()),
            "pseudo_mean_confidence": round(float(kept.mean()), 6),
            "pseudo_min_confidence": round(float(kept.min()), 6)}
    return positions, labels, info


def endless_batches(count: int, batch_size: int, g: torch.Generator) -> Iterator[Tensor]:
    """Indices into ``count`` items, ``batch_size`` at a time, over endless random permutations."""
    order, at = torch.randperm(count, generator=g), 0
    while True:
        out = []
        while sum(t.numel() for t in out) < batch_size:
            if at >= count:
                order, at = torch.randperm(count, generator=g), 0
            take = min(batch_size - sum(t.numel() for t in out), count - at)
            out.append(order[at : at + take])
            at += take
        yield torch.cat(out)


def _sample(gen: nn.Module, batch: int, z_dim: int, classes: int, g: torch.Generator,
            device: torch.device) -> tuple[Tensor, Tensor]:
    z = torch.randn(batch, z_dim, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return gen(z, y), y


def _finite(value: Tensor, what: str, iteration: int) -> float:
    v = float(value.detach())
    if not torch.isfinite(value.detach()).all():
        raise DivergedError(f"plg-mi: the {what} became NaN or inf at GAN iteration {iteration} (lower gan_lr "
                            "or alpha)")
    return v


def train_cgan(gen: ConditionalGenerator, dis: ProjectionDiscriminator, target: nn.Module, public: LabeledImages,
               positions: Tensor, labels: Tensor, p: Any, inv_loss: Callable[[Tensor, Tensor], Tensor], *,
               g: torch.Generator, device: torch.device, progress: bool = False, label: str = "") -> dict[str, Any]:
    """Trains ``gen`` and ``dis`` in place (``p``: the attack's parameters); returns a summary.

    ``target`` must be frozen (eval mode, no parameter gradients); its outputs on the augmented fakes
    give the inversion loss. Raises DivergedError on a NaN or inf loss.
    """
    gen.to(device).train()
    dis.to(device).train()
    opt_g = torch.optim.Adam(gen.parameters(), p.gan_lr, tuple(p.gan_betas))
    opt_d = torch.optim.Adam(dis.parameters(), p.gan_lr, tuple(p.gan_betas))
    classes, bs = gen.num_classes, p.gan_batch_size
    real_batches = endless_batches(positions.numel(), bs, g)
    hist: dict[str, list[float]] = {"gen": [], "inv": [], "dis": [], "target_acc": []}
    t0 = time.perf_counter()
    desc = f"plg-mi cGAN on {label}" if label else "plg-mi cGAN"
    for it in tqdm(range(1, p.gan_iterations + 1), desc=desc, disable=not progress, leave=False):
        fake, y = _sample(gen, bs, gen.z_dim, classes, g, device)
        logits = target(plg_augment(fake, g, jitter_p=p.train_jitter_p, **p.augment_kwargs()))
        inv = inv_loss(logits, y).mean()
        loss_gen = gen_hinge(dis(fake, y))
        opt_g.zero_grad(set_to_none=True)
        (loss_gen + p.alpha * inv).backward()
        opt_g.step()
        l_gen, l_inv = _finite(loss_gen, "generator loss", it), _finite(inv, "inversion loss", it)
        l_dis, correct = 0.0, 0
        for _ in range(p.n_dis):
            with torch.no_grad():
                fake, y_fake = _sample(gen, bs, gen.z_dim, classes, g, device)
                correct += int((target(fake).argmax(1) == y_fake).sum())
            pick = next(real_batches)
            real = public.images(positions[pick]).to(device)
            real = real + torch.rand(real.shape, generator=g).to(device) / 256.0
            loss_dis = dis_hinge(dis(fake, y_fake), dis(real, labels[pick].to(device)))
            opt_d.zero_grad(set_to_none=True)
            loss_dis.backward()
            opt_d.step()
            l_dis += _finite(loss_dis, "discriminator loss", it) / p.n_dis
        for key, v in zip(hist, (l_gen, l_inv, l_dis, correct / (bs * max(p.n_dis, 1))), strict=True):
            hist[key].append(v)
    gen.eval()
    dis.eval()
    tail = max(1, len(hist["gen"]) // 10)  # the last tenth of the iterations
    summary = {f"final_{k}": round(sum(v[-tail:]) / tail, 6) if v else None for k, v in hist.items()}
    return {**summary, "gan_iterations": p.gan_iterations, "gan_s": round(time.perf_counter() - t0, 3)}
