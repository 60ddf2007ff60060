"""Plug & Play Attacks (Struppek et al., ICML 2022), attack plugin ``ppa``.

The attack anchors the label smoothing study of Struppek et al. (ICLR 2024, "Be Careful What You
Smooth For"). Three stages, all batched over identities:

1. Candidate search (:mod:`inversion_bench.attacks.common.search`): sample ``search_space_size`` latents from the
   prior, score each image by the target's softmax confidence for every attacked identity
   (averaged with the horizontally flipped image) and keep the ``num_candidates`` best latents of
   each identity.
2. Optimisation: one ``w`` per candidate (broadcast to all StyleGAN layers) is optimised with Adam
   (lr 0.005, betas (0.1, 0.1)) on the identity loss of the target's logits for randomly
   augmented views (fixed centre crop and resize, then a random resized crop with scale 0.9-1.0
   and aspect ratio 1). The Poincaré loss is PPA's default; cross-entropy and LOMMA's logit loss
   are the alternatives compared in the ICLR 2024 appendix. LOMMA (Nguyen et al., CVPR 2023;
   reference github.com/sutd-visual-computing-group/Re-thinking_MI at ed4b6b8) plugs in here as in
   the paper: ``loss: logit, p_reg_weight: 1.0`` adds its p_reg feature regulariser and
   ``augment_models: 3`` averages the identity loss over the target and three surrogates distilled
   from it on the public data (:mod:`inversion_bench.attacks.common.lomma`); the candidate search
   and the final selection still use the target alone. ``info["augment_seconds"]`` is the
   distillation time, apart from ``search_s``/``optimize_s``/``selection_s``/``total_s``.
3. Final selection (:mod:`inversion_bench.attacks.common.selection`): each result's mean target confidence over
   ``iterations`` random transforms (crop scale 0.5-0.9, ratio 0.8-1.2, flip); the
   ``samples_per_target`` best of each identity are returned.

Defaults follow the reference configs ``configs/attacking/CelebA_FFHQ.yaml`` (search space 5000,
200 candidates, 70 steps, 50 samples per target, 100 selection iterations, truncation psi 0.5 and
cutoff 8 in the generator). ``default_attacking_local.yaml`` uses 50 steps with a MultiStepLR
(milestones 30 and 40, gamma 0.1): set ``num_steps: 50, lr_milestones: [30, 40]``.
``num_steps: 0`` skips the optimisation: candidate search plus final selection only (the
"selection only" baseline).

Random transformations are drawn per image (the reference applies one torchvision transform to the
whole batch); the randomness comes only from the job seed (``ctx.generator()``).

Clipping (``clip``, reference ``attack.clip``; github.com/LukasStruppek/Plug-and-Play-Attacks at
3087a4f098a389ff3c144b5a17db9aad408e425a). The reference feeds the target the raw StyleGAN output
(about [-1, 1]; its targets are trained with ``Normalize(0.5, 0.5)``, so [-1, 1] is their [0, 1])
and clips it to [-1, 1] in two places only: in the candidate search always (``find_initial_w``'s
``clip=True``, which no config overrides) and in the optimisation when ``attack.clip`` is true
(``Optimization.optimize``, after the discriminator loss and before the transformations; every
shipped config sets ``clip: false``). The final selection and the evaluation (``create_image``)
never clip. Here the same: the search scores ``prior.synthesize`` (clamped to [0, 1]); the
optimisation feeds the target ``prior.synthesize_unclipped`` (the raw output mapped linearly to
[0, 1], not clamped, so out-of-range pixels keep their gradient), clamped to [0, 1] only with
``clip: true``; the discriminator term and the final selection always use the unclipped images.
The default is the reference's, ``clip: false``; it leaves the parameters' dump (hence the cache
keys) unchanged, and for a prior whose output cannot leave [0, 1] (DCGAN, tanh) nothing changes.
The target normalises its own [0, 1] input as it always does, so an unclipped pixel of raw value
v reaches it as (v + 1) / 2, exactly as v reaches the reference's target.

Reconstructions are the fixed views the target saw: the generator output, centre-cropped by
``center_crop`` pixels and resized to ``resize`` (either None: unchanged), on the CPU, clamped to
[0, 1] (the reference evaluates its unclipped images; here every image between modules is in
[0, 1]).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator
from torch import Tensor, nn

from inversion_bench import augment
from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.lomma import IdentityTerm, LommaParams, lomma_identity
from inversion_bench.attacks.common.losses import IdentityLossName, identity_loss
from inversion_bench.attacks.common.optimize import attack_setup, frozen, optimize_latents
from inversion_bench.attacks.common.search import check_search_selection, search_candidates
from inversion_bench.attacks.common.selection import score_latents, select_per_identity
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.attacks.common.views import FixedView
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import attacks

log = logging.getLogger(__name__)


class PPAParams(LommaParams):
    """Parameters of :class:`PlugAndPlayAttack` (defaults: the PPA reference configs; LOMMA's off)."""

    search_space_size: int = Field(5000, ge=1, description="latents sampled in the candidate search")
    num_candidates: int = Field(200, ge=1, description="optimised latents per identity")
    search_flip: bool = Field(True, description="average search scores with the flipped image")
    num_steps: int = Field(70, ge=0, description="optimisation steps (0: search and selection only)")
    lr: float = Field(0.005, gt=0, description="Adam learning rate")
    betas: tuple[float, float] = Field((0.1, 0.1), description="Adam betas")
    lr_milestones: list[int] = Field([], description="MultiStepLR milestones in steps (reference local "
                                     "config: [30, 40] with 50 steps)")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="MultiStepLR factor")
    loss: IdentityLossName = Field("poincare", description="identity loss: poincare, cross_entropy or logit (LOMMA)")
    discriminator_weight: float = Field(0.0, ge=0, description="weight of softplus(-D(x)) (reference: 0)")
    center_crop: int | None = Field(None, ge=1, description="centre crop of the generator output in "
                                    "pixels (FFHQ 1024 px: 800)")
    resize: int | None = Field(None, ge=8, description="side after the centre crop (FFHQ: 224; None: keep)")
    crop_scale: tuple[float, float] = Field((0.9, 1.0), description="random resized crop scale")
    crop_ratio: tuple[float, float] = Field((1.0, 1.0), description="random resized crop aspect ratio")
    samples_per_target: int = Field(50, ge=1, description="images kept per identity")
    iterations: int = Field(100, ge=0, description="random transforms per image in the final selection")
    selection_scale: tuple[float, float] = Field((0.5, 0.9), description="final-selection crop scale")
    selection_ratio: tuple[float, float] = Field((0.8, 1.2), description="final-selection crop ratio")
    selection_flip: float = Field(0.5, ge=0, le=1, description="final-selection flip probability")
    batch_size: int | None = Field(None, ge=1, description="latents per batch (None: the run's batch size)")
    clip: bool = Field(False, description="clamp the generator output to [0, 1] before the target in the "
                       "optimisation (reference configs: false: out-of-range pixels keep their gradient)")

    @model_validator(mode="after")
    def _check(self) -> PPAParams:
        check_search_selection(self)
        return self

    @model_serializer(mode="wrap")
    def _drop_unused(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """LOMMA's unused fields as in :class:`LommaParams`, and ``clip`` at its default (False): the
        dumped parameters (hence the cache keys) of settings from before ``clip`` existed stay."""
        data = super()._drop_unused(handler, info)
        if not self.clip:
            data.pop("clip", None)
        return data


class PPAObjective:
    """Per-latent PPA loss of a batch: identity loss of augmented views (+ optional D loss).

    The target sees ``prior.synthesize_unclipped`` (clamped to [0, 1] when ``params.clip``); the
    discriminator, as in the reference, the unclipped images.

    ``identity`` computes the identity loss (default: ``params.loss`` on the target; LOMMA's from
    ``lomma_identity``).
    """

    def __init__(self, prior: Generator, target: nn.Module, view: FixedView, params: PPAParams,
                 generator: torch.Generator, identity: IdentityTerm | None = None) -> None:
        self.prior = prior
        self.target = target
        self.view = view
        self.p = params
        self.g = generator
        self.identity = identity or IdentityTerm(target, identity_loss(params.loss))

    def __call__(self, w: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        p = self.p
        raw = self.prior.synthesize_unclipped(w)
        images = raw.clamp(0, 1) if p.clip else raw
        x = augment.random_resized_crop(self.view(images), self.g, scale=p.crop_scale, ratio=p.crop_ratio)
        loss, logits = self.identity(x, y)
        if p.discriminator_weight > 0:
            d_logits = self.prior.discriminator_logits(raw).float()
            loss = loss + p.discriminator_weight * F.softplus(-d_logits)
        return loss, logits


@attacks.register("ppa")
class PlugAndPlayAttack(Attack):
    """Plug & Play Attacks (Struppek et al., ICML 2022): candidate search, w optimisation, selection."""

    Params = PPAParams
    access = "white-box"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"{p.search_space_size:,} latents searched, then {p.num_candidates} candidates x "
                            f"{p.num_steps} steps per identity; {p.iterations} transforms each in the selection")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: PPAParams = self.params
        if prior is None:
            raise ConfigError("ppa needs an image prior (a generator: dcgan or stylegan2-ada)")
        if p.discriminator_weight > 0 and not prior.has_discriminator:
            raise ConfigError(f"ppa: discriminator_weight > 0 needs a prior with a discriminator; "
                              f"{type(prior).__name__} has none")
        view = FixedView(p.center_crop, p.resize)
        view.check(prior.resolution)
        device = ctx.device
        identities, bs, g = attack_setup(target, prior, identities, p.batch_size, ctx)
        timings: dict[str, float] = {}
        with frozen(target, prior):
            identity, lomma_info = lomma_identity(target, p, ctx)  # LOMMA's surrogates and p_reg, if asked
            t_all = t0 = time.perf_counter()
            latents, labels, search_conf = search_candidates(
                prior, target, identities, search_space_size=p.search_space_size,
                num_candidates=p.num_candidates, view=view, batch_size=bs, generator=g, device=device,
                flip=p.search_flip, progress=ctx.progress)
            timings["search_s"] = time.perf_counter() - t0

            trace = StepTrace(p.num_steps, device)
            t0 = time.perf_counter()
            if p.num_steps > 0:
                objective = PPAObjective(prior, target, view, p, g, identity)
                latents = optimize_latents(
                    latents, labels, objective=objective, make_optimizer=self.make_optimizer,
                    num_steps=p.num_steps, batch_size=bs, device=device, trace=trace,
                    project=latent_projection(prior), amp=ctx.amp, progress=ctx.progress, desc="ppa",
                    label=ctx.label)
            timings["optimize_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()

            def render(w: Tensor) -> Tensor:  # unclipped, as the reference's final selection
                return view(prior.synthesize_unclipped(w))

            scores = score_latents(render, target, latents, labels, iterations=p.iterations, batch_size=bs,
                                   generator=g, device=device, progress=ctx.progress,
                                   scale=p.selection_scale, ratio=p.selection_ratio, flip_p=p.selection_flip)
            if not torch.isfinite(scores).all():
                raise DivergedError("ppa: the final selection scores contain NaN or inf")
            keep = select_per_identity(scores, labels, identities, p.samples_per_target)
            kept_w, kept_labels = latents[keep], labels[keep]
            with torch.no_grad():
                side = view.output_size(prior.resolution)
                images = torch.cat([torch.empty(0, 3, side, side)]
                                   + [render(kept_w[i : i + bs].to(device)).float().cpu()
                                      for i in range(0, kept_w.shape[0], bs)])
            timings["selection_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_all
        info = {
            "num_steps": p.num_steps,
            "num_candidates": p.num_candidates,
            "search_space_size": p.search_space_size,
            "num_identities": int(identities.numel()),
            "num_images": int(images.shape[0]),
            "loss": p.loss,
            "clip": p.clip,
            "search_confidence": float(search_conf.mean()) if search_conf.numel() else 0.0,
            "selection_confidence": float(scores[keep].mean()) if keep.numel() else 0.0,
            "image_size": int(images.shape[-1]),
            **{k: round(v, 3) for k, v in timings.items()},
            **lomma_info,
        }
        rec = Reconstruction(images=images.clamp(0, 1), labels=kept_labels.clone(), latents=kept_w.clone(),
                             trace=trace.as_dict(), info=info)
        rec.check()
        log.info("ppa: %d identities, %d images, selection confidence %.3f (%.1f s)", info["num_identities"],
                 info["num_images"], info["selection_confidence"], timings["total_s"])
        return rec

    def make_optimizer(self, params: list[Tensor]) -> tuple[torch.optim.Optimizer, object | None]:
        """Adam (betas (0.1, 0.1) in PPA) and the optional MultiStepLR of the reference config."""
        p: PPAParams = self.params
        opt = torch.optim.Adam(params, lr=p.lr, betas=p.betas, weight_decay=0.0)
        sched = None
        if p.lr_milestones:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, p.lr_milestones, p.lr_gamma)
        return opt, sched


def latent_projection(prior: Generator) -> Callable[[Tensor], Tensor] | None:
    """``prior.constrain`` when the prior overrides it (None: nothing to project after a step)."""
    return prior.constrain if type(prior).constrain is not Generator.constrain else None
