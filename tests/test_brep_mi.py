"""BREP-MI (label-only): the core step by hand, the attack against its own baselines, output defenses
that keep the argmax, and the query count."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from inversion_bench.attacks.brep_mi import (
    BoundaryRepulsionMI,
    BrepMIParams,
    next_radius,
    points_on_sphere,
    repulsion_direction,
    step_size,
)
from inversion_bench.attacks.generators.dcgan import DCGANPlugin
from inversion_bench.defenses.output import ConfidenceRounding, TopKLogits
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import AttackContext, Classifier, Generator, PostprocessedClassifier, Reconstruction
from inversion_bench.oracle import LabelOracle, target_for
from inversion_bench.registry import attacks

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the whole module (tiny nets are much faster so on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ctx(seed: int = 0, batch_size: int = 64) -> AttackContext:
    return AttackContext(device=CPU, seed=seed, batch_size=batch_size, progress=False, resolution=16)


def _attack(model: nn.Module, identities: Tensor, prior: Generator, seed: int = 0,
            **kw) -> tuple[Reconstruction, LabelOracle]:
    oracle, _ = target_for("label-only", model, CPU)
    rec = BoundaryRepulsionMI(BrepMIParams(**kw)).run(oracle, identities, prior, _ctx(seed))
    return rec, oracle


# --------------------------------------------------------------------------------------------
# 1. The core step against hand-computed values
# --------------------------------------------------------------------------------------------
def test_registered_with_reference_defaults() -> None:
    assert attacks.get("brep-mi") is BoundaryRepulsionMI
    assert BoundaryRepulsionMI.access == "label-only" and BoundaryRepulsionMI.needs_prior
    p = BrepMIParams()
    assert (p.sphere_points, p.initial_radius, p.expansion_coeff, p.expansion_margin) == (32, 2.0, 1.3, 0.75)
    assert (p.step_divisor, p.max_step, p.max_iters_at_radius, p.point_clamp) == (3.0, 3.0, 1000, (-1.5, 1.5))
    assert (p.repulsion_only, p.initial_batch_size, p.result) == (True, 256, "last_expansion")
    with pytest.raises(ValueError, match="point_clamp"):
        BrepMIParams(point_clamp=(1.0, -1.0))


def test_points_on_sphere_have_the_radius() -> None:
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    points, dirs = points_on_sphere(z, torch.tensor([0.5, 3.0]), 7, torch.Generator().manual_seed(0))
    assert points.shape == dirs.shape == (2, 7, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.tensor([[0.5] * 7, [3.0] * 7]))
    torch.testing.assert_close(points, z.unsqueeze(1) + dirs)
    again, _ = points_on_sphere(z, torch.tensor([0.5, 3.0]), 7, torch.Generator().manual_seed(0))
    assert torch.equal(points, again)
    _, scalar = points_on_sphere(z, 2.0, 4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(scalar.norm(dim=-1), torch.full((2, 4), 2.0))


def test_repulsion_direction_by_hand() -> None:
    dirs = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]]])  # one identity, radius 2
    inside = torch.tensor([[True, True, False, False]])
    # repulsion only: w = (0, 0, -1, -1); mean(w d) = ((2, 0) + (0, 2)) / 4 = (0.5, 0.5); / radius 2
    torch.testing.assert_close(repulsion_direction(dirs, inside, torch.tensor([2.0])), torch.tensor([[0.25, 0.25]]))
    # away from the outside points at (-2, 0) and (0, -2), and divided by the radius it is given (grown: 2.6)
    torch.testing.assert_close(repulsion_direction(dirs, inside, torch.tensor([2.6])),
                               torch.tensor([[0.5 / 2.6, 0.5 / 2.6]]))
    # with attraction: w = (1, 1, -1, -1); mean = (4, 4) / 4 = (1, 1); / 2
    torch.testing.assert_close(repulsion_direction(dirs, inside, 2.0, repulsion_only=False),
                               torch.tensor([[0.5, 0.5]]))
    all_in = torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(repulsion_direction(dirs, all_in, 2.0), torch.zeros(1, 2))  # nothing repels
    torch.testing.assert_close(repulsion_direction(dirs, ~all_in, 2.0), torch.zeros(1, 2))  # symmetric sphere


def test_radius_grows_when_more_than_seven_eighths_are_in_class() -> None:
    # 32 points, margin 0.75: sum of +-1 labels > 24, i.e. 29 or more points inside
    inside = torch.zeros(4, 32, dtype=torch.bool)
    for row, count in enumerate((28, 29, 32, 0)):
        inside[row, :count] = True
    radius, grew = next_radius(torch.full((4,), 2.0), inside, 1.3, 0.75)
    assert grew.tolist() == [False, True, True, False]
    torch.testing.assert_close(radius, torch.tensor([2.0, 2.6, 2.6, 2.0]))
    torch.testing.assert_close(step_size(torch.tensor([0.3, 9.0, 30.0])), torch.tensor([0.1, 3.0, 3.0]))


# --------------------------------------------------------------------------------------------
# A toy problem with known geometry: a 2-d latent shown as a flat image, nearest-centre classes
# --------------------------------------------------------------------------------------------
CENTRES = torch.tensor([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)] + [[5.0, 5.0]])


class PlanePrior(Generator):
    """z in the plane -> a flat 2 px image whose first two channels hold (z + 4) / 8."""

    z_dim = w_dim = 2
    resolution = 2

    def sample_z(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, 2, generator=generator)

    def synthesize(self, w: Tensor) -> Tensor:
        x = (w + 4) / 8
        return torch.cat([x, torch.full_like(x[:, :1], 0.5)], 1).view(-1, 3, 1, 1).expand(-1, 3, 2, 2)


class NearestCentre(nn.Module):
    """Class = nearest of CENTRES (class 9 at (5, 5) is never nearest inside the latent clamp)."""

    num_classes, input_size = 10, 2

    def forward(self, x: Tensor) -> Tensor:
        return -torch.cdist(x[:, :2].mean((2, 3)) * 8 - 4, CENTRES) ** 2


class Constant(NearestCentre):
    """Labels everything as class 0."""

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[:, 0] = 1.0
        return out


def margin(z: Tensor, labels: Tensor) -> Tensor:
    """Signed distance of z from the boundary of its label's nearest-centre cell (< 0: outside)."""
    d2 = ((z.unsqueeze(1) - CENTRES) ** 2).sum(-1)
    sep = (CENTRES.unsqueeze(0) - CENTRES[labels].unsqueeze(1)).norm(dim=-1)
    m = (d2 - d2.gather(1, labels.view(-1, 1))) / (2 * sep.clamp_min(1e-9))
    return m.scatter(1, labels.view(-1, 1), math.inf).min(1).values


TOY = {"initial_radius": 0.05, "max_iters_at_radius": 20, "initial_batch_size": 16, "max_initial_batches": 20}


def test_beats_random_samples_and_its_initial_points() -> None:
    ids = torch.arange(9)
    rec, _ = _attack(NearestCentre(), ids, PlanePrior(), **TOY)
    start, _ = _attack(NearestCentre(), ids, PlanePrior(), **(TOY | {"max_iters_at_radius": 0}))
    assert rec.labels.tolist() == ids.tolist() and rec.info["identities_found"] == 9
    assert torch.equal(start.latents, rec.extras["initial_latents"])  # no optimisation = the initial search
    random_z = PlanePrior().sample_z(9, _ctx().generator())  # random prior samples, same count and seed
    with torch.no_grad():
        labelled = NearestCentre()(PlanePrior().synthesize(random_z)).argmax(1)
        assert (NearestCentre()(rec.images).argmax(1) == ids).all()  # every output in its class
    assert float((labelled == ids).float().mean()) <= 0.5
    m_rec, m_start, m_random = margin(rec.latents, ids), margin(start.latents, ids), margin(random_z, ids)
    assert (m_rec > 0).all() and m_rec.mean() > m_random.mean() + 0.5
    assert m_rec.mean() > m_start.mean() + 0.2  # repelled from the boundary (toy: ~0.64 vs ~0.23)
    assert rec.info["radius_never_grew"] == 0 and rec.info["mean_final_radius"] > TOY["initial_radius"]
    assert rec.latents.abs().max() <= 1.5  # the reference's clamp
    assert len(rec.trace["radius"]) == rec.info["rounds"] and min(rec.trace["in_class_share"]) >= 0


def test_identities_never_hit_are_not_attacked_and_reported() -> None:
    rec, _ = _attack(NearestCentre(), torch.tensor([9, 4]), PlanePrior(), **TOY)
    assert rec.labels.tolist() == [4] and rec.images.shape == (1, 3, 2, 2)
    assert rec.info["identities_not_found"] == "9" and rec.info["num_not_found"] == 1
    assert rec.info["initial_search_batches"] == TOY["max_initial_batches"]
    assert rec.info["queries_initial_search"] == TOY["max_initial_batches"] * TOY["initial_batch_size"]
    none, _ = _attack(NearestCentre(), torch.tensor([9]), PlanePrior(), **TOY)
    assert none.images.shape[0] == 0 and none.info["identities_found"] == 0
    empty, oracle = _attack(NearestCentre(), torch.tensor([], dtype=torch.long), PlanePrior(), **TOY)
    assert empty.images.shape[0] == 0 and oracle.queries == 0


def test_unbounded_growth_stops_when_the_sphere_is_not_finite() -> None:
    rec, _ = _attack(Constant(), torch.tensor([0]), PlanePrior(), **(TOY | {"max_rounds": None}))
    assert rec.info["stopped_nonfinite"] == 1 and torch.isfinite(rec.latents).all()
    assert rec.info["rounds"] < 2000  # the float32 radius overflows after ~350 growths
    capped, _ = _attack(Constant(), torch.tensor([0]), PlanePrior(), **(TOY | {"max_rounds": 7}))
    assert capped.info["stopped_max_rounds"] == 1 and capped.extras["rounds"].tolist() == [7]


# --------------------------------------------------------------------------------------------
# A tiny DCGAN prior and a decisive tiny classifier (pooled colours, scaled random linear head)
# --------------------------------------------------------------------------------------------
IDS = torch.arange(6)
SMALL = {"sphere_points": 8, "initial_radius": 0.5, "max_iters_at_radius": 5, "initial_batch_size": 32,
         "max_initial_batches": 10, "max_rounds": 60}


def _prior(latent_bound: float | None = 2.0) -> Generator:
    torch.manual_seed(0)
    return DCGANPlugin(DCGANPlugin.Params(z_dim=8, g_width=4, d_width=4, latent_bound=latent_bound)).build(16).eval()


def _classifier() -> Classifier:
    head = nn.Linear(12, 6)
    with torch.no_grad():
        head.weight.copy_(torch.randn(6, 12, generator=torch.Generator().manual_seed(1)) * 3000)
        head.bias.zero_()
    body = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return Classifier(body, head, feature_dim=12, num_classes=6, input_size=16).eval()


class Spy(nn.Module):
    """The defended target, counting ties at the top of its outputs and labels that differ from the raw ones."""

    def __init__(self, defended: nn.Module, raw: nn.Module) -> None:
        super().__init__()
        self.defended, self.raw = defended, raw
        self.num_classes, self.input_size = raw.num_classes, raw.input_size
        self.ties = self.changed = self.changed_without_tie = 0

    def forward(self, x: Tensor) -> Tensor:
        out, raw = self.defended(x), self.raw(x)
        top = out.topk(2, dim=1).values
        tie = top[:, 0] == top[:, 1]
        changed = out.argmax(1) != raw.argmax(1)
        self.ties += int(tie.sum())
        self.changed += int(changed.sum())
        self.changed_without_tie += int((changed & ~tie).sum())
        return out


@pytest.fixture(scope="module")
def plain_run(_one_thread) -> tuple[Reconstruction, int]:
    rec, oracle = _attack(_classifier(), IDS, _prior(), **SMALL)
    return rec, oracle.queries


def test_end_to_end_deterministic_and_within_bounds(plain_run) -> None:
    rec, _ = plain_run
    assert rec.images.shape == (4, 3, 16, 16) and rec.labels.tolist() == [0, 1, 2, 3]
    assert rec.info["identities_not_found"] == "4, 5"  # this target never predicts 4 or 5 on prior samples
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1
    prior, target, rows = _prior(), _classifier(), torch.arange(4)
    with torch.no_grad():
        assert (target(rec.images).argmax(1) == rec.labels).all()
        random_images = prior.synthesize(prior.sample_z(4, _ctx().generator()))  # same count and seed
        assert float((target(random_images).argmax(1) == rec.labels).float().mean()) <= 0.5
        conf = target(rec.images).softmax(1)[rows, rec.labels]  # white-box check only: the attack saw labels
        conf_start = target(prior.synthesize(rec.extras["initial_latents"])).softmax(1)[rows, rec.labels]
    assert conf.mean() > conf_start.mean()
    again, _ = _attack(_classifier(), IDS, _prior(), **SMALL)
    assert torch.equal(rec.images, again.images) and rec.trace == again.trace
    assert not torch.equal(rec.latents, _attack(_classifier(), IDS, _prior(), seed=1, **SMALL)[0].latents)
    bounded, _ = _attack(_classifier(), IDS, _prior(latent_bound=1.0), **SMALL)
    assert bounded.latents.abs().max() <= 1.0 and rec.latents.abs().max() <= 1.5  # prior bound, then clamp
    with pytest.raises(ConfigError, match="prior"):
        BoundaryRepulsionMI(BrepMIParams()).run(target_for("label-only", _classifier(), CPU)[0], IDS, None, _ctx())


def test_query_count_matches_the_algorithm(plain_run) -> None:
    rec, queries = plain_run
    p, info = BrepMIParams(**SMALL), rec.info
    expected = info["initial_search_batches"] * p.initial_batch_size + int(sum(rec.trace["active"])) * (
        p.sphere_points + 1)
    assert queries == info["queries"] == expected
    assert info["queries_initial_search"] + info["queries_sphere"] + info["queries_steps"] == queries
    assert info["queries_steps"] == int(sum(rec.trace["active"]))


@pytest.mark.parametrize("defense", [TopKLogits(TopKLogits.Params(k=1)), TopKLogits(TopKLogits.Params(k=3)),
                                     ConfidenceRounding(ConfidenceRounding.Params(decimals=4))],
                         ids=["top1", "top3", "rounding4"])
def test_argmax_preserving_defense_changes_nothing(plain_run, defense) -> None:
    rec, queries = plain_run
    spy = Spy(PostprocessedClassifier(_classifier(), defense.postprocess), _classifier())
    defended, oracle = _attack(spy, IDS, _prior(), **SMALL)
    assert spy.ties == 0 and spy.changed == 0
    assert torch.equal(rec.images, defended.images) and torch.equal(rec.latents, defended.latents)
    assert torch.equal(rec.labels, defended.labels) and oracle.queries == queries and rec.trace == defended.trace


def test_rounding_to_two_decimals_changes_labels_only_through_ties(plain_run) -> None:
    """Rounding keeps the argmax except where the top two probabilities round to the same value; the
    first of the tied classes then wins. BREP-MI queries near the class boundary, so such ties do occur
    (this data: 3 ties in ~1100 queries, 2 labels changed, the reconstructions differ)."""
    rec, _ = plain_run
    spy = Spy(PostprocessedClassifier(_classifier(), ConfidenceRounding(ConfidenceRounding.Params()).postprocess),
              _classifier())
    defended, _ = _attack(spy, IDS, _prior(), **SMALL)
    assert spy.changed_without_tie == 0
    same = torch.equal(rec.images, defended.images) and torch.equal(rec.latents, defended.latents)
    assert same == (spy.changed == 0), (spy.ties, spy.changed)
    if spy.ties:
        warnings.warn(f"confidence_rounding (2 decimals): {spy.ties} ties at the top among the queries, "
                      f"{spy.changed} labels changed; reconstructions identical: {same}", stacklevel=1)
