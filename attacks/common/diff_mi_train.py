"""Stage 1 of Diff-MI: the target-specific conditional diffusion model (pretraining, p_reg, fine-tuning).

Follows github.com/Ouxiang-Li/Diff-MI at commit 4778b9eb5cb8b8e059aa9f72ca2be1e176d15bba.

- Pretraining (``1_pretrain/free_train.py``, ``guided_diffusion/train_util.py: run_loop``): epsilon-MSE
  (:func:`~.diffusion.eps_mse`) at uniform t on the top-n pseudo-labelled public images (scaled to
  [-1, 1], uniform dequantisation noise of [0, 1/256), random horizontal flip), the whole batch's
  labels replaced by the null class with probability 0.1 (classifier-free guidance), AdamW, and an
  EMA of the weights; fine-tuning starts from the EMA weights (``ema_0.9999_050000.pt``).
- p_reg: the reference loads per-class features (``data/p_reg/*_p_reg.pt``) it does not compute in
  its repository. As in LeakPro's port (github.com/aidotse/LeakPro, commit
  2b6380f21c64572d8733fae493810fe6f9fb9f80, ``leakpro/attacks/utils/diff_mi/setup.py: get_p_reg``):
  for each class the ``top_k`` public images the target is most confident about, the mean and the
  (population) standard deviation of the target's penultimate features, and one draw
  ``mean + std * N(0, 1)`` (:func:`~.diffusion.sample_p_reg`).
- Fine-tuning (``2_finetune/guided_diffusion/train_util.py: run_cls_only``): epochs over the
  target's classes in shuffled batches; per batch, DPM-Solver++ (2M, time-uniform, 10 steps,
  classifier-free guidance 3) samples from noise *with gradients*, keeping every intermediate data
  prediction after the second step and the final sample; each is augmented twice (random resized crop
  0.8-1, colour jitter 0.2/0.2 with p 0.5, flip, rotation 5 degrees) and the loss
  ``topk_loss(k=20) + p_reg_loss`` of the target updates only :data:`FINETUNE_LAYERS` with AdamW
  (lr 2e-4). It stops after the first epoch whose mean accuracy of the final samples reaches the
  threshold (0.99) or after ``epochs`` (100).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attacks.common.diffusion import (
    DiscreteVP,
    alphas_cumprod,
    dpmpp_first_update,
    dpmpp_second_update,
    drop_labels,
    eps_mse,
    guided_eps,
    linear_betas,
    p_reg_loss,
    q_sample,
    sample_p_reg,
    time_uniform_steps,
    topk_loss,
    x0_from_eps,
)
from inversion_bench.attacks.common.plg_gan import plg_augment
from inversion_bench.attacks.common.plg_train import endless_batches
from inversion_bench.attacks.generators.diffusion_unet import ConditionalUNet
from inversion_bench.data import LabeledImages
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Classifier


def _head(target: nn.Module) -> nn.Module | None:
    for m in (target, getattr(target, "classifier", None)):
        if isinstance(m, Classifier):
            return m.head
    return None


def logits_and_features(target: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The target's logits of ``x`` (in [0, 1]) and its penultimate features, in one forward pass
    (the features are the input of the classifier's head)."""
    head = _head(target)
    if head is None:
        if not hasattr(target, "features"):
            raise ConfigError("diff-mi needs the target's penultimate features for its p_reg loss (a Classifier)")
        return target(x), target.features(x)
    seen: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        logits = target(x)
    finally:
        handle.remove()
    return logits, seen[-1]


def target_views(x: Tensor, augment: Callable[[Tensor, torch.Generator], Tensor], times: int,
                 g: torch.Generator) -> Tensor:
    """``times`` augmented views of images ``x`` ([-1, 1] scale) as the target sees them, concatenated:
    each view is augmented on the [0, 1] scale and clamped *after* augmenting, as the reference's
    ``aug(x).clamp(-1, 1)`` (``3_attack/attack.py``, ``2_finetune/guided_diffusion/train_util.py``), so a pixel
    outside the range still gets the target's gradient through a view that mixes it with others (the blur,
    a resized crop). Clamping before augmenting would cut it off."""
    x01 = (x + 1) / 2
    return torch.cat([augment(x01, g).clamp(0, 1) for _ in range(times)])


def _finite(value: Tensor, what: str) -> float:
    v = float(value.detach())
    if v != v or v in (float("inf"), float("-inf")):
        raise DivergedError(f"diff-mi: the {what} became NaN or inf (lower the learning rate)")
    return v


@torch.no_grad()
def class_p_reg(target: nn.Module, public: LabeledImages, probs: Tensor, top_k: int, batch_size: int,
                device: torch.device, g: torch.Generator) -> Tensor:
    """Per-class p_reg ([C, D], CPU): a draw from N(mean, std^2) of the features of each class's top-k
    public images (``probs``: the target's [N, C] confidences on ``public``)."""
    feats = torch.cat([logits_and_features(target, images.to(device))[1].float().cpu()
                       for images, _ in public.batches(batch_size)])
    k = min(top_k, probs.shape[0])
    top = probs.topk(k, dim=0).indices.T  # [C, k]
    chosen = feats[top]  # [C, k, D]
    mean, std = chosen.mean(1), chosen.std(1, unbiased=False)
    return sample_p_reg(mean, std, torch.randn(mean.shape, generator=g))


def pretrain(unet: ConditionalUNet, public: LabeledImages, positions: Tensor, labels: Tensor, p: Any, *,
             g: torch.Generator, device: torch.device, progress: bool = False, label: str = "") -> dict[str, Any]:
    """Trains ``unet`` in place on the pseudo-labelled images and loads its EMA weights; returns a summary."""
    unet.to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=p.pretrain_lr, weight_decay=p.weight_decay)
    abar = alphas_cumprod_f32(device)
    null = unet.num_classes
    batches = endless_batches(positions.numel(), p.pretrain_batch_size, g)
    losses: list[float] = []
    desc = f"diff-mi pretraining on {label}" if label else "diff-mi pretraining"
    for _ in tqdm(range(p.pretrain_iterations), desc=desc, disable=not progress, leave=False):
        pick = next(batches)
        x = public.images(positions[pick])
        x = x + torch.rand(x.shape, generator=g) / 256.0
        flip = (torch.rand(x.shape[0], generator=g) < 0.5).view(-1, 1, 1, 1)
        x = (torch.where(flip, x.flip(-1), x) * 2 - 1).to(device)
        y = drop_labels(labels[pick], null, bool(torch.rand(1, generator=g) < p.class_dropout)).to(device)
        t = torch.randint(0, abar.shape[0], (x.shape[0],), generator=g).to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        loss = eps_mse(unet(q_sample(x, abar[t], noise), t, y), noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(_finite(loss, "pretraining loss"))
        with torch.no_grad():
            for e, q in zip(ema.parameters(), unet.parameters(), strict=True):
                e.mul_(p.ema_rate).add_(q.detach(), alpha=1 - p.ema_rate)
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    tail = max(1, len(losses) // 10)
    return {"pretrain_iterations": p.pretrain_iterations,
            "pretrain_final_loss": round(sum(losses[-tail:]) / tail, 6) if losses else None}


def alphas_cumprod_f32(device: torch.device) -> Tensor:
    """``alpha_bar`` of the reference's linear schedule (float32, on ``device``)."""
    return alphas_cumprod(linear_betas()).float().to(device)


def dpm_solver_x0s(unet: ConditionalUNet, x: Tensor, y: Tensor, w: float, steps: int, vp: DiscreteVP) -> list[Tensor]:
    """DPM-Solver++ (multistep, order 2, time-uniform) from noise ``x`` with guidance ``w``, with gradients.

    Returns the reference's ``return_pred_x0`` list: the data predictions made after step 2 (steps
    3..steps-1) and the final sample. Fewer than 10 steps use order 1 on the last step, as the
    reference's ``lower_order_final``.
    """
    null = torch.full_like(y, unet.num_classes)

    def data_pred(xt: Tensor, t: float) -> Tensor:
        tt = torch.full((xt.shape[0],), vp.model_time(t), device=xt.device)
        eps_c, eps_u = unet(torch.cat([xt, xt]), torch.cat([tt, tt]), torch.cat([y, null])).chunk(2)
        return x0_from_eps(xt, guided_eps(eps_c, eps_u, w), vp.alpha(t), vp.sigma(t))

    times = time_uniform_steps(steps, vp.n)
    prev_t, prev_x0 = [times[0]], [data_pred(x, times[0])]
    out: list[Tensor] = []
    for step in range(1, steps + 1):
        t = times[step]
        order = 1 if step == 1 or (steps < 10 and steps + 1 - step < 2) else 2
        if order == 1:
            x = dpmpp_first_update(x, prev_x0[-1], vp, prev_t[-1], t)
        else:
            x = dpmpp_second_update(x, prev_x0[-2], prev_x0[-1], vp, prev_t[-2], prev_t[-1], t)
        prev_t = [prev_t[-1], t]
        if step < steps:
            prev_x0 = [prev_x0[-1], data_pred(x, t)]
            if step > 2:
                out.append(prev_x0[-1])
    out.append(x)
    return out


def finetune(unet: ConditionalUNet, target: nn.Module, p_reg: Tensor, p: Any, *, g: torch.Generator,
             device: torch.device, progress: bool = False, label: str = "",
             augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> dict[str, Any]:
    """Fine-tunes :meth:`ConditionalUNet.finetune_parameters` of ``unet`` in place against the frozen
    ``target``; returns a summary (epochs run, the last epoch's mean accuracy, losses)."""
    aug = augment or (lambda x, gen: plg_augment(x, gen, jitter_p=0.5))
    params = unet.finetune_parameters()
    unet.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=p.finetune_lr, weight_decay=p.weight_decay)
    vp = DiscreteVP(linear_betas())
    classes = unet.num_classes
    k = min(p.k, classes - 1)
    acc_mean, epoch, last = 0.0, 0, {}
    desc = f"diff-mi fine-tuning on {label}" if label else "diff-mi fine-tuning"
    bar = tqdm(total=p.finetune_epochs, desc=desc, disable=not progress, leave=False)
    unet.train()
    while acc_mean < p.threshold and epoch < p.finetune_epochs:
        accs, l1s, l2s = [], [], []
        order = torch.randperm(classes, generator=g)
        for start in range(0, classes, p.finetune_batch_size):
            y = order[start : start + p.finetune_batch_size].to(device)
            bs = y.numel()
            x_t = torch.randn(bs, 3, unet.resolution, unet.resolution, generator=g).to(device)
            x0s = torch.cat(dpm_solver_x0s(unet, x_t, y, p.finetune_guidance, p.finetune_solver_steps, vp))
            views = target_views(x0s, aug, p.finetune_aug_times, g)
            yy = y.repeat(views.shape[0] // bs)
            logits, feats = logits_and_features(target, views)
            l1 = topk_loss(logits, yy, k)
            l2 = p.p_reg_weight * p_reg_loss(feats, yy, p_reg)
            opt.zero_grad(set_to_none=True)
            (l1 + l2).backward()
            opt.step()
            l1s.append(_finite(l1, "fine-tuning top-k loss"))
            l2s.append(_finite(l2, "fine-tuning p_reg loss"))
            # the final samples in every view (the reference counts its last bs * aug_times logits)
            final = logits.detach().view(p.finetune_aug_times, -1, bs, logits.shape[1])[:, -1]
            accs.append(float((final.argmax(-1) == y.view(1, -1)).float().mean()))
        acc_mean = sum(accs) / len(accs)
        last = {"finetune_last_acc": round(acc_mean, 6), "finetune_last_topk_loss": round(sum(l1s) / len(l1s), 6),
                "finetune_last_p_reg_loss": round(sum(l2s) / len(l2s), 6)}
        epoch += 1
        bar.update(1)
    bar.close()
    unet.eval().requires_grad_(True)
    return {"finetune_epochs_run": epoch, "topk_used": k, **last}


def train_diffusion(unet: ConditionalUNet, target: nn.Module, public: LabeledImages, positions: Tensor,
                    labels: Tensor, probs: Tensor, p: Any, *, g: torch.Generator, device: torch.device,
                    batch_size: int, progress: bool = False, label: str = "") -> dict[str, Any]:
    """Pretraining, p_reg and fine-tuning; returns ``{"p_reg": [C, D], "info": {...}}`` (``unet`` trained in place)."""
    t0 = time.perf_counter()
    info = pretrain(unet, public, positions, labels, p, g=g, device=device, progress=progress, label=label)
    t1 = time.perf_counter()
    p_reg = class_p_reg(target, public, probs, p.p_reg_top_k, batch_size, device, g)
    info.update(finetune(unet, target, p_reg.to(device), p, g=g, device=device, progress=progress, label=label))
    info.update(pretrain_s=round(t1 - t0, 3), finetune_s=round(time.perf_counter() - t1, 3))
    return {"p_reg": p_reg, "info": info}
