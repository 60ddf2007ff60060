"""The batched latent optimisation loop shared by the generative attacks (PPA, GMI).

Latents of many identities (candidates or restarts) are optimised together in batches: one
optimiser over a ``[B, d]`` tensor, the loss summed over the batch so that each latent receives the
gradient of its own loss (Adam and SGD update element-wise, so the latents of a batch do not
interact). The loop records a :class:`~inversion_bench.attacks.common.trace.StepTrace` from tensors it already has.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attacks.common.losses import target_confidence
from inversion_bench.attacks.common.trace import StepTrace

if TYPE_CHECKING:
    from inversion_bench.interfaces import AttackContext

# objective(latents [B, d], labels [B]) -> (per-latent loss [B], target logits [B, C])
Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
OptimizerFactory = Callable[[list[Tensor]], tuple[torch.optim.Optimizer, object | None]]


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Puts ``modules`` in eval mode without parameter gradients; restores both flags afterwards."""
    saved: list[tuple[nn.Module, bool, list[tuple[nn.Parameter, bool]]]] = []
    for m in modules:
        if m is None:
            continue
        saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in flags:
                p.requires_grad_(flag)


def attack_setup(target: nn.Module | None, prior: nn.Module, identities: Tensor, batch_size: int | None,
                 ctx: AttackContext) -> tuple[Tensor, int, torch.Generator]:
    """The common start of a generator-based attack.

    Moves ``target`` (None for a black-box or label-only oracle, which answers on the run's device
    itself) and ``prior`` to ``ctx.device`` and returns the identities as a flat CPU long tensor, the
    batch size (``batch_size`` or the run's ``ctx.batch_size``) and the job's seeded random generator.
    """
    if target is not None:
        target.to(ctx.device)
    prior.to(ctx.device)
    return identities.long().flatten().cpu(), batch_size or ctx.batch_size, ctx.generator()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast (fp16 on GPUs without bf16) when ``enabled``; a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def optimize_latents(
    latents: Tensor,
    labels: Tensor,
    *,
    objective: Objective,
    make_optimizer: OptimizerFactory,
    num_steps: int,
    batch_size: int,
    device: torch.device,
    trace: StepTrace,
    project: Callable[[Tensor], Tensor] | None = None,
    loss_scale: float = 1.0,
    amp: bool = False,
    progress: bool = False,
    desc: str = "attack",
    label: str = "",
) -> Tensor:
    """Optimises ``latents`` in batches of ``batch_size`` for ``num_steps`` steps each.

    Args:
        latents: [N, d] starting points (any device; not modified).
        labels: [N] attacked class of each latent.
        objective: per-latent loss and target logits of a batch.
        make_optimizer: builds (optimizer, lr scheduler or None) for the batch's latent tensor.
        num_steps: steps per batch.
        batch_size: latents optimised together.
        device: where the optimisation runs.
        trace: receives loss, confidence and gradient of every step.
        project: applied to the latents after every step (e.g. clipping z), in place.
        loss_scale: factor on the summed loss before the backward pass (GMI's batch mean).
        amp: run the objective under autocast.
        progress: show a progress bar over all steps.
        desc: name used in the progress bar and in error messages.
        label: the attacked target (``AttackContext.label``), named in the progress bar.

    Returns:
        [N, d] optimised latents on the CPU.

    Raises:
        DivergedError: when a loss becomes NaN or inf.
    """
    out = []
    n = latents.shape[0]
    n_batches = math.ceil(n / batch_size)
    bar_desc = f"{desc} on {label}" if label else desc
    with tqdm(total=n_batches * num_steps, desc=bar_desc, disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            w = latents[start : start + batch_size].detach().to(device, torch.float32).clone()
            w.requires_grad_(True)
            y = labels[start : start + batch_size].to(device)
            optimizer, scheduler = make_optimizer([w])
            trace.begin_batch(w.shape[0])
            for step in range(num_steps):
                with autocast(device, amp):
                    loss, logits = objective(w, y)
                optimizer.zero_grad(set_to_none=True)
                (loss.sum() * loss_scale).backward()
                trace.record(step, loss, target_confidence(logits.detach(), y), w.grad)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if project is not None:
                    with torch.no_grad():
                        w.copy_(project(w))
                bar.update(1)
            trace.end_batch(desc)
            out.append(w.detach().cpu())
    return torch.cat(out) if out else latents.detach().cpu().clone()
