"""Tests of the feature-space metrics: FID, FID on correct reconstructions, KNN and FaceNet distance, PRDC.

Each value is checked against an independent numpy/scipy computation. The Inception and FaceNet
extractors from local weights files are tested in ``test_metric_weights.py``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from inversion_bench.data import LabeledImages, TensorFaces
from inversion_bench.errors import ConfigError, MetricUnavailableError
from inversion_bench.features import FeatureCache
from inversion_bench.interfaces import MetricContext, Reconstruction
from inversion_bench.metrics.fid import common_subspace, frechet_distance
from inversion_bench.metrics.knn import min_sq_distances
from inversion_bench.metrics.prdc import prdc
from inversion_bench.models import build_classifier
from inversion_bench.registry import extractors, metrics
from inversion_bench.store import Store

RES = 32
FEATURE_METRICS = ("fid", "fid_correct", "knn_distance", "facenet_distance", "prdc")


# --------------------------------------------------------------------------------------------
# Independent reference implementations
# --------------------------------------------------------------------------------------------
def direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) in the full feature space."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular when there are fewer samples than dimensions
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = np.real(scipy.linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root))


def nuclear_norm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance without a D x D square root, for few samples in many dimensions.

    With S_a = A^T A and S_b = B^T B (A, B the centred samples over sqrt(n - 1)), the eigenvalues of
    S_a S_b are the squared singular values of A B^T, so Tr((S_a S_b)^(1/2)) = ||A B^T||_*.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca = (a - a.mean(axis=0)) / math.sqrt(len(a) - 1)
    cb = (b - b.mean(axis=0)) / math.sqrt(len(b) - 1)
    nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + (ca**2).sum() + (cb**2).sum() - 2 * nuclear)


def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision/recall/density/coverage by explicit loops (Naeem et al., 2020, Eqs. 1-4)."""
    def dist(u: np.ndarray, v: np.ndarray) -> float:
        return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(u, v, strict=True)))

    nr, nf = len(real), len(fake)
    r_rad = [sorted(dist(real[i], real[j]) for j in range(nr) if j != i)[k - 1] for i in range(nr)]
    f_rad = [sorted(dist(fake[i], fake[j]) for j in range(nf) if j != i)[k - 1] for i in range(nf)]
    d = [[dist(real[i], fake[j]) for j in range(nf)] for i in range(nr)]
    precision = sum(any(d[i][j] < r_rad[i] for i in range(nr)) for j in range(nf)) / nf
    recall = sum(any(d[i][j] < f_rad[j] for j in range(nf)) for i in range(nr)) / nr
    density = sum(sum(d[i][j] < r_rad[i] for i in range(nr)) for j in range(nf)) / (k * nf)
    coverage = sum(min(d[i][j] for j in range(nf)) < r_rad[i] for i in range(nr)) / nr
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def brute_knn(fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray,
              real_labels: np.ndarray) -> np.ndarray:
    out = []
    for f, c in zip(fake, fake_labels, strict=True):
        same = [r for r, rc in zip(real, real_labels, strict=True) if rc == c]
        out.append(min(float(((f - r) ** 2).sum()) for r in same))
    return np.array(out)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: tiny batches run faster, and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def face_images(num_classes: int, per_class: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 images whose identity sets a base colour and a coarse pattern (so identities differ)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(num_classes, 3, 4, 4, generator=g)
    base = nn.functional.interpolate(base, size=(RES, RES), mode="nearest")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = 0.15 * torch.randn(labels.numel(), 3, RES, RES, generator=g)
    images = (base[labels] * 0.7 + 0.15 + noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


def make_private(num_classes: int = 4, per_class: int = 12, seed: int = 0) -> LabeledImages:
    images, labels = face_images(num_classes, per_class, seed)
    faces = TensorFaces(images, labels, [f"id{i}" for i in range(num_classes)])
    data = LabeledImages(faces, torch.arange(labels.numel()), labels, "private-train")
    data.key = "test-split"
    return data


def make_ctx(tmp_path: Path, private: LabeledImages, *, model: nn.Module | None = None,
             cache: FeatureCache | None = None, weights: dict[str, Path] | None = None) -> MetricContext:
    if model is None:
        torch.manual_seed(0)
        model = build_classifier("small-cnn", {"width": 8}, int(private.labels.max()) + 1, RES, {}).eval()
    if cache is None:
        cache = FeatureCache(Store(tmp_path / "store"), torch.device("cpu"), batch_size=8)
    return MetricContext(evaluation_model=model, target=model, target_report={"test_accuracy": 0.9},
                         private_train=private, features=cache, device=torch.device("cpu"), batch_size=8,
                         weights=dict(weights or {}))


def metric(name: str, **params) -> object:
    cls = metrics.get(name)
    return cls(cls.Params(**params))


def private_rec(private: LabeledImages, identities: list[int],
                as_labels: list[int] | None = None) -> Reconstruction:
    """Reconstructions equal to the private images of ``identities``, labelled ``as_labels`` when given."""
    mask = torch.isin(private.labels, torch.tensor(identities))
    images, labels = private.images()[mask], private.labels[mask]
    if as_labels is not None:
        relabel = dict(zip(identities, as_labels, strict=True))
        labels = torch.tensor([relabel[int(c)] for c in labels])
    return Reconstruction(images=images, labels=labels)


@torch.no_grad()
def eval_features(ctx: MetricContext, images: Tensor) -> np.ndarray:
    return ctx.evaluation_model.features(images).double().numpy()


class ColourModel(nn.Module):
    """An evaluation model that classifies by the nearest identity base colour (known decisions)."""

    def __init__(self, private: LabeledImages) -> None:
        super().__init__()
        imgs = private.images()
        self.register_buffer("centres", torch.stack([imgs[private.labels == c].mean(dim=(0, 2, 3))
                                                     for c in private.labels.unique()]))
        self.register_buffer("proj", torch.randn(3 * 8 * 8, 12, generator=torch.Generator().manual_seed(1)))
        self.cache_key = "colour-model"

    def features(self, x: Tensor) -> Tensor:
        small = nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return torch.cat([x.mean(dim=(2, 3)), small @ self.proj / 10], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return -torch.cdist(x.mean(dim=(2, 3)), self.centres)


# --------------------------------------------------------------------------------------------
# Pure functions against independent computations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(60, 50, 8), (10, 12, 32), (30, 40, 64)])
def test_frechet_distance_matches_scipy(n_real: int, n_fake: int, dim: int) -> None:
    rng = np.random.default_rng(dim)
    real = rng.normal(size=(n_real, dim))
    fake = rng.normal(size=(n_fake, dim)) @ rng.normal(size=(dim, dim)) * 0.3 + 0.5
    assert frechet_distance(real, fake) == pytest.approx(direct_fid(real, fake), abs=1e-6)
    # sqrtm of a singular product is accurate to ~1e-8 relative only
    assert nuclear_norm_fid(real, fake) == pytest.approx(direct_fid(real, fake), rel=1e-6)
    assert frechet_distance(torch.tensor(real).float(), torch.tensor(fake).float()) == pytest.approx(
        direct_fid(real.astype(np.float32), fake.astype(np.float32)), rel=1e-6)


def test_common_subspace_keeps_distances() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(5, 300)), rng.normal(size=(4, 300)) + 1.0
    r2, f2 = common_subspace(real, fake)
    assert r2.shape[1] <= 8
    both, both2 = np.concatenate([real, fake]), np.concatenate([r2, f2])
    d = np.linalg.norm(both[:, None] - both[None], axis=-1)
    d2 = np.linalg.norm(both2[:, None] - both2[None], axis=-1)
    np.testing.assert_allclose(d, d2, atol=1e-9)


def test_frechet_distance_rejects_too_few_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_bruteforce(k: int) -> None:
    rng = np.random.default_rng(k)
    real = rng.normal(size=(25, 6))
    fake = rng.normal(size=(20, 6)) * 1.3 + 0.4
    got, want = prdc(real, fake, k), brute_prdc(real, fake, k)
    assert set(got) == {"precision", "recall", "density", "coverage"}
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_prdc_of_identical_sets_and_errors() -> None:
    real = np.random.default_rng(0).normal(size=(15, 4))
    res = prdc(real, real, 3)
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and res["coverage"] == 1.0
    with pytest.raises(ValueError, match="more than 3"):
        prdc(real[:3], real, 3)


def test_min_sq_distances_matches_bruteforce() -> None:
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(30, 7)), rng.normal(size=(12, 7))
    real_l, fake_l = rng.integers(0, 3, 30), rng.integers(0, 3, 12)
    got = min_sq_distances(torch.tensor(fake), torch.tensor(fake_l), torch.tensor(real), torch.tensor(real_l))
    np.testing.assert_allclose(got.numpy(), brute_knn(fake, fake_l, real, real_l), rtol=0, atol=1e-6)
    with pytest.raises(MetricUnavailableError, match="identity 7"):
        min_sq_distances(torch.tensor(fake), torch.full((12,), 7), torch.tensor(real), torch.tensor(real_l))


# --------------------------------------------------------------------------------------------
# Metrics (evaluation-model features) against independent computations
# --------------------------------------------------------------------------------------------
def test_metrics_match_independent_computation(tmp_path: Path) -> None:
    private = make_private(num_classes=4, per_class=12)
    ctx = make_ctx(tmp_path, private)
    rec_imgs, rec_labels = face_images(4, 6, seed=7)
    keep = rec_labels < 3  # identities 0, 1, 2 attacked
    rec = Reconstruction(images=rec_imgs[keep].float() / 255, labels=rec_labels[keep])
    real_mask = (private.labels < 3).numpy()
    real = eval_features(ctx, private.images())[real_mask]
    real_labels = private.labels.numpy()[real_mask]
    fake = eval_features(ctx, rec.images)
    fake_labels = rec.labels.numpy()

    out = metric("fid").compute(rec, ctx)
    assert out["fid"] == pytest.approx(direct_fid(real, fake), abs=1e-6 * max(1.0, out["fid"]))
    assert out.details["n_real"] == 36 and out.details["n_fake"] == 18

    out = metric("knn_distance").compute(rec, ctx)
    want = brute_knn(fake, fake_labels, real, real_labels).mean()
    assert out["knn_distance"] == pytest.approx(want, abs=1e-6)
    per_identity = {c: brute_knn(fake[fake_labels == c], fake_labels[fake_labels == c], real, real_labels).mean()
                    for c in range(3)}
    assert out.per_identity["knn_distance"] == pytest.approx(per_identity, abs=1e-6)

    out = metric("prdc", k=3).compute(rec, ctx)
    per_id = [brute_prdc(real[real_labels == c], fake[fake_labels == c], 3) for c in range(3)]
    for name in ("precision", "recall", "density", "coverage"):
        assert out[name] == pytest.approx(np.mean([p[name] for p in per_id]), abs=1e-6), name
    assert sorted(out.details["per_identity"]) == [0, 1, 2] and not out.per_identity


def test_identical_reconstructions_and_shuffled_identities(tmp_path: Path) -> None:
    private = make_private(num_classes=4, per_class=12)
    ctx = make_ctx(tmp_path, private)
    same = private_rec(private, [0, 1, 2])
    shuffled = private_rec(private, [0, 1, 2], as_labels=[1, 2, 0])  # each identity's images as another's
    fid, knn, pr = metric("fid"), metric("knn_distance"), metric("prdc")

    assert fid.compute(same, ctx)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert knn.compute(same, ctx)["knn_distance"] == pytest.approx(0.0, abs=1e-9)
    res = pr.compute(same, ctx)
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and res["coverage"] == 1.0

    # FID compares image sets: attribute identities 0 and 1's images to the unattacked 2 and 3
    assert fid.compute(private_rec(private, [0, 1], as_labels=[2, 3]), ctx)["fid"] > 1e-3
    assert fid.compute(private_rec(private, [0, 1]), ctx)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert knn.compute(shuffled, ctx)["knn_distance"] > 1e-3
    res_shuffled = pr.compute(shuffled, ctx)
    assert res_shuffled["precision"] < 0.5 and res_shuffled["recall"] < 0.5 and res_shuffled["coverage"] < 0.5


def test_fid_correct_uses_correctly_classified_reconstructions(tmp_path: Path) -> None:
    private = make_private(num_classes=4, per_class=10)
    model = ColourModel(private)
    ctx = make_ctx(tmp_path, private, model=model)
    imgs, labels = face_images(4, 5, seed=3)
    rec_labels = labels.clone()
    rec_labels[labels == 3] = 0  # identity 3's images attributed to 0: misclassified
    rec_labels[labels == 2] = 1
    rec = Reconstruction(images=imgs.float() / 255, labels=rec_labels)
    correct = model(rec.images).argmax(1) == rec.labels
    assert 4 <= int(correct.sum()) < len(rec_labels)

    out = metric("fid_correct").compute(rec, ctx)
    real_mask = torch.isin(private.labels, rec.labels.unique())
    real = eval_features(ctx, private.images()[real_mask])
    fake = eval_features(ctx, rec.images[correct])
    want = direct_fid(real, fake)
    assert out["fid_correct"] == pytest.approx(want, abs=1e-6 * max(1.0, want))
    det = out.details
    assert det["correct_indices"] == torch.nonzero(correct).flatten().tolist()
    assert det["per_identity"][0] == {"n": 10, "n_correct": int(correct[rec_labels == 0].sum())}
    assert det["extractor_key"] == "evaluation-model-colour-model"
    assert metric("fid").compute(rec, ctx)["fid"] != out["fid_correct"]

    none_correct = Reconstruction(images=rec.images[labels == 3], labels=rec_labels[labels == 3])
    with pytest.raises(MetricUnavailableError, match="classified"):
        metric("fid_correct").compute(none_correct, ctx)


def test_metric_unavailable_cases(tmp_path: Path) -> None:
    private = make_private(num_classes=3, per_class=4)
    ctx = make_ctx(tmp_path, private)
    one = Reconstruction(images=private.images([0]), labels=private.labels[:1])
    with pytest.raises(MetricUnavailableError, match="at least 2"):
        metric("fid").compute(one, ctx)
    empty = Reconstruction(images=torch.zeros(0, 3, RES, RES), labels=torch.zeros(0, dtype=torch.long))
    for name in ("fid", "knn_distance", "prdc"):
        with pytest.raises(MetricUnavailableError, match="no images"):
            metric(name).compute(empty, ctx)
    few = private_rec(private, [0, 1])  # 4 images per identity with k=5
    with pytest.raises(MetricUnavailableError, match="k=5"):
        metric("prdc", k=5).compute(few, ctx)


def test_directions_params_and_provenance(tmp_path: Path) -> None:
    assert metrics.get("fid").better == {"fid": "higher"}
    assert metrics.get("fid_correct").better == {"fid_correct": "higher"}
    assert metrics.get("knn_distance").better == {"knn_distance": "higher"}
    assert metrics.get("facenet_distance").better == {"facenet_distance": "higher"}
    prdc_names = ("precision", "recall", "density", "coverage")
    assert metrics.get("prdc").better == dict.fromkeys(prdc_names, "lower")
    assert {"evaluation-model", "inception", "facenet"} <= set(extractors.names())
    assert metric("fid").required_weights() == {}
    with pytest.raises(ConfigError, match="unknown extractor"):
        metric("fid", extractor="vgg")
    with pytest.raises(ConfigError, match="takes no weights"):
        metric("prdc", weights="fid_inception")

    private = make_private(num_classes=3, per_class=6)
    ctx = make_ctx(tmp_path, private)
    rec = private_rec(private, [0, 1])
    for name in ("fid", "knn_distance", "prdc"):
        out = metric(name).compute(rec, ctx)
        assert set(out.values) == set(metrics.get(name).better)
        assert all(math.isfinite(v) for v in out.values.values())
        assert out.details["extractor"] == "evaluation-model"
        assert out.details["extractor_key"] == "evaluation-model-evaluation-model"
        assert "weights_sha256" in out.details


# --------------------------------------------------------------------------------------------
# One feature cache
# --------------------------------------------------------------------------------------------
def test_private_features_computed_once(tmp_path: Path) -> None:
    private = make_private(num_classes=4, per_class=10)  # 40 images = 5 batches of 8
    model = build_classifier("small-cnn", {"width": 8}, 4, RES, {}).eval()
    model.cache_key = "eval-abc"
    cache = FeatureCache(Store(tmp_path / "store"), torch.device("cpu"), batch_size=8)
    fid, knn, pr = metric("fid"), metric("knn_distance"), metric("prdc")
    pairs = [private_rec(private, ids) for ids in ([0, 1], [2, 3], [1, 2])]  # 20 images = 3 batches each
    ctx = make_ctx(tmp_path, private, model=model, cache=cache)
    ext = fid.extractor(ctx)
    assert ext.key == "evaluation-model-eval-abc"
    for rec in pairs:
        pair_ctx = make_ctx(tmp_path, private, model=model, cache=cache)
        fid.compute(rec, pair_ctx)
        assert fid.extractor(pair_ctx) is ext
    assert ext.calls == 5 + 3 * 3
    for rec in pairs:
        knn.compute(rec, make_ctx(tmp_path, private, model=model, cache=cache))
        pr.compute(rec, make_ctx(tmp_path, private, model=model, cache=cache))
    assert knn.extractor(ctx).calls == 3 * 3  # private features came from the shared cache
    stored = [p for p in (tmp_path / "store" / "features").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 1

    # a later run (new cache object, same store) reads the private features from the store
    fid2 = metric("fid")
    ctx2 = make_ctx(tmp_path, private, model=model,
                    cache=FeatureCache(Store(tmp_path / "store"), torch.device("cpu"), batch_size=8))
    fid2.compute(pairs[0], ctx2)
    assert fid2.extractor(ctx2).calls == 3


def test_attack_accuracy_counts_identities_without_images_as_misses():
    from inversion_bench.metrics.accuracy import accuracy_over_attacked

    hits = torch.tensor([True, True, False, True, False, False])
    labels = torch.tensor([0, 0, 0, 2, 2, 2])  # identity 1 was attacked but has no image
    assert accuracy_over_attacked(hits, labels, attacked=2) == pytest.approx(3 / 6)
    # per identity: 2/3 and 1/3 present, 0 for the missing one -> (2/3 + 1/3 + 0) / 3
    assert accuracy_over_attacked(hits, labels, attacked=3) == pytest.approx(1 / 3)
    # every identity present: the plain mean over images (as before)
    assert accuracy_over_attacked(hits, labels, attacked=1) == pytest.approx(3 / 6)
