"""SSD (Stealthy Shield Defense, Zhuang et al., ICLR 2025): the water-filling step against hand-computed values
and an independent convex solver, the properties the paper states, and the defense as attacks see it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inversion_bench.defenses.ssd import (
    BUFFER,
    StealthyShieldDefense,
    class_mean_outputs,
    output_entropy,
    positive_means,
    sample_labels,
    sampling_weights,
    ssd_logits,
    ssd_probabilities,
    water_fill,
)
from inversion_bench.errors import BenchError
from inversion_bench.interfaces import PostprocessedClassifier
from inversion_bench.models import SmallCNN
from inversion_bench.oracle import LabelOracle, ScoreOracle
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES, run_tiny, tiny_suite

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


def _t(rows):
    return torch.tensor(rows, dtype=D)


# ------------------------------------------------------------------------------------ water-filling
def test_water_fill_hand_computed():
    # row 0: ratios f/q = (7, 2/3, 1/6); raising class 2 up to ratio 2/3 would add 0.3 > 0.2, so
    # w_A = (0.1 + 0.2) / 0.6 = 0.5; lowering class 0 down to 2/3 would remove 0.63 > 0.2, so
    # w_B = (0.7 - 0.2) / 0.1 = 5; p = (min(0.7, 0.5), 0.2, max(0.1, 0.3)) = (0.5, 0.2, 0.3)
    # row 1: ratios (5, 1/2, 1): w_A = (0.4 + 0.2) / 0.8 = 0.75, w_B = (0.5 - 0.2) / 0.1 = 3,
    # p = (min(0.5, 0.3), max(0.4, 0.6), 0.1) = (0.3, 0.6, 0.1): the top class changes (q points elsewhere)
    f = _t([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    q = _t([[0.1, 0.3, 0.6], [0.1, 0.8, 0.1]])
    p = water_fill(f, q, _t([0.4, 0.4]))
    assert torch.allclose(p, _t([[0.5, 0.2, 0.3], [0.3, 0.6, 0.1]]), atol=1e-12)
    assert torch.allclose(p.sum(1), _t([1.0, 1.0]), atol=1e-12)
    assert p[0].argmax() == f[0].argmax() and p[1].argmax() != f[1].argmax()


def test_water_fill_returns_q_within_the_budget_and_f_without_one():
    f = _t([[0.7, 0.2, 0.1]])
    q = _t([[0.1, 0.3, 0.6]])  # ||q - f||_1 = 1.2
    assert torch.equal(water_fill(f, q, _t([1.2])), q)
    assert torch.equal(water_fill(f, q, _t([5.0])), q)
    assert torch.allclose(water_fill(f, q, _t([0.0])), f, atol=1e-15)


def _random_pairs(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=D), 1)
    q = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=D), 1)
    return f, q, 2 * torch.rand(n, generator=g, dtype=D)


@pytest.mark.parametrize("c", [2, 3, 7, 50])
def test_water_fill_properties_the_paper_states(c):
    f, q, budget = _random_pairs(200, c, seed=c)
    p = water_fill(f, q, budget)
    # a distribution
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(200, dtype=D), atol=1e-12)
    # Appendix B: p = q when q is within the budget, else the budget is spent exactly
    reachable = (q - f).abs().sum(1) <= budget
    assert reachable.any() and (~reachable).any()
    assert torch.equal(p[reachable], q[reachable])
    assert torch.allclose((p - f).abs().sum(1)[~reachable], budget[~reachable], atol=1e-10)
    # Lemma 1: every p_i lies between f_i and q_i
    lo, hi = torch.minimum(f, q), torch.maximum(f, q)
    assert (p >= lo - 1e-12).all() and (p <= hi + 1e-12).all()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) / q), 0.0)))


def test_water_fill_is_the_optimum_of_an_independent_convex_solver():
    """min KL(p || q) s.t. ||p - f||_1 <= b, p in the simplex, by SciPy's SLSQP over (p, t) with t >= |p - f|."""
    from scipy.optimize import minimize

    c = 5
    f, q, budget = _random_pairs(12, c, seed=7)
    p = water_fill(f, q, budget).numpy()
    for i in range(12):
        fi, qi, b = f[i].numpy(), q[i].numpy(), float(budget[i])
        cons = [{"type": "eq", "fun": lambda x: x[:c].sum() - 1.0},
                {"type": "ineq", "fun": lambda x, b=b: b - x[c:].sum()},
                {"type": "ineq", "fun": lambda x, fi=fi: x[c:] - (x[:c] - fi)},
                {"type": "ineq", "fun": lambda x, fi=fi: x[c:] + (x[:c] - fi)}]
        x0 = np.concatenate([fi, np.zeros(c)])
        res = minimize(lambda x, qi=qi: _kl(x[:c], qi), x0, constraints=cons, method="SLSQP",
                       bounds=[(1e-12, 1.0)] * c + [(0.0, 2.0)] * c, options={"ftol": 1e-12, "maxiter": 500})
        assert res.success, res.message
        assert _kl(p[i], qi) <= res.fun + 1e-7
        assert np.allclose(p[i], res.x[:c], atol=1e-3)


def test_shared_top_class_is_kept():
    """Not a claim of the paper (SSD may change the label, its Table 3 loses test accuracy); it follows from
    Lemma 1 and eq. 16: when f and q have the same top class, p* keeps it."""
    f, q, budget = _random_pairs(2000, 6, seed=3)
    same = f.argmax(1) == q.argmax(1)
    p = water_fill(f, q, 3 * budget)
    assert same.sum() > 100
    assert torch.equal(p[same].argmax(1), f[same].argmax(1))
    assert (p[~same].argmax(1) != f[~same].argmax(1)).any()  # elsewhere it can change


def test_water_fill_has_a_finite_gradient():
    f, q, budget = _random_pairs(16, 5, seed=1)
    f.requires_grad_(True)
    water_fill(f, q, budget)[:, 0].sum().backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ the other steps
def test_entropy_and_sampling_weights_hand_computed():
    assert torch.allclose(output_entropy(_t([[0.5, 0.5], [1.0, 0.0]])), _t([math.log(2), 0.0]))
    w = sampling_weights(_t([[0.7, 0.2, 0.1]]), 0.1)
    e = [math.exp(7), math.exp(2), math.exp(1)]
    assert torch.allclose(w, _t([[x / sum(e) for x in e]]))
    g = torch.Generator().manual_seed(0)
    drawn = sample_labels(_t([[0.7, 0.2, 0.1]]).expand(20000, 3), 0.1, g)
    freq = torch.bincount(drawn, minlength=3).double() / 20000
    assert torch.allclose(freq, w[0], atol=0.01)


def test_class_means_hand_computed_and_missing_class():
    probs = _t([[0.6, 0.4], [0.8, 0.2], [0.1, 0.9]])
    means = class_mean_outputs(probs, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(means, _t([[0.7, 0.3], [0.1, 0.9]]))
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        class_mean_outputs(probs, torch.tensor([0, 0, 1]), 3)


def test_ssd_probabilities_hand_computed():
    f = _t([[0.7, 0.2, 0.1]])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    means = _t([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    # sampled label 2: budget eps * H = 0.4 as in test_water_fill_hand_computed
    p = ssd_probabilities(f, means, torch.tensor([2]), 0.4 / h)
    assert torch.allclose(p, _t([[0.5, 0.2, 0.3]]), atol=1e-12)
    # sampled label 0: ||q - f||_1 = 0.4 <= 0.4, so the class mean itself is released
    assert torch.allclose(ssd_probabilities(f, means, torch.tensor([0]), 0.4 / h), means[:1])


def test_ssd_logits_release_the_sampled_class_mean_direction():
    logits = torch.log(_t([[0.7, 0.2, 0.1]])).float()
    means = _t([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    # T -> 0 draws the top class (0) every time: the released output is water_fill(f, means[0], eps H)
    out = ssd_logits(logits, means, 1e-3, 0.3, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    f = _t([[0.7, 0.2, 0.1]])
    want = water_fill(f, means[:1], 0.3 * output_entropy(f))
    assert torch.allclose(torch.softmax(out.double(), 1), want, atol=1e-6)


def test_a_class_mean_that_underflows_float32_storage_releases_no_nan():
    """The target stores D' in float32, where a mean below 1.4e-45 is 0: f puts most of its mass on that class
    and the sampled class's mean has (almost) none, so the reverse water-filling divides by it. The float64
    mean gives p* = [1, tiny, tiny]; the stored one must give a finite distribution close to it."""
    f = torch.softmax(_t([[0.0, -120.0, -120.0]]), 1)
    exact = _t([[1.69e-48, 0.5, 0.5], [1.69e-48, 0.5, 0.5], [1.69e-48, 0.5, 0.5]])
    stored = exact.float()
    assert stored[0, 0] == 0.0
    logits = torch.log(f)
    out = ssd_logits(logits, stored, 0.1, 0.5, torch.Generator().manual_seed(0), floor=1e-300)
    want = ssd_logits(logits, exact, 0.1, 0.5, torch.Generator().manual_seed(0), floor=1e-300)
    assert torch.isfinite(out).all()
    assert torch.allclose(torch.softmax(out, 1), torch.softmax(want, 1), atol=1e-12)
    assert torch.equal(positive_means(exact), exact)  # entries above the floor are unchanged


# ------------------------------------------------------------------------------------ the defense
@pytest.fixture(scope="module")
def calibrated(defense_splits):
    torch.manual_seed(0)
    d = StealthyShieldDefense(StealthyShieldDefense.Params())
    model = d.configure_model(SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {}))
    trainer = Trainer(TrainingRecipe(epochs=3, batch_size=16), defense_splits.private_train,
                      defense_splits.private_test, RunSettings(progress=False), seed=0, desc="ssd")
    d.fit(model, trainer)
    report = d.calibrate(model, defense_splits.private_test, RunSettings(progress=False))
    return d, model.eval(), report, trainer.result.test_accuracy


def test_defaults_are_the_reference_codes():
    p = StealthyShieldDefense.Params()
    assert (p.temperature, p.epsilon) == (0.1, 0.5)


def test_uncalibrated_target_is_refused():
    d = StealthyShieldDefense(StealthyShieldDefense.Params())
    model = d.configure_model(SmallCNN(SmallCNN.Params(width=8)).build(4, 16, {}))
    assert model.defense_state == (BUFFER,) and torch.isnan(getattr(model, BUFFER)).all()
    with pytest.raises(BenchError, match="carries no class means"):
        StealthyShieldDefense(StealthyShieldDefense.Params()).bind(model)
    with pytest.raises(BenchError, match="class means are unknown"):
        d.postprocess(torch.zeros(2, 4))


def test_calibrate_stores_class_means_and_reports(calibrated, defense_splits):
    d, model, report, raw_acc = calibrated
    test = defense_splits.private_test
    with torch.no_grad():
        probs = torch.softmax(model(test.images()).double(), 1)
    want = class_mean_outputs(probs, test.labels, DEFENSE_CLASSES)
    assert torch.allclose(getattr(model, BUFFER).double(), want, atol=1e-6)
    assert set(report) == {"ssd_test_accuracy", "ssd_distortion", "ssd_postprocess_seconds", "ssd_forward_seconds"}
    assert 0.0 <= report["ssd_test_accuracy"] <= 1.0 and 0.0 < report["ssd_distortion"] < 2.0
    assert BUFFER in model.state_dict()


def test_every_access_level_sees_the_defended_output(calibrated):
    d, model, _, _ = calibrated
    fresh = StealthyShieldDefense(StealthyShieldDefense.Params())
    fresh.bind(model)  # what the runner does for every attack job
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        raw = model(x)
        want = torch.softmax(ssd_logits(raw, getattr(model, BUFFER), 0.1, 0.5, torch.Generator().manual_seed(0)), 1)
    scores = ScoreOracle(PostprocessedClassifier(model, fresh.postprocess), torch.device("cpu"))(x)
    assert torch.allclose(scores.as_subclass(torch.Tensor), want, atol=1e-6)
    assert not torch.allclose(scores.as_subclass(torch.Tensor), torch.softmax(raw, 1), atol=1e-3)
    again = StealthyShieldDefense(StealthyShieldDefense.Params())
    again.bind(model)
    labels = LabelOracle(PostprocessedClassifier(model, again.postprocess), torch.device("cpu"))(x)
    assert torch.equal(labels.as_subclass(torch.Tensor), want.argmax(1))
    # white-box: gradients flow through the transform where the budget does not reach the class mean (a
    # small epsilon here); where it does, the release is the class mean itself, constant in x (no gradient)
    for eps, moves in ((0.01, True), (100.0, False)):
        wb = StealthyShieldDefense(StealthyShieldDefense.Params(epsilon=eps))
        wb.bind(model)
        xg = x.clone().requires_grad_(True)
        PostprocessedClassifier(model, wb.postprocess)(xg)[:, 0].sum().backward()
        assert torch.isfinite(xg.grad).all() and bool(xg.grad.abs().sum() > 0) == moves


def test_suite_run_calibrates_stores_and_binds(tmp_path):
    """A tiny suite end to end: the SSD target trains as hard labels (same raw test accuracy), its record
    carries SSD's numbers, and the white-box attack runs through the stored class means."""
    import json

    data = tiny_suite(defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
                                {"id": "ssd", "name": "ssd"}])
    out = run_tiny(data, tmp_path)
    records = {json.loads(p.read_text())["defense"]: json.loads(p.read_text())
               for p in (out / "records").rglob("*.json")}
    hard, ssd = records["hard"]["target"], records["ssd"]["target"]
    assert ssd["test_accuracy"] == hard["test_accuracy"]
    assert 0.0 <= ssd["ssd_test_accuracy"] <= 1.0 and ssd["ssd_distortion"] > 0


def test_a_checkpoint_without_class_means_loads_and_calibrates(tmp_path, defense_splits):
    """A published target file carries no ``ssd_class_means``: it loads (the buffer is the defense's,
    ``model.defense_state``), and calibrate fills it; every other missing key is still an error."""
    from inversion_bench.checkpoints import CheckpointError, load_into

    torch.manual_seed(0)
    plain = SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {})
    path = tmp_path / "target.pt"
    torch.save(plain.state_dict(), path)
    d = StealthyShieldDefense(StealthyShieldDefense.Params())
    model = d.configure_model(SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {}))
    load_into(model, path, "native", "small-cnn", {})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert torch.isnan(getattr(model, BUFFER)).all()
    d.calibrate(model, defense_splits.private_test, RunSettings(progress=False))
    assert torch.isfinite(getattr(model, BUFFER)).all()
    torch.save({k: v for k, v in plain.state_dict().items() if k != "head.weight"}, path)
    with pytest.raises(CheckpointError, match="missing key"):
        load_into(d.configure_model(SmallCNN(SmallCNN.Params(width=8)).build(DEFENSE_CLASSES, 16, {})), path,
                  "native", "small-cnn", {})
