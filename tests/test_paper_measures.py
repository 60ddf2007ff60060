"""The ICLR 2024 paper's measures as metric plugins: knowledge extraction score, embedding separation,
calibration (ECE) and gradient stability.

Each value is checked against an independent computation (scikit-learn's silhouette, brute-force
pairwise distances, hand-computed examples, Guo et al.'s binning loop, torch's CosineAnnealingLR);
the knowledge extraction score is checked for what it must do: real private training images as
"reconstructions" give a student close to a normally trained classifier, uniform noise gives chance.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.data.synthetic import SyntheticFaces
from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import MetricContext, PostprocessedClassifier, Reconstruction
from inversion_bench.metrics.calibration import expected_calibration_error
from inversion_bench.metrics.embedding import separation
from inversion_bench.metrics.gradient_stability import traced_cosines
from inversion_bench.metrics.knowledge_extraction import CosineLR, relabel
from inversion_bench.models import build_classifier
from inversion_bench.registry import metrics
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe, cross_entropy

PAPER_MEASURES = {"knowledge_extraction": ("attack", {"knowledge_extraction": "lower"}),
                  "embedding_separation": ("target", {"silhouette": "lower", "intra_inter_ratio": "higher"}),
                  "calibration": ("target", {"ece": "lower"}),
                  "gradient_stability": ("attack", {"grad_cosine": "lower"})}
SMALL_KE = {"architecture": "small-cnn", "architecture_params": {"width": 8}, "epochs": 25, "batch_size": 16,
            "lr": 0.03}


@pytest.fixture(scope="module")
def splits():
    """8 private identities x 20 synthetic faces at 16 px: 12 train and 8 test images each."""
    coll = SyntheticFaces(SyntheticFaces.Params(num_identities=10, images_per_identity=20, seed=0)).load(16)
    return make_splits(coll, SplitSpec(private_identities=8, public_identities="rest", test_fraction=0.4, seed=1))


@pytest.fixture(scope="module")
def target(splits):
    """A small-cnn trained (briefly) on the private training images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_classifier("small-cnn", {"width": 8}, splits.num_classes, 16, {})
    recipe = TrainingRecipe(epochs=6, batch_size=16)
    try:
        Trainer(recipe, splits.private_train, splits.private_test, RunSettings(progress=False), seed=0).fit(
            model, cross_entropy)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def context(splits, target=None, seed=0, attacked=None) -> MetricContext:
    return MetricContext(evaluation_model=nn.Identity(), target=target if target is not None else nn.Identity(),
                         target_report={}, private_train=splits.private_train, private_test=splits.private_test,
                         features=None, device=torch.device("cpu"), batch_size=32, seed=seed,
                         attacked=tuple(range(splits.num_classes)) if attacked is None else attacked)


def metric(name: str, **params):
    cls = metrics.get(name)
    return cls(cls.Params(**params))


def empty_rec() -> Reconstruction:
    return Reconstruction(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))


def test_the_four_measures_are_registered_with_scope_and_directions():
    for name, (scope, better) in PAPER_MEASURES.items():
        cls = metrics.get(name)
        assert cls.scope == scope and dict(cls.better) == better, name
        assert "ICLR 2024" in sys.modules[cls.__module__].__doc__, name  # the definition cites the paper


# --------------------------------------------------------------------------------------------
# Knowledge extraction score
# --------------------------------------------------------------------------------------------
def test_knowledge_extraction_on_real_training_images_and_on_noise(splits, one_thread):
    tr = splits.private_train
    ke = metric("knowledge_extraction", **SMALL_KE)
    ctx = context(splits)
    result = ke.compute(Reconstruction(tr.images(), tr.labels), ctx)
    real, d = result["knowledge_extraction"], result.details
    assert real >= 0.8, d
    assert d["n_train"] == len(tr) and d["n_test"] == len(splits.private_test) and d["chance"] == 1 / 8
    assert d["seconds"] > 0 and 0 <= d["score_on_train"] <= 1

    g = torch.Generator().manual_seed(0)
    noise = Reconstruction(torch.rand(tr.images().shape, generator=g), tr.labels)
    ctx = context(splits)
    result = ke.compute(noise, ctx)
    chance_acc, n = result["knowledge_extraction"], result.details["n_test"]
    se = math.sqrt((1 / 8) * (7 / 8) / n)
    assert abs(chance_acc - 1 / 8) <= 3 * se, (chance_acc, se)


def test_knowledge_extraction_only_attacked_identities_count_and_is_deterministic(splits, one_thread):
    tr = splits.private_train
    attacked = (1, 3, 6)
    pos = torch.nonzero(torch.isin(tr.labels, torch.tensor(attacked))).flatten()
    rec = Reconstruction(tr.images(pos[::3]), tr.labels[pos[::3]])
    ke = metric("knowledge_extraction", **{**SMALL_KE, "epochs": 2})
    state = torch.random.get_rng_state()
    values = []
    for _ in range(2):
        ctx = context(splits, attacked=attacked, seed=5)
        result = ke.compute(rec, ctx)
        values.append(result["knowledge_extraction"])
    assert values[0] == values[1]
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is untouched
    d = result.details
    assert d["identities"] == 3 and d["chance"] == pytest.approx(1 / 3)
    assert d["n_test"] == int(torch.isin(splits.private_test.labels, torch.tensor(attacked)).sum())


def test_knowledge_extraction_unavailable_and_invalid_params(splits):
    ke = metric("knowledge_extraction", **SMALL_KE)
    with pytest.raises(MetricUnavailableError, match="no images"):
        ke.compute(empty_rec(), context(splits))
    ctx = context(splits)
    ctx.private_test = None
    tr = splits.private_train
    with pytest.raises(MetricUnavailableError, match="test"):
        ke.compute(Reconstruction(tr.images([0, 1]), tr.labels[:2]), ctx)
    with pytest.raises(ValidationError):
        metrics.get("knowledge_extraction").Params(architecture="no-such-net")
    with pytest.raises(ValidationError):
        metrics.get("knowledge_extraction").Params(architecture="small-cnn", architecture_params={"widht": 8})
    ref = metrics.get("knowledge_extraction").Params()  # the reference recipe
    assert (ref.architecture, ref.epochs, ref.batch_size, ref.optimizer, ref.lr) == ("resnet50", 75, 32, "sgd", 0.1)
    weighted = metric("knowledge_extraction", architecture="resnet50", architecture_params={"pretrained": "r50"})
    assert list(weighted.required_weights()) == ["r50"]


def test_cosine_schedule_matches_torch_cosine_annealing():
    epochs, per_epoch = 7, 3
    hook = CosineLR(0.1, 1e-4, epochs, per_epoch)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), T_max=epochs, eta_min=1e-4)
    for _ in range(epochs):
        expected = ref.get_last_lr()[0]
        for _ in range(per_epoch):
            hook(nn.Identity(), opt)
            assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
        ref.optimizer.step()
        ref.step()


def test_relabel():
    assert relabel(torch.tensor([7, 2, 7, 5]), [2, 7]).tolist() == [1, 0, 1, -1]


# --------------------------------------------------------------------------------------------
# Embedding separation
# --------------------------------------------------------------------------------------------
def test_separation_hand_computed_four_points():
    # 1-D points: class 0 at 0 and 1, class 1 at 4 and 6
    x = torch.tensor([[0.0], [1.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    s = [(5 - 1) / 5, (4 - 1) / 4, (3.5 - 2) / 3.5, (5.5 - 2) / 5.5]
    out = separation(x, y)
    assert out["silhouette"] == pytest.approx(sum(s) / 4, abs=1e-12)
    assert out["intra_inter_ratio"] == pytest.approx(1.5 / 4.5, abs=1e-12)  # intra (1 + 2) / 2, inter (4+6+3+5) / 4


def test_separation_matches_sklearn_and_brute_force():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from scipy.spatial.distance import cdist

    g = torch.Generator().manual_seed(3)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([1, 5, 9, 4])])  # a singleton class too
    x = torch.randn(4, 6, generator=g)[y] * 2 + torch.randn(len(y), 6, generator=g)
    out = separation(x, y * 3 + 1, block=5)  # non-contiguous labels, several row blocks
    assert out["silhouette"] == pytest.approx(sklearn_metrics.silhouette_score(x.double().numpy(), y.numpy()), abs=1e-9)
    d = cdist(x.double().numpy(), x.double().numpy())
    yy = y.numpy()
    same = (yy[:, None] == yy[None, :]) & ~np.eye(len(yy), dtype=bool)
    diff = yy[:, None] != yy[None, :]
    assert out["intra_inter_ratio"] == pytest.approx(d[same].mean() / d[diff].mean(), rel=1e-9)
    with pytest.raises(ValueError):
        separation(x, torch.zeros(len(y), dtype=torch.long))


def test_embedding_metric_on_the_target_wrapped_or_not(splits, target):
    m = metric("embedding_separation")
    ctx = context(splits, target)
    out = m.compute(empty_rec(), ctx)
    feats = target.features(splits.private_train.images()).detach()
    assert out.values == pytest.approx(separation(feats, splits.private_train.labels), abs=1e-6)
    assert -1 <= out["silhouette"] <= 1 and out["intra_inter_ratio"] > 0
    assert out.details["n_images"] == len(splits.private_train)
    wrapped = PostprocessedClassifier(target, lambda z: torch.log_softmax(z, 1))
    assert m.compute(empty_rec(), context(splits, wrapped)).values == pytest.approx(out.values, abs=1e-9)
    sub = metric("embedding_separation", max_images=40)
    a, b = (sub.compute(empty_rec(), context(splits, target, seed=2)) for _ in range(2))
    assert a.values == b.values
    with pytest.raises(MetricUnavailableError, match="penultimate"):
        m.compute(empty_rec(), context(splits, nn.Linear(2, 2)))


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
def test_ece_hand_computed():
    # top-1 confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.45 (wrong); 15 bins:
    # 0.9 -> bin (13/15, 14/15], 0.7 -> (10/15, 11/15], 0.45 -> (6/15, 7/15]
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.15, 0.7, 0.15], [0.3, 0.25, 0.45]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.45)
    assert expected_calibration_error(probs, labels, 15) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0  # confidence 1 lands in the last bin
    with pytest.raises(ValueError):
        expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def guo_loop_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """The binning loop of Guo et al.'s reference code: bin_lower < confidence <= bin_upper."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return float(ece)


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_matches_the_reference_loop_and_torchmetrics(bins):
    g = torch.Generator().manual_seed(bins)
    probs = torch.softmax(torch.randn(500, 7, generator=g) * 2.5, dim=1).double()
    labels = torch.randint(0, 7, (500,), generator=g)
    ece = expected_calibration_error(probs, labels, bins)
    assert ece == pytest.approx(guo_loop_ece(probs.numpy(), labels.numpy(), bins), abs=1e-9)
    try:
        from torchmetrics.classification import MulticlassCalibrationError
    except ImportError:
        return
    tm = MulticlassCalibrationError(num_classes=7, n_bins=bins, norm="l1")(probs.float(), labels)
    assert ece == pytest.approx(float(tm), abs=1e-5)


def test_calibration_metric_on_the_target_wrapped_or_not(splits, target):
    m = metric("calibration")
    ctx = context(splits, target)
    out = m.compute(empty_rec(), ctx)
    with torch.no_grad():
        probs = torch.softmax(target(splits.private_test.images()), 1)
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, splits.private_test.labels), abs=1e-6)
    assert out.details["n"] == len(splits.private_test)
    wrapped = PostprocessedClassifier(target, lambda z: z * 0)  # postprocessing must not change the value
    assert m.compute(empty_rec(), context(splits, wrapped))["ece"] == pytest.approx(out["ece"], abs=1e-9)
    ctx.private_test = None
    with pytest.raises(MetricUnavailableError):
        m.compute(empty_rec(), ctx)


# --------------------------------------------------------------------------------------------
# Gradient stability
# --------------------------------------------------------------------------------------------
def test_gradient_stability_mean_and_unavailable(splits):
    m = metric("gradient_stability")
    rec = empty_rec()
    rec.trace = {"grad_cosine": [None, 0.5, 0.25, -0.15]}  # MI-Face's trace starts with None
    ctx = context(splits)
    out = m.compute(rec, ctx)
    assert out.values == {"grad_cosine": pytest.approx(0.2)}
    assert out.details == {"steps": 3, "first": 0.5, "last": -0.15}
    for trace in ({}, {"grad_cosine": []}, {"grad_cosine": [None]}):
        rec.trace = trace
        with pytest.raises(MetricUnavailableError, match="traced no gradients"):
            m.compute(rec, context(splits))
    assert traced_cosines([1.0, None]) == [1.0]
