"""PLG-MI, the pseudo label-guided model inversion attack (Yuan et al., AAAI 2023), plugin ``plg-mi``.

Yuan, Chen, Zhang, Zhang, Yu, Zhang, "Pseudo Label-Guided Model Inversion Attack via Conditional
Generative Adversarial Network", AAAI 2023 (arXiv:2302.09814). Reference code:
github.com/LetheSec/PLG-MI-Attack, commit 3cf8735198d88f3d24c077c6035da541b721de7b
(``top_n_selection.py``, ``train_cgan.py``, ``reconstruct.py``, ``losses.py``, ``models/``).

Stage 1 (``train_generator``, :mod:`inversion_bench.attacks.common.plg_train`): the target labels the
public images; each of its classes keeps the ``top_n`` images it is most confident about (30 in the
README's command; an image may serve several classes). A conditional ResNet GAN (conditional
batch norm generator, spectrally normalised projection discriminator, hinge loss) is trained on
those pseudo-labelled images, the generator with the extra inversion loss ``alpha * L_inv`` of the
target on augmented fakes (``alpha`` 0.2, max-margin loss ``-z_y + max_{j != y} z_j``). Defaults from
``train_cgan.py`` and the README: batch 64, 30000 iterations, 5 discriminator steps per generator
step, Adam lr 2e-4 with betas (0, 0.9), widths 64, z of 128 dimensions, 4x4 bottom.

Stage 2 (``run``, ``reconstruct.py: inversion``): for every attacked identity y, ``samples_per_target``
latents z ~ N(0, I) (the reference's 5 random seeds, each kept) are optimised with Adam (lr 0.1,
600 iterations, the README's command) on ``L_inv(T(aug(G(z, y))), y)`` summed over two independently
augmented views, with the generator in eval mode; z is not projected. Augmentations in both stages:
random resized crop (scale 0.8-1.0), colour jitter (brightness and contrast 0.2; with probability
0.5 in stage 1, always in stage 2), horizontal flip, rotation up to 5 degrees (per sample, see
:func:`~inversion_bench.attacks.common.plg_gan.plg_augment`). The max-margin loss is the reference's
default in both stages (``inv_loss: margin``); ``cross_entropy`` and ``poincare`` are its other choices.

Differences from the reference: the networks' depth follows the resolution (``log2(R / 4)``
generator blocks, ``log2(R) - 1`` discriminator blocks; the reference's 64 px gives its 4 and 5); the
reference averages the search loss over its batch of 60 identities where here each latent's loss
is summed (Adam is invariant to that scale up to its epsilon); randomness comes from the job seed.
The generator's tanh output is used on the [0, 1] scale as in the reference (its discriminator sees
real images in [0, 1], its target takes [0, 1] input); reconstructions are clamped to [0, 1].
``unit_output: true`` (not the reference) maps it to ``(tanh + 1) / 2`` instead: a briefly trained
GAN still emits many negative pixels, which the colour jitter clamps to 0 and so cuts off their
gradient in the latent search; the CPU-scale suites use it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.losses import cross_entropy_loss, poincare_loss, target_confidence
from inversion_bench.attacks.common.optimize import attack_setup, frozen, optimize_latents
from inversion_bench.attacks.common.plg_gan import (
    ConditionalGenerator,
    ProjectionDiscriminator,
    max_margin_loss,
    plg_augment,
)
from inversion_bench.attacks.common.plg_train import fitting_against, pseudo_label, required_public, train_cgan
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.errors import BenchError, ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

INV_LOSSES = {"margin": max_margin_loss, "cross_entropy": cross_entropy_loss, "poincare": poincare_loss}
GAN_FIELDS = ("top_n", "gen_width", "dis_width", "z_dim", "gen_bottom_width", "unit_output", "gan_iterations",
              "gan_batch_size", "n_dis", "gan_lr", "gan_betas", "alpha", "inv_loss", "crop_scale", "brightness",
              "contrast", "flip_p", "degrees", "train_jitter_p")
NETWORK_FIELDS = ("gen_width", "dis_width", "z_dim", "gen_bottom_width", "unit_output")


class PLGMIParams(PluginParams):
    """Parameters of :class:`PLGMI` (defaults: the reference code and README commands)."""

    top_n: int = Field(30, ge=1, description="public images pseudo-labelled per target class")
    gen_width: int = Field(64, ge=1, description="generator width (channels of its last block)")
    dis_width: int = Field(64, ge=1, description="discriminator width (channels of its first block)")
    z_dim: int = Field(128, ge=1, description="latent dimension")
    gen_bottom_width: int = Field(4, ge=1, description="side of the generator's first feature map")
    unit_output: bool = Field(False, description="generator output (tanh + 1) / 2 instead of the reference's "
                              "tanh used as a [0, 1] image (whose negative half the GAN must learn to avoid)")
    gan_iterations: int = Field(30000, ge=0, description="generator updates of the cGAN training")
    gan_batch_size: int = Field(64, ge=1, description="batch size of the cGAN training")
    n_dis: int = Field(5, ge=1, description="discriminator updates per generator update")
    gan_lr: float = Field(2e-4, gt=0, description="Adam learning rate of both GAN networks")
    gan_betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of both GAN networks")
    alpha: float = Field(0.2, ge=0, description="weight of the inversion loss in the generator's loss")
    inv_loss: Literal["margin", "cross_entropy", "poincare"] = Field(
        "margin", description="inversion loss of both stages (reference default: margin)")
    crop_scale: tuple[float, float] = Field((0.8, 1.0), description="random resized crop scale")
    brightness: float = Field(0.2, ge=0, description="colour jitter brightness")
    contrast: float = Field(0.2, ge=0, description="colour jitter contrast")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    degrees: float = Field(5.0, ge=0, description="random rotation range in degrees")
    train_jitter_p: float = Field(0.5, ge=0, le=1, description="colour jitter probability in the cGAN training")
    attack_jitter_p: float = Field(1.0, ge=0, le=1, description="colour jitter probability in the latent search")
    num_steps: int = Field(600, ge=0, description="Adam iterations of the latent search")
    lr: float = Field(0.1, gt=0, description="Adam learning rate of the latent search")
    views: int = Field(2, ge=1, description="augmented views whose losses are summed per step")
    samples_per_target: int = Field(5, ge=1, description="latents (and images) per identity")
    batch_size: int | None = Field(None, ge=1, description="latents per batch (None: the run's batch size)")

    def augment_kwargs(self) -> dict[str, Any]:
        return {"crop_scale": tuple(self.crop_scale), "brightness": self.brightness, "contrast": self.contrast,
                "flip_p": self.flip_p, "degrees": self.degrees}


def build_networks(config: dict[str, Any]) -> tuple[ConditionalGenerator, ProjectionDiscriminator]:
    """The generator and discriminator described by a state's ``config``."""
    c = config
    gen = ConditionalGenerator(c["num_classes"], c["resolution"], width=c["gen_width"], z_dim=c["z_dim"],
                               bottom_width=c["gen_bottom_width"], unit_output=c["unit_output"])
    dis = ProjectionDiscriminator(c["num_classes"], c["resolution"], width=c["dis_width"])
    return gen, dis


def _num_classes(target: nn.Module, probe: Tensor) -> int:
    n = getattr(target, "num_classes", None)
    if n is None:
        with torch.no_grad():
            n = target(probe).shape[1]
    return int(n)


@attacks.register("plg-mi")
class PLGMI(Attack):
    """PLG-MI (Yuan et al., AAAI 2023): top-n pseudo-labels, a target-guided cGAN, per-identity latent search."""

    Params = PLGMIParams
    access = "white-box"
    trains_generator = True
    generator_fields = GAN_FIELDS

    def train_generator(self, target: nn.Module, ctx: AttackContext) -> dict[str, Any]:
        p: PLGMIParams = self.params
        public = required_public(ctx.public, "plg-mi", "pseudo-label and train its cGAN")
        t0 = time.perf_counter()
        with fitting_against(target, ctx.device):
            probe = public.images([0]).to(ctx.device)
            config = {"num_classes": _num_classes(target, probe), "resolution": int(probe.shape[-1]),
                      **{k: getattr(p, k) for k in NETWORK_FIELDS}}
            positions, labels, label_info = pseudo_label(target, public, p.top_n, ctx.batch_size, ctx.device)
            t_label = time.perf_counter() - t0
            torch.manual_seed(ctx.seed)
            gen, dis = build_networks(config)
            info = train_cgan(gen, dis, target, public, positions, labels, p, INV_LOSSES[p.inv_loss],
                              g=ctx.generator(), device=ctx.device, progress=ctx.progress, label=ctx.label)
        info.update(label_info, pseudo_label_s=round(t_label, 3), total_s=round(time.perf_counter() - t0, 3))
        log.info("plg-mi: cGAN trained on %d pseudo-labelled images (%.1f s)", positions.numel(), info["total_s"])
        return {"config": config, "generator": {k: v.cpu() for k, v in gen.state_dict().items()},
                "discriminator": {k: v.cpu() for k, v in dis.state_dict().items()}, "info": info}

    def load_generator(self, ctx: AttackContext) -> ConditionalGenerator:
        """The trained generator of ``ctx.trained`` (eval mode, on ``ctx.device``)."""
        state = ctx.trained
        if state is None:
            raise BenchError("plg-mi: no trained cGAN in AttackContext.trained; train_generator must run first "
                             "(the runner's generator job for this target)")
        for key in ("config", "generator"):
            if key not in state:
                raise BenchError(f"plg-mi: the trained state lacks {key!r}; it was not written by plg-mi's "
                                 "train_generator (remove the stored product to retrain it)")
        gen, _ = build_networks(state["config"])
        gen.load_state_dict(state["generator"])
        return gen.to(ctx.device).eval()

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"cGAN fit: {p.gan_iterations:,} generator updates; then {p.samples_per_target} latents x "
                            f"{p.num_steps} steps per identity")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: PLGMIParams = self.params
        gen = self.load_generator(ctx)
        identities, bs, g = attack_setup(target, gen, identities, p.batch_size, ctx)
        classes = int(ctx.trained["config"]["num_classes"])
        if identities.numel() and (int(identities.min()) < 0 or int(identities.max()) >= classes):
            raise ConfigError(f"plg-mi: identities must lie in [0, {classes}) (the cGAN's classes), got "
                              f"{identities.tolist()}")
        k, s = identities.numel(), p.samples_per_target
        labels = identities.repeat_interleave(s)
        z0 = torch.randn(k * s, gen.z_dim, generator=g)
        trace = StepTrace(p.num_steps, ctx.device)
        inv = INV_LOSSES[p.inv_loss]
        aug = p.augment_kwargs()

        def objective(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            images = gen(z, y)
            first, loss = None, None
            for _ in range(p.views):
                logits = target(plg_augment(images, g, jitter_p=p.attack_jitter_p, **aug))
                term = inv(logits, y)
                first, loss = (logits, term) if first is None else (first, loss + term)
            return loss, first

        with frozen(target, gen):
            t0 = time.perf_counter()
            z = z0
            if p.num_steps > 0:
                z = optimize_latents(z0, labels, objective=objective, make_optimizer=self.make_optimizer,
                                     num_steps=p.num_steps, batch_size=bs, device=ctx.device, trace=trace,
                                     amp=ctx.amp, progress=ctx.progress, desc="plg-mi", label=ctx.label)
            t_opt = time.perf_counter() - t0
            images, conf = self.render(gen, target, z, labels, bs, ctx.device)
        info = {"num_steps": p.num_steps, "samples_per_target": s, "num_identities": k, "num_images": k * s,
                "inv_loss": p.inv_loss, "lr": p.lr, "views": p.views,
                "mean_confidence": float(conf.mean()) if conf.numel() else 0.0,
                "image_size": int(images.shape[-1]), "optimize_s": round(t_opt, 3),
                "total_s": round(time.perf_counter() - t0, 3),
                "gan": dict(ctx.trained.get("info") or {})}
        rec = Reconstruction(images=images, labels=labels.clone(), latents=z.clone(), trace=trace.as_dict(),
                             info=info)
        rec.check()
        log.info("plg-mi: %d identities x %d, mean confidence %.3f (%.1f s)", k, s, info["mean_confidence"],
                 info["total_s"])
        return rec

    @staticmethod
    @torch.no_grad()
    def render(gen: ConditionalGenerator, target: nn.Module, z: Tensor, labels: Tensor, bs: int,
               device: torch.device) -> tuple[Tensor, Tensor]:
        """Images ``G(z, y)`` clamped to [0, 1] (CPU) and the target's confidence of each label."""
        side = gen.bottom_width * 2 ** len(gen.blocks)
        images, confs = [torch.empty(0, 3, side, side)], [torch.empty(0)]
        for i in range(0, z.shape[0], bs):
            y = labels[i : i + bs].to(device)
            x = gen(z[i : i + bs].to(device), y).float()
            confs.append(target_confidence(target(x), y).cpu())
            images.append(x.clamp(0, 1).cpu())
        conf = torch.cat(confs)
        if not torch.isfinite(conf).all():
            raise DivergedError("plg-mi: the target's confidences of the reconstructions are NaN or inf")
        return torch.cat(images), conf

    def make_optimizer(self, params: list[Tensor]) -> tuple[torch.optim.Optimizer, None]:
        return torch.optim.Adam(params, lr=self.params.lr), None
