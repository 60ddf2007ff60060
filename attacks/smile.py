"""SMILE (Li et al., CVPR 2025, "From Head to Tail: Efficient Black-box Model Inversion Attack via Long-tailed
Learning"), attack plugin ``smile``: a surrogate trained with long-tailed learning on the target's answers for
prior samples, a white-box start on the surrogate, then a gradient-free search on the target's scores.

Reference implementation: github.com/L1ziang/SMILE, commit 0c695e13f7ab22b231adaf6d10b189f70248d933:
``my_sample_z_w_space.py`` and ``my_generate_blackbox_attack_dataset.py`` (the queried samples),
``long-tailed_surrogate_training.py`` (the surrogate), ``my_whitebox_attacks.py`` (``ours-w``: the white-box
start) and ``my_blackbox_attacks.py`` (``ours-surrogate_model``: the NGOpt search), with the settings of
``run_SMILE.sh`` and the README (the published runs). The algorithm and defaults follow it; the code here is
written anew, batched over identities, and uses `nevergrad <https://github.com/facebookresearch/nevergrad>`_ (the
reference's optimiser library) for the gradient-free search: ``pip install "inversion-bench[smile]"``.

1. Queries (``query_num``, 2500): latents are drawn from the prior (``map``: StyleGAN's truncated w) and their
   images are sent once to the target; its released probabilities are the surrogate's training labels (as
   logits: ``log p``, which softmax, argmax and top-k treat exactly as the reference's raw logits). These are
   the only queries shared by the identities.
2. Long-tailed surrogate training. The surrogate is a backbone (a registered architecture, ``surrogate``) with
   ``num_experts`` (3) expert branches: a bias-free linear layer to ``embed_dim`` features, one batch norm shared
   by the experts and a linear head each; its output is the mean of the experts' logits (the reference's
   ``InceptionResnetV1_4finetune_E``: ``last_linear`` per expert, shared ``last_bn``, ``logits`` per expert).
   The reference's backbone is a face classifier pretrained on another dataset (CASIA-WebFace for a VGGFace2
   target) and frozen; here it is pretrained on the attacker's public data (``pretrain_epochs``: cross-entropy
   over the public identities, Adam) and frozen (``freeze_backbone``). The experts are trained for ``epochs``
   (200) with Adam (lr 1e-3, batch 128) on (see :func:`surrogate_loss`)

       loss = sum_w * (sum_e KL_T(target || expert_e) + lambda_ce * sum_e CE(expert_e, argmax target))
              + lambda_diversity * sum_e 1 / KL(sharpened expert_e || mean)

   with temperature T 0.5, lambda_ce 0.15, lambda_diversity 10; ``sum_w`` is the sum over the batch of the
   class-balanced weight (1 - beta) / (1 - beta^(n_c + 1)) of each sample's top-1 class c (beta 0.9), where
   n_c counts the queried samples that have c among the target's top 10 (:func:`class_balanced_weights`). The
   reference multiplies the batch-mean KL and CE by that sum (not a per-sample weighting); this is kept. The
   diversity term divides the clamped expert logits by T twice, as the reference does.
3. White-box start (``whitebox_steps``, 200): each identity starts from its best queried sample (highest target
   log-probability of the class; no further query) and its w is optimised on the surrogate's cross-entropy with
   Adam (lr 0.2, betas 0.9/0.999) under the reference's learning-rate ramp (cosine ramp-down over the last 25 %,
   linear ramp-up over the first 5 %), clipped after every step to mean +- ``p_std_ce`` (1.0) std of the queried
   latents.
4. Black-box search (``budget``, 1000 target queries per identity): nevergrad's ``optimizer`` (NGOpt) on an
   ``Array`` initialised at the white-box result with mutation sigma 1; each asked point is clipped (in place,
   as the reference) to mean +- ``p_std_ce * bound_scale`` (1.7) std and scored by the target's log-probability
   of the class (one query); the result is the optimiser's recommendation (clipped to the same bounds here: a
   model-based recommendation of a told-points optimiser may leave them), one image per identity.

Search space: as the reference (and Mirror), statistics and bounds are taken in "p space" before StyleGAN's
mapping network's last leaky ReLU (slope 0.2, ``p = lrelu^-1(w)``; bounds map back through ``lrelu``) when the
prior maps z to w (``p_space: auto``); for priors whose latent is z itself (DCGAN) they are taken in z, and the
prior's own support (``prior.constrain``, e.g. ``latent_bound``) is applied as well. One difference with a
StyleGAN prior: the latent here is the prior's ``map``, the *truncated* layer-0 w of the project's StyleGAN2-ADA
adapter (psi 0.5, cutoff 8, PPA's setting) copied to every layer, while the reference stores the untruncated
mapping output (``my_sample_z_w_space.py``) and its genforce generator truncates inside synthesis (psi 0.7, the
first 8 of 14 layers): the same p gives other fine-layer styles and the bounds another shape. The shipped
suites' SMILE entries use the DCGAN prior (the search is in z), where this does not arise.

Access: black-box. The target is only ever called on images through the score oracle (its probabilities);
gradients flow only through the surrogate. ``info["queries"]`` is ``query_num + budget x identities``
(``surrogate_queries`` and ``search_queries`` apart). Randomness comes from the job seed: the torch generator
``ctx.generator()`` and one numpy seed per identity for nevergrad, derived from the job seed and the class.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.distill import SurrogateSpec
from inversion_bench.attacks.common.optimize import attack_setup, frozen
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.models import build_classifier
from inversion_bench.oracle import plain
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

TINY = torch.finfo(torch.float32).tiny  # released probabilities are floored here before the log (defenses may give 0)
EXTRA_HINT = 'pip install "inversion-bench[smile]"'


def require_nevergrad() -> Any:
    """The ``nevergrad`` module, or a ConfigError naming the extra that installs it."""
    try:
        import nevergrad
    except ImportError as exc:
        raise ConfigError(f"attack smile needs nevergrad (its gradient-free optimiser): {EXTRA_HINT}") from exc
    return nevergrad


class SmileParams(PluginParams):
    """Parameters of :class:`Smile` (defaults: the SMILE reference's ``run_SMILE.sh`` and README runs)."""

    query_num: int = Field(2500, ge=1, description="prior samples whose target outputs train the surrogate and "
                           "seed the search (reference: 2500)")
    surrogate: SurrogateSpec = Field(SurrogateSpec(name="small-resnet"), description="the surrogate's backbone "
                                     "(a registered architecture; the reference fine-tunes a pretrained "
                                     "InceptionResNet-v1 from CASIA-WebFace)")
    pretrain_epochs: int = Field(20, ge=0, description="epochs of backbone pretraining on the public data's "
                                 "identities (the reference's backbone comes pretrained on another face dataset)")
    pretrain_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the backbone pretraining")
    freeze_backbone: bool = Field(True, description="train only the expert branches (reference); False: the "
                                  "whole surrogate")
    num_experts: int = Field(3, ge=1, description="expert branches of the surrogate (reference: 3)")
    embed_dim: int = Field(512, ge=1, description="features of each expert's linear layer (reference: 512)")
    epochs: int = Field(200, ge=0, description="surrogate training epochs (run_SMILE README: 200; argparse 100)")
    batch_size_surrogate: int = Field(128, ge=1, description="surrogate training batch size (reference: 128)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the surrogate training (reference: 1e-3)")
    temperature: float = Field(0.5, gt=0, description="temperature T of the KL and diversity terms")
    lambda_ce: float = Field(0.15, ge=0, description="weight of the experts' cross-entropy on the target's top-1")
    lambda_diversity: float = Field(10.0, ge=0, description="weight of the experts' diversity term")
    beta: float = Field(0.9, gt=0, lt=1, description="class-balanced weight (1 - beta) / (1 - beta^(n + 1))")
    top_k_count: int = Field(10, ge=1, description="a class's count n: queried samples with it in the target's top k")
    whitebox_steps: int = Field(200, ge=0, description="Adam steps on the surrogate from the best queried sample "
                                "(reference: 200; 0: no white-box start)")
    whitebox_lr: float = Field(0.2, gt=0, description="peak Adam learning rate of the white-box start")
    rampdown: float = Field(0.25, gt=0, le=1, description="fraction of the steps of the cosine lr ramp-down")
    rampup: float = Field(0.05, gt=0, le=1, description="fraction of the steps of the linear lr ramp-up")
    p_std_ce: float = Field(1.0, gt=0, description="white-box bounds: mean +- p_std_ce * std of the queried latents")
    budget: int = Field(1000, ge=0, description="target queries of the gradient-free search per identity "
                        "(run_SMILE.sh: 1000; argparse 2000; 0: no search)")
    optimizer: Literal["NGOpt", "MetaModel", "RealSpacePSO", "PSO", "GeneticDE", "NGO"] = Field(
        "NGOpt", description="nevergrad optimiser of the search (the reference's choices)")
    sigma: float = Field(1.0, gt=0, description="mutation sigma of nevergrad's Array (reference: 1)")
    bound_scale: float = Field(1.7, gt=0, description="search bounds: mean +- p_std_ce * bound_scale * std "
                               "(reference --x 1.7)")
    p_space: Literal["auto", "on", "off"] = Field("auto", description="statistics and bounds in p = lrelu^-1(w) "
                                                  "(auto: when the prior maps z to w, e.g. StyleGAN)")
    lrelu_slope: float = Field(0.2, gt=0, lt=1, description="negative slope of the leaky ReLU that p inverts")
    batch_size: int | None = Field(None, ge=1, description="images per oracle call and prior batch (None: the "
                                   "run's batch size)")


# --------------------------------------------------------------------------------------------
# The method's math: small pure functions
# --------------------------------------------------------------------------------------------
def released_logits(probs: Tensor) -> Tensor:
    """``log p`` of released probabilities [N, C] (floored at TINY): softmax, argmax and top-k of it equal the
    target's logits'."""
    return plain(probs).float().clamp(TINY, 1.0).log()


def class_balanced_weights(logits: Tensor, k: int = 10, beta: float = 0.9) -> Tensor:
    """Per-class weights [C] of the long-tailed training: ``(1 - beta) / (1 - beta^(n_c + 1))``, where ``n_c``
    counts the samples (rows of ``logits`` [N, C]) that have class c among their top ``k``."""
    k = min(k, logits.shape[1])
    counts = torch.bincount(torch.topk(logits, k, dim=1).indices.flatten(), minlength=logits.shape[1])
    return (1 - beta) / (1 - beta ** (counts.double() + 1))


def sample_weights(class_weights: Tensor, target_logits: Tensor) -> Tensor:
    """The weight [B] of each sample: its target top-1 class's weight."""
    return class_weights.to(target_logits.device)[target_logits.argmax(1)].float()


def distillation_kl(student_logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))``, mean over the batch (the reference's ``batchmean``)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(target_logits / temperature, dim=1),
                    reduction="batchmean")


def diversity_term(mean_logits: Tensor, expert_logits: Sequence[Tensor], temperature: float) -> Tensor:
    """``sum_e 1 / KL(softmax(clamp(e / T, -20, 20) / T) || softmax(mean / T))`` (batch mean KL; the reference's
    ``D_loss_mean``, which divides the clamped logits by T a second time). Minimising it pushes experts apart."""
    total = mean_logits.new_zeros(())
    for e in expert_logits:
        sharp = torch.clamp(e / temperature, -20, 20)
        total = total + 1.0 / distillation_kl(mean_logits, sharp, temperature)
    return total


def surrogate_loss(mean_logits: Tensor, expert_logits: Sequence[Tensor], target_logits: Tensor, weights: Tensor,
                   temperature: float = 0.5, lambda_ce: float = 0.15,
                   lambda_diversity: float = 10.0) -> tuple[Tensor, dict[str, float]]:
    """SMILE's long-tailed surrogate loss of one batch (reference ``train``) and its parts.

    ``sum(weights) * (sum_e KL_T(target || e) + lambda_ce * sum_e CE(e, argmax target)) + lambda_diversity *
    diversity_term``; ``weights`` [B] are the samples' class-balanced weights.
    """
    w = weights.sum()
    kl = sum(distillation_kl(e, target_logits, temperature) for e in expert_logits)
    top1 = target_logits.argmax(1)
    ce = sum(F.cross_entropy(e, top1) for e in expert_logits)
    div = diversity_term(mean_logits, expert_logits, temperature)
    kl_w, ce_w, div_w = kl * w, lambda_ce * (ce * w), lambda_diversity * div
    total = kl_w + ce_w + div_w
    return total, {"kl": float(kl_w.detach()), "ce": float(ce_w.detach()), "diversity": float(div_w.detach())}


def learning_rate(initial: float, step: int, steps: int, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The white-box start's learning rate at ``step`` of ``steps`` (the reference's ``adjust_lr``, from
    rosinality's StyleGAN projector): a linear ramp-up, then a cosine ramp-down over the last ``rampdown``."""
    t = step / steps if steps else 1.0
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return initial * ramp * min(1.0, t / rampup)


def to_search_space(w: Tensor, slope: float | None) -> Tensor:
    """p = lrelu^-1(w) (``slope`` None: the latent itself)."""
    return w if slope is None else torch.where(w >= 0, w, w / slope)


def from_search_space(p: Tensor, slope: float | None) -> Tensor:
    """w = lrelu(p) (``slope`` None: the latent itself)."""
    return p if slope is None else torch.where(p >= 0, p, p * slope)


def latent_bounds(latents: Tensor, scale: float, slope: float | None) -> tuple[Tensor, Tensor]:
    """Per-coordinate bounds [d] of the latents [N, d]: ``lrelu(mean(p) -+ scale * std(p))`` with the biased
    std of ``p = lrelu^-1(latents)`` (the reference's ``init_population``)."""
    p = to_search_space(latents.double(), slope)
    mean, std = p.mean(0), p.std(0, unbiased=False)
    lo, hi = from_search_space(mean - scale * std, slope), from_search_space(mean + scale * std, slope)
    return lo.float(), hi.float()


def best_queried(log_probs: Tensor, identities: Tensor) -> Tensor:
    """Index of each identity's best queried sample (highest log-probability of its class; ties: first), [K]."""
    return log_probs[:, identities].argmax(0)


def identity_seed(seed: int, label: int) -> int:
    """The numpy seed of one identity's search (a 32-bit hash of the job seed and the class)."""
    return int.from_bytes(hashlib.sha256(f"smile:{seed}:{label}".encode()).digest()[:4], "little")


# --------------------------------------------------------------------------------------------
# The surrogate
# --------------------------------------------------------------------------------------------
class ExpertSurrogate(nn.Module):
    """A backbone with ``num_experts`` branches (linear without bias, shared batch norm, linear head);
    ``forward`` returns the experts' mean logits and each expert's logits."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int, num_classes: int,
                 num_experts: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.ModuleList(nn.Linear(feature_dim, embed_dim, bias=False) for _ in range(num_experts))
        self.bn = nn.BatchNorm1d(embed_dim)
        self.heads = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in range(num_experts))

    def experts(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        outs = [head(self.bn(proj(features))) for proj, head in zip(self.proj, self.heads, strict=True)]
        return torch.stack(outs, 1).mean(1), outs

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.experts(self.backbone.features(x))


def pretrain_backbone(backbone: nn.Module, public: Any, epochs: int, lr: float, batch_size: int,
                      g: torch.Generator, device: torch.device, progress: bool) -> float:
    """Trains ``backbone`` (a Classifier over the public identities) with cross-entropy; the last epoch's mean loss."""
    _, labels = torch.unique(public.labels, return_inverse=True)
    opt = torch.optim.Adam(backbone.parameters(), lr=lr)
    backbone.train()
    last = float("nan")
    for _ in tqdm(range(epochs), desc="smile: backbone", disable=not progress, leave=False):
        order, total = torch.randperm(len(public), generator=g), 0.0
        for start in range(0, len(public), batch_size):
            pos = order[start : start + batch_size]
            loss = F.cross_entropy(backbone(public.images(pos).to(device)), labels[pos].to(device))
            if not torch.isfinite(loss):
                raise DivergedError("smile: the surrogate backbone's pretraining diverged")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * pos.numel()
        last = total / len(public)
    return last


def train_experts(model: ExpertSurrogate, inputs: Tensor, target_logits: Tensor, p: SmileParams,
                  g: torch.Generator, device: torch.device, progress: bool,
                  encode: Callable[[Tensor], Tensor]) -> list[float]:
    """Trains ``model`` on (inputs, target logits) with :func:`surrogate_loss`; returns each epoch's mean loss.

    ``encode`` maps a batch of ``inputs`` to the experts' input (cached backbone features when the backbone is
    frozen, else the backbone on images).
    """
    cw = class_balanced_weights(target_logits, p.top_k_count, p.beta)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=p.lr)
    model.train()
    if p.freeze_backbone:
        model.backbone.eval()
    n, history = inputs.shape[0], []
    for epoch in tqdm(range(p.epochs), desc="smile: surrogate", disable=not progress, leave=False):
        order, total = torch.randperm(n, generator=g), 0.0
        for start in range(0, n, p.batch_size_surrogate):
            pos = order[start : start + p.batch_size_surrogate]
            if pos.numel() < 2:  # batch norm needs two samples
                continue
            t = target_logits[pos].to(device)
            mean, outs = model.experts(encode(inputs[pos].to(device)))
            loss, _ = surrogate_loss(mean, outs, t, sample_weights(cw, t), p.temperature, p.lambda_ce,
                                     p.lambda_diversity)
            if not torch.isfinite(loss):
                raise DivergedError(f"smile: the surrogate training diverged at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * pos.numel()
        history.append(total / n)
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------
@attacks.register("smile")
class Smile(Attack):
    """SMILE (Li et al., CVPR 2025): long-tailed surrogate, white-box start on it, NGOpt search on the target."""

    Params = SmileParams
    access = "black-box"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"{p.query_num:,} shared queries (surrogate training), then {p.budget:,} queries per "
                            f"identity ({p.optimizer}); {p.whitebox_steps} surrogate steps per identity")

    def run(self, target: Any, identities: Tensor, prior: Generator | None, ctx: AttackContext) -> Reconstruction:
        p: SmileParams = self.params
        if prior is None:
            raise ConfigError("smile needs an image prior (a generator: dcgan or stylegan2-ada)")
        ng = require_nevergrad() if p.budget > 0 else None
        identities, bs, g = attack_setup(None, prior, identities, p.batch_size, ctx)
        use_p = p.p_space == "on" or (p.p_space == "auto" and type(prior).map is not Generator.map)
        slope = p.lrelu_slope if use_p else None
        t_all, timings, info = time.perf_counter(), {}, {}
        queries = {"n": 0}
        if identities.numel() == 0:
            return self._result(prior, identities, torch.empty(0, prior.w_dim), {"surrogate_queries": 0}, {}, t_all,
                                0, ctx)

        def ask(images: Tensor) -> Tensor:
            queries["n"] += int(images.shape[0])
            return plain(target(images.detach())).float().cpu()

        with frozen(prior), torch.no_grad():
            t0 = time.perf_counter()
            z = prior.sample_z(p.query_num, g)
            ws = torch.cat([prior.constrain(prior.map(z[i : i + bs].to(ctx.device))).float().cpu()
                            for i in range(0, z.shape[0], bs)])
            images = torch.cat([prior.synthesize(ws[i : i + bs].to(ctx.device)).float().cpu()
                                for i in range(0, ws.shape[0], bs)])
            logits = torch.cat([released_logits(ask(images[i : i + bs])) for i in range(0, images.shape[0], bs)])
            if not torch.isfinite(logits).all():
                raise DivergedError("smile: the oracle's probabilities are NaN or inf")
            timings["query_s"] = time.perf_counter() - t0
        info["surrogate_queries"] = queries["n"]

        start = ws[best_queried(logits, identities)]
        info["initial_confidence"] = float(logits[best_queried(logits, identities), identities].exp().mean())
        w = start.clone()
        if p.whitebox_steps > 0:  # the surrogate serves only the white-box start
            t0 = time.perf_counter()
            surrogate, sinfo = self._surrogate(images, logits, target.num_classes, ctx, g)
            info.update(sinfo)
            timings["surrogate_s"] = time.perf_counter() - t0
            lo, hi = latent_bounds(ws, p.p_std_ce, slope)
            t0 = time.perf_counter()
            w = self._whitebox(surrogate, prior, start, identities, lo, hi, ctx)
            timings["whitebox_s"] = time.perf_counter() - t0
            with frozen(surrogate), torch.no_grad():
                info["whitebox_surrogate_confidence"] = float(
                    self._surrogate_confidence(surrogate, prior, w, identities, ctx, bs).mean())
        del images
        t0 = time.perf_counter()
        if p.budget > 0:
            lo_s, hi_s = latent_bounds(ws, p.p_std_ce * p.bound_scale, slope)
            w, sinfo = self._search(ng, ask, prior, w, identities, lo_s, hi_s, ctx, bs)
            info.update(sinfo)
        timings["search_s"] = time.perf_counter() - t0
        info["search_queries"] = queries["n"] - info["surrogate_queries"]
        return self._result(prior, identities, w, info, timings, t_all, queries["n"], ctx)

    # ----------------------------------------------------------------------------------------
    def _surrogate(self, images: Tensor, logits: Tensor, num_classes: int, ctx: AttackContext,
                   g: torch.Generator) -> tuple[ExpertSurrogate, dict[str, Any]]:
        """Pretrains the backbone on the public data and trains the expert surrogate on the queried samples."""
        p: SmileParams = self.params
        public = ctx.public
        n_public = int(torch.unique(public.labels).numel()) if public is not None and len(public) else 0
        if p.pretrain_epochs > 0 and n_public < 2:
            raise ConfigError("smile: pretrain_epochs > 0 needs the attacker's public data with at least two "
                              "identities (set pretrain_epochs: 0 to train the surrogate from scratch)")
        init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):  # the surrogate's initialisation from the job seed alone
            torch.manual_seed(init_seed)
            backbone = build_classifier(p.surrogate.name, p.surrogate.params, max(n_public, 2), ctx.resolution, {})
            heads = ExpertSurrogate(nn.Identity(), backbone.feature_dim, p.embed_dim, num_classes, p.num_experts)
        backbone.to(ctx.device)
        info: dict[str, Any] = {"surrogate_architecture": p.surrogate.name}
        if p.pretrain_epochs > 0:
            t0 = time.perf_counter()
            info["pretrain_loss"] = round(pretrain_backbone(backbone, public, p.pretrain_epochs, p.pretrain_lr,
                                                            p.batch_size_surrogate, g, ctx.device, ctx.progress), 6)
            info["pretrain_s"] = round(time.perf_counter() - t0, 3)
        heads.backbone = backbone
        model = heads.to(ctx.device)
        side = backbone.input_size
        if images.shape[-1] != side:
            images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > side)
        if p.freeze_backbone:
            backbone.eval()
            backbone.requires_grad_(False)
            with torch.no_grad():
                inputs = torch.cat([backbone.features(images[i : i + 256].to(ctx.device)).cpu()
                                    for i in range(0, images.shape[0], 256)])

            def encode(x: Tensor) -> Tensor:
                return x
        else:
            inputs = images

            def encode(x: Tensor) -> Tensor:
                return backbone.features(x)

        history = train_experts(model, inputs, logits, p, g, ctx.device, ctx.progress, encode)
        with torch.no_grad():
            preds = torch.cat([model.experts(encode(inputs[i : i + 256].to(ctx.device)))[0].argmax(1).cpu()
                               for i in range(0, inputs.shape[0], 256)])
        info["surrogate_final_loss"] = round(history[-1], 6) if history else None
        info["surrogate_agreement"] = round(float((preds == logits.argmax(1)).float().mean()), 4)
        model.requires_grad_(False)
        return model, info

    def _surrogate_confidence(self, surrogate: ExpertSurrogate, prior: Generator, w: Tensor, identities: Tensor,
                              ctx: AttackContext, bs: int) -> Tensor:
        out = [torch.empty(0)]
        for i in range(0, w.shape[0], bs):
            mean, _ = surrogate(prior.synthesize(w[i : i + bs].to(ctx.device)))
            out.append(mean.softmax(1).gather(1, identities[i : i + bs].view(-1, 1).to(ctx.device)).squeeze(1).cpu())
        return torch.cat(out)

    def _whitebox(self, surrogate: ExpertSurrogate, prior: Generator, start: Tensor, identities: Tensor, lo: Tensor,
                  hi: Tensor, ctx: AttackContext) -> Tensor:
        """Adam on the surrogate's cross-entropy from ``start`` [K, d] (the reference's ``my_attack_ours_w``)."""
        p: SmileParams = self.params
        lo_d, hi_d = lo.to(ctx.device), hi.to(ctx.device)
        w = start.clone().to(ctx.device).requires_grad_(True)
        labels = identities.to(ctx.device)
        opt = torch.optim.Adam([w], lr=p.whitebox_lr, betas=(0.9, 0.999), eps=1e-8)
        with frozen(prior, surrogate):
            for step in tqdm(range(p.whitebox_steps + 1), desc="smile: white-box", disable=not ctx.progress,
                             leave=False):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(p.whitebox_lr, step, p.whitebox_steps, p.rampdown, p.rampup)
                mean, _ = surrogate(prior.synthesize(w))
                loss = F.cross_entropy(mean, labels, reduction="sum")  # each latent gets its own identity's gradient
                if not torch.isfinite(loss):
                    raise DivergedError("smile: the white-box start on the surrogate diverged")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    w.copy_(prior.constrain(torch.maximum(torch.minimum(w, hi_d), lo_d)))
        return w.detach().float().cpu()

    def _search(self, ng: Any, ask: Callable[[Tensor], Tensor], prior: Generator, start: Tensor, identities: Tensor,
                lo: Tensor, hi: Tensor, ctx: AttackContext, bs: int) -> tuple[Tensor, dict[str, Any]]:
        """One nevergrad optimiser per identity, all asked once per step and scored in batched oracle calls."""
        p: SmileParams = self.params
        lo_np, hi_np = lo.double().numpy(), hi.double().numpy()
        opts = []
        for k in range(identities.numel()):
            param = ng.p.Array(init=start[k].double().numpy()).set_mutation(sigma=p.sigma)
            param.random_state = np.random.RandomState(identity_seed(ctx.seed, int(identities[k])))
            opts.append(ng.optimizers.registry[p.optimizer](parametrization=param, budget=p.budget))
        best = torch.full((identities.numel(),), -math.inf)
        first = None
        trace: dict[str, list[float]] = {"best_confidence": [], "confidence": []}
        for _ in tqdm(range(p.budget), desc="smile: search", disable=not ctx.progress, leave=False):
            cands = [opt.ask() for opt in opts]
            for c in cands:
                c.value[:] = np.clip(c.value, lo_np, hi_np)  # in place, as the reference's clip_array_func
            w = self._constrained(prior, torch.tensor(np.stack([c.value for c in cands])).float(), ctx)
            scores = torch.cat([
                released_logits(ask(prior.synthesize(w[i : i + bs].to(ctx.device)).float()))
                .gather(1, identities[i : i + bs].view(-1, 1)).squeeze(1) for i in range(0, w.shape[0], bs)])
            if not torch.isfinite(scores).all():
                raise DivergedError("smile: the oracle's probabilities are NaN or inf")
            for opt, c, s in zip(opts, cands, scores.tolist(), strict=True):
                opt.tell(c, -s)
            first = scores.clone() if first is None else first
            best = torch.maximum(best, scores)
            trace["confidence"].append(float(scores.exp().mean()))
            trace["best_confidence"].append(float(best.exp().mean()))
        rec = np.stack([np.clip(opt.provide_recommendation().value, lo_np, hi_np) for opt in opts])
        info = {"search_optimizer": p.optimizer, "search_first_confidence": float(first.exp().mean()),
                "search_best_confidence": float(best.exp().mean()),
                "search_algorithm": type(getattr(opts[0], "optim", opts[0])).__name__ if opts else p.optimizer}
        info["trace"] = trace
        return self._constrained(prior, torch.tensor(rec).float(), ctx), info

    @staticmethod
    def _constrained(prior: Generator, w: Tensor, ctx: AttackContext) -> Tensor:
        if type(prior).constrain is Generator.constrain:
            return w
        with torch.no_grad():
            return prior.constrain(w.to(ctx.device)).float().cpu()

    def _result(self, prior: Generator, identities: Tensor, w: Tensor, info: dict[str, Any],
                timings: dict[str, float], t_all: float, queries: int, ctx: AttackContext) -> Reconstruction:
        p: SmileParams = self.params
        bs = p.batch_size or ctx.batch_size
        with frozen(prior), torch.no_grad():
            side = prior.resolution
            images = torch.cat([torch.empty(0, 3, side, side)] + [
                prior.synthesize(w[i : i + bs].to(ctx.device)).float().cpu() for i in range(0, w.shape[0], bs)])
        timings["total_s"] = time.perf_counter() - t_all
        info.update({"query_num": p.query_num, "budget": p.budget, "whitebox_steps": p.whitebox_steps,
                     "num_identities": int(identities.numel()), "num_images": int(images.shape[0]),
                     "queries": queries, "image_size": int(images.shape[-1]),
                     **{key: round(v, 3) for key, v in timings.items()}})
        trace = info.pop("trace", {})
        rec = Reconstruction(images=images.clamp(0, 1), labels=identities.clone(), latents=w, trace=dict(trace),
                             info=info)
        rec.check()
        log.info("smile: %d identities, %d queries (%.1f s)", info["num_identities"], queries, timings["total_s"])
        return rec
