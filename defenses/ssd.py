"""SSD, Stealthy Shield Defense: released probabilities moved towards a class mean to lower the conditional MI.

Zhuang, Yu, Qiu, Fang, Chen and Xia, "Stealthy Shield Defense: A Conditional Mutual Information-Based
Approach against Black-Box Model Inversion Attacks", ICLR 2025. Reference code:
github.com/ZhuangQu/Stealthy-Shield-Defense at commit 493f4ce44bb852eda40abd331e38fc86680873dc
(``code.py``: ``Stealthy_Shield_Defense`` and ``GPU_based_water_filling``; the paper is ``paper.pdf`` there).

A post-hoc output defense (the target trains as with hard labels). For an input ``x`` with softmax
output ``f = f(x)`` (paper Algorithm 1, p. 6):

1. sample a label ``y ~ softmax(f / T)`` (the temperature divides the *probabilities*, as in the
   reference's ``(f / T).softmax(dim=1)``; T calibrates P(y|x), Sec. 4.2);
2. ``q = D'[y]``, the mean softmax output over held-out private images of class ``y`` (``D'`` is
   fitted once, :func:`class_mean_outputs`);
3. ``H = -sum f log f`` (the entropy of the output, "adaptive rate-distortion");
4. release ``p* = argmin KL(p || q)`` over the simplex subject to ``||p - f||_1 <= eps * H``, solved
   in closed form by water-filling (Appendix B, eq. 16: ``p* = q`` when ``q`` is within the budget,
   else ``p*_i = min(max(f_i, w_A q_i), w_B q_i)`` with the two levels ``w_A < 1 < w_B`` set so that
   exactly ``eps * H / 2`` of mass is added and removed), :func:`water_fill`.

What the paper states about the output (tested in tests/test_ssd.py): ``p*`` is a distribution,
``p* = q`` or ``||p* - f||_1 = eps * H`` (App. B), and each ``p*_i`` lies between ``f_i`` and ``q_i``
(Lemma 1). It does **not** claim the argmax is kept: a sampled ``y`` other than the top class pulls
the output towards another class's mean and can change the label (the paper's Table 3 reports lower
test accuracy with SSD, e.g. 98.2 % -> 97.0 % for IR-152 on FaceScrub). It follows from Lemma 1 and
eq. 16 that when ``f`` and ``q`` share their (unique) top class, ``p*`` keeps it.

Defaults are the reference code's (``T=0.1``, ``eps=0.5``; also the paper's IR-152/FaceScrub
setting, Table 5 p. 17: IR-152/CelebA ``eps=0.35``, VGG-16/FaceScrub ``0.8``, 224 px CelebA ``1.5``).

How it runs here:

- ``configure_model`` adds a buffer ``ssd_class_means`` [C, C] to the target (named in
  ``model.defense_state``, so a checkpoint file need not carry it); ``calibrate`` fills it after
  training (or after a checkpoint is read) from the **private test split**: the paper uses a held-out
  validation split ("the training samples are overfitted", Sec. 4.2); the suites here hold out only
  the test split, so ``D'`` comes from it. The recorded ``test_accuracy`` is the raw model's (as for the
  other output defenses); ``ssd_test_accuracy`` is the argmax of what SSD releases on that split (the
  same images ``D'`` was estimated from, so it is slightly optimistic), ``ssd_distortion`` the mean
  L1 distance between released and raw probabilities (the paper's "Dist"), and
  ``ssd_postprocess_seconds`` / ``ssd_forward_seconds`` the transform's time against the model's
  forward on the split (the paper's Table 4 cost). A class without held-out images has no ``D'`` row:
  an error names it.
- ``postprocess`` returns ``log(max(p*, floor))``: black-box attacks see ``p*``, label-only attacks
  its argmax, white-box attacks differentiate through the transform (through ``f`` where it is not
  clipped and through the two levels; the sampled label carries no gradient).
- Sampling: each instance owns a CPU generator seeded with ``seed``, fresh labels on every query (the
  reference draws from the global generator); the runner builds a fresh instance per attack job. The
  paper's Appendix H (seeding by a hash of the input, so repeated queries give the same output) is a
  discussion, not in the reference code, and is not done here.
- The transform runs in float64 (f / q and the cumulative sums are ill-conditioned in float32).
"""

from __future__ import annotations

import time

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.data import LabeledImages
from inversion_bench.errors import BenchError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import RunSettings, predict_logits

BUFFER = "ssd_class_means"


def output_entropy(probs: Tensor) -> Tensor:
    """``H(f) = -sum_i f_i log f_i`` per row (``0 log 0 = 0``)."""
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def sampling_weights(probs: Tensor, temperature: float) -> Tensor:
    """``softmax(f / T)``: the probabilities the label ``y`` is drawn with (Algorithm 1, first line)."""
    return torch.softmax(probs / temperature, dim=1)


def sample_labels(probs: Tensor, temperature: float, g: torch.Generator) -> Tensor:
    """One label per row drawn from :func:`sampling_weights` with the CPU generator ``g`` (no gradient)."""
    weights = sampling_weights(probs.detach().double().cpu(), temperature)
    return torch.multinomial(weights, 1, generator=g).view(-1).to(probs.device)


def class_mean_outputs(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``D'``: row ``y`` is the mean of ``probs`` over the rows labelled ``y`` ([C, C]).

    Raises:
        ValueError: a class has no rows (its mean is undefined).
    """
    counts = torch.bincount(labels, minlength=num_classes)
    empty = (counts == 0).nonzero().view(-1).tolist()
    if empty:
        raise ValueError(f"no held-out images of class(es) {empty[:10]}{' ...' if len(empty) > 10 else ''}: "
                         "their mean output (SSD's D') is undefined")
    sums = torch.zeros(num_classes, probs.shape[1], dtype=probs.dtype).index_add_(0, labels, probs)
    return sums / counts.unsqueeze(1).to(probs.dtype)


def _first_true(mask: Tensor) -> Tensor:
    """Per row, the index of the first True (0 when there is none)."""
    return mask.to(torch.uint8).argmax(dim=1)


def water_fill(f: Tensor, q: Tensor, budget: Tensor) -> Tensor:
    """``argmin_p KL(p || q)`` over the simplex subject to ``||p - f||_1 <= budget``, per row.

    Closed form of the paper's Appendix B: ``q`` when ``||q - f||_1 <= budget``; otherwise, with the
    classes ordered by ``r_i = f_i / q_i``, the lower level ``w_A`` raises the classes with small
    ratios to ``w_A q_i`` until ``budget / 2`` of mass is added (water-filling), the upper level
    ``w_B`` lowers those with large ratios to ``w_B q_i`` until ``budget / 2`` is removed (reverse
    water-filling), and ``p_i = min(max(f_i, w_A q_i), w_B q_i)`` (eq. 16). ``q`` must be positive.

    Args:
        f: [N, C] distributions (the model's outputs).
        q: [N, C] positive distributions (the targets).
        budget: [N] L1 budgets (>= 0).
    """
    ratio = f / q
    order = ratio.argsort(dim=1)
    r, fs, qs = ratio.gather(1, order), f.gather(1, order), q.gather(1, order)
    half = (budget / 2).unsqueeze(1)
    rows = torch.arange(f.shape[0], device=f.device)
    # raising: with the first k+1 classes (sorted) at level w, the mass added is w * Q[k] - F[k]; the
    # level lies below r[k+1] for the first k where raising up to r[k+1] would add more than budget / 2
    f_pre, q_pre = fs.cumsum(dim=1), qs.cumsum(dim=1)
    k = _first_true(r[:, 1:] * q_pre[:, :-1] - f_pre[:, :-1] > half)
    w_low = (f_pre[rows, k] + half[:, 0]) / q_pre[rows, k]
    # lowering: with the classes k.. at level w, the mass removed is F_suffix[k] - w * Q_suffix[k]; the
    # level lies above r[k-1] for the first k where lowering down to r[k] removes at most budget / 2
    f_suf, q_suf = fs.flip(1).cumsum(dim=1).flip(1), qs.flip(1).cumsum(dim=1).flip(1)
    within = f_suf[:, 1:] - r[:, :-1] * q_suf[:, 1:] <= half
    k = _first_true(torch.cat([within, torch.ones_like(within[:, :1])], dim=1))
    w_high = (f_suf[rows, k] - half[:, 0]) / q_suf[rows, k]
    p = torch.minimum(torch.maximum(f, w_low.unsqueeze(1) * q), w_high.unsqueeze(1) * q)
    reachable = (q - f).abs().sum(dim=1) <= budget
    return torch.where(reachable.unsqueeze(1), q, p)


def positive_means(class_means: Tensor) -> Tensor:
    """``D'`` with every entry at least the smallest positive float64: :func:`water_fill` divides by ``q``. A class
    mean is a mean of softmax outputs, positive in float64, but the target stores it in a float32 buffer, where a
    mean below 1.4e-45 (a logit margin above about 103 on every held-out image of the class) becomes 0 and the
    division would release NaN. Entries above the floor are unchanged."""
    return class_means.clamp_min(torch.finfo(torch.float64).tiny)


def ssd_probabilities(probs: Tensor, class_means: Tensor, labels: Tensor, epsilon: float) -> Tensor:
    """Algorithm 1 for given sampled ``labels``: ``water_fill(f, D'[y], epsilon * H(f))``."""
    return water_fill(probs, class_means[labels], epsilon * output_entropy(probs))


def ssd_logits(logits: Tensor, class_means: Tensor, temperature: float, epsilon: float, g: torch.Generator,
               floor: float = 1e-8) -> Tensor:
    """``log(max(p*, floor))`` for ``logits`` (float64 inside, returned in ``logits``' dtype): logits whose
    softmax is what SSD releases (up to the floor)."""
    probs = torch.softmax(logits.double(), dim=1)
    labels = sample_labels(probs, temperature, g)
    means = positive_means(class_means.to(probs.device, torch.float64))
    released = ssd_probabilities(probs, means, labels, epsilon)
    return torch.log(released.clamp_min(floor)).to(logits.dtype)


@defenses.register("ssd", aliases=("stealthy-shield-defense",))
class StealthyShieldDefense(Defense):
    """SSD (Zhuang et al., ICLR 2025): released probabilities moved towards a sampled class's mean output."""

    class Params(PluginParams):
        temperature: float = Field(0.1, gt=0.0, description="T: labels are drawn from softmax(probabilities / T)")
        epsilon: float = Field(0.5, gt=0.0, description="distortion controller: L1 budget = epsilon * entropy")
        seed: int = Field(0, ge=0, description="seed of the label sampling stream (each attack job starts it afresh)")
        floor: float = Field(1e-8, gt=0.0, lt=1.0,
                             description="released probabilities below this become it before the log")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._generator: torch.Generator | None = None
        self._class_means: Tensor | None = None

    def configure_model(self, model: Classifier) -> Classifier:
        n = int(model.num_classes)
        model.register_buffer(BUFFER, torch.full((n, n), float("nan")))
        model.defense_state = (BUFFER,)
        return model

    def calibrate(self, model: Classifier, held_out: LabeledImages, settings: RunSettings) -> dict[str, float]:
        t0 = time.perf_counter()
        logits = predict_logits(model, held_out, settings)
        forward_s = time.perf_counter() - t0
        probs = torch.softmax(logits.double(), dim=1)
        try:
            means = class_mean_outputs(probs, held_out.labels.cpu(), int(model.num_classes))
        except ValueError as exc:
            raise BenchError(f"SSD: {exc} in the private test split (the held-out images SSD's class means come "
                             "from); give every private identity test images (dataset.split.test_fraction)") from None
        buffer = getattr(model, BUFFER)
        buffer.copy_(means.to(buffer))
        self._class_means = buffer.detach()  # as stored: what bind() gives the attack jobs
        g = torch.Generator().manual_seed(self.params.seed)
        t0 = time.perf_counter()
        p = self.params
        released = torch.softmax(ssd_logits(logits.double(), self._class_means, p.temperature, p.epsilon, g, p.floor),
                                 dim=1)
        post_s = time.perf_counter() - t0
        return {"ssd_test_accuracy": float((released.argmax(1) == held_out.labels.cpu()).double().mean()),
                "ssd_distortion": float((released - probs).abs().sum(dim=1).mean()),
                "ssd_postprocess_seconds": post_s, "ssd_forward_seconds": forward_s}

    def bind(self, model: Classifier) -> None:
        means = getattr(model, BUFFER, None)
        if means is None or not torch.isfinite(means).all():
            raise BenchError("SSD: the target carries no class means (ssd_class_means): it was not calibrated "
                             "after training; delete its stored target so that it is trained and calibrated again")
        self._class_means = means.detach()

    def postprocess(self, logits: Tensor) -> Tensor:
        if self._class_means is None:
            raise BenchError("SSD: postprocess before calibrate() or bind(): its class means are unknown")
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.params.seed)
        return ssd_logits(logits, self._class_means, self.params.temperature, self.params.epsilon, self._generator,
                          self.params.floor)
