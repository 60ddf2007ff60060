"""Generative Model Inversion, "The Secret Revealer" (Zhang et al., CVPR 2020), plugin ``gmi``.

GMI optimises the latent ``z`` of a GAN trained on public data so that the generated image is
classified as the attacked identity while the discriminator still finds it realistic:

    L(z) = L_prior(z) + lambda * L_id(z),   L_prior = -D(G(z)),   L_id = CE(T(G(z)), y)

with lambda = 100 (Eq. 4/5 of the paper and ``inversion(..., lamda=100)`` of the reference code;
note that lambda weights the identity term). The reference updates ``z`` with Nesterov momentum
(lr 0.02, momentum 0.9; ``torch.optim.SGD(nesterov=True)`` is the same update), clamps ``z`` to
[-1, 1] after each of the 1500 iterations, repeats the attack from 5 random starts and keeps, per
identity, the start whose image the target scores highest.

The reference averages the loss over its batch of 100 identities, so each latent moves by lr/100
times the gradient of its own loss. Here the per-latent losses are summed and divided by
``reference_batch_size`` (100), so the dynamics match the reference whatever ``batch_size`` is.
The reference's critic is a WGAN-GP discriminator (prior loss ``-D``); for the DCGAN prior of this
suite (non-saturating loss) ``prior_loss: softplus`` uses ``softplus(-D) = -log sigmoid(D)``.

LOMMA (Nguyen et al., CVPR 2023, "Re-thinking Model Inversion Attacks Against Deep Neural Networks";
reference github.com/sutd-visual-computing-group/Re-thinking_MI at ed4b6b8, ``attack.py: inversion``)
plugs into GMI as in the paper: ``loss: logit`` with ``p_reg_weight: 1.0`` replaces L_id by
``-z_y + lambda * mean_d (phi_d - p_reg_d)^2`` and ``augment_models: 3`` averages it over the target
and three surrogates distilled from it on the public data (:mod:`inversion_bench.attacks.common.lomma`);
``info["augment_seconds"]`` is the distillation time, not part of ``optimize_s``/``total_s``.

All restarts of all identities are optimised together in batches. Reconstructions are the
generator's images (its resolution; the target resizes its inputs itself), ``samples_per_target``
per identity (the best restarts by the target's softmax confidence), on the CPU in [0, 1].
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.lomma import IdentityTerm, LommaParams, lomma_identity
from inversion_bench.attacks.common.losses import IdentityLossName, identity_loss, target_confidence
from inversion_bench.attacks.common.optimize import attack_setup, frozen, optimize_latents
from inversion_bench.attacks.common.selection import select_per_identity
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import attacks

log = logging.getLogger(__name__)


class GMIParams(LommaParams):
    """Parameters of :class:`GenerativeModelInversion` (defaults: the GMI reference code; LOMMA's off)."""

    num_steps: int = Field(1500, ge=0, description="iterations per restart")
    lr: float = Field(0.02, gt=0, description="learning rate of the momentum update")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum")
    identity_weight: float = Field(100.0, ge=0, description="lambda: weight of the identity loss")
    prior_weight: float = Field(1.0, ge=0, description="weight of the discriminator's prior loss")
    prior_loss: Literal["logit", "softplus"] = Field(
        "logit", description="logit: -D(x) (the reference's WGAN critic); softplus: softplus(-D(x))")
    loss: IdentityLossName = Field("cross_entropy", description="identity loss (GMI: cross_entropy; LOMMA: logit)")
    clip_range: float | None = Field(1.0, gt=0, description="clamp z to [-clip, clip] after each step")
    num_restarts: int = Field(5, ge=1, description="random starts per identity")
    samples_per_target: int = Field(1, ge=1, description="best restarts kept per identity")
    reference_batch_size: int = Field(100, ge=1, description="the summed loss is divided by this "
                                      "(the reference's batch mean over 100 identities)")
    batch_size: int | None = Field(None, ge=1, description="latents per batch (None: the run's batch size)")

    @model_validator(mode="after")
    def _check(self) -> GMIParams:
        if self.samples_per_target > self.num_restarts:
            raise ValueError(f"samples_per_target ({self.samples_per_target}) exceeds num_restarts "
                             f"({self.num_restarts})")
        return self


class GMIObjective:
    """Per-latent GMI loss: prior_weight * L_prior + identity_weight * L_id.

    ``identity`` computes L_id (default: ``params.loss`` on the target; LOMMA's from ``lomma_identity``).
    """

    def __init__(self, prior: Generator, target: nn.Module, params: GMIParams,
                 identity: IdentityTerm | None = None) -> None:
        self.prior = prior
        self.target = target
        self.p = params
        self.identity = identity or IdentityTerm(target, identity_loss(params.loss))
        self.identity_map = type(prior).map is Generator.map

    def images(self, z: Tensor) -> Tensor:
        return self.prior.synthesize(z if self.identity_map else self.prior.map(z))

    def __call__(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        p = self.p
        images = self.images(z)
        d = self.prior.discriminator_logits(images).float()
        prior_loss = -d if p.prior_loss == "logit" else F.softplus(-d)
        id_loss, logits = self.identity(images, y)
        return p.prior_weight * prior_loss + p.identity_weight * id_loss, logits


@attacks.register("gmi")
class GenerativeModelInversion(Attack):
    """GMI (Zhang et al., CVPR 2020): z optimisation with identity and discriminator losses."""

    Params = GMIParams
    access = "white-box"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"{p.num_steps} steps x {p.num_restarts} restarts per identity")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: GMIParams = self.params
        if prior is None:
            raise ConfigError("gmi needs an image prior with a discriminator (generator: dcgan)")
        if not prior.has_discriminator:
            raise ConfigError(f"gmi needs a prior with a discriminator; {type(prior).__name__} has none "
                              "(use dcgan, or a stylegan2-ada pickle that holds D)")
        device = ctx.device
        identities, bs, g = attack_setup(target, prior, identities, p.batch_size, ctx)
        k, r = identities.numel(), p.num_restarts
        labels = identities.repeat_interleave(r)  # identity-major: restarts of an identity together
        z0 = prior.sample_z(k * r, g)
        trace = StepTrace(p.num_steps, device)
        with frozen(target, prior):
            identity, lomma_info = lomma_identity(target, p, ctx)  # LOMMA's surrogates and p_reg, if asked
            objective = GMIObjective(prior, target, p, identity)
            t_all = time.perf_counter()
            z = z0
            if p.num_steps > 0:
                z = optimize_latents(
                    z0, labels, objective=objective, make_optimizer=self.make_optimizer,
                    num_steps=p.num_steps, batch_size=bs, device=device, trace=trace,
                    project=self.projection(prior), loss_scale=1.0 / p.reference_batch_size, amp=ctx.amp,
                    progress=ctx.progress, desc="gmi", label=ctx.label)
            t_opt = time.perf_counter() - t_all
            t0 = time.perf_counter()
            with torch.no_grad():
                confs = [torch.empty(0)]
                for i in range(0, z.shape[0], bs):
                    x = objective.images(z[i : i + bs].to(device)).float()
                    confs.append(target_confidence(target(x), labels[i : i + bs].to(device)).cpu())
                conf = torch.cat(confs)
                if not torch.isfinite(conf).all():
                    raise DivergedError("gmi: the target's confidences of the results are NaN or inf")
                keep = select_per_identity(conf, labels, identities, p.samples_per_target)
                side = prior.resolution
                images = torch.cat([torch.empty(0, 3, side, side)]
                                   + [objective.images(z[keep[i : i + bs]].to(device)).float().cpu()
                                      for i in range(0, keep.numel(), bs)])
            t_sel = time.perf_counter() - t0
        total = time.perf_counter() - t_all
        info = {
            "num_steps": p.num_steps,
            "num_restarts": r,
            "num_identities": k,
            "num_images": int(keep.numel()),
            "loss": p.loss,
            "selection_confidence": float(conf[keep].mean()) if keep.numel() else 0.0,
            "mean_confidence_all_restarts": float(conf.mean()) if conf.numel() else 0.0,
            "image_size": int(images.shape[-1]),
            "optimize_s": round(t_opt, 3),
            "selection_s": round(t_sel, 3),
            "total_s": round(total, 3),
            **lomma_info,
        }
        rec = Reconstruction(images=images.clamp(0, 1), labels=labels[keep].clone(),
                             latents=z[keep].clone(), trace=trace.as_dict(), info=info)
        rec.check()
        log.info("gmi: %d identities x %d restarts, selection confidence %.3f (%.1f s)", k, r,
                 info["selection_confidence"], total)
        return rec

    def make_optimizer(self, params: list[Tensor]) -> tuple[torch.optim.Optimizer, None]:
        """SGD with Nesterov momentum: the reference's ``v = m v - lr g; z += -m v_prev + (1 + m) v``."""
        p: GMIParams = self.params
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.momentum > 0), None

    def projection(self, prior: Generator) -> Callable[[Tensor], Tensor] | None:
        """Clamp of z to [-clip_range, clip_range], then ``prior.constrain`` when z is the image latent."""
        clip = self.params.clip_range
        has_constrain = type(prior).constrain is not Generator.constrain
        identity_map = type(prior).map is Generator.map
        if clip is None and not (has_constrain and identity_map):
            return None

        def project(z: Tensor) -> Tensor:
            if clip is not None:
                z = z.clamp(-clip, clip)
            return prior.constrain(z) if (has_constrain and identity_map) else z

        return project
