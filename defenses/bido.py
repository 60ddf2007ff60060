"""BiDO: bilateral dependency optimisation.

Peng, Liu, Zhang, Lan, Ye, Liu and Han, "Bilateral Dependency Optimization: Defending Against
Model-inversion Attacks", KDD 2022.

For hidden representations Z_1..Z_L of the input X (here: the outputs of body stages and the
penultimate features), BiDO minimises the dependency between X and each Z_l and maximises the
dependency between each Z_l and the labels Y:

    L = CE(logits, y) + sum_l (lambda_x * d(X, Z_l) - lambda_y * d(Z_l, Y))

with d a kernel dependency measure estimated on the batch (m samples, K, L kernel matrices,
H = I - 11^T / m the centring matrix):

- ``hsic``: the biased HSIC estimator the paper writes, ``HSIC = tr(K H L H) / (m - 1)^2``;
- ``nhsic`` (default): what the authors' code (github.com/AlanPeng0897/Defend_MI, ``hsic.py``,
  ``hsic_normalized_cca``) computes for "HSIC": the normalised HSIC
  ``sum_ij (R_K)_ij (R_L)_ji`` with ``R_K = K H (K H + eps m I)^-1``, eps = 1e-5;
- ``coco``: constrained covariance ``COCO = sqrt(||H K H  H L H||) / m``; the paper writes the
  spectral norm, the authors' code uses the Frobenius norm (``torch.norm``), the default here too.

Kernels follow the authors' code: Gaussian kernels on X and Z with the bandwidth scaled by the
dimension, ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2 d))`` with ``sigma = 5``; a linear kernel on
the one-hot labels (``ktype='linear'``). X is the normalised input the body sees.

Defaults from the authors' README and attack scripts for VGG16 on CelebA: (lambda_x, lambda_y) =
(0.05, 0.5) for HSIC and (5, 35) for COCO (their MNIST COCO model uses (1, 50)); sigma = 5. The
HSIC weights were tuned for the normalised estimator of their code, hence ``nhsic`` is the default
measure: with sigma = 5 and the dimension-scaled bandwidth, the plain estimator (``hsic``) is tiny
(kernel values are all close to 1), so with these weights it barely changes training; sweep
lambda if you use it.
Hidden layers: the authors' VGG16 regularises the output of each of its 5 blocks (the last after
flattening + BatchNorm); by default every stage of the body and the features are used here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.defenses._parts import body_stages
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer

REFERENCE_SIGMA = 5.0
# (lambda_x, lambda_y) of the authors' best utility/robustness trade-off for VGG16 on CelebA
REFERENCE_WEIGHTS = {"nhsic": (0.05, 0.5), "hsic": (0.05, 0.5), "coco": (5.0, 35.0)}


def pairwise_sq_dists(x: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``x`` ([m, d] -> [m, m])."""
    sq = (x * x).sum(dim=1, keepdim=True)
    return (sq + sq.T - 2.0 * x @ x.T).clamp_min(0.0)


def gaussian_kernel(x: Tensor, sigma: float, scale_by_dim: bool = True) -> Tensor:
    """``exp(-||x_i - x_j||^2 / (2 sigma^2 d))`` on the flattened rows (d = 1 when not scaled)."""
    x = x.flatten(1).float()
    d = x.shape[1] if scale_by_dim else 1
    return torch.exp(-pairwise_sq_dists(x) / (2.0 * sigma * sigma * d))


def linear_kernel(x: Tensor) -> Tensor:
    x = x.flatten(1).float()
    return x @ x.T


def center(k: Tensor) -> Tensor:
    """``H K H`` with ``H = I - 11^T / m``."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def hsic(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 - the usual name of the second kernel matrix
    """Biased HSIC estimate ``tr(K H L H) / (m - 1)^2`` from two (symmetric) kernel matrices."""
    m = k.shape[0]
    return (center(k) * l).sum() / (m - 1) ** 2


def coco(k: Tensor, l: Tensor, norm: Literal["fro", "spectral"] = "fro", eps: float = 1e-12) -> Tensor:  # noqa: E741
    """Constrained covariance ``sqrt(||H K H  H L H||) / m`` (Frobenius or spectral norm)."""
    m = k.shape[0]
    prod = center(k) @ center(l)
    if norm == "fro":
        return prod.pow(2).sum().clamp_min(eps).pow(0.25) / m  # sqrt of the Frobenius norm, finite gradient at 0
    return torch.linalg.matrix_norm(prod, ord=2).clamp_min(eps).sqrt() / m


def normalized_hsic(k: Tensor, l: Tensor, eps: float = 1e-5) -> Tensor:  # noqa: E741
    """The authors' normalised HSIC: ``sum(R_K * R_L^T)`` with ``R_K = K H (K H + eps m I)^-1``."""
    m = k.shape[0]
    eye = torch.eye(m, dtype=k.dtype, device=k.device)
    kh, lh = k - k.mean(dim=1, keepdim=True), l - l.mean(dim=1, keepdim=True)  # K H, L H
    rk = torch.linalg.solve(kh + eps * m * eye, kh, left=False)  # X (K H + eps m I) = K H
    rl = torch.linalg.solve(lh + eps * m * eye, lh, left=False)
    return (rk * rl.T).sum()


Measure = Literal["nhsic", "hsic", "coco"]


def dependency(k: Tensor, l: Tensor, measure: Measure) -> Tensor:  # noqa: E741
    if measure == "hsic":
        return hsic(k, l)
    if measure == "nhsic":
        return normalized_hsic(k, l)
    return coco(k, l)


def bido_terms(inputs: Tensor, hiddens: list[Tensor], targets: Tensor, num_classes: int, *,
               measure: Measure = "nhsic", sigma: float = REFERENCE_SIGMA,
               label_kernel: Literal["linear", "gaussian"] = "linear") -> tuple[Tensor, Tensor]:
    """``(sum_l d(X, Z_l), sum_l d(Z_l, Y))`` over the hidden representations."""
    kx = gaussian_kernel(inputs, sigma)
    y = F.one_hot(targets, num_classes).float()
    ky = linear_kernel(y) if label_kernel == "linear" else gaussian_kernel(y, sigma)
    dx = inputs.new_zeros((), dtype=torch.float32)
    dy = inputs.new_zeros((), dtype=torch.float32)
    for z in hiddens:
        kz = gaussian_kernel(z, sigma)
        dx = dx + dependency(kx, kz, measure)
        dy = dy + dependency(kz, ky, measure)
    return dx, dy


@defenses.register("bido")
class BiDO(Defense):
    """BiDO (Peng et al., KDD 2022): CE + lambda_x * d(X, Z) - lambda_y * d(Z, Y) on hidden layers (HSIC/COCO)."""

    class Params(PluginParams):
        measure: Literal["nhsic", "hsic", "coco"] = Field(
            "nhsic", description="dependency measure: normalised HSIC (authors' code), biased HSIC, or COCO")
        lambda_x: float | None = Field(
            None, ge=0.0, description="weight of the input-feature dependency, minimised (default: 0.05; coco 5)")
        lambda_y: float | None = Field(
            None, ge=0.0, description="weight of the feature-label dependency, maximised (default: 0.5; coco 35)")
        sigma: float = Field(REFERENCE_SIGMA, gt=0.0,
                             description="Gaussian kernel width (scaled by the square root of the dimension)")
        label_kernel: Literal["linear", "gaussian"] = Field("linear", description="kernel on the one-hot labels")
        layers: list[int | str] | None = Field(
            None, description="hidden representations: indices into the body's stages (negative from the end) "
                              "or module names inside model.body; default: every stage")
        include_features: bool = Field(True, description="also regularise the penultimate features (body output)")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._captured: dict[str, Tensor] = {}
        self._order: list[str] = []
        self._sums: dict[str, Tensor | float | int] = {"dep_x": 0.0, "dep_y": 0.0, "steps": 0}

    def hidden_modules(self, model: Classifier) -> list[tuple[str, nn.Module]]:
        """The modules whose outputs are regularised (not counting the features)."""
        stages = body_stages(model.body)
        if self.params.layers is None:
            return stages
        chosen = []
        for ref in self.params.layers:
            if isinstance(ref, int):
                if not -len(stages) <= ref < len(stages):
                    raise ConfigError(f"bido: layers: index {ref} is out of range; the body has {len(stages)} "
                                      f"stages: {', '.join(n for n, _ in stages)}")
                chosen.append(stages[ref])
            else:
                try:
                    chosen.append((f"body.{ref}", model.body.get_submodule(ref)))
                except AttributeError as exc:
                    raise ConfigError(f"bido: layers: model.body has no submodule {ref!r}; stages are "
                                      f"{', '.join(n for n, _ in stages)}") from exc
        return chosen

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        captured = self._captured

        def keep(key: str):
            def hook(module: nn.Module, args, output) -> None:
                if module.training and torch.is_grad_enabled():
                    captured[key] = output

            return hook

        def keep_input(module: nn.Module, args) -> None:
            captured.clear()
            if module.training and torch.is_grad_enabled():
                captured["input"] = args[0]

        handles = [model.body.register_forward_pre_hook(keep_input)]
        self._order = []
        for name, module in self.hidden_modules(model):
            handles.append(module.register_forward_hook(keep(name)))
            self._order.append(name)
        if self.params.include_features:
            handles.append(model.body.register_forward_hook(keep("features")))
            self._order.append("features")
        try:
            trainer.fit(model, self.criterion)
        finally:
            for h in handles:
                h.remove()
            captured.clear()
        return model

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        loss = F.cross_entropy(logits, targets)
        captured = dict(self._captured)  # the hooks keep writing into self._captured
        self._captured.clear()
        hiddens = [captured[k] for k in self._order if k in captured]
        if "input" not in captured or not hiddens or targets.shape[0] < 2:
            return loss  # eval, a second loss on the same forward (auxiliary logits), or a batch of one
        p = self.params
        dx, dy = bido_terms(captured["input"], hiddens, targets, logits.shape[1], measure=p.measure,
                            sigma=p.sigma, label_kernel=p.label_kernel)
        self._sums["dep_x"] += dx.detach()  # summed on the device: no synchronisation per step
        self._sums["dep_y"] += dy.detach()
        self._sums["steps"] += 1
        lx, ly = self.weights()
        return loss + lx * dx - ly * dy

    def weights(self) -> tuple[float, float]:
        """(lambda_x, lambda_y): the given values or the authors' CelebA defaults of the measure."""
        p = self.params
        dx, dy = REFERENCE_WEIGHTS[p.measure]
        return (dx if p.lambda_x is None else p.lambda_x), (dy if p.lambda_y is None else p.lambda_y)

    def report(self) -> dict[str, float]:
        n = self._sums["steps"]
        if not n:
            return {}
        return {"bido_dep_x": float(self._sums["dep_x"]) / n, "bido_dep_y": float(self._sums["dep_y"]) / n}
