"""DP-SGD: differentially private training with Opacus.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep Learning with Differential
Privacy", CCS 2016. Implementation: Opacus (Yousefpour et al., 2021), ``pip install opacus``.

Each step samples a batch with Poisson sampling (every training image independently with
probability ``q = 1 / batches per epoch``), clips every per-sample gradient to L2 norm
``max_grad_norm``, sums them, adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` and
divides by the expected batch size. The privacy accountant turns (q, noise multiplier, steps) into
the (epsilon, delta) guarantee reported in the record. With ``target_epsilon`` the noise
multiplier is chosen so that the whole training reaches it.

BatchNorm mixes samples of a batch and has no per-sample gradient, so ``configure_model``
replaces it with GroupNorm (``opacus.validators.ModuleValidator.fix``).

Determinism: the Poisson sampler and the noise draw from generators seeded with the job seed, so
a seed reproduces the run on the same device (Opacus' ``secure_mode`` is not used: it would be
irreproducible by design). A Poisson batch that comes out empty (probability ``(1 - q)^n``) is
skipped rather than taken as a noise-only step.

Defaults: ``delta = 1e-5`` as in Abadi et al.'s experiments; ``noise_multiplier = 1.1`` and
``max_grad_norm = 1.0`` as in Opacus' README example; the RDP accountant (Mironov 2017), the
generalisation of Abadi et al.'s moments accountant (Opacus' own default is the PRV accountant).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.models import inception, resnet

from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer


def _opacus():
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("the dp_sgd defense needs Opacus: pip install 'opacus>=1.6,<1.7'") from exc
    return opacus


class _BasicBlock(resnet.BasicBlock):
    """torchvision's BasicBlock without the in-place residual add (forbidden on a hooked layer's output)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class _Bottleneck(resnet.Bottleneck):
    """torchvision's Bottleneck without the in-place residual add."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class _BasicConv2d(inception.BasicConv2d):
    """torchvision's Inception BasicConv2d without the in-place ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


_NOT_IN_PLACE = {resnet.BasicBlock: _BasicBlock, resnet.Bottleneck: _Bottleneck, inception.BasicConv2d: _BasicConv2d}


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with BatchNorm replaced by GroupNorm and in-place operations turned off.

    Opacus' per-sample-gradient hooks forbid in-place changes of a hooked layer's output, e.g.
    ``ReLU(inplace=True)`` after a GroupNorm or torchvision's ``out += identity``.
    """
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model)
    for m in fixed.modules():  # Opacus' backward hooks forbid in-place ops on a hooked layer's output
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
        if type(m) in _NOT_IN_PLACE:  # same parameters and state-dict keys, out-of-place forward
            m.__class__ = _NOT_IN_PLACE[type(m)]
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError(f"dp_sgd: the architecture is not DP-SGD compatible: {errors[0]}")
    return fixed


@defenses.register("dp-sgd", aliases=("dp_sgd",))
class DPSGD(Defense):
    """DP-SGD (Abadi et al., CCS 2016) with Opacus: per-sample clipping, Gaussian noise, (epsilon, delta) report."""

    class Params(PluginParams):
        max_grad_norm: float = Field(1.0, gt=0.0, description="per-sample gradient clipping norm C")
        noise_multiplier: float = Field(
            1.1, ge=0.0, description="noise std / C (0: clipping only, epsilon = inf; ignored with target_epsilon)")
        target_epsilon: float | None = Field(
            None, gt=0.0, description="choose the noise multiplier to reach this epsilon after all epochs")
        delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the (epsilon, delta) guarantee")
        accountant: Literal["rdp", "prv", "gdp"] = Field("rdp", description="Opacus privacy accountant")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._report: dict[str, float] = {}

    def configure_model(self, model: Classifier) -> Classifier:
        _opacus()
        return make_dp_compatible(model)

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        _opacus()
        from opacus import PrivacyEngine

        p, r, s = self.params, trainer.recipe, trainer.settings
        data = trainer.train
        model.to(s.device)
        optimizer = trainer.make_optimizer([q for q in model.parameters() if q.requires_grad])
        # Opacus samples indices; the images are read (and augmented by the trainer) per batch
        indices = torch.utils.data.TensorDataset(torch.arange(len(data)))
        loader = torch.utils.data.DataLoader(indices, batch_size=r.batch_size,
                                             generator=torch.Generator().manual_seed(trainer.seed))
        noise_gen = torch.Generator(device=s.device).manual_seed(trainer.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded on purpose
            engine = PrivacyEngine(accountant=p.accountant)
        common = dict(module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=p.max_grad_norm,
                      noise_generator=noise_gen, poisson_sampling=True)
        if p.target_epsilon is not None:
            if r.epochs is None:
                raise ConfigError("dp_sgd: target_epsilon needs the training length in epochs (Opacus calibrates "
                                  "the noise per epoch); give training.epochs instead of training.steps, or set "
                                  "noise_multiplier")
            private, dp_opt, dp_loader = engine.make_private_with_epsilon(
                **common, target_epsilon=p.target_epsilon, target_delta=p.delta, epochs=r.epochs)
        else:
            private, dp_opt, dp_loader = engine.make_private(**common, noise_multiplier=p.noise_multiplier)

        def batches(epoch: int, g: torch.Generator):
            for (idx,) in dp_loader:
                yield data.images(idx), data.labels[idx]

        try:
            with warnings.catch_warnings():  # the first layer's input needs no gradient: expected
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                trainer.fit(private, self.criterion, optimizer=dp_opt, batches=batches)
        finally:
            private.to_standard_module()  # removes Opacus' hooks and per-sample gradients from the model
        steps = len(engine.accountant)
        eps = float(engine.get_epsilon(p.delta)) if steps else 0.0
        self._report = {"epsilon": eps, "delta": p.delta, "noise_multiplier": float(dp_opt.noise_multiplier),
                        "max_grad_norm": p.max_grad_norm, "sample_rate": 1.0 / len(dp_loader)}
        return model

    def report(self) -> dict[str, float]:
        return dict(self._report)
