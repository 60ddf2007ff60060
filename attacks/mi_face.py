"""MI-Face: white-box model inversion by gradient descent in pixel space.

Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and
Basic Countermeasures", CCS 2015. For each attacked class, starting from a neutral image, minimise
``c(x) = 1 - p_target(x) + tv_weight * TV(x)`` by gradient descent, keeping ``x`` in [0, 1]. The
original runs plain gradient descent; restarts add small noise to the neutral start. All
identities and restarts are optimised together, in batches.

With ``record_trajectory`` the input after every step is kept in the reconstruction's
``extras["trajectory"]``: float32 [T+1, N, 3, H, W] on the CPU, T = ``steps``, entry 0 the start
and entry T the returned image. It is stored in the attack product (``store/attacks/<key>/data.pt``)
and is what the 2-D toy figure of Struppek et al. (ICLR 2024, Fig. 1) draws
(see ``leaderboard/toy2d.py``).

``channels: 1`` optimises one channel, repeated in the three the target sees (images stay RGB);
``auto`` (the default) does so when the dataset is grayscale (``dataset.params.grayscale: true``,
known from the public data's collection), else optimises the three channels. ``channels`` is left
out of the parameters' dump at ``auto``, so the cache keys from before it existed stay valid.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.data import is_grayscale
from inversion_bench.errors import DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.registry import PluginParams, attacks


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per image: mean |x[i+1,j]-x[i,j]| + mean |x[i,j+1]-x[i,j]|."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


def mi_face_loss(logits: Tensor, labels: Tensor, images: Tensor, tv_weight: float) -> Tensor:
    """Per-image MI-Face cost ``1 - softmax(logits)[label] + tv_weight * TV(images)``."""
    p = F.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    cost = 1.0 - p
    if tv_weight > 0:
        cost = cost + tv_weight * total_variation(images)
    return cost


def pairwise_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b`` (flattened), [N]."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12)


@attacks.register("mi-face")
class MIFace(Attack):
    """Pixel-space gradient descent on 1 - p_target plus optional TV prior (Fredrikson et al., 2015)."""

    access = "white-box"
    needs_prior = False

    class Params(PluginParams):
        steps: int = Field(300, ge=1, description="gradient steps")
        lr: float = Field(0.1, gt=0, description="step size")
        optimizer: Literal["sgd", "adam"] = Field("sgd", description="plain gradient descent or Adam")
        momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the SGD variant")
        restarts: int = Field(4, ge=1, description="starts per identity: neutral, then neutral + noise")
        start_value: float = Field(0.5, ge=0, le=1, description="grey level of the neutral start")
        start_noise: float = Field(0.1, ge=0, description="std of the noise added for restarts after the first")
        tv_weight: float = Field(0.0, ge=0, description="weight of the total-variation prior")
        resolution: int | None = Field(None, ge=8, description="image size (default: the dataset's)")
        record_trajectory: bool = Field(
            False, description="keep the input of every step in extras['trajectory'], [steps+1, N, 3, H, W]")
        channels: Literal[1, 3, "auto"] = Field(
            "auto", description="optimised channels: 1 (repeated in R, G and B), 3, or auto (1 when the dataset "
            "is grayscale)")

        @model_serializer(mode="wrap")
        def _drop_auto(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
            """Leaves out ``channels: auto``: the dump (and cache key) is then the one from before it existed."""
            data = handler(self)
            if data.get("channels") == "auto":
                data.pop("channels")
            return data

    def _starts(self, labels: Tensor, channels: int, res: int, g: torch.Generator) -> Tensor:
        """The start of every restart: the neutral image, plus noise after the first; [n, channels, res, res]."""
        p = self.params
        n = labels.numel()
        starts = torch.full((n, channels, res, res), p.start_value)
        noise = torch.randn(n, channels, res, res, generator=g) * p.start_noise
        first = (torch.arange(n) % p.restarts) == 0
        return torch.where(first.view(-1, 1, 1, 1), starts, (starts + noise).clamp(0, 1))

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        return AttackBudget(f"{p.steps} steps x {p.restarts} restarts per identity")

    def run(self, target: nn.Module, identities: Tensor, prior: Generator | None,
            ctx: AttackContext) -> Reconstruction:
        p = self.params
        g = ctx.generator()
        res = p.resolution or ctx.resolution
        labels = identities.repeat_interleave(p.restarts)
        n = labels.numel()
        channels = p.channels if p.channels != "auto" else (1 if is_grayscale(ctx.public) else 3)
        starts = self._starts(labels, channels, res, g)

        target.eval()
        for param in target.parameters():
            param.requires_grad_(False)
        out = torch.empty(n, 3, res, res)
        trajectory = torch.empty((p.steps + 1, n, 3, res, res)) if p.record_trajectory else None
        steps_loss = torch.zeros(p.steps)
        steps_conf = torch.zeros(p.steps)
        steps_cos = torch.zeros(p.steps)
        t0 = time.perf_counter()
        bar = tqdm(total=p.steps * ((n + ctx.batch_size - 1) // ctx.batch_size), disable=not ctx.progress,
                   desc=f"mi-face on {ctx.label}" if ctx.label else "mi-face", leave=False)
        for start in range(0, n, ctx.batch_size):
            sl = slice(start, start + ctx.batch_size)
            x = starts[sl].clone().to(ctx.device).requires_grad_(True)
            y = labels[sl].to(ctx.device)
            opt = (torch.optim.SGD([x], lr=p.lr, momentum=p.momentum) if p.optimizer == "sgd"
                   else torch.optim.Adam([x], lr=p.lr))
            prev_grad: Tensor | None = None
            w = x.shape[0] / n
            if trajectory is not None:
                trajectory[0, sl] = x.detach().expand(-1, 3, -1, -1).cpu()
            for step in range(p.steps):
                rgb = x.expand(-1, 3, -1, -1)  # one channel repeated (channels: 1), else x itself
                logits = target(rgb)
                cost = mi_face_loss(logits.float(), y, rgb, p.tv_weight)
                loss = cost.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(loss):
                    raise DivergedError(f"mi-face: loss became {float(loss)} at step {step + 1}")
                grad = x.grad.detach()
                with torch.no_grad():
                    conf = F.softmax(logits.float(), 1).gather(1, y.view(-1, 1)).mean()
                    steps_loss[step] += float(cost.mean()) * w
                    steps_conf[step] += float(conf) * w
                    if prev_grad is not None:
                        steps_cos[step] += float(pairwise_cosine(grad, prev_grad).mean()) * w
                prev_grad = grad.clone()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                    if trajectory is not None:
                        trajectory[step + 1, sl] = x.detach().expand(-1, 3, -1, -1).cpu()
                bar.update(1)
            out[sl] = x.detach().expand(-1, 3, -1, -1).cpu()
        bar.close()
        trace = {"loss": steps_loss.tolist(), "confidence": steps_conf.tolist(),
                 "grad_cosine": [None] + steps_cos[1:].tolist()}
        extras = {"trajectory": trajectory} if trajectory is not None else {}
        return Reconstruction(images=out, labels=labels.clone(), trace=trace,
                              info={"steps": p.steps, "restarts": p.restarts, "seconds": time.perf_counter() - t0,
                                    **({"channels": 1} if channels == 1 else {})}, extras=extras)
