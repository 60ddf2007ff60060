"""LOMMA: logit maximisation with the p_reg feature regulariser, and model augmentation.

Nguyen, Tran, Hoang, Cheung, "Re-thinking Model Inversion Attacks Against Deep Neural Networks"
(CVPR 2023). Reference code: github.com/sutd-visual-computing-group/Re-thinking_MI, commit
ed4b6b8900e4d7fed8f70d7e6a444893963d920e (``attack.py``, ``utils.py: get_attack_model``,
``config/celeba/attacking/*.json``). Two plug-ins for generative attacks (GMI, KEDMI, PPA):

1. The identity loss (paper Eq. 4; ``attack.py: iden_loss`` with ``used_loss='logit_loss'``, which
   is ``nn.NLLLoss`` applied to the raw logits, plus ``lam * reg_loss``):

       L_id(x, y) = -z_y(x) + lambda * mean_d (phi_d(x) - p_reg_d)^2

   ``z_y`` is the target's logit of the attacked class, ``phi`` its penultimate features and
   ``p_reg`` the mean of ``phi`` over (up to 5000, ``get_act_reg(Nsample=5000)``) public images.
   The reference's ``reg_loss`` is ``torch.mean((phi - p_reg) ** 2)`` over batch and feature
   dimensions, i.e. per sample the squared distance divided by the feature dimension D, as here.
   ``lambda`` is ``"lam": 1.0`` in both attacking configs (the function default of 0.1 is overridden).
2. Model augmentation (``variant: L_aug`` / ``ours``; :mod:`.distill`): the identity loss is
   averaged over the target and N surrogates (N = 3 in the reference), the regulariser uses only
   the target's features (``iden_loss``: ``Iden = sum_t loss_t / len(T) + lam * reg(target)``).

Every loss here is per sample ([N]); the attacks reduce them. ``LommaParams`` holds the parameters
GMI and PPA share. Both parts are off by default (``p_reg_weight: 0``, ``augment_models: 0``), and
then the parameters do not appear in ``model_dump`` (see :meth:`LommaParams._drop_unused`), so the
cache keys of settings without LOMMA are those from before these parameters existed. LOMMA as in
the paper: ``loss: logit, p_reg_weight: 1.0, augment_models: 3``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, field_validator, model_serializer
from torch import Tensor, nn

from inversion_bench.attacks.common.distill import SurrogateSpec, train_surrogates
from inversion_bench.attacks.common.losses import IdentityLoss, identity_loss, logit_loss
from inversion_bench.data import LabeledImages
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import AttackContext, Classifier
from inversion_bench.registry import PluginParams, architectures

P_REG_FIELDS = ("p_reg_weight", "p_reg_samples")
AUGMENT_FIELDS = ("augment_models", "augment_architectures", "augment_epochs", "augment_batch_size", "augment_lr",
                  "augment_momentum", "augment_weight_decay", "augment_lr_step", "augment_lr_gamma",
                  "augment_temperature")


def p_reg_penalty(features: Tensor, p_reg: Tensor) -> Tensor:
    """LOMMA's feature regulariser per sample: ``mean_d (features_d - p_reg_d)^2`` ([N, D], [D] -> [N])."""
    return (features.float() - p_reg.float().view(1, -1)).pow(2).mean(dim=1)


def lomma_identity_loss(logits: Sequence[Tensor], targets: Tensor, features: Tensor | None = None,
                        p_reg: Tensor | None = None, weight: float = 0.0,
                        loss_fn: IdentityLoss = logit_loss) -> Tensor:
    """The identity loss of LOMMA per sample ([N]).

    Args:
        logits: the [N, C] logits of every model, the target first (surrogates after it).
        targets: [N] attacked classes.
        features: [N, D] penultimate features of the target (needed when ``weight > 0``).
        p_reg: [D] the mean public feature of the target.
        weight: lambda of the regulariser (reference: 1.0).
        loss_fn: the per-model identity loss (LOMMA: :func:`logit_loss`, ``-z_y``).

    Returns:
        ``mean_m loss_fn(logits_m, y) + weight * mean_d (features_d - p_reg_d)^2``.
    """
    loss = loss_fn(logits[0], targets)
    if len(logits) > 1:
        for extra in logits[1:]:
            loss = loss + loss_fn(extra, targets)
        loss = loss / len(logits)
    if weight > 0:
        if features is None or p_reg is None:
            raise ValueError("the p_reg term needs the target's features and p_reg")
        loss = loss + weight * p_reg_penalty(features, p_reg)
    return loss


@torch.no_grad()
def estimate_p_reg(target: nn.Module, public: LabeledImages, *, num_samples: int, batch_size: int,
                   device: torch.device, generator: torch.Generator) -> Tensor:
    """The mean penultimate feature of ``target`` over ``num_samples`` random public images ([D], CPU).

    The reference (``attack.py: get_act_reg``) averages the features of about 5000 images of a
    shuffled public loader; all images are used when there are fewer.
    """
    features = getattr(target, "features", None)
    if features is None:
        raise ConfigError("p_reg_weight > 0 needs the target's penultimate features (a Classifier)")
    n = len(public)
    pos = torch.randperm(n, generator=generator)[:num_samples] if num_samples < n else torch.arange(n)
    total, count = None, 0
    for start in range(0, pos.numel(), batch_size):
        f = features(public.images(pos[start : start + batch_size]).to(device)).float().sum(0)
        total = f if total is None else total + f
        count += min(batch_size, pos.numel() - start)
    return (total / count).cpu()


def _head(target: nn.Module) -> nn.Module | None:
    """The module whose input is the target's penultimate features (a Classifier's, or the wrapped one's)."""
    for m in (target, getattr(target, "classifier", None)):
        if isinstance(m, Classifier):
            return m.head
    return None


class IdentityTerm:
    """The identity loss of a batch of images: ``loss_fn`` on the target, LOMMA's extras when set.

    ``identity(x, y) -> (per-sample loss [N], target logits [N, C])``. Without surrogates and
    regulariser it is exactly ``loss_fn(target(x), y)``. Otherwise the loss is averaged over target
    and ``surrogates`` and ``weight * p_reg_penalty`` of the target's features is added; those are
    taken from the input of the target's head during its forward pass (one pass, queries counted).
    """

    def __init__(self, target: nn.Module, loss_fn: IdentityLoss, surrogates: Sequence[nn.Module] = (),
                 p_reg: Tensor | None = None, weight: float = 0.0) -> None:
        self.target = target
        self.loss_fn = loss_fn
        self.surrogates = list(surrogates)
        self.p_reg = p_reg if weight > 0 else None
        self.weight = weight
        self.head = _head(target)

    def _target(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.p_reg is None:
            return self.target(x), None
        if self.head is None:
            return self.target(x), self.target.features(x)
        seen: list[Tensor] = []
        handle = self.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
        try:
            logits = self.target(x)
        finally:
            handle.remove()
        return logits, seen[-1]

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = self._target(x)
        if not self.surrogates and feats is None:
            return self.loss_fn(logits, y), logits
        all_logits = [logits, *(s(x) for s in self.surrogates)]
        p_reg = None if self.p_reg is None else self.p_reg.to(logits.device)
        return lomma_identity_loss(all_logits, y, feats, p_reg, self.weight, self.loss_fn), logits


class LommaParams(PluginParams):
    """LOMMA's parameters, shared by ``gmi`` and ``ppa`` (off by default; reference values in the docs)."""

    p_reg_weight: float = Field(0.0, ge=0, description="LOMMA lambda: weight of mean_d (phi_d(x) - p_reg_d)^2, p_reg "
                                "= the target's mean penultimate feature on public images (reference: 1.0 with "
                                "loss: logit; 0: off)")
    p_reg_samples: int = Field(5000, ge=1, description="public images averaged for p_reg (reference: 5000)")
    augment_models: int = Field(0, ge=0, description="LOMMA model augmentation: surrogates distilled from the "
                                "target on public data, identity loss averaged over target + surrogates (reference: "
                                "3; 0: off)")
    augment_architectures: list[SurrogateSpec] = Field(
        [SurrogateSpec(name="small-resnet"), SurrogateSpec(name="small-cnn")], min_length=1,
        description="surrogate architectures, cycled (names or {name, params}; reference: efficientnet_b0/b1/b2)")
    augment_epochs: int = Field(20, ge=0, description="distillation epochs over the public data (reference: 20)")
    augment_batch_size: int = Field(64, ge=1, description="distillation batch size (reference: 64)")
    augment_lr: float = Field(0.01, gt=0, description="distillation SGD learning rate (reference: 0.01)")
    augment_momentum: float = Field(0.9, ge=0, lt=1, description="distillation SGD momentum (reference: 0.9)")
    augment_weight_decay: float = Field(1e-4, ge=0, description="distillation weight decay (reference: 1e-4)")
    augment_lr_step: int = Field(20, ge=1, description="StepLR step in epochs (reference: 20)")
    augment_lr_gamma: float = Field(0.5, gt=0, le=1, description="StepLR factor (reference: 0.5)")
    augment_temperature: float = Field(1.0, gt=0, description="distillation temperature (reference: 1.0)")

    @field_validator("augment_architectures")
    @classmethod
    def _known_architectures(cls, specs: list[SurrogateSpec]) -> list[SurrogateSpec]:
        for spec in specs:
            arch = architectures.get(spec.name)  # raises UnknownPluginError with the known names
            arch.Params(**spec.params)
        return specs

    @model_serializer(mode="wrap")
    def _drop_unused(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """Leaves out the p_reg fields when ``p_reg_weight == 0`` and the augment fields when
        ``augment_models == 0``: they change nothing then, and settings without LOMMA keep the
        dumped parameters (hence the cache keys, ``plan._plugin_spec``) they had before LOMMA."""
        data = handler(self)
        drop = (P_REG_FIELDS if self.p_reg_weight == 0 else ()) + (AUGMENT_FIELDS if self.augment_models == 0 else ())
        for name in drop:
            data.pop(name, None)
        return data

    @property
    def uses_lomma(self) -> bool:
        return self.p_reg_weight > 0 or self.augment_models > 0


def lomma_identity(target: nn.Module, params: Any, ctx: AttackContext) -> tuple[IdentityTerm, dict[str, Any]]:
    """The identity term of an attack with ``params`` (a :class:`LommaParams` with ``loss``).

    Distils the surrogates and estimates p_reg when asked (call with ``target`` frozen, in eval mode),
    both seeded from ``ctx.seed`` and independent of the attack's own random draws. The info holds
    ``augment_seconds`` (distillation) and ``p_reg_seconds``, apart from the attack's timings.
    """
    p: LommaParams = params
    loss_fn = identity_loss(p.loss)
    if not p.uses_lomma:
        return IdentityTerm(target, loss_fn), {}
    if ctx.public is None or len(ctx.public) == 0:
        raise ConfigError("LOMMA (p_reg_weight > 0 or augment_models > 0) needs the attacker's public images "
                          "(AttackContext.public)")
    info: dict[str, Any] = {"p_reg_weight": p.p_reg_weight, "augment_models": p.augment_models}
    surrogates: list[nn.Module] = []
    if p.augment_models > 0:
        t0 = time.perf_counter()
        surrogates, summary = train_surrogates(
            target, ctx.public, list(p.augment_architectures), p.augment_models, p, seed=ctx.seed,
            resolution=ctx.resolution, device=ctx.device, batch_size=ctx.batch_size, progress=ctx.progress)
        info.update(summary, augment_seconds=round(time.perf_counter() - t0, 3))
    p_reg = None
    if p.p_reg_weight > 0:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(ctx.seed)
        p_reg = estimate_p_reg(target, ctx.public, num_samples=p.p_reg_samples, batch_size=ctx.batch_size,
                               device=ctx.device, generator=g).to(ctx.device)
        info.update(p_reg_seconds=round(time.perf_counter() - t0, 3), p_reg_norm=round(float(p_reg.norm()), 6))
    return IdentityTerm(target, loss_fn, surrogates, p_reg, p.p_reg_weight), info
