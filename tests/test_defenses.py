"""Unit tests of the defenses' loss terms, output transforms and training procedures (tiny tensors and data)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inversion_bench.defenses._parts import body_stages
from inversion_bench.defenses.bido import (
    BiDO,
    bido_terms,
    center,
    coco,
    gaussian_kernel,
    hsic,
    linear_kernel,
    normalized_hsic,
)
from inversion_bench.defenses.dp_sgd import DPSGD
from inversion_bench.defenses.mid import MID, SIGMA_SHIFT, VIBHead, gaussian_kl
from inversion_bench.defenses.output import ConfidenceRounding, TopKLogits, rounded_log_confidences, top_k_logits
from inversion_bench.defenses.tl_dmi import TLDMI, trainable_prefixes
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import PostprocessedClassifier
from inversion_bench.models import SmallCNN, SmallResNet, build_classifier
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES

NUM_CLASSES = DEFENSE_CLASSES


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(defense_splits):
    return defense_splits


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return SmallCNN(SmallCNN.Params(width=8)).build(NUM_CLASSES, 16, {})


def trainer(splits, epochs: int = 1, **kw) -> Trainer:
    return Trainer(TrainingRecipe(epochs=epochs, batch_size=16), splits.private_train, splits.private_test,
                   RunSettings(progress=False), seed=0, **kw)


# ------------------------------------------------------------------------------------------- MID
def test_gaussian_kl_hand_computed():
    # row 1: mu (1, 0), var (1, 2): 1/2 * [(1 + 1 - 1 - 0) + (0 + 2 - 1 - ln 2)] = 1 - ln(2)/2
    # row 2: mu 0, var 1: 0
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    assert float(gaussian_kl(mu, logvar)) == pytest.approx((1 - math.log(2) / 2) / 2, abs=1e-6)
    # matches torch.distributions
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    ref = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert float(gaussian_kl(mu, logvar)) == pytest.approx(float(ref), rel=1e-5)


def test_vib_head_sampling_mean_and_kl():
    torch.manual_seed(0)
    head = VIBHead(8, 3, 4)
    f = torch.randn(5, 8)
    mu, logvar = head.encode(f)
    assert mu.shape == logvar.shape == (5, 3)
    head.eval()
    out = head(f)
    assert torch.allclose(out, head.classifier(mu))  # inference uses the mean
    assert head.last_kl is None  # no KL (and no graph) kept at inference
    head.train()
    a = head(f)
    assert float(head.pop_kl().detach()) == pytest.approx(float(gaussian_kl(mu, logvar).detach()), rel=1e-6)
    assert head.pop_kl() is None
    assert not torch.equal(a, head(f))  # z = mu + sigma * eps at training time
    # the reference parametrisation: sigma = softplus(s - 5), i.e. ~0.0067 for a zero pre-activation
    with torch.no_grad():
        head.stats.weight.zero_()
        head.stats.bias.zero_()
    _, logvar0 = head.encode(f)
    assert torch.allclose(logvar0, torch.full_like(logvar0, 2 * math.log(F.softplus(torch.tensor(-SIGMA_SHIFT)))))


def test_mid_configure_and_criterion():
    d = MID(MID.Params(beta=0.5))
    model = d.configure_model(small_cnn())
    assert isinstance(model.head, VIBHead) and model.head.bottleneck == model.feature_dim // 2
    keys = sorted(model.state_dict())
    assert sorted(MID(MID.Params(beta=0.5)).configure_model(small_cnn(1)).state_dict()) == keys
    assert MID(MID.Params(bottleneck=5)).configure_model(small_cnn()).head.bottleneck == 5
    model.train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    kl = float(model.head.last_kl.detach())
    loss = d.criterion(logits, y, 0.0)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, y).detach()) + 0.5 * kl, rel=1e-5)
    # a second loss on the same forward (auxiliary logits) adds no second KL term
    ce = float(F.cross_entropy(logits, y).detach())
    assert float(d.criterion(logits, y, 0.0).detach()) == pytest.approx(ce, rel=1e-6)


# ------------------------------------------------------------------------------------------ BiDO
def _hsic_loops(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """tr(K H L H) / (m-1)^2 expanded into double sums, written out with loops."""
    m = k.shape[0]
    s_kl = s_k = s_l = s_row = 0.0
    for i in range(m):
        row_k = row_l = 0.0
        for j in range(m):
            s_kl += k[i, j] * l[i, j]
            s_k += k[i, j]
            s_l += l[i, j]
            row_k += k[i, j]
            row_l += l[i, j]
        s_row += row_k * row_l
    return (s_kl - 2.0 / m * s_row + s_k * s_l / m**2) / (m - 1) ** 2


def test_gaussian_kernel_matches_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, generator=g)  # flattened to d = 6
    sigma = 1.5
    k = gaussian_kernel(x, sigma)
    xf = x.flatten(1).numpy()
    for i in range(4):
        for j in range(4):
            want = math.exp(-float(((xf[i] - xf[j]) ** 2).sum()) / (2 * sigma**2 * 6))
            assert float(k[i, j]) == pytest.approx(want, rel=1e-5)
    assert float(gaussian_kernel(x, sigma, scale_by_dim=False)[0, 1]) == pytest.approx(
        math.exp(-float(((xf[0] - xf[1]) ** 2).sum()) / (2 * sigma**2)), rel=1e-5)


def test_hsic_matches_double_loop():
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
    y = F.one_hot(torch.tensor([0, 1, 1, 2, 0, 2, 1]), 3).float()
    for k1, k2 in ((gaussian_kernel(x, 2.0), gaussian_kernel(z, 2.0)), (gaussian_kernel(z, 1.0), linear_kernel(y))):
        assert float(hsic(k1, k2)) == pytest.approx(_hsic_loops(k1.double().numpy(), k2.double().numpy()), rel=1e-5)
    # with H explicit: tr(K H L H) / (m - 1)^2
    k1, k2 = gaussian_kernel(x, 2.0).double(), linear_kernel(y).double()
    h = torch.eye(7, dtype=torch.float64) - 1.0 / 7
    assert float(hsic(k1, k2)) == pytest.approx(float(torch.trace(k1 @ h @ k2 @ h)) / 36, rel=1e-9)
    assert torch.allclose(center(k1), h @ k1 @ h)


def test_hsic_and_coco_two_points_hand_computed():
    # m = 2: H K H = (1 - a)/2 [[1, -1], [-1, 1]], so tr(KHLH) = (1-a)(1-b), ||HKH HLH|| = (1-a)(1-b)
    a, b = 0.3, 0.6
    k = torch.tensor([[1.0, a], [a, 1.0]])
    l = torch.tensor([[1.0, b], [b, 1.0]])  # noqa: E741
    assert float(hsic(k, l)) == pytest.approx((1 - a) * (1 - b), rel=1e-6)
    assert float(coco(k, l)) == pytest.approx(math.sqrt((1 - a) * (1 - b)) / 2, rel=1e-6)
    assert float(coco(k, l, norm="spectral")) == pytest.approx(math.sqrt((1 - a) * (1 - b)) / 2, rel=1e-5)


def test_normalized_hsic_hand_computed_and_numpy():
    # m = 2: K H = c P with P = [[1, -1], [-1, 1]], c = (1 - a)/2, so R_K = 2c / (2c + 2 eps) * P / 2 and
    # sum(R_K * R_L^T) = tr(R_K R_L) = (1 - a)(1 - b) / ((1 - a + 2 eps)(1 - b + 2 eps))
    a, b, eps = 0.3, 0.6, 1e-3
    k = torch.tensor([[1.0, a], [a, 1.0]], dtype=torch.float64)
    l = torch.tensor([[1.0, b], [b, 1.0]], dtype=torch.float64)  # noqa: E741
    want = (1 - a) * (1 - b) / ((1 - a + 2 * eps) * (1 - b + 2 * eps))
    assert float(normalized_hsic(k, l, eps=eps)) == pytest.approx(want, rel=1e-9)
    # against the definition with explicit H and inverses
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)
    k1, k2 = gaussian_kernel(x, 1.0).double().numpy(), gaussian_kernel(z, 1.0).double().numpy()
    h = np.eye(6) - 1.0 / 6
    r1 = k1 @ h @ np.linalg.inv(k1 @ h + 1e-5 * 6 * np.eye(6))
    r2 = k2 @ h @ np.linalg.inv(k2 @ h + 1e-5 * 6 * np.eye(6))
    got = float(normalized_hsic(torch.from_numpy(k1), torch.from_numpy(k2)))
    assert got == pytest.approx(float((r1 * r2.T).sum()), rel=1e-6)


def test_coco_matches_numpy_and_has_finite_gradient_at_zero():
    g = torch.Generator().manual_seed(2)
    x, z = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    k1, k2 = gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0)
    h = np.eye(6) - 1.0 / 6
    prod = (h @ k1.double().numpy() @ h) @ (h @ k2.double().numpy() @ h)
    assert float(coco(k1, k2)) == pytest.approx(math.sqrt(np.linalg.norm(prod, "fro")) / 6, rel=1e-5)
    assert float(coco(k1, k2, norm="spectral")) == pytest.approx(math.sqrt(np.linalg.norm(prod, 2)) / 6, rel=1e-4)
    # labels all equal -> centred label kernel is 0; the gradient must stay finite
    zz = torch.randn(4, 3, requires_grad=True)
    val = coco(gaussian_kernel(zz, 1.0), linear_kernel(torch.ones(4, 1)))
    val.backward()
    assert torch.isfinite(zz.grad).all()


def test_hsic_dependence_is_larger_for_dependent_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g)
    indep = torch.randn(64, 4, generator=g)
    k = gaussian_kernel(x, 1.0)
    dependent = float(hsic(k, gaussian_kernel(x + 0.1 * torch.randn(64, 4, generator=g), 1.0)))
    assert dependent > 4 * float(hsic(k, gaussian_kernel(indep, 1.0)))


def test_bido_terms_sum_over_layers():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 4, 4, generator=g)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 2, 2, generator=g)
    y = torch.tensor([0, 1, 0, 2, 1])
    dx, dy = bido_terms(x, [z1, z2], y, 3, measure="hsic", sigma=5.0)
    kx, ky = gaussian_kernel(x, 5.0), linear_kernel(F.one_hot(y, 3).float())
    want_x = sum(float(hsic(kx, gaussian_kernel(z, 5.0))) for z in (z1, z2))
    want_y = sum(float(hsic(gaussian_kernel(z, 5.0), ky)) for z in (z1, z2))
    assert float(dx) == pytest.approx(want_x, rel=1e-5) and float(dy) == pytest.approx(want_y, rel=1e-5)


def test_body_stages_of_the_shipped_architectures():
    assert [n for n, _ in body_stages(small_cnn().body)] == ["body.0", "body.2", "body.4", "body.6"]
    res = SmallResNet(SmallResNet.Params(width=8)).build(NUM_CLASSES, 16, {})
    assert [n for n, _ in body_stages(res.body)] == ["body.0", "body.1", "body.2", "body.3", "body.4"]
    r18 = build_classifier("resnet18", {"input_size": 32}, NUM_CLASSES, 32, {})
    assert [n for n, _ in body_stages(r18.body)] == [f"body.net.{s}" for s in
                                                    ("conv1", "layer1", "layer2", "layer3", "layer4")]


def test_bido_layer_selection_and_defaults():
    model = small_cnn()
    d = BiDO(BiDO.Params(layers=[0, -1, "3"]))
    assert [n for n, _ in d.hidden_modules(model)] == ["body.0", "body.6", "body.3"]
    with pytest.raises(ConfigError, match="out of range"):
        BiDO(BiDO.Params(layers=[7])).hidden_modules(model)
    with pytest.raises(ConfigError, match="no submodule"):
        BiDO(BiDO.Params(layers=["nope"])).hidden_modules(model)
    assert BiDO.Params().measure == "nhsic" and BiDO(BiDO.Params()).weights() == (0.05, 0.5)
    assert BiDO(BiDO.Params(measure="coco")).weights() == (5.0, 35.0)
    assert BiDO(BiDO.Params(measure="coco", lambda_x=1.0)).weights() == (1.0, 35.0)


def test_bido_training_uses_hidden_layers_and_removes_hooks(splits):
    d = BiDO(BiDO.Params())
    model = small_cnn()
    seen = []
    orig = d.criterion

    def spy(logits, targets, progress):
        seen.append(sorted(d._captured))
        return orig(logits, targets, progress)

    d.criterion = spy
    t = trainer(splits)
    d.fit(model, t)
    assert seen and seen[0] == sorted(["input", "body.0", "body.2", "body.4", "body.6", "features"])
    rep = d.report()
    assert rep["bido_dep_x"] > 0 and rep["bido_dep_y"] > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------- TL-DMI
def test_tl_dmi_trainable_prefixes():
    model = small_cnn()
    assert trainable_prefixes(model, 2) == ["body.4", "body.6", "head"]
    assert trainable_prefixes(model, 0) == ["head"]
    assert trainable_prefixes(model, 1, ["body.6.0", "head"]) == ["body.6.0", "head"]
    with pytest.raises(ConfigError, match="stages"):
        trainable_prefixes(model, 5)
    with pytest.raises(ConfigError, match="no module"):
        trainable_prefixes(model, 1, ["body.99"])


def test_tl_dmi_pretrains_then_freezes(splits):
    d = TLDMI(TLDMI.Params(finetune_stages=1))
    model = small_cnn()
    init = copy.deepcopy(model.state_dict())
    t = trainer(splits, public=splits.public)
    snap = {}
    orig_fit = t.fit

    def spy(m, criterion, **kw):  # the private fine-tuning: remember the state after public pretraining
        snap.update(copy.deepcopy(m.state_dict()))
        return orig_fit(m, criterion, **kw)

    t.fit = spy
    d.fit(model, t)
    after = model.state_dict()
    assert t.result is not None and 0.0 <= t.result.test_accuracy <= 1.0
    frozen = [k for k in after if not k.startswith(("body.6.", "head."))]
    tuned = [k for k in after if k.startswith(("body.6.", "head.")) and "num_batches" not in k]
    # pretraining changed the early layers ...
    assert any(not torch.equal(init[k], snap[k]) for k in frozen if k.startswith("body.0.0"))
    # ... which then stayed exactly as pretrained, BatchNorm running statistics included
    moved = [k for k in frozen if not torch.equal(snap[k], after[k])]
    assert not moved, moved
    assert any("running_mean" in k for k in frozen)
    assert all(not torch.equal(snap[k], after[k]) for k in tuned if "weight" in k)
    assert all(p.requires_grad == n.startswith(("body.6.", "head.")) for n, p in model.named_parameters())
    assert torch.equal(init["head.weight"], snap["head.weight"])  # the private head is fresh for fine-tuning
    rep = d.report()
    assert 0.0 <= rep["public_accuracy"] <= 1.0 and 0.0 < rep["trainable_fraction"] < 1.0


def test_tl_dmi_needs_public_data(splits):
    with pytest.raises(ConfigError, match="public"):
        TLDMI(TLDMI.Params()).fit(small_cnn(), trainer(splits))


# ---------------------------------------------------------------------------------------- DP-SGD
def test_dp_sgd_configure_model_replaces_batchnorm():
    d = DPSGD(DPSGD.Params())
    model = d.configure_model(small_cnn())
    mods = list(model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in mods)
    assert not any(getattr(m, "inplace", False) for m in mods)
    assert sorted(model.state_dict()) == sorted(DPSGD(DPSGD.Params()).configure_model(small_cnn(3)).state_dict())


def _dp_run(splits, params):
    d = DPSGD(params)
    model = d.configure_model(small_cnn())
    t = trainer(splits, epochs=2)
    d.fit(model, t)
    return d, model, t


def test_dp_sgd_trains_deterministically_and_reports_epsilon(splits):
    from opacus.accountants import RDPAccountant

    params = DPSGD.Params(noise_multiplier=1.1, max_grad_norm=0.5)
    d1, m1, t1 = _dp_run(splits, params)
    d2, m2, _ = _dp_run(splits, params)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert not any(hasattr(p, "grad_sample") for p in m1.parameters())  # Opacus' hooks are gone
    rep = d1.report()
    q = 1 / math.ceil(len(splits.private_train) / 16)
    acc = RDPAccountant()
    acc.history = [(1.1, q, 2 * round(1 / q))]
    assert rep["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert rep["delta"] == 1e-5 and rep["noise_multiplier"] == 1.1 and rep["sample_rate"] == pytest.approx(q)
    assert 0.0 <= t1.result.test_accuracy <= 1.0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_dp_sgd_target_epsilon(splits):
    d, _, _ = _dp_run(splits, DPSGD.Params(target_epsilon=8.0))
    rep = d.report()
    assert rep["epsilon"] <= 8.0 + 0.05 and rep["epsilon"] > 6.0
    assert rep["noise_multiplier"] > 0


# ------------------------------------------------------------------------------------ output
def test_top_k_logits_hand_computed():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [0.0, -1.0, 4.0, 4.5]])
    out = top_k_logits(logits, 2)
    assert torch.equal(out, torch.tensor([[-1e4, 5.0, 3.0, -1e4], [-1e4, -1e4, 4.0, 4.5]]))
    p = torch.softmax(out, dim=1)
    assert float(p[0, 0]) == 0.0 and float(p[0, 1]) == pytest.approx(math.exp(5) / (math.exp(5) + math.exp(3)))
    assert torch.equal(top_k_logits(logits, 10), logits)
    assert TopKLogits(TopKLogits.Params()).params.k == 3


def test_rounded_confidences_hand_computed():
    probs = torch.tensor([[0.123, 0.456, 0.421], [0.004, 0.006, 0.990]])
    out = rounded_log_confidences(torch.log(probs), decimals=2, floor=1e-8)
    want = torch.log(torch.tensor([[0.12, 0.46, 0.42], [1e-8, 0.01, 0.99]]))
    assert torch.allclose(out, want, atol=1e-5)
    out1 = rounded_log_confidences(torch.log(probs), decimals=1)
    assert torch.allclose(out1, torch.log(torch.tensor([[0.1, 0.5, 0.4], [1e-8, 1e-8, 1.0]])), atol=1e-5)
    # rounding hides the gradient
    logits = torch.randn(3, 5, requires_grad=True)
    rounded_log_confidences(logits, 2).sum().backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_output_defenses_wrap_the_target():
    model = small_cnn().eval()
    x = torch.rand(3, 3, 16, 16)
    for d in (TopKLogits(TopKLogits.Params(k=2)), ConfidenceRounding(ConfidenceRounding.Params(decimals=1))):
        assert d.has_postprocess
        wrapped = PostprocessedClassifier(model, d.postprocess)
        with torch.no_grad():
            assert torch.equal(wrapped(x), d.postprocess(model(x)))
            assert torch.equal(wrapped(x).argmax(1), model(x).argmax(1)) or isinstance(d, ConfidenceRounding)


# ------------------------------------------------------------------------- Trainer(batches=...)
def test_trainer_fit_with_custom_batches_skips_empty_ones(splits):
    calls = []

    def batches(epoch, g):
        calls.append(epoch)
        yield splits.private_train.images([]), splits.private_train.labels[:0]
        yield splits.private_train.images(list(range(8))), splits.private_train.labels[:8]

    t = trainer(splits, epochs=2)
    res = t.fit(small_cnn(), lambda lo, y, p: F.cross_entropy(lo, y), batches=batches)
    assert calls == [0, 1]
    assert len(res.history) == 2 and res.images_per_second > 0
