"""Diff-MI's diffusion math as small pure functions (schedule, forward noising, guidance, solvers, losses).

Follows github.com/Ouxiang-Li/Diff-MI at commit 4778b9eb5cb8b8e059aa9f72ca2be1e176d15bba:
``1_pretrain/guided_diffusion/gaussian_diffusion.py`` (linear beta schedule, ``q_sample``, the
epsilon-MSE training loss), ``2_finetune/dpm_solver_pytorch.py`` (DPM-Solver++ multistep on the
discrete VP schedule, used with gradients in the fine-tuning), ``3_attack/utils/diffusion.py``
(``GaussianDiffusion.sample`` and ``inverse_ddim``) and ``3_attack/attack.py`` (the time schedule
of the iterative reconstruction, the classifier-free guidance ``w * eps_c - (w - 1) * eps_u``, the
top-k logit loss, the p_reg loss, the gradient clip at 1.25 times a running norm, and the
robustness library's targeted L2 PGD that the reference applies to its reconstructions).

Timesteps are 1-based where the reference's attack code is (``t`` in 1..T reads ``alphas_cumprod[t - 1]``).
Images inside the diffusion model are on the reference's [-1, 1] scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

T_STEPS = 1000  # the reference's diffusion_steps
BETA_START, BETA_END = 1e-4, 2e-2  # linear schedule of Ho et al. (the reference's defaults at 1000 steps)


# --------------------------------------------------------------------------------------------
# schedule and forward process
# --------------------------------------------------------------------------------------------
def linear_betas(steps: int = T_STEPS, start: float = BETA_START, end: float = BETA_END) -> Tensor:
    """``beta_t``, t = 1..steps, evenly spaced from ``start`` to ``end`` (float64, [steps]).

    ``get_named_beta_schedule("linear", n)`` scales both ends by ``1000 / n``; at the reference's 1000
    steps that is exactly ``linspace(1e-4, 0.02, 1000)``.
    """
    scale = 1000 / steps
    return torch.linspace(scale * start, scale * end, steps, dtype=torch.float64)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` ([T], same dtype)."""
    return torch.cumprod(1.0 - betas, dim=0)


def q_sample(x0: Tensor, abar: Tensor | float, noise: Tensor) -> Tensor:
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (``abar`` a number or [N] per sample)."""
    a = torch.as_tensor(abar, dtype=x0.dtype, device=x0.device)
    if a.dim() == 1:
        a = a.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def eps_mse(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """The training loss per sample: ``mean_{c,h,w} (eps - eps_theta)^2`` ([N])."""
    return (eps_pred.float() - noise.float()).pow(2).flatten(1).mean(1)


def drop_labels(labels: Tensor, null_class: int, drop: bool) -> Tensor:
    """The pretraining's classifier-free dropout: the whole batch becomes the null class when ``drop``
    (the reference draws ``np.random.rand() < 0.1`` once per batch)."""
    return torch.full_like(labels, null_class) if drop else labels


# --------------------------------------------------------------------------------------------
# guidance
# --------------------------------------------------------------------------------------------
def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance ``w * eps_c - (w - 1) * eps_u`` (= ``eps_u + w (eps_c - eps_u)``, the
    form of DPM-Solver's ``model_wrapper``; ``w = 1`` is the conditional model alone)."""
    return w * eps_cond - (w - 1) * eps_uncond


def attack_timestep(i: int, steps: int, jitter: int, total: int = T_STEPS) -> int:
    """The diffusion time of reconstruction step ``i`` (0-based) of ``steps``.

    ``((S - i) / 1.5 + (S - i) / 3 * cos(3 / (10 pi) * i)) / S * 800 + 200``, truncated to an integer
    after adding ``jitter`` (the reference draws it uniformly from -50..50), clipped to [1, total].
    The 800 and 200 are the reference's constants for T = 1000, scaled here by ``total / 1000``.
    """
    left = steps - i
    t = (left / 1.5 + left / 3 * math.cos(3 / (10 * math.pi) * i)) / steps * 800 * total / 1000 + 200 * total / 1000
    return int(min(max(int(t + jitter), 1), total))


def clip_to_running_norm(grad_norm: float, running: float | None, decay: float = 0.5) -> float:
    """The running gradient norm of the diffusion step: the first norm, then ``d * run + (1 - d) * norm``.

    The reference clips the target-loss gradient of the same step to ``1.25`` times this value.
    """
    return grad_norm if running is None else decay * running + (1 - decay) * grad_norm


# --------------------------------------------------------------------------------------------
# DDIM (the reference's final denoising from t = ddim_step)
# --------------------------------------------------------------------------------------------
def ddim_parameters(abar: Tensor, num_ddim: int = 100, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(sigmas, alphas, alphas_prev, c)`` of the reference's DDIM (``make_ddim_sampling_parameters``).

    The sub-sequence is uniform with stride ``c = T // num_ddim``, indices ``0, c, 2c, ... + 1``;
    ``alphas = abar[idx]``, ``alphas_prev = [abar[0], abar[idx[:-1]]]`` and
    ``sigma = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))``.
    """
    total = abar.shape[0]
    c = total // num_ddim
    idx = torch.arange(0, total, c) + 1
    idx = idx[idx < total]
    alphas = abar[idx]
    prev = torch.cat([abar[:1], abar[idx[:-1]]])
    sigmas = eta * ((1 - prev) / (1 - alphas) * (1 - alphas / prev)).sqrt()
    return sigmas, alphas, prev, c


def ddim_update(x: Tensor, eps: Tensor, a: float, a_prev: float, sigma: float, noise: Tensor) -> Tensor:
    """One DDIM step: ``sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z`` with
    ``x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)``."""
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps + sigma * noise


# --------------------------------------------------------------------------------------------
# DPM-Solver++ (2M) on the discrete schedule (the fine-tuning's sampler)
# --------------------------------------------------------------------------------------------
class DiscreteVP:
    """DPM-Solver's ``NoiseScheduleVP('discrete')``: ``log alpha(t)`` piecewise linear in t over the
    grid ``t_n = n / N`` (n = 1..N) with values ``0.5 log abar_n``; ``sigma = sqrt(1 - alpha^2)``,
    ``lambda = log alpha - log sigma``."""

    def __init__(self, betas: Tensor) -> None:
        self.n = betas.shape[0]
        self.grid = torch.linspace(0.0, 1.0, self.n + 1, dtype=torch.float64)[1:]
        self.log_alpha_grid = 0.5 * torch.log(1 - betas.double()).cumsum(0)

    def log_alpha(self, t: float) -> float:
        g, v = self.grid, self.log_alpha_grid
        k = int(torch.searchsorted(g, torch.tensor(t, dtype=torch.float64)).clamp(1, self.n - 1))
        lo, hi = float(g[k - 1]), float(g[k])
        return float(v[k - 1] + (v[k] - v[k - 1]) * (t - lo) / (hi - lo))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(1 - math.exp(2 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        return self.log_alpha(t) - math.log(self.sigma(t))

    def model_time(self, t: float) -> float:
        """The network's time input for continuous t: ``(t - 1/N) * 1000`` (DPM-Solver's discrete wrapper)."""
        return (t - 1.0 / self.n) * 1000.0


def time_uniform_steps(steps: int, n: int) -> list[float]:
    """``skip_type='time_uniform'``: ``steps + 1`` times evenly from 1 to ``1 / n``."""
    return torch.linspace(1.0, 1.0 / n, steps + 1, dtype=torch.float64).tolist()


def dpmpp_first_update(x: Tensor, x0_s: Tensor, vp: DiscreteVP, s: float, t: float) -> Tensor:
    """DPM-Solver++ order 1 (DDIM) from s to t: ``sigma_t / sigma_s x - alpha_t expm1(-h) x0_s``."""
    h = vp.lam(t) - vp.lam(s)
    return vp.sigma(t) / vp.sigma(s) * x - vp.alpha(t) * math.expm1(-h) * x0_s


def dpmpp_second_update(x: Tensor, x0_prev1: Tensor, x0_prev0: Tensor, vp: DiscreteVP, t_prev1: float,
                        t_prev0: float, t: float) -> Tensor:
    """DPM-Solver++ multistep order 2 (``solver_type='dpmsolver'``) from ``t_prev0`` to t:
    ``sigma_t / sigma_0 x - alpha_t phi (x0_0 + D / 2)`` with ``phi = expm1(-h)``, ``D = (x0_0 - x0_1) / r``,
    ``r = (lambda_0 - lambda_1) / (lambda_t - lambda_0)``."""
    lam1, lam0, lam_t = vp.lam(t_prev1), vp.lam(t_prev0), vp.lam(t)
    h = lam_t - lam0
    r = (lam0 - lam1) / h
    d1 = (x0_prev0 - x0_prev1) / r
    phi = math.expm1(-h)
    return vp.sigma(t) / vp.sigma(t_prev0) * x - vp.alpha(t) * phi * x0_prev0 - 0.5 * vp.alpha(t) * phi * d1


def x0_from_eps(x: Tensor, eps: Tensor, alpha: float, sigma: float) -> Tensor:
    """The data prediction ``(x - sigma eps) / alpha``."""
    return (x - sigma * eps) / alpha


# --------------------------------------------------------------------------------------------
# the target's losses and the final PGD
# --------------------------------------------------------------------------------------------
def topk_loss(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """The reference's ``topk_loss``: ``-mean_n z_{n,y} + mean_n mean_{j in top-k, j != y} z_{n,j}`` (a number).

    The attacked class is masked with -1000 before taking the k largest; ``k = 0`` is ``-mean z_y``.
    """
    y = targets.view(-1, 1)
    real = logits.gather(1, y).squeeze(1)
    if k == 0:
        return -real.mean()
    masked = logits.scatter(1, y, torch.full_like(y, -1000, dtype=logits.dtype))
    return -real.mean() + masked.topk(k, dim=1).values.mean()


def p_reg_loss(features: Tensor, targets: Tensor, p_reg: Tensor) -> Tensor:
    """``mse(phi(x), p_reg[y])`` averaged over batch and feature dimensions (a number)."""
    return F.mse_loss(features.float(), p_reg[targets].to(features.device).float())


def sample_p_reg(mean: Tensor, std: Tensor, noise: Tensor) -> Tensor:
    """One draw ``mean + std * noise`` of the per-class public feature distribution ([C, D])."""
    return mean + std * noise


def l2_pgd_step(x: Tensor, grad: Tensor, origin: Tensor, step_size: float, eps: float) -> Tensor:
    """One step of the robustness library's L2 PGD: ``x + step * g / (||g|| + 1e-10)``, the change from
    ``origin`` renormed to L2 norm at most ``eps`` per sample, clamped to [0, 1]. ``grad`` is the
    gradient of the loss to *increase* (for the targeted attack: minus the cross-entropy)."""
    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    x = x + step_size * grad / (norm + 1e-10)
    diff = (x - origin).renorm(p=2, dim=0, maxnorm=eps)
    return (origin + diff).clamp(0, 1)
