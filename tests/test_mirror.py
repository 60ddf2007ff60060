"""Mirror-B (black-box genetic search) on tiny priors and targets, always through the score oracle."""

from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from inversion_bench.attacks.generators.dcgan import DCGANPlugin
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAPlugin
from inversion_bench.attacks.mirror import (
    TINY,
    MirrorBlackBox,
    MirrorParams,
    crossover,
    crossover_probability,
    from_search_space,
    log_confidence,
    mutate,
    next_generation,
    search_bounds,
    select_elites,
    select_parents,
    sort_population,
    to_search_space,
)
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import AttackContext, Generator, PriorContext, Reconstruction
from inversion_bench.models import build_classifier
from inversion_bench.oracle import ScoreOracle, target_for
from inversion_bench.registry import attacks

sys.path.insert(0, str(Path(__file__).parent))
import tiny_stylegan  # noqa: E402

CPU = torch.device("cpu")
IDS = torch.tensor([1, 2, 4])
FLOOR = math.log(TINY)


def _dcgan() -> Generator:
    torch.manual_seed(0)
    return DCGANPlugin(DCGANPlugin.Params(z_dim=8, g_width=4, d_width=4)).build(16).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return build_classifier("small-cnn", {"width": 4}, 6, 16, {}).eval()


class _LinearPrior(Generator):
    """A tiny prior whose images react strongly to z: sigmoid(z A) as an 8 px image; z clipped to [-2, 2]."""

    z_dim = w_dim = 8
    resolution = 8

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.randn(8, 3 * 64, generator=torch.Generator().manual_seed(0)))

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 8, generator=generator)

    def synthesize(self, w: Tensor) -> Tensor:
        return torch.sigmoid(w @ self.a).view(-1, 3, 8, 8)

    def constrain(self, w: Tensor) -> Tensor:
        return w.clamp(-2, 2)


class _LinearTarget(nn.Module):
    """A linear classifier of the centred pixels (6 classes), seeded."""

    num_classes, input_size = 6, 8

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(192, 6)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(6, 192, generator=torch.Generator().manual_seed(1)) / 192**0.5)
            self.lin.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return 4 * self.lin(x.flatten(1) - 0.5)


def _run(model: nn.Module | None = None, prior: Generator | None = None, seed: int = 0, ids: Tensor = IDS,
         batch_size: int = 64, **kw) -> tuple[Reconstruction, ScoreOracle]:
    params = MirrorParams(**({"search_space_size": 48, "population_size": 8, "generations": 3,
                              "min_score": None} | kw))
    oracle, counter = target_for("black-box", model if model is not None else _cnn(), CPU)
    assert oracle is counter and isinstance(oracle, ScoreOracle)
    prior = prior if prior is not None else _dcgan()
    ctx = AttackContext(device=CPU, seed=seed, batch_size=batch_size, progress=False, resolution=prior.resolution)
    return MirrorBlackBox(params).run(oracle, ids, prior, ctx), oracle


# --------------------------------------------------------------------------------------------
# The GA's steps against hand-computed values
# --------------------------------------------------------------------------------------------
def test_registered_and_reference_defaults() -> None:
    assert attacks.get("mirror-b") is MirrorBlackBox
    assert MirrorBlackBox.access == "black-box" and MirrorBlackBox.needs_prior
    p = MirrorParams()
    assert (p.search_space_size, p.population_size, p.generations, p.mutation_prob, p.mutation_ce, p.p_std_ce,
            p.min_score, p.samples_per_target) == (100_000, 1000, 100, 0.1, 0.1, 1.0, 0.95, 1)
    assert (p.crossover_weight, p.shared_mutation_noise, p.lrelu_slope) == ("log_confidence", True, 0.2)
    with pytest.raises(ValueError, match="population_size"):
        MirrorParams(search_space_size=10, population_size=20)
    with pytest.raises(ValueError, match="samples_per_target"):
        MirrorParams(population_size=4, samples_per_target=5)


def test_crossover_and_its_probability() -> None:
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])
    assert crossover(a, b, torch.tensor([[True, False, True]])).tolist() == [[1.0, 20.0, 3.0]]
    # reference: f_a / (f_a + f_b) on log-confidences (-1 / -4 = 0.25: the weaker parent b gets 0.75)
    assert crossover_probability(torch.tensor([-1.0]), torch.tensor([-3.0])).tolist() == [0.25]
    assert crossover_probability(torch.tensor([0.0]), torch.tensor([0.0])).tolist() == [0.5]
    conf = crossover_probability(torch.tensor([math.log(0.2)]), torch.tensor([math.log(0.6)]), "confidence")
    assert torch.allclose(conf, torch.tensor([0.25]))


def test_selection_sorting_and_parents() -> None:
    fit = torch.tensor([[0.125, 0.5, 0.25, 0.5], [-1.0, -3.0, -2.0, -0.5]])
    assert select_elites(fit, 3).tolist() == [[1, 3, 2], [3, 0, 2]]  # ties: lower index first
    pop = torch.arange(8.0).view(2, 4, 1)
    sorted_pop, sorted_fit = sort_population(pop, fit)
    assert sorted_pop.squeeze(-1).tolist() == [[1.0, 3.0, 2.0, 0.0], [7.0, 4.0, 6.0, 5.0]]
    assert sorted_fit.tolist() == [[0.5, 0.5, 0.25, 0.125], [-0.5, -1.0, -2.0, -3.0]]
    # softmax(log-confidence) = confidence-proportional: all mass on the one confident member
    fit = torch.tensor([[0.0, FLOOR, FLOOR], [FLOOR, FLOOR, 0.0]])
    ia, ib = select_parents(fit, 5, torch.Generator().manual_seed(0))
    assert ia.shape == ib.shape == (2, 5)
    assert ia[0].tolist() == ib[0].tolist() == [0] * 5 and ia[1].tolist() == ib[1].tolist() == [2] * 5


def test_mutation() -> None:
    pop = torch.zeros(2, 3, 4)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(mutate(pop, 0.0, scale, torch.Generator().manual_seed(0)), pop)
    out = mutate(pop, 1.0, scale, torch.Generator().manual_seed(0))  # every coordinate, shared noise
    g = torch.Generator().manual_seed(0)
    torch.rand(2, 3, 4, generator=g)  # the mask is drawn first
    expected = (2 * torch.rand(2, 1, 4, generator=g) - 1) * scale
    assert torch.equal(out, expected.expand(2, 3, 4))
    assert (out.abs() <= scale).all() and not torch.equal(out[0], out[1])
    own = mutate(pop, 1.0, scale, torch.Generator().manual_seed(0), shared=False)
    assert not torch.equal(own[:, 0], own[:, 1])
    half = mutate(pop, 0.5, scale, torch.Generator().manual_seed(3), shared=False)
    assert 0 < int((half != 0).sum()) < half.numel()


def test_search_space_bounds_and_fitness() -> None:
    w = torch.tensor([-0.2, 0.0, 0.5])
    assert torch.allclose(to_search_space(w, 0.2), torch.tensor([-1.0, 0.0, 0.5]))
    assert torch.allclose(from_search_space(to_search_space(w, 0.2), 0.2), w)
    assert to_search_space(w, None) is w
    lo, hi = search_bounds(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5]), 2.0)
    assert lo.tolist() == [-1.0, -1.0] and hi.tolist() == [3.0, 1.0]
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    assert torch.allclose(log_confidence(probs, torch.tensor([1, 0])), torch.tensor([math.log(0.5), FLOOR]))
    pop, fit = torch.randn(2, 6, 3), torch.randn(2, 6)
    children = next_generation(pop, fit, MirrorParams(), torch.ones(3), lambda c: c.clamp(-0.1, 0.1),
                               torch.Generator().manual_seed(0))
    assert children.shape == (2, 5, 3) and children.abs().max() <= 0.1


# --------------------------------------------------------------------------------------------
# The attack through the score oracle
# --------------------------------------------------------------------------------------------
def test_beats_its_no_optimisation_baseline(one_thread) -> None:
    prior, model = _LinearPrior(), _LinearTarget()
    for seed in (0, 1):
        rec, _ = _run(model, prior, seed, ids=torch.tensor([0, 2, 5]), search_space_size=64, population_size=16,
                      generations=10)
        base, _ = _run(model, prior, seed, ids=torch.tensor([0, 2, 5]), search_space_size=64, population_size=16,
                       generations=0)  # the same prior samples and seed, no evolution
        conf = rec.trace["confidence"]
        assert len(conf) == 11 and conf[0] == pytest.approx(base.info["selection_confidence"])
        assert all(b >= a - 1e-6 for a, b in zip(conf, conf[1:], strict=False))  # the elite is kept
        assert rec.info["selection_confidence"] > base.info["selection_confidence"] + 0.03
        with torch.no_grad():
            released = model(rec.images).softmax(1)[torch.arange(3), rec.labels]
            before = model(base.images).softmax(1)[torch.arange(3), base.labels]
        assert (released >= before - 1e-6).all() and released.mean() > before.mean()


def test_black_box_only_and_counts_its_queries(one_thread) -> None:
    model = _cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rec, oracle = _run(model)
    assert oracle.queries == rec.info["queries"] == 48 + 3 * 3 * 8  # search + identities x generations x population
    assert rec.images.shape == (3, 3, 16, 16) and rec.images.device.type == "cpu"
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    assert rec.labels.tolist() == [1, 2, 4] and rec.labels.dtype == torch.int64
    assert rec.latents.shape == (3, 8) and rec.latents.abs().max() <= 2.0  # DCGAN latent_bound
    assert [len(rec.trace[k]) for k in ("best_fitness", "mean_fitness", "confidence", "active")] == [4] * 4
    assert rec.info["generations_run"] == 3 and not rec.info["p_space"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    # early stop: every identity reaches min_score at once -> the search's queries only
    stopped, oracle = _run(model, min_score=0.01)
    assert oracle.queries == 48 and stopped.info["generations_run"] == 0 and stopped.info["stopped_at_min_score"] == 3
    # some identities stop, others go on: queries follow the active identities
    part, oracle = _run(_LinearTarget(), _LinearPrior(), seed=1, ids=torch.tensor([0, 2, 5]), search_space_size=64,
                        population_size=16, generations=10, min_score=0.85)
    active = part.trace["active"]
    assert oracle.queries == part.info["queries"] == 64 + 16 * sum(active[:-1])
    assert active[0] == 3 and 0 < active[-1] < 3 and len(active) == 11  # 2 of 3 stopped early
    assert part.info["stopped_at_min_score"] == 3 - active[-1] and oracle.queries < 64 + 16 * 3 * 10


def test_same_seed_same_result(one_thread) -> None:
    rec, _ = _run(samples_per_target=2)
    again, _ = _run(samples_per_target=2, batch_size=7)
    assert torch.equal(rec.latents, again.latents) and torch.equal(rec.images, again.images)
    assert rec.trace == again.trace and rec.labels.tolist() == [1, 1, 2, 2, 4, 4]
    other, _ = _run(seed=1, samples_per_target=2)
    assert not torch.equal(rec.latents, other.latents)
    lin = {"model": _LinearTarget(), "prior": _LinearPrior(), "seed": 1, "search_space_size": 64,
           "population_size": 16, "generations": 5}
    ref = _run(**lin)[0]
    assert torch.equal(ref.images, _run(**lin)[0].images)
    variants = [_run(**lin, crossover_weight="confidence")[0], _run(**lin, shared_mutation_noise=False)[0]]
    assert all(not torch.equal(v.latents, ref.latents) for v in variants)


def test_stylegan_prior_searches_p_space(tmp_path: Path, one_thread) -> None:
    path = tmp_path / "tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump(tiny_stylegan.make_pickle_dict(), f)
    ctx = PriorContext(public=None, resolution=16, seed=0, device=CPU, weights={"g": path}, progress=False)
    prior = StyleGAN2ADAPlugin(StyleGAN2ADAPlugin.Params(pickle="g")).fit(ctx)
    rec, oracle = _run(prior=prior)
    assert rec.info["p_space"] and rec.images.shape == (3, 3, 16, 16) and rec.latents.shape == (3, 6)  # w
    assert oracle.queries == 48 + 3 * 3 * 8
    assert not _run(prior=prior, p_space="off")[0].info["p_space"]


def test_needs_a_prior_handles_no_identities_and_divergence() -> None:
    oracle, _ = target_for("black-box", _cnn(), CPU)
    with pytest.raises(ConfigError, match="prior"):
        MirrorBlackBox(MirrorParams()).run(oracle, IDS, None, AttackContext(device=CPU, seed=0))
    rec, oracle = _run(ids=torch.tensor([], dtype=torch.long))
    assert rec.images.shape == (0, 3, 16, 16) and rec.labels.shape == (0,) and oracle.queries == 0

    class NaNTarget(nn.Module):
        num_classes = 6

        def forward(self, x: Tensor) -> Tensor:
            return torch.full((x.shape[0], 6), float("nan"))

    with pytest.raises(DivergedError, match="mirror-b"):
        _run(NaNTarget())
