"""SMILE (black-box: long-tailed surrogate, white-box start on it, NGOpt search) on tiny priors and targets."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from inversion_bench.attacks.smile import (
    TINY,
    ExpertSurrogate,
    Smile,
    SmileParams,
    best_queried,
    class_balanced_weights,
    distillation_kl,
    diversity_term,
    latent_bounds,
    learning_rate,
    released_logits,
    sample_weights,
    surrogate_loss,
)
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import AttackContext, Generator, Reconstruction
from inversion_bench.oracle import ScoreOracle, target_for
from inversion_bench.registry import attacks

sys.path.insert(0, str(Path(__file__).parent))
from test_mirror import _cnn, _dcgan, _LinearPrior, _LinearTarget  # noqa: E402  (the shared tiny fixtures)

pytest.importorskip("nevergrad")

CPU = torch.device("cpu")
SMALL = {"query_num": 200, "pretrain_epochs": 0, "embed_dim": 16, "epochs": 20, "batch_size_surrogate": 32,
         "whitebox_steps": 30, "budget": 60,
         "surrogate": {"name": "small-cnn", "params": {"width": 4, "input_size": 16}}}


def _run(model: nn.Module | None = None, prior: Generator | None = None, seed: int = 0,
         ids: Tensor | None = None, **kw) -> tuple[Reconstruction, ScoreOracle]:
    oracle, counter = target_for("black-box", model if model is not None else _LinearTarget(), CPU)
    assert oracle is counter and isinstance(oracle, ScoreOracle)
    prior = prior if prior is not None else _LinearPrior()
    ctx = AttackContext(device=CPU, seed=seed, batch_size=64, progress=False, resolution=prior.resolution)
    ids = ids if ids is not None else torch.tensor([0, 2, 5])
    return Smile(SmileParams(**(SMALL | kw))).run(oracle, ids, prior, ctx), oracle


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(x: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


# --------------------------------------------------------------------------------------------
# The method's math against hand-computed values
# --------------------------------------------------------------------------------------------
def test_registered_and_reference_defaults() -> None:
    assert attacks.get("smile") is Smile and Smile.access == "black-box" and Smile.needs_prior
    p = SmileParams()
    assert (p.query_num, p.num_experts, p.epochs, p.batch_size_surrogate, p.lr, p.temperature) == (
        2500, 3, 200, 128, 1e-3, 0.5)
    assert (p.lambda_ce, p.lambda_diversity, p.beta, p.top_k_count, p.embed_dim) == (0.15, 10.0, 0.9, 10, 512)
    assert (p.whitebox_steps, p.whitebox_lr, p.rampdown, p.rampup, p.p_std_ce) == (200, 0.2, 0.25, 0.05, 1.0)
    assert (p.budget, p.optimizer, p.sigma, p.bound_scale, p.freeze_backbone) == (1000, "NGOpt", 1.0, 1.7, True)


def test_class_balanced_weights_by_hand() -> None:
    logits = torch.tensor([[2.0, 3.0, 0.0, -1.0], [1.0, 0.0, 4.0, -1.0], [0.0, 1.0, 2.0, -1.0], [0.0, -1.0, 3.0, 1.0]])
    # top-2: {1,0}, {2,0}, {2,1}, {2,3} -> counts [2, 2, 3, 1]
    w = class_balanced_weights(logits, k=2, beta=0.9)
    expected = [0.1 / (1 - 0.9**3), 0.1 / (1 - 0.9**3), 0.1 / (1 - 0.9**4), 0.1 / (1 - 0.9**2)]
    assert w.tolist() == pytest.approx(expected)
    assert w.tolist() == pytest.approx([0.369004, 0.369004, 0.290782, 0.526316], abs=1e-6)
    # a class nobody ranks gets weight (1 - beta) / (1 - beta) = 1; each sample its top-1 class's weight
    assert class_balanced_weights(torch.tensor([[1.0, 0.0, -1.0]]), k=1).tolist() == pytest.approx([0.1 / 0.19, 1, 1])
    assert sample_weights(w, logits).tolist() == pytest.approx([expected[1], expected[2], expected[2], expected[2]])


def test_released_probabilities_act_as_logits() -> None:
    logits = torch.tensor([[1.0, 3.0, -2.0]])
    log_p = released_logits(logits.softmax(1))
    assert torch.allclose(log_p.softmax(1), logits.softmax(1)) and torch.allclose((log_p / 0.5).softmax(1),
                                                                                   (logits / 0.5).softmax(1))
    assert released_logits(torch.tensor([[1.0, 0.0]])).tolist()[0] == pytest.approx([0.0, math.log(TINY)])


def test_surrogate_loss_by_hand() -> None:
    t, e1, e2 = [2.0, 0.0], [1.0, 0.5], [0.0, 1.0]
    mean = [(a + b) / 2 for a, b in zip(e1, e2, strict=True)]
    temp, w = 0.5, [0.25, 0.5]  # one sample per row below: two samples with identical outputs
    # KL_T(target || expert) per expert, the CE of each expert on the target's top-1 (class 0)
    kl = _kl(_softmax(t, temp), _softmax(e1, temp)) + _kl(_softmax(t, temp), _softmax(e2, temp))
    ce = -math.log(_softmax(e1)[0]) - math.log(_softmax(e2)[0])
    # diversity: 1 / KL(softmax(clamp(e / T) / T) || softmax(mean / T)) per expert
    div = sum(1 / _kl(_softmax([v / temp for v in e], temp), _softmax(mean, temp)) for e in (e1, e2))
    expected = sum(w) * kl + 0.15 * sum(w) * ce + 10 * div
    rows = lambda x: torch.tensor([x, x])  # noqa: E731
    total, parts = surrogate_loss(rows(mean), [rows(e1), rows(e2)], rows(t), torch.tensor(w), 0.5, 0.15, 10.0)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert parts["kl"] == pytest.approx(sum(w) * kl, rel=1e-5) and parts["ce"] == pytest.approx(0.15 * sum(w) * ce,
                                                                                                 rel=1e-5)
    assert parts["diversity"] == pytest.approx(10 * div, rel=1e-5)
    assert float(distillation_kl(torch.tensor([e1]), torch.tensor([t]), temp)) == pytest.approx(
        _kl(_softmax(t, temp), _softmax(e1, temp)), rel=1e-5)
    # the clamp at +-20 of e / T (then divided by T again)
    big = torch.tensor([[100.0, 0.0]])
    assert float(diversity_term(torch.tensor([[1.0, 0.0]]), [big], 0.5)) == pytest.approx(
        1 / _kl(_softmax([20.0, 0.0], 0.5), _softmax([1.0, 0.0], 0.5)), rel=1e-5)


def test_whitebox_learning_rate_ramp() -> None:
    assert learning_rate(0.2, 0, 200) == 0.0  # the ramp-up starts at zero
    assert learning_rate(0.2, 4, 200) == pytest.approx(0.2 * 0.4)  # t = 0.02: 0.02 / 0.05 of the peak
    assert learning_rate(0.2, 100, 200) == pytest.approx(0.2)
    assert learning_rate(0.2, 180, 200) == pytest.approx(0.2 * (0.5 - 0.5 * math.cos(0.4 * math.pi)))
    assert learning_rate(0.2, 200, 200) == pytest.approx(0.0, abs=1e-12)


def test_bounds_and_initial_choice() -> None:
    w = torch.tensor([[-0.2, 1.0], [0.2, 3.0]])  # p = [[-1, 1], [0.2, 3]]: mean [-0.4, 2], std [0.6, 1]
    lo, hi = latent_bounds(w, 1.0, 0.2)
    assert lo.tolist() == pytest.approx([-0.2, 1.0]) and hi.tolist() == pytest.approx([0.2, 3.0])
    lo, hi = latent_bounds(w, 2.0, None)  # z space: mean [0, 2], std [0.2, 1]
    assert lo.tolist() == pytest.approx([-0.4, 0.0]) and hi.tolist() == pytest.approx([0.4, 4.0])
    log_p = torch.tensor([[-1.0, -0.1, -3.0], [-0.5, -2.0, -3.0], [-0.5, -0.2, -0.1]])
    assert best_queried(log_p, torch.tensor([0, 2, 1])).tolist() == [1, 2, 0]  # ties: the first sample


def test_expert_surrogate_averages_its_experts() -> None:
    torch.manual_seed(0)
    model = ExpertSurrogate(nn.Identity(), 4, 3, 5, num_experts=3).eval()
    mean, outs = model.experts(torch.randn(2, 4))
    assert len(outs) == 3 and mean.shape == (2, 5) and torch.allclose(mean, sum(outs) / 3)


# --------------------------------------------------------------------------------------------
# The attack through the score oracle
# --------------------------------------------------------------------------------------------
def test_beats_its_no_optimisation_baseline(one_thread) -> None:
    model = _LinearTarget()
    for seed in (0, 1):
        rec, _ = _run(model, seed=seed)
        base, _ = _run(model, seed=seed, whitebox_steps=0, budget=0)  # the best queried sample, no optimisation
        assert base.info["initial_confidence"] == pytest.approx(rec.info["initial_confidence"])
        with torch.no_grad():
            after = model(rec.images).softmax(1)[torch.arange(3), rec.labels]
            before = model(base.images).softmax(1)[torch.arange(3), base.labels]
        assert before.mean() == pytest.approx(base.info["initial_confidence"], abs=1e-5)
        assert after.mean() > before.mean() + 0.03
        assert rec.info["search_best_confidence"] >= rec.info["search_first_confidence"]


def test_black_box_only_and_counts_its_queries(one_thread) -> None:
    model = _cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad or torch.is_grad_enabled()))
    rec, oracle = _run(model, _dcgan(), ids=torch.tensor([1, 2, 4]))
    assert oracle.queries == rec.info["queries"] == 200 + 60 * 3  # the shared queries + budget x identities
    assert rec.info["surrogate_queries"] == 200 and rec.info["search_queries"] == 180
    assert not any(seen)  # every target call without gradients
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert rec.images.shape == (3, 3, 16, 16) and rec.labels.tolist() == [1, 2, 4]
    assert rec.latents.shape == (3, 8) and rec.latents.abs().max() <= 2.0  # DCGAN latent_bound
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert len(rec.trace["confidence"]) == 60 and rec.info["search_optimizer"] == "NGOpt"


def test_same_seed_same_result(one_thread) -> None:
    rec, _ = _run(budget=20, whitebox_steps=5, epochs=5)
    again, _ = _run(budget=20, whitebox_steps=5, epochs=5)
    assert torch.equal(rec.latents, again.latents) and rec.trace == again.trace
    other, _ = _run(seed=1, budget=20, whitebox_steps=5, epochs=5)
    assert not torch.equal(rec.latents, other.latents)


def test_pretraining_needs_public_data_and_nevergrad_is_named(monkeypatch, one_thread) -> None:
    with pytest.raises(ConfigError, match="public data"):
        _run(pretrain_epochs=1)
    with pytest.raises(ConfigError, match="prior"):
        Smile(SmileParams()).run(target_for("black-box", _cnn(), CPU)[0], torch.tensor([0]), None,
                                 AttackContext(device=CPU, seed=0))
    monkeypatch.setitem(sys.modules, "nevergrad", None)  # as if the extra were not installed
    oracle, _ = target_for("black-box", _LinearTarget(), CPU)
    with pytest.raises(ConfigError, match=r'pip install "inversion-bench\[smile\]"'):
        Smile(SmileParams(**SMALL)).run(oracle, torch.tensor([0]), _LinearPrior(), AttackContext(device=CPU, seed=0))
    assert oracle.queries == 0  # refused before any query
    rec, _ = _run(budget=0)  # without the search nevergrad is not needed
    assert rec.images.shape[0] == 3


def test_no_identities(one_thread) -> None:
    rec, oracle = _run(ids=torch.tensor([], dtype=torch.long))
    assert rec.images.shape == (0, 3, 8, 8) and rec.latents.shape == (0, 8) and oracle.queries == 0


def test_stylegan_prior_bounds_in_p_space(tmp_path: Path, one_thread) -> None:
    import pickle

    import tiny_stylegan

    from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAPlugin
    from inversion_bench.interfaces import PriorContext

    path = tmp_path / "tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump(tiny_stylegan.make_pickle_dict(), f)
    ctx = PriorContext(public=None, resolution=16, seed=0, device=CPU, weights={"g": path}, progress=False)
    prior = StyleGAN2ADAPlugin(StyleGAN2ADAPlugin.Params(pickle="g")).fit(ctx)
    rec, oracle = _run(_cnn(), prior, ids=torch.tensor([1, 2]), query_num=64, epochs=3, whitebox_steps=3, budget=5)
    assert oracle.queries == 64 + 2 * 5 and rec.latents.shape == (2, prior.w_dim)  # w, searched within the bounds
    with torch.no_grad():
        ws = prior.map(prior.sample_z(64, torch.Generator().manual_seed(0)))
    lo, hi = latent_bounds(ws, 1.7, 0.2)
    assert ((rec.latents >= lo - 1e-5) & (rec.latents <= hi + 1e-5)).all()
