"""IF-GMI (Qiu et al., ECCV 2024, "A Closer Look at GAN Priors: Exploiting Intermediate Features for
Enhanced Model Inversion Attacks"), attack plugin ``if-gmi``.

Reference: github.com/final-solution/IF-GMI at e792ef1371be4c563c202ea8cd0f9b35b42b392f
(``intermediate_attack.py``, ``attacks/optimize.py``, ``utils/stylegan.py``, ``configs/*/main-*.yaml``).
IF-GMI builds on Plug & Play Attacks (``ppa``):

1. Candidate search, as PPA (:func:`~inversion_bench.attacks.common.search.search_candidates`):
   ``search_space_size`` prior samples, the ``num_candidates`` most confident w of each identity.
2. Layer-wise optimisation of each batch of candidates, ``len(steps)`` stages: stage 0 optimises w
   for ``steps[0]`` steps (as PPA); stage ``l > 0`` optimises the input of synthesis block ``l`` (the
   output features of block ``l - 1``, computed from the previous stage's result) together with w (which
   the later blocks use) for ``steps[l]`` steps, rendering the image from block ``l`` on. A fresh Adam
   (lr 0.005, betas (0.1, 0.1)) per stage; after every step the features and w are projected back into
   the L1 balls of radius ``radius_features[l]`` and ``radius_w[l]`` around their values at the start of the
   stage (a radius <= 0: no constraint). The loss is the Poincaré loss of the target's logits for
   augmented views (centre crop/resize, random resized crop scale 0.9-1.0, ratio 1), as PPA.
   The prior must cut its synthesis between blocks (:mod:`inversion_bench.attacks.common.layered`):
   StyleGAN2-ADA (blocks b4, b8, ...) and DCGAN (its transposed-convolution stages).
3. Final selection, as PPA (:mod:`inversion_bench.attacks.common.selection`): each image's mean target
   confidence over ``iterations`` random transforms; the ``samples_per_target`` best per identity.

Defaults are the reference's FFHQ -> FaceScrub configs (``configs/ffhq_facescrub/main-*.yaml``):
search space 2000, 50 candidates, ``steps [50, 10, 10, 10, 10, 10, 10, 10]`` (8 stages: w, then the
outputs of blocks b4 ... b256 of a 1024 px generator), radii ``[1000, 2000, 3000, 4000, 5000, 6000, 8000,
8000]`` for both features and w, lr 0.005, betas (0.1, 0.1), Poincaré loss, ``clip: false``. The CelebA
config uses search space 5000 and ``steps [70, 25, 25, 25, 25]``.

Deviations from the reference: (a) it keeps the images of every stage and reports the stage whose
images the *evaluation* model classifies best; here the attack returns the last stage's images (the
evaluation model is not the attacker's): choose the number of stages with ``steps``. (b) It evaluates
all 50 candidates; here PPA's final selection keeps ``samples_per_target`` (default 50 = all, as the
reference; fewer makes it PPA's selection). (c) Its returned images are those of the last step's forward
pass (before the last update); here the final latents and features are rendered. (d) The loss is summed
over the batch (the reference averages; Adam's update is the same up to its epsilon). (e) After the L1
projection, w also gets the prior's ``constrain`` (DCGAN's latent bound, as ``ppa``; the identity for
StyleGAN). Randomness comes from the job seed only. Reconstructions are the target's fixed views,
clamped to [0, 1]; ``latents`` are the final w (the features are not kept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from inversion_bench import augment
from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.layered import LayeredSynthesis, as_layered, l1_deviation_projection
from inversion_bench.attacks.common.losses import IdentityLossName, identity_loss
from inversion_bench.attacks.common.optimize import attack_setup, frozen, optimize_latents
from inversion_bench.attacks.common.search import check_search_selection, search_candidates
from inversion_bench.attacks.common.selection import select_per_identity, transform_scores
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.attacks.common.views import FixedView
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

_REF_RADII = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0]


class IFGMIParams(PluginParams):
    """Parameters of :class:`IFGMIAttack` (defaults: the reference's ``configs/ffhq_facescrub/main-*.yaml``)."""

    search_space_size: int = Field(2000, ge=1, description="latents sampled in the candidate search")
    num_candidates: int = Field(50, ge=1, description="optimised latents per identity")
    search_flip: bool = Field(True, description="average search scores with the flipped image")
    steps: list[int] = Field([50, 10, 10, 10, 10, 10, 10, 10], min_length=1,
                             description="optimisation steps per stage: stage 0 optimises w, stage l > 0 the "
                             "input features of synthesis block l (and w); at most the prior's block count")
    radius_features: list[float] = Field(_REF_RADII, description="L1 radius of the feature change per stage "
                                         "(<= 0: unconstrained; entry 0 is unused)")
    radius_w: list[float] = Field(_REF_RADII, description="L1 radius of the change of w per stage (<= 0: "
                                  "unconstrained)")
    lr: float = Field(0.005, gt=0, description="Adam learning rate (fresh Adam per stage)")
    betas: tuple[float, float] = Field((0.1, 0.1), description="Adam betas")
    loss: IdentityLossName = Field("poincare", description="identity loss: poincare, cross_entropy or logit")
    center_crop: int | None = Field(None, ge=1, description="centre crop of the generator output in pixels "
                                    "(FFHQ 1024 px: 800)")
    resize: int | None = Field(None, ge=8, description="side after the centre crop (FFHQ: 224; None: keep)")
    crop_scale: tuple[float, float] = Field((0.9, 1.0), description="random resized crop scale")
    crop_ratio: tuple[float, float] = Field((1.0, 1.0), description="random resized crop aspect ratio")
    clip: bool = Field(False, description="clamp the generator output to [0, 1] before the target in the "
                       "optimisation (reference: false)")
    samples_per_target: int = Field(50, ge=1, description="images kept per identity (reference: all 50)")
    iterations: int = Field(100, ge=0, description="random transforms per image in the final selection")
    selection_scale: tuple[float, float] = Field((0.5, 0.9), description="final-selection crop scale")
    selection_ratio: tuple[float, float] = Field((0.8, 1.2), description="final-selection crop ratio")
    selection_flip: float = Field(0.5, ge=0, le=1, description="final-selection flip probability")
    batch_size: int | None = Field(None, ge=1, description="latents per batch (None: the run's batch size)")

    @model_validator(mode="after")
    def _check(self) -> IFGMIParams:
        check_search_selection(self)
        if any(s < 0 for s in self.steps):
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in ("radius_features", "radius_w"):
            if len(getattr(self, name)) < len(self.steps):
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but steps has "
                                 f"{len(self.steps)} stages; give one radius per stage")
        return self


def pack(w: Tensor, features: Tensor | None) -> Tensor:
    """One [B, d_w + d_f] tensor of a stage's variables (Adam is element-wise: the same as two tensors)."""
    parts = [w.flatten(1)] + ([features.flatten(1)] if features is not None else [])
    return torch.cat(parts, dim=1)


def unpack(packed: Tensor, w_shape: torch.Size, f_shape: torch.Size | None) -> tuple[Tensor, Tensor | None]:
    """Inverse of :func:`pack`: (w [B, *w_shape], features [B, *f_shape] or None), views of ``packed``."""
    n, dw = packed.shape[0], w_shape.numel()
    w = packed[:, :dw].view(n, *w_shape)
    return w, (packed[:, dw:].view(n, *f_shape) if f_shape is not None else None)


def stage_projection(origin: Tensor, w_shape: torch.Size, f_shape: torch.Size | None, radius_w: float,
                     radius_f: float, constrain: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
    """After each step: w and the features back into the L1 balls around their stage-start values
    ``origin`` (packed), then ``constrain`` on w (the prior's latent bound; None: none)."""
    w0, f0 = unpack(origin, w_shape, f_shape)

    def project(packed: Tensor) -> Tensor:
        w, f = unpack(packed, w_shape, f_shape)
        w = l1_deviation_projection(w, w0, radius_w)
        if constrain is not None:
            w = constrain(w)
        return pack(w, l1_deviation_projection(f, f0, radius_f) if f is not None else None)

    return project


class StageObjective:
    """Per-latent loss of stage ``layer``: the image rendered from block ``layer`` on, PPA's augmented view."""

    def __init__(self, layered: LayeredSynthesis, target: nn.Module, view: FixedView, params: IFGMIParams,
                 generator: torch.Generator, layer: int, w_shape: torch.Size, f_shape: torch.Size | None) -> None:
        self.layered, self.target, self.view, self.p, self.g = layered, target, view, params, generator
        self.layer, self.w_shape, self.f_shape = layer, w_shape, f_shape
        self.loss_fn = identity_loss(params.loss)

    def __call__(self, packed: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        w, f = unpack(packed, self.w_shape, self.f_shape)
        raw = self.layered.synthesize_from(self.layer, f, w)
        images = raw.clamp(0, 1) if self.p.clip else raw
        x = augment.random_resized_crop(self.view(images), self.g, scale=self.p.crop_scale, ratio=self.p.crop_ratio)
        logits = self.target(x)
        return self.loss_fn(logits, y), logits


class StageRunner:
    """Runs every stage on each batch of candidates, renders the results and scores them (final selection)."""

    def __init__(self, prior: Generator, target: nn.Module, view: FixedView, params: IFGMIParams,
                 generator: torch.Generator, ctx: AttackContext) -> None:
        self.layered = as_layered(prior, "if-gmi")
        self.resolution = prior.resolution
        self.target, self.view, self.p, self.g, self.ctx = target, view, params, generator, ctx
        overridden = type(prior).constrain is not Generator.constrain
        self.constrain = prior.constrain if overridden else None
        self.traces = [StepTrace(s, ctx.device) for s in params.steps]
        self.timings = {"optimize_s": 0.0, "selection_s": 0.0}

    def run_all(self, latents: Tensor, labels: Tensor, bs: int) -> tuple[Tensor, Tensor, Tensor]:
        """(view images [N, 3, S, S] unclipped, final w [N, ...], selection scores [N]), all on the CPU."""
        p, dev = self.p, self.ctx.device
        images, ws, scores = [], [], []
        for start in range(0, latents.shape[0], bs):
            w = latents[start : start + bs].to(dev, torch.float32)
            y = labels[start : start + bs].to(dev)
            t0 = time.perf_counter()
            f = None
            for layer in range(len(p.steps)):
                if layer > 0:
                    with torch.no_grad():  # the output of block layer - 1, from its input and the current w
                        f = self.layered.features(w, layer, layer - 1, f)
                w, f = self.optimise(layer, w, f, y)
            t1 = time.perf_counter()
            with torch.no_grad():
                raw = self.view(self.layered.synthesize_from(len(p.steps) - 1, f, w)).float()
            scores.append(transform_scores(self.target, raw, y, iterations=p.iterations, generator=self.g,
                                           scale=p.selection_scale, ratio=p.selection_ratio, flip_p=p.selection_flip))
            images.append(raw.cpu())
            ws.append(w.detach().cpu())
            self.timings["optimize_s"] += t1 - t0
            self.timings["selection_s"] += time.perf_counter() - t1
        side = self.view.output_size(self.resolution)
        if not images:
            return torch.empty(0, 3, side, side), latents.clone(), torch.empty(0)
        return torch.cat(images), torch.cat(ws), torch.cat(scores)

    def optimise(self, layer: int, w: Tensor, f: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Stage ``layer``: ``steps[layer]`` Adam steps on (w, features) with the L1-ball projection."""
        p = self.p
        if p.steps[layer] == 0:
            return w, f
        w_shape, f_shape = w.shape[1:], (f.shape[1:] if f is not None else None)
        packed = pack(w.detach().float(), f.detach().float() if f is not None else None)
        project = stage_projection(packed.clone(), w_shape, f_shape, p.radius_w[layer],
                                   p.radius_features[layer] if layer > 0 else 0.0, self.constrain)
        objective = StageObjective(self.layered, self.target, self.view, p, self.g, layer, w_shape, f_shape)
        out = optimize_latents(packed, y, objective=objective, make_optimizer=self.make_optimizer,
                               num_steps=p.steps[layer], batch_size=packed.shape[0], device=self.ctx.device,
                               trace=self.traces[layer], project=project, amp=self.ctx.amp,
                               progress=self.ctx.progress, desc=f"if-gmi stage {layer}", label=self.ctx.label)
        return unpack(out.to(self.ctx.device), w_shape, f_shape)

    def make_optimizer(self, params: list[Tensor]) -> tuple[torch.optim.Optimizer, None]:
        """A fresh Adam per stage and batch (the reference's ``create_optimizer`` in every stage)."""
        return torch.optim.Adam(params, lr=self.p.lr, betas=self.p.betas, weight_decay=0.0), None

    def trace(self) -> dict[str, list[float]]:
        """The stages' traces one after the other (``grad_cosine`` within each stage only)."""
        out: dict[str, list[float]] = {"loss": [], "confidence": [], "grad_cosine": []}
        for t in self.traces:
            for key, values in t.as_dict().items():
                out[key] += values
        return out

    def stage_confidence(self) -> list[float | None]:
        """The mean target confidence at the last step of every stage (None: a stage of 0 steps)."""
        return [(t.as_dict()["confidence"] or [None])[-1] for t in self.traces]


@attacks.register("if-gmi")
class IFGMIAttack(Attack):
    """IF-GMI (Qiu et al., ECCV 2024): PPA's search, then w and intermediate features stage by stage."""

    Params = IFGMIParams
    access = "white-box"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"{p.search_space_size:,} latents searched, then {p.num_candidates} candidates x "
                            f"{sum(p.steps)} steps (per layer {'+'.join(map(str, p.steps))}) per identity")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: IFGMIParams = self.params
        if prior is None:
            raise ConfigError("if-gmi needs an image prior (a generator: dcgan or stylegan2-ada)")
        layered = as_layered(prior, "if-gmi")
        if len(p.steps) > layered.num_layers:
            raise ConfigError(f"if-gmi: steps has {len(p.steps)} stages but the prior {type(prior).__name__} has "
                              f"{layered.num_layers} synthesis blocks; give at most {layered.num_layers} entries")
        view = FixedView(p.center_crop, p.resize)
        view.check(prior.resolution)
        identities, bs, g = attack_setup(target, prior, identities, p.batch_size, ctx)
        timings: dict[str, float] = {}
        with frozen(target, prior):
            t_all = t0 = time.perf_counter()
            latents, labels, search_conf = search_candidates(
                prior, target, identities, search_space_size=p.search_space_size,
                num_candidates=p.num_candidates, view=view, batch_size=bs, generator=g, device=ctx.device,
                flip=p.search_flip, progress=ctx.progress)
            timings["search_s"] = time.perf_counter() - t0
            runner = StageRunner(prior, target, view, p, g, ctx)
            images, kept_w, scores = runner.run_all(latents, labels, bs)
            timings.update(runner.timings)
            if not torch.isfinite(scores).all():
                raise DivergedError("if-gmi: the final selection scores contain NaN or inf")
            keep = select_per_identity(scores, labels, identities, p.samples_per_target)
        timings["total_s"] = time.perf_counter() - t_all
        kept = images[keep]
        info: dict[str, Any] = {
            "steps": list(p.steps),
            "num_stages": len(p.steps),
            "num_layers": layered.num_layers,
            "num_candidates": p.num_candidates,
            "search_space_size": p.search_space_size,
            "num_identities": int(identities.numel()),
            "num_images": int(kept.shape[0]),
            "loss": p.loss,
            "clip": p.clip,
            "search_confidence": float(search_conf.mean()) if search_conf.numel() else 0.0,
            "stage_confidence": runner.stage_confidence(),
            "selection_confidence": float(scores[keep].mean()) if keep.numel() else 0.0,
            "image_size": int(kept.shape[-1]),
            **{k: round(v, 3) for k, v in timings.items()},
        }
        rec = Reconstruction(images=kept.clamp(0, 1), labels=labels[keep].clone(), latents=kept_w[keep].clone(),
                             trace=runner.trace(), info=info)
        rec.check()
        log.info("if-gmi: %d identities, %d images, selection confidence %.3f (%.1f s)", info["num_identities"],
                 info["num_images"], info["selection_confidence"], timings["total_s"])
        return rec
