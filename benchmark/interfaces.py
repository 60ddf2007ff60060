"""The plugin interfaces: Classifier, Defense, Attack, Reconstruction, Generator, Metric.

Conventions (see ARCHITECTURE.md): every image tensor passed between modules is float32, NCHW,
RGB, in [0, 1]; each model normalises its own input.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion_bench.errors import DivergedError
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import Plugin

if TYPE_CHECKING:
    from inversion_bench.data import LabeledImages
    from inversion_bench.features import FeatureCache
    from inversion_bench.training import RunSettings, Trainer

Direction = Literal["higher", "lower"]


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """An image classifier that owns its input handling.

    ``forward(x)`` takes images in [0, 1] at any resolution, resizes them to ``input_size``,
    normalises them with ``mean``/``std`` and returns logits. ``features(x)`` returns the
    penultimate features (the input of ``head``).

    Args:
        body: maps a normalised [N, 3, S, S] batch to [N, feature_dim] features.
        head: maps features to logits (a Linear layer unless a defense replaces it).
        input_size: the resolution the body expects.
        mean, std: per-channel normalisation.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        *,
        feature_dim: int,
        num_classes: int,
        input_size: int,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Classifier expects [N, 3, H, W] images, got {tuple(x.shape)}")
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_size)
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_outputs(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and auxiliary logits (e.g. Inception-v3's) for the training loss."""
        return self(x), []


class PostprocessedClassifier(nn.Module):
    """A classifier whose outputs pass through a defense's ``postprocess`` (what attackers see)."""

    def __init__(self, classifier: Classifier, postprocess: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.classifier = classifier
        self._post = postprocess
        self.num_classes = classifier.num_classes
        self.input_size = classifier.input_size
        # a new nn.Module starts in training mode; take the wrapped model's mode instead, so that
        # code that saves and restores ``training`` (e.g. ``frozen``) never flips the target into
        # training mode (batch-norm statistics of attack batches, running stats overwritten)
        self.train(classifier.training)

    def features(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._post(self.classifier(x))


# --------------------------------------------------------------------------------------------
# Defense
# --------------------------------------------------------------------------------------------
class Defense(Plugin, ABC):  # noqa: B024 - every hook has a default; subclasses override what they change
    """A training-time or inference-time defense.

    The default ``fit`` trains with the shared trainer, using ``criterion`` as the loss and the
    model returned by ``configure_model``. Label smoothing variants only override ``criterion``.
    """


    def configure_model(self, model: Classifier) -> Classifier:
        """Changes the architecture before training (e.g. an information bottleneck head)."""
        return model

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        """Training loss; ``progress`` is the fraction of training done, in [0, 1)."""
        return F.cross_entropy(logits, targets)

    def postprocess(self, logits: Tensor) -> Tensor:
        """Inference-time change of the outputs the attacker sees (default: none)."""
        return logits

    @property
    def has_postprocess(self) -> bool:
        return type(self).postprocess is not Defense.postprocess

    def calibrate(self, model: Classifier, held_out: LabeledImages, settings: RunSettings) -> dict[str, float]:
        """Fits what ``postprocess`` needs on held-out private data (the private test split), after the
        target is trained or read from a checkpoint and before it is stored (default: nothing).

        What it fits must live in ``model``'s buffers, so it is stored with the target (a buffer that
        a checkpoint file does not carry is named in ``model.defense_state``); returns numbers for the
        target's report.
        """
        return {}

    def bind(self, model: Classifier) -> None:
        """Called with the target (trained, or read from the store) before ``postprocess`` wraps it
        for an attack: reads what ``calibrate`` kept in the model (default: nothing)."""

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        """Trains ``model`` (already passed through ``configure_model``) and returns it."""
        trainer.fit(model, self.criterion)
        return model

    def report(self) -> dict[str, float]:
        """Extra numbers for the record after training (e.g. DP-SGD's epsilon)."""
        return {}


# --------------------------------------------------------------------------------------------
# Generator (image prior)
# --------------------------------------------------------------------------------------------
class Generator(nn.Module, ABC):
    """An image prior: latents in, images in [0, 1] out.

    ``sample_z`` draws prior latents, ``map`` turns them into the space the attack optimises (w for
    StyleGAN, z itself for DCGAN), ``synthesize`` renders images. ``synthesize_unclipped`` renders
    them without the final clamp to [0, 1] (PPA's ``clip: false``). ``discriminator_logits`` is the
    realism score some attacks (GMI) add to their loss.
    """

    z_dim: int
    w_dim: int
    resolution: int

    @abstractmethod
    def sample_z(self, n: int, generator: torch.Generator) -> Tensor: ...

    def map(self, z: Tensor) -> Tensor:
        return z

    @abstractmethod
    def synthesize(self, w: Tensor) -> Tensor: ...

    def synthesize_unclipped(self, w: Tensor) -> Tensor:
        """``synthesize`` without its final clamp: the same [0, 1] scale, but values of the
        generator's raw output outside the range are kept (and so is their gradient).

        ``synthesize(w)`` must equal ``synthesize_unclipped(w).clamp(0, 1)``. The default returns
        ``synthesize(w)``: right for priors whose output cannot leave [0, 1] (DCGAN's tanh); a prior
        that clamps (StyleGAN2-ADA) overrides it. Attacks use it only inside the optimisation and
        scoring; images handed to other modules stay in [0, 1].
        """
        return self.synthesize(w)

    def constrain(self, w: Tensor) -> Tensor:
        """Projects optimised latents back onto the prior's support (e.g. clipping z)."""
        return w

    def discriminator_logits(self, images: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} has no discriminator")

    @property
    def has_discriminator(self) -> bool:
        return False


@dataclass
class PriorContext:
    """What a generator plugin gets to build its prior."""

    public: LabeledImages
    resolution: int
    seed: int
    device: torch.device
    weights: Mapping[str, Path]
    progress: bool = True
    log_image: Callable[[str, Tensor], None] | None = None


class GeneratorPlugin(Plugin, ABC):
    """Builds a :class:`Generator`: trains it on public data (DCGAN) or loads it (StyleGAN2-ADA).

    The runner stores what ``save`` writes under a content key and calls ``load`` on later runs.
    """


    def required_weights(self) -> dict[str, str]:
        """Weights names this plugin needs from the suite's ``weights:`` section -> what it is."""
        return {}

    @abstractmethod
    def fit(self, ctx: PriorContext) -> Generator: ...

    @abstractmethod
    def save(self, generator: Generator, folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path, ctx: PriorContext) -> Generator: ...


# --------------------------------------------------------------------------------------------
# Attack
# --------------------------------------------------------------------------------------------
@dataclass
class Reconstruction:
    """What an attack produces.

    Attributes:
        images: [N, 3, H, W] float32 in [0, 1] (on the CPU).
        labels: [N] int64, the attacked class of each image.
        latents: the optimised latents, when the attack has any.
        trace: per-step series, e.g. ``loss``, ``confidence`` (mean target confidence of the
            attacked class) and ``grad_cosine`` (mean cosine similarity of consecutive gradients).
        info: scalars about the run (steps, candidates, ...).
        extras: named tensors the attack keeps beside its result, stored in the attack product but
            neither checked nor mirrored to MLflow (unlike ``trace``, which holds per-step float
            series). E.g. MI-Face with ``record_trajectory`` keeps ``extras["trajectory"]``, the
            input at every step, [T+1, N, 3, H, W] (Struppek et al., ICLR 2024, Fig. 1 toy).
    """

    images: Tensor
    labels: Tensor
    latents: Tensor | None = None
    trace: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ValueError on a malformed result and DivergedError on NaN/inf."""
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"reconstruction images must be [N, 3, H, W], got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("reconstruction labels must be [N] with one label per image")
        if not torch.isfinite(self.images).all():
            raise DivergedError("the attack produced NaN or inf pixel values")
        for key, series in self.trace.items():
            if any(not math.isfinite(v) for v in series if v is not None):
                raise DivergedError(f"the attack's trace {key!r} contains NaN or inf")
        if self.images.numel() == 0:
            return
        lo, hi = float(self.images.min()), float(self.images.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"reconstruction images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")

    def to_state(self) -> dict[str, Any]:
        return {"images": self.images, "labels": self.labels, "latents": self.latents,
                "trace": self.trace, "info": self.info, "extras": self.extras}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Reconstruction:
        return cls(images=state["images"], labels=state["labels"], latents=state.get("latents"),
                   trace=dict(state.get("trace") or {}), info=dict(state.get("info") or {}),
                   extras=dict(state.get("extras") or {}))


@dataclass
class AttackContext:
    """Run settings of one attack job."""

    device: torch.device
    seed: int
    batch_size: int = 64
    amp: bool = False
    progress: bool = True
    resolution: int = 64  # the dataset resolution (size of the reconstructions when no prior)
    public: LabeledImages | None = None  # the attacker's public data (identities disjoint from the private ones)
    label: str = ""  # the attacked target, e.g. "hard seed 0": progress bars name it
    trained: dict[str, Any] | None = None  # the state ``Attack.train_generator`` stored (attacks that train a GAN)

    def generator(self) -> torch.Generator:
        """A CPU random generator seeded with the job seed."""
        return torch.Generator().manual_seed(self.seed)


class Attack(Plugin, ABC):
    """A model inversion attack.

    ``access`` declares what the attack may do with the target (:mod:`inversion_bench.oracle`):
    ``white-box`` attacks get the target model (behind the defense's ``postprocess``); ``black-box``
    attacks a :class:`~inversion_bench.oracle.ScoreOracle` (probabilities only) and ``label-only``
    attacks a :class:`~inversion_bench.oracle.LabelOracle` (top-1 labels only). Trying more than
    declared fails the pair with an ``AccessError``.
    """

    access: ClassVar[Literal["white-box", "black-box", "label-only"]] = "white-box"
    needs_prior: ClassVar[bool] = False
    trains_generator: ClassVar[bool] = False  # fits its own GAN with the target's knowledge (KED-MI, PLG-MI)
    generator_fields: ClassVar[tuple[str, ...] | None] = None
    """The parameters ``train_generator`` reads, in key order (:meth:`generator_spec`); ``None``: all of them."""
    worst_case_metric: ClassVar[str | None] = None
    """The metric output the worst case takes for this attack's records (its value is leakage: declared
    ``better="lower"``); ``None``: the suite's ``report: {worst_case: ...}`` (``attack_acc@1`` by default)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.access not in ("white-box", "black-box", "label-only"):
            raise TypeError(f"{cls.__qualname__}.access = {cls.access!r}: must be 'white-box', 'black-box' or "
                            "'label-only'")

    @abstractmethod
    def run(self, target: Any, identities: Tensor, prior: Generator | None, ctx: AttackContext) -> Reconstruction:
        """Reconstructs images of the classes ``identities`` ([K] int64) from ``target``: the model for
        white-box attacks, else the oracle of the declared access level."""

    def generator_spec(self) -> dict[str, Any]:
        """The parameters that decide what ``train_generator`` fits (part of its store key): an attack
        whose other parameters change reuses the stored generator: the :attr:`generator_fields`, or every
        parameter when that is ``None``."""
        params = getattr(self, "params", None)
        dump = params.model_dump(mode="json") if hasattr(params, "model_dump") else {}
        return dump if self.generator_fields is None else {k: dump[k] for k in self.generator_fields}

    def train_generator(self, target: Any, ctx: AttackContext) -> dict[str, Any]:
        """Fits the attack's own generator with the target's knowledge (attacks with ``trains_generator``).

        Runs once per (target, ``generator_spec``, seed) before ``run``, on the public data
        ``ctx.public``; the returned state (tensors and plain values, saved with ``torch.save`` and
        loaded with ``weights_only=True``) is a product of its own in the store, keyed by the target,
        and reaches ``run`` as ``ctx.trained``. Its wall time is reported apart from the attack's.
        """
        raise NotImplementedError(f"{type(self).__name__} sets trains_generator but has no train_generator")


# --------------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------------
@dataclass
class MetricContext:
    """What metrics may use for one (defense, attack, seed) pair.

    Attributes:
        evaluation_model: the suite's separate evaluation classifier (eval mode).
        target: the attacked classifier.
        target_report: numbers about the target (``test_accuracy`` and defense extras).
        private_train: the private training images (labels = target classes).
        private_test: the private test images (the split the target's test accuracy is measured on).
        attacked: the class indices the attack was asked to reconstruct (an identity without any
            reconstruction is still attacked; per-identity scores count it as a miss).
        seed: the pair's seed (metrics that train or sample use it, so reruns are identical).
        second_evaluation_model: the suite's optional second evaluation classifier of another
            architecture (``evaluation.second``), None without one.
        features: the store-backed feature cache (private features are computed once per suite).
        weights: the suite's ``weights:`` section (name -> local path).
    """

    evaluation_model: nn.Module
    target: nn.Module
    target_report: Mapping[str, float]
    private_train: LabeledImages
    features: FeatureCache
    device: torch.device
    batch_size: int = 128
    private_test: LabeledImages | None = None
    attacked: tuple[int, ...] = ()
    seed: int = 0
    second_evaluation_model: nn.Module | None = None
    weights: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricResult:
    """What :meth:`Metric.compute` returns: the values, per-identity values and details
    (``result["fid"]`` is ``result.values["fid"]``).

    Attributes:
        values: output name -> value, for every output the metric declares.
        per_identity: output name -> attacked identity -> value, for the outputs declared
            ``per_identity`` (every attacked identity; one without images scores as a miss).
        details: provenance and counts kept in the record (``metric_details[<plugin name>]``).
    """

    values: Mapping[str, float]
    per_identity: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class Metric(Plugin, ABC):
    """A score of a reconstruction. ``outputs`` declares, per output name, what it returns
    (:class:`~inversion_bench.record_model.MetricOutput`: what the defender wants, the unit, whether there are
    per-identity values); the record keeps the declarations, so tables need no metric plugin.

    A plugin may declare only ``better`` (name -> ``"higher"``/``"lower"``): its outputs are then scores
    without per-identity values. ``better`` is always the outputs' directions.

    ``scope`` says what a value describes: ``"attack"`` (the default) a pair's reconstructions, one
    leaderboard column per attack; ``"target"`` the attacked classifier alone (test accuracy,
    calibration, embedding separation), the same for every attack of a (defense, seed), shown once
    per defense next to the test accuracy.
    """

    outputs: ClassVar[Mapping[str, MetricOutput]] = {}
    better: ClassVar[Mapping[str, Direction]] = {}
    scope: ClassVar[Literal["attack", "target"]] = "attack"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "outputs" in cls.__dict__:
            cls.better = {name: out.better for name, out in cls.outputs.items()}
        elif "better" in cls.__dict__:
            cls.outputs = {name: MetricOutput(better=d) for name, d in cls.better.items()}

    def required_weights(self) -> dict[str, str]:
        """Weights names this metric needs from the suite's ``weights:`` section -> what it is."""
        return {}

    @abstractmethod
    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        """The values of every declared output (with per-identity values and details); raises
        MetricUnavailableError."""
