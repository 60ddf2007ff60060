"""Diff-MI, model inversion through a target-specific conditional diffusion model, plugin ``diff-mi``.

Li, Hao, Wang, Zhu, Wang, Zhang, Feng, "Model Inversion Attacks Through Target-Specific Conditional
Diffusion Models" (arXiv:2407.11424). Reference code: github.com/Ouxiang-Li/Diff-MI, commit
4778b9eb5cb8b8e059aa9f72ca2be1e176d15bba (``top_n_selection.py``, ``1_pretrain/``, ``2_finetune/``,
``3_attack/attack.py``, ``3_attack/utils/diffusion.py``). White-box.

Stage 1 (``train_generator``; the attack's own generator product, fitted once per target and
stored, its time in ``timings.generator_s``; :mod:`inversion_bench.attacks.common.diff_mi_train`):
the target labels the public images and each class keeps its ``top_n`` (30) most confident ones
(PLG-MI's selection, which the reference reuses); a class-conditional DDPM (linear betas 1e-4..0.02
over 1000 steps, epsilon prediction, the ADM UNet of :mod:`~inversion_bench.attacks.generators.diffusion_unet`)
is pretrained on them with classifier-free label dropout; then the per-class p_reg features are
drawn and the model is fine-tuned against the target (only the label embedding and the middle block,
DPM-Solver++ samples with gradients, top-k logit loss + p_reg loss) until its samples reach the
accuracy threshold.

Stage 2 (``run``, ``3_attack/attack.py: Iterative_Image_Reconstruction``): per batch of attacked
labels, images x ~ N(0, I) on the [-1, 1] scale are optimised with Adamax (lr 1) for ``num_steps``
(30) steps; each step first takes the diffusion step (noise x to the step's time
:func:`~inversion_bench.attacks.common.diffusion.attack_timestep`, loss
``mse(w eps_c - (w - 1) eps_u, eps)`` with w = 3), tracking its gradient norm, then the target step
(``aug_times`` (4) augmented views: flip, brightness 0.2 with p 0.5, 7x7 Gaussian blur sigma 3 with
p 0.5; ``topk_loss(k=20) + p_reg_loss``) with its gradient clipped to 1.25 times the tracked norm.
The result is noised to t = ``ddim_step`` (100) and denoised by the reference's DDIM (eta 1, stride
10, guidance w), then moved by a targeted L2 PGD on the target (eps 0.5, step 0.1, 10 iterations,
random start, best iterate; the robustness library's ``make_adv`` the reference calls).
``num_steps: 0, pgd_iterations: 0, ddim_step: 1000`` is the no-optimisation baseline: plain guided
DDIM samples of the fine-tuned model.

Defaults are the reference's (README commands, ``free_train.py``, ``fintune_train.py``,
``attack.py``); p_reg's ``top_k`` 50 is LeakPro's (the reference ships p_reg precomputed, see
:mod:`~inversion_bench.attacks.common.diff_mi_train`). Scale: the reference's UNet (128 channels,
mult 1-2-3-4, 3 blocks, 50,000 pretraining iterations at batch 150) is scaled down through
``width``, ``channel_mult``, ``num_res_blocks``, ``pretrain_iterations``, ``finetune_epochs`` etc. The
UNet works at the dataset's resolution; the quickstart-scale entries (``suites/defenses.yaml``,
``suites/threat-models.yaml``) use a small UNet at 32 px (width 16, mult 1-2-2, one block per level,
attention at 8 px), 100 pretraining iterations at batch 16 with EMA 0.98, one fine-tuning epoch and 20
reconstruction steps. At that scale the fine-tuned model's own samples carry no identity (its
baseline stays at chance); the target-guided steps and the PGD do the work (docs/attacks.md).

Differences from the reference: augmentations act on the [0, 1] image the target sees (the
reference applies kornia's colour jitter to [-1, 1] images, which clamps their negative half), the
fine-tuning's stop accuracy counts the final sample of every augmented view, the UNet's group norm
uses at most 32 groups that divide the width, and ``top_k`` of the logit loss is capped at the
number of classes minus one (recorded as ``topk_used``). The fine-tuning covers every class of the
target: the diffusion model is fitted once per target, before the attacked identities are known, and
shared by the attack entries; the reference fine-tunes on its 300 attacked classes of 1,000
(``train_util.py``, ``np.arange(0, 300)``), the same thing when a suite attacks every class, as the
shipped Diff-MI entries do. ``pretrain_batch_size`` 150 is the README command's value per process (it
runs two processes under ``mpiexec``, 300 images per step in all). Randomness comes from the job seed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.diff_mi_train import (
    alphas_cumprod_f32,
    logits_and_features,
    target_views,
    train_diffusion,
)
from inversion_bench.attacks.common.diffusion import (
    attack_timestep,
    clip_to_running_norm,
    ddim_parameters,
    ddim_update,
    guided_eps,
    l2_pgd_step,
    p_reg_loss,
    q_sample,
    topk_loss,
)
from inversion_bench.attacks.common.losses import target_confidence
from inversion_bench.attacks.common.optimize import frozen
from inversion_bench.attacks.common.plg_gan import top_n_selection
from inversion_bench.attacks.common.plg_train import fitting_against, public_confidences, required_public
from inversion_bench.attacks.common.trace import StepTrace
from inversion_bench.attacks.generators.diffusion_unet import ConditionalUNet
from inversion_bench.augment import color_jitter, horizontal_flip
from inversion_bench.errors import BenchError, ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

NETWORK_FIELDS = ("width", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads", "dropout")
GENERATOR_FIELDS = ("top_n", *NETWORK_FIELDS, "pretrain_iterations", "pretrain_batch_size", "pretrain_lr",
                    "weight_decay", "ema_rate", "class_dropout", "p_reg_top_k", "p_reg_weight", "k", "finetune_lr",
                    "finetune_batch_size", "finetune_epochs", "threshold", "finetune_guidance",
                    "finetune_solver_steps", "finetune_aug_times")
DDIM_STEPS = 100  # the reference's DDIM sub-sequence (stride T / 100)
DIFFUSION_SUMMARY = ("pseudo_labelled", "pretrain_final_loss", "finetune_epochs_run", "finetune_last_acc",
                     "pretrain_s", "finetune_s")


class DiffMIParams(PluginParams):
    """Parameters of :class:`DiffMI` (defaults: the reference's code and README commands)."""

    top_n: int = Field(30, ge=1, description="public images pseudo-labelled per target class")
    width: int = Field(128, ge=1, description="UNet base channels (num_channels)")
    channel_mult: list[int] = Field([1, 2, 3, 4], min_length=1, description="UNet channel multiplier per level")
    num_res_blocks: int = Field(3, ge=1, description="residual blocks per UNet level")
    attention_resolutions: list[int] = Field([16, 8], description="feature-map sides (px) with self-attention")
    num_heads: int = Field(4, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="UNet dropout")
    pretrain_iterations: int = Field(50000, ge=0, description="pretraining iterations (README: 50,000)")
    pretrain_batch_size: int = Field(150, ge=1, description="pretraining batch size (README: 150)")
    pretrain_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the pretraining")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (both stages)")
    ema_rate: float = Field(0.9999, ge=0, lt=1, description="EMA rate of the pretrained weights (fine-tuning starts "
                            "from the EMA)")
    class_dropout: float = Field(0.1, ge=0, le=1, description="probability that a pretraining batch is unconditional")
    p_reg_top_k: int = Field(50, ge=1, description="public images per class whose target features give p_reg "
                             "(LeakPro's value)")
    p_reg_weight: float = Field(1.0, ge=0, description="weight of the p_reg loss (alpha; both stages)")
    k: int = Field(20, ge=0, description="other classes in the top-k logit loss (capped at classes - 1)")
    finetune_lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the fine-tuning")
    finetune_batch_size: int = Field(4, ge=1, description="classes per fine-tuning step")
    finetune_epochs: int = Field(100, ge=0, description="most fine-tuning epochs (passes over the classes)")
    threshold: float = Field(0.99, ge=0, le=1, description="fine-tuning stops after an epoch with this mean accuracy")
    finetune_guidance: float = Field(3.0, ge=1, description="classifier-free guidance scale of the fine-tuning sampler")
    finetune_solver_steps: int = Field(10, ge=2, description="DPM-Solver++ steps of the fine-tuning sampler")
    finetune_aug_times: int = Field(2, ge=1, description="augmented views per fine-tuning sample")
    num_steps: int = Field(30, ge=0, description="iterative reconstruction steps")
    lr: float = Field(1.0, gt=0, description="Adamax learning rate of the reconstruction")
    w: float = Field(3.0, ge=1, description="classifier-free guidance scale of the reconstruction and DDIM")
    t_jitter: int = Field(50, ge=0, description="uniform integer jitter of each step's diffusion time")
    grad_clip: float = Field(1.25, gt=0, description="target-loss gradient clipped to this times the running norm")
    aug_times: int = Field(4, ge=1, description="augmented views per reconstruction step")
    ddim_step: int = Field(100, ge=10, le=1000, description="time the final DDIM denoising starts from (1000: "
                           "from the image itself, no noising)")
    pgd_iterations: int = Field(10, ge=0, description="targeted L2 PGD iterations on the target (0: none)")
    pgd_eps: float = Field(0.5, ge=0, description="L2 radius of the PGD")
    pgd_step_size: float = Field(0.1, gt=0, description="L2 step of the PGD")
    samples_per_target: int = Field(5, ge=1, description="images per identity (README: 5)")
    batch_size: int | None = Field(None, ge=1, description="images per batch (None: the run's batch size; "
                                   "reference: 64)")

    @field_validator("ddim_step")
    @classmethod
    def _on_the_grid(cls, v: int) -> int:
        if v % (1000 // DDIM_STEPS):
            raise ValueError(f"ddim_step must be a multiple of {1000 // DDIM_STEPS} (the DDIM stride), got {v}")
        return v


def attack_augment(x: Tensor, g: torch.Generator) -> Tensor:
    """The reconstruction's views: flip, brightness 0.2 with p 0.5, 7x7 Gaussian blur (sigma 3) with p 0.5."""
    x = horizontal_flip(x, g)
    n = x.shape[0]
    jit = (torch.rand(n, generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(jit, color_jitter(x, g, brightness=0.2), x)
    blur = (torch.rand(n, generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(blur, gaussian_blur(x, 7, 3.0), x)


def gaussian_blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Depthwise Gaussian blur with reflect padding (kornia's default border)."""
    r = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    k1 = torch.exp(-(r**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    kernel = (k1.view(-1, 1) * k1.view(1, -1)).expand(x.shape[1], 1, size, size)
    pad = size // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, groups=x.shape[1])


def targeted_l2_pgd(target: nn.Module, x: Tensor, y: Tensor, *, eps: float, step_size: float, iterations: int,
                    g: torch.Generator) -> Tensor:
    """The robustness library's targeted L2 PGD with random start and the best iterate (lowest
    cross-entropy to ``y``) per image."""
    origin = x.detach()
    noise = torch.randn(x.shape, generator=g).to(x.device)
    noise = noise / (noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10)
    x = (origin + eps * noise).clamp(0, 1)
    best, best_loss = x.clone(), None
    for i in range(iterations + 1):
        x = x.detach().requires_grad_(True)
        losses = F.cross_entropy(target(x).float(), y, reduction="none")
        with torch.no_grad():
            if best_loss is None:
                best_loss = losses.detach().clone()
            else:
                better = losses < best_loss
                best[better], best_loss[better] = x.detach()[better], losses.detach()[better]
        if i == iterations:
            break
        (grad,) = torch.autograd.grad(-losses.mean(), x)
        with torch.no_grad():
            x = l2_pgd_step(x, grad, origin, step_size, eps)
    return best.detach()


@attacks.register("diff-mi")
class DiffMI(Attack):
    """Diff-MI (Li et al., 2024): a target-specific conditional diffusion model, then guided reconstruction."""

    Params = DiffMIParams
    version = "2"  # 2: the target's views are clamped after augmenting, as the reference (1 clamped before)
    access = "white-box"
    trains_generator = True
    generator_fields = GENERATOR_FIELDS

    def train_generator(self, target: nn.Module, ctx: AttackContext) -> dict[str, Any]:
        p: DiffMIParams = self.params
        public = required_public(ctx.public, "diff-mi", "pseudo-label and train its diffusion model")
        t0 = time.perf_counter()
        with fitting_against(target, ctx.device):
            probs = public_confidences(target, public, ctx.batch_size, ctx.device)
            positions, labels = top_n_selection(probs, p.top_n)
            config = {"num_classes": int(probs.shape[1]), "resolution": int(public.images([0]).shape[-1]),
                      **{k: getattr(p, k) for k in NETWORK_FIELDS}}
            torch.manual_seed(ctx.seed)
            unet = build_unet(config)
            out = train_diffusion(unet, target, public, positions, labels, probs, p, g=ctx.generator(),
                                  device=ctx.device, batch_size=ctx.batch_size, progress=ctx.progress,
                                  label=ctx.label)
        info = {"public_images": int(probs.shape[0]), "pseudo_labelled": int(positions.numel()), **out["info"],
                "total_s": round(time.perf_counter() - t0, 3)}
        log.info("diff-mi: diffusion model trained on %d pseudo-labelled images (%.1f s)", positions.numel(),
                 info["total_s"])
        return {"config": config, "unet": {k: v.cpu() for k, v in unet.state_dict().items()},
                "p_reg": out["p_reg"].cpu(), "info": info}

    def load_generator(self, ctx: AttackContext) -> tuple[ConditionalUNet, Tensor]:
        """The fine-tuned UNet (eval mode, on ``ctx.device``) and p_reg of ``ctx.trained``."""
        state = ctx.trained
        if state is None:
            raise BenchError("diff-mi: no trained diffusion model in AttackContext.trained; train_generator must run "
                             "first (the runner's generator job for this target)")
        for key in ("config", "unet", "p_reg"):
            if key not in state:
                raise BenchError(f"diff-mi: the trained state lacks {key!r}; it was not written by diff-mi's "
                                 "train_generator (remove the stored product to retrain it)")
        unet = build_unet(state["config"])
        unet.load_state_dict(state["unet"])
        return unet.to(ctx.device).eval(), state["p_reg"].to(ctx.device)

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"diffusion fit: {p.pretrain_iterations:,} pretraining iterations + up to "
                            f"{p.finetune_epochs} fine-tuning epochs; then {p.samples_per_target} images x "
                            f"{p.num_steps} steps + DDIM + {p.pgd_iterations} PGD steps per identity")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p: DiffMIParams = self.params
        unet, p_reg = self.load_generator(ctx)
        target.to(ctx.device)
        identities = identities.flatten().long().cpu()
        classes = unet.num_classes
        if identities.numel() and (int(identities.min()) < 0 or int(identities.max()) >= classes):
            raise ConfigError(f"diff-mi: identities must lie in [0, {classes}) (the diffusion model's classes), got "
                              f"{identities.tolist()}")
        g = ctx.generator()
        labels = identities.repeat_interleave(p.samples_per_target)
        bs = p.batch_size or ctx.batch_size
        trace = StepTrace(p.num_steps, ctx.device)
        images, confs = [torch.empty(0, 3, unet.resolution, unet.resolution)], [torch.empty(0)]
        t0 = time.perf_counter()
        with frozen(target, unet):
            for start in range(0, labels.numel(), bs):
                y = labels[start : start + bs].to(ctx.device)
                x = self.reconstruct(unet, target, p_reg, y, g, trace)
                with torch.no_grad():
                    conf = target_confidence(target(x), y).float().cpu()
                images.append(x.cpu())
                confs.append(conf)
        conf = torch.cat(confs)
        if not torch.isfinite(conf).all():
            raise DivergedError("diff-mi: the target's confidences of the reconstructions are NaN or inf")
        out = torch.cat(images)
        info = {"num_steps": p.num_steps, "samples_per_target": p.samples_per_target,
                "num_identities": int(identities.numel()), "num_images": int(labels.numel()), "w": p.w,
                "ddim_step": p.ddim_step, "pgd_iterations": p.pgd_iterations, "topk_used": min(p.k, classes - 1),
                "mean_confidence": float(conf.mean()) if conf.numel() else 0.0,
                "image_size": int(out.shape[-1]), "total_s": round(time.perf_counter() - t0, 3),
                "diffusion": dict(ctx.trained.get("info") or {})}
        # the fit's outcome as scalars, which the record keeps (it drops nested values)
        fit = info["diffusion"]
        info.update({f"diffusion_{k}": fit[k] for k in DIFFUSION_SUMMARY if fit.get(k) is not None})
        rec = Reconstruction(images=out, labels=labels.clone(), latents=None, trace=trace.as_dict(), info=info)
        rec.check()
        log.info("diff-mi: %d identities x %d, mean confidence %.3f (%.1f s)", identities.numel(),
                 p.samples_per_target, info["mean_confidence"], info["total_s"])
        return rec

    def reconstruct(self, unet: ConditionalUNet, target: nn.Module, p_reg: Tensor, y: Tensor, g: torch.Generator,
                    trace: StepTrace) -> Tensor:
        """Iterative reconstruction, DDIM and PGD of one batch of labels ``y``; images in [0, 1] on the device."""
        p: DiffMIParams = self.params
        dev = y.device
        n, res = y.numel(), unet.resolution
        abar = alphas_cumprod_f32(dev)
        null = torch.full_like(y, unet.num_classes)
        k = min(p.k, unet.num_classes - 1)
        img = torch.randn(n, 3, res, res, generator=g).to(dev).requires_grad_(True)
        opt = torch.optim.Adamax([img], lr=p.lr)
        running: float | None = None
        trace.begin_batch(n)
        for i in range(p.num_steps):
            jitter = int(torch.randint(-p.t_jitter, p.t_jitter + 1, (1,), generator=g)) if p.t_jitter else 0
            t = attack_timestep(i, p.num_steps, jitter)
            noise = torch.randn(img.shape, generator=g).to(dev)
            xt = q_sample(img, abar[t - 1], noise)
            tt = torch.full((n,), float(t), device=dev)
            eps_c, eps_u = unet(torch.cat([xt, xt]), torch.cat([tt, tt]), torch.cat([y, null])).chunk(2)
            loss = F.mse_loss(guided_eps(eps_c, eps_u, p.w), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            running = clip_to_running_norm(float(img.grad.norm()), running)
            opt.step()
            views = target_views(img, attack_augment, p.aug_times, g)
            yy = y.repeat(p.aug_times)
            logits, feats = logits_and_features(target, views)
            loss_t = topk_loss(logits, yy, k) + p.p_reg_weight * p_reg_loss(feats, yy, p_reg)
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            trace.record(i, loss_t.detach().expand(n), target_confidence(logits[:n].detach(), y), img.grad)
            torch.nn.utils.clip_grad_norm_([img], p.grad_clip * running)
            opt.step()
        trace.end_batch("diff-mi")
        with torch.no_grad():
            x = self.denoise(unet, img.detach(), y, g)
        x = ((x + 1) / 2).clamp(0, 1)
        if p.pgd_iterations > 0:
            x = targeted_l2_pgd(target, x, y, eps=p.pgd_eps, step_size=p.pgd_step_size, iterations=p.pgd_iterations,
                                g=g)
        return x.detach()

    def denoise(self, unet: ConditionalUNet, img: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        """The reference's ``inverse_ddim`` from ``ddim_step`` (noised first unless it is 1000)."""
        p: DiffMIParams = self.params
        dev = img.device
        abar = alphas_cumprod_f32(dev)
        sigmas, alphas, prev, c = ddim_parameters(abar.double().cpu(), DDIM_STEPS, eta=1.0)
        x = img
        if p.ddim_step < abar.shape[0]:
            x = q_sample(img, abar[p.ddim_step - 1], torch.randn(img.shape, generator=g).to(dev))
        null = torch.full_like(y, unet.num_classes)
        for s in range(p.ddim_step // c, 0, -1):
            tt = torch.full((y.numel(),), float(s * c), device=dev)
            eps_c, eps_u = unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).chunk(2)
            x = ddim_update(x, guided_eps(eps_c, eps_u, p.w), float(alphas[s - 1]), float(prev[s - 1]),
                            float(sigmas[s - 1]), torch.randn(x.shape, generator=g).to(dev))
        return x


def build_unet(config: dict[str, Any]) -> ConditionalUNet:
    """The UNet described by a state's ``config``."""
    c = config
    return ConditionalUNet(c["num_classes"], c["resolution"], width=c["width"], channel_mult=c["channel_mult"],
                           num_res_blocks=c["num_res_blocks"], attention_resolutions=c["attention_resolutions"],
                           num_heads=c["num_heads"], dropout=c["dropout"])
