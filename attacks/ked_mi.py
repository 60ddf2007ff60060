"""Knowledge-Enriched Distributional Model Inversion, plugin ``ked-mi``.

Chen, Kahla, Jia and Jia, "Knowledge-Enriched Distributional Model Inversion Attacks", ICCV 2021
(arXiv:2010.04092). Reference code: github.com/SCccc21/Knowledge-Enriched-DMI at commit
1ec92f4697233028c74ad90fee75c69691948917 (``k+1_gan.py``, ``attack.py: dist_inversion``,
``recovery.py``, ``config/celeba.json``); the networks and losses are in
:mod:`inversion_bench.attacks.common.ked_gan`.

**Stage 1, the inversion-specific GAN** (:meth:`KEDMI.train_generator`), trained on the public data
with the target's knowledge: the discriminator is a semi-supervised (K+1) classifier over the
target's K classes. Per discriminator step it takes a public batch labelled with the target's soft
labels (``softmax(T(x))``, labelled loss), a second public batch as unlabelled real data and a batch
of generated images (unlabelled real/fake loss through ``logsumexp`` of the class logits); every
``n_critic`` (5) steps the generator is updated with feature matching against a third public batch
plus 1e-4 times the entropy of the discriminator's class prediction on its images. Adam, lr 2e-4,
betas (0.5, 0.999), batch 64, 120 epochs, z of 100 dimensions (``config/celeba.json``); the
reference's ``unlabel_weight: 10`` in that file is not used by its code (both losses weigh 1), and
neither is it here.

**Stage 2, distributional recovery** (:meth:`KEDMI.run`): per attacked identity a Gaussian
N(mu, exp(log_var)) in latent space, mu = 0 and log_var = 1 at the start; each step draws one
latent per identity with the reparameterisation trick and minimises

    L = mean_i [softplus(lse(D(G(z_i)))) - lse(D(G(z_i)))] + lambda * mean_i CE(T(G(z_i)), y_i)

with lambda = 100 and Adam (lr 0.02) over (mu, log_var) for 2400 steps (``recovery.py`` passes
``iter_times=2400, lamda=100, lr=2e-2`` to ``dist_inversion``). The result is
``samples_per_target`` (5, the reference's ``num_seeds``) fresh samples of each identity's learned
distribution, without selection; ``extras`` keeps ``mu`` and ``log_var``.

Deviations: the reference queries the target for soft labels in training mode (it never calls
``eval()`` on it); here the target is frozen in eval mode and its outputs on the public images are
computed once (they do not change during training). The networks take any power-of-two resolution
of at least 16 px (the reference: 64 px only). Identities are recovered in batches of ``batch_size``
(the reference: 60); the discriminator's minibatch features couple the identities of a batch, as
in the reference.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.ked_gan import (
    BatchStream,
    KEDDiscriminator,
    KEDGenerator,
    build_networks,
    discriminator_loss,
    generator_loss,
    prior_loss_per_sample,
    reparameterize,
    stages,
)
from inversion_bench.attacks.common.losses import target_confidence
from inversion_bench.attacks.common.optimize import frozen
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.errors import BenchError, ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

GAN_FIELDS = ("z_dim", "g_width", "d_width", "mbd_kernels", "mbd_kernel_dim", "gan_epochs", "gan_steps",
              "gan_batch_size", "gan_lr", "gan_betas", "n_critic", "entropy_weight")


class KEDMIParams(PluginParams):
    """Parameters of :class:`KEDMI` (defaults: the reference code's)."""

    z_dim: int = Field(100, ge=2, description="latent size")
    g_width: int = Field(64, ge=2, description="generator channels at its last stage (doubled per stage)")
    d_width: int = Field(64, ge=2, description="discriminator channels at its first stage")
    mbd_kernels: int = Field(64, ge=1, description="minibatch discrimination kernels")
    mbd_kernel_dim: int = Field(50, ge=1, description="dimension of each minibatch discrimination kernel")
    gan_epochs: int = Field(120, ge=1, description="passes over the public images (discriminator steps)")
    gan_steps: int | None = Field(None, ge=1, description="discriminator steps (overrides gan_epochs)")
    gan_batch_size: int = Field(64, ge=2, description="GAN training batch size")
    gan_lr: float = Field(2e-4, gt=0, description="Adam learning rate of both GAN networks")
    gan_betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of both GAN networks")
    n_critic: int = Field(5, ge=1, description="discriminator steps per generator step")
    entropy_weight: float = Field(1e-4, ge=0, description="weight of the entropy term of the generator loss")
    num_steps: int = Field(2400, ge=0, description="recovery iterations")
    lr: float = Field(0.02, gt=0, description="Adam learning rate of (mu, log_var)")
    identity_weight: float = Field(100.0, ge=0, description="lambda: weight of the identity loss")
    prior_weight: float = Field(1.0, ge=0, description="weight of the discriminator's prior loss")
    init_log_var: float = Field(1.0, description="initial log-variance of every identity's distribution")
    samples_per_target: int = Field(5, ge=1, description="images sampled from each learned distribution")
    batch_size: int | None = Field(None, ge=1, description="identities recovered together (None: the run's)")


@attacks.register("ked-mi")
class KEDMI(Attack):
    """KED-MI (Chen et al., ICCV 2021): inversion-specific GAN + distributional recovery."""

    Params = KEDMIParams
    access = "white-box"
    trains_generator = True
    generator_fields = GAN_FIELDS

    # -------------------------------------------------------------------------------- stage 1
    def train_generator(self, target: nn.Module, ctx: AttackContext) -> dict:
        p: KEDMIParams = self.params
        public = ctx.public
        if public is None or len(public) < 2:
            raise ConfigError("ked-mi: the GAN needs public images (ctx.public has fewer than 2); set "
                              "dataset.split.public_identities to 1 or more identities")
        resolution = ctx.resolution
        stages(resolution)
        num_classes = int(target.num_classes)
        config = {"z_dim": p.z_dim, "g_width": p.g_width, "d_width": p.d_width, "mbd_kernels": p.mbd_kernels,
                  "mbd_kernel_dim": p.mbd_kernel_dim, "resolution": resolution, "num_classes": num_classes}
        t0 = time.perf_counter()
        target.to(ctx.device)
        with frozen(target):
            soft = public_logits(target, public, resolution, ctx.batch_size, ctx.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            gen, disc = build_networks(config)
        info = self._fit(gen, disc, soft, ctx)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        gen.eval()
        disc.eval()
        return {"config": config, "generator": {k: v.detach().cpu() for k, v in gen.state_dict().items()},
                "discriminator": {k: v.detach().cpu() for k, v in disc.state_dict().items()}, "info": info}

    def _fit(self, gen: KEDGenerator, disc: KEDDiscriminator, soft: Tensor, ctx: AttackContext) -> dict:
        """The training loop of ``k+1_gan.py`` (three independent public streams)."""
        p: KEDMIParams = self.params
        device, public, res = ctx.device, ctx.public, ctx.resolution
        g = ctx.generator()
        gen.to(device).train()
        disc.to(device).train()
        opt_d = torch.optim.Adam(disc.parameters(), lr=p.gan_lr, betas=p.gan_betas)
        opt_g = torch.optim.Adam(gen.parameters(), lr=p.gan_lr, betas=p.gan_betas)
        labeled, unlab1, unlab2 = (BatchStream(len(public), p.gan_batch_size, g) for _ in range(3))
        bs = labeled.bs
        total = p.gan_steps if p.gan_steps is not None else p.gan_epochs * max(1, len(public) // bs)

        def batch(stream: BatchStream) -> tuple[Tensor, Tensor]:
            pos = stream.next()
            return _resize(public.images(pos), res).to(device), pos

        d_loss = loss_lab = acc = g_loss = torch.zeros(())
        g_steps = 0
        bar_desc = f"ked-mi GAN on {ctx.label}" if ctx.label else "ked-mi GAN"
        for step in tqdm(range(1, total + 1), desc=bar_desc, disable=not ctx.progress, leave=False):
            x_lab, pos = batch(labeled)
            x_unl, _ = batch(unlab1)
            x_unl2, _ = batch(unlab2)
            with torch.no_grad():
                fake = gen(torch.randn(bs, p.z_dim, generator=g).to(device))
            d_loss, loss_lab, acc = discriminator_loss(disc, x_lab, soft[pos].to(device), x_unl, fake)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            if step % p.n_critic == 0:
                disc.requires_grad_(False)
                fake = gen(torch.randn(bs, p.z_dim, generator=g).to(device))
                g_loss = generator_loss(disc, fake, x_unl2, p.entropy_weight)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                disc.requires_grad_(True)
                g_steps += 1
            if step % 25 == 0 or step == total:
                values = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
                if not all(math.isfinite(v) for v in values.values()):
                    raise DivergedError(f"ked-mi: GAN training diverged at discriminator step {step} ({values})")
        return {"d_steps": total, "g_steps": g_steps, "batch_size": bs, "public_images": len(public),
                "final_d_loss": round(float(d_loss.detach()), 5),
                "final_label_loss": round(float(loss_lab.detach()), 5),
                "final_g_loss": round(float(g_loss.detach()), 5), "final_d_accuracy": round(float(acc), 4)}

    # -------------------------------------------------------------------------------- stage 2
    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        gan = f"{p.gan_steps} discriminator steps" if p.gan_steps else f"{p.gan_epochs} epochs"
        return AttackBudget(f"GAN fit: {gan}; then {p.num_steps} recovery iterations")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: KEDMIParams = self.params
        gen, disc = self._load(ctx, int(target.num_classes))
        device = ctx.device
        target.to(device)
        ids = identities.long().flatten().cpu()
        k, n, bs = ids.numel(), p.samples_per_target, p.batch_size or ctx.batch_size
        g = ctx.generator()
        trace = StepTrace(p.num_steps, device)
        mus, log_vars, images = [torch.empty(0, gen.z_dim)], [torch.empty(0, gen.z_dim)], []
        t0 = time.perf_counter()
        with frozen(target, gen, disc):
            bar = tqdm(total=math.ceil(k / bs) * p.num_steps, desc=f"ked-mi on {ctx.label}" if ctx.label else "ked-mi",
                       disable=not ctx.progress, leave=False)
            for start in range(0, k, bs):
                y = ids[start : start + bs].to(device)
                mu, log_var = recover(gen, disc, target, y, p, g, trace, bar.update)
                mus.append(mu.cpu())
                log_vars.append(log_var.cpu())
            bar.close()
            t_opt = time.perf_counter() - t0
            mu, log_var = torch.cat(mus), torch.cat(log_vars)
            with torch.no_grad():
                eps = torch.randn(n, k, gen.z_dim, generator=g).transpose(0, 1).reshape(k * n, gen.z_dim)
                z = reparameterize(mu.repeat_interleave(n, 0), log_var.repeat_interleave(n, 0), eps)
                labels = ids.repeat_interleave(n)
                conf = [torch.empty(0)]
                for i in range(0, z.shape[0], bs):
                    x = gen(z[i : i + bs].to(device)).float()
                    images.append(x.cpu())
                    conf.append(target_confidence(target(x), labels[i : i + bs].to(device)).cpu())
        conf_all = torch.cat(conf)
        res = gen_resolution(gen)
        out = torch.cat([torch.empty(0, 3, res, res)] + images)
        if not torch.isfinite(out).all() or not torch.isfinite(conf_all).all():
            raise DivergedError("ked-mi: the sampled reconstructions or their target confidences are NaN or inf")
        info = {"num_steps": p.num_steps, "num_identities": k, "num_images": int(out.shape[0]),
                "samples_per_target": n, "identity_weight": p.identity_weight, "lr": p.lr,
                "mean_confidence": float(conf_all.mean()) if conf_all.numel() else 0.0,
                "mean_std": float(torch.exp(0.5 * log_var).mean()) if k else 0.0, "image_size": res,
                "gan": dict((ctx.trained or {}).get("info") or {}),
                "optimize_s": round(t_opt, 3), "total_s": round(time.perf_counter() - t0, 3)}
        rec = Reconstruction(images=out.clamp(0, 1), labels=labels.clone(), latents=z.cpu(), trace=trace.as_dict(),
                             info=info, extras={"mu": mu, "log_var": log_var})
        rec.check()
        log.info("ked-mi: %d identities x %d samples, mean confidence %.3f (%.1f s)", k, n, info["mean_confidence"],
                 info["total_s"])
        return rec

    def _load(self, ctx: AttackContext, num_classes: int) -> tuple[KEDGenerator, KEDDiscriminator]:
        state = ctx.trained
        if state is None:
            raise BenchError("ked-mi: no trained GAN (ctx.trained is None); KED-MI trains its own GAN: call "
                             "train_generator(target, ctx) first and pass its state as ctx.trained")
        missing = [key for key in ("config", "generator", "discriminator") if key not in state]
        if missing:
            raise BenchError(f"ked-mi: the trained state lacks {missing}; delete the stored GAN and train it again")
        config = dict(state["config"])
        if config["num_classes"] != num_classes:
            raise BenchError(f"ked-mi: the GAN's discriminator has {config['num_classes']} classes, the target "
                             f"{num_classes}; train the GAN on this target")
        gen, disc = build_networks(config)
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        return gen.to(ctx.device).eval(), disc.to(ctx.device).eval()


def recover(gen: KEDGenerator, disc: KEDDiscriminator, target: nn.Module, y: Tensor, p: KEDMIParams,
            g: torch.Generator, trace: StepTrace, tick=None) -> tuple[Tensor, Tensor]:
    """``dist_inversion``: Adam over one Gaussian (mu, log_var) per identity of ``y``; returns both."""
    device = y.device
    mu = torch.zeros(y.numel(), gen.z_dim, device=device, requires_grad=True)
    log_var = torch.full((y.numel(), gen.z_dim), p.init_log_var, device=device, requires_grad=True)
    opt = torch.optim.Adam([mu, log_var], lr=p.lr)
    trace.begin_batch(y.numel())
    for step in range(p.num_steps):
        eps = torch.randn(y.numel(), gen.z_dim, generator=g).to(device)
        fake = gen(reparameterize(mu, log_var, eps))
        _, d_logits = disc(fake)
        logits = target(fake).float()
        prior = prior_loss_per_sample(d_logits)
        iden = F.cross_entropy(logits, y, reduction="none")
        per_sample = p.prior_weight * prior + p.identity_weight * iden
        opt.zero_grad(set_to_none=True)
        per_sample.mean().backward()
        trace.record(step, per_sample, target_confidence(logits.detach(), y), torch.cat([mu.grad, log_var.grad], 1))
        opt.step()
        if tick is not None:
            tick(1)
    trace.end_batch("ked-mi")
    return mu.detach(), log_var.detach()


@torch.no_grad()
def public_logits(target: nn.Module, public, resolution: int, batch_size: int, device: torch.device) -> Tensor:
    """The target's outputs on every public image ([N, C] on the CPU): the soft labels' logits."""
    out = [torch.empty(0, int(target.num_classes))]
    for start in range(0, len(public), batch_size):
        pos = torch.arange(start, min(start + batch_size, len(public)))
        out.append(target(_resize(public.images(pos), resolution).to(device)).float().cpu())
    logits = torch.cat(out)
    if not torch.isfinite(logits).all():
        raise DivergedError("ked-mi: the target's outputs on the public images are NaN or inf")
    return logits


def _resize(images: Tensor, resolution: int) -> Tensor:
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > resolution)


def gen_resolution(gen: KEDGenerator) -> int:
    """The side of the generator's images (4 px doubled once per transposed convolution)."""
    return 4 * 2 ** sum(isinstance(m, nn.ConvTranspose2d) for m in gen.modules())
