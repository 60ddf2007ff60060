"""Mirror, black-box variant (An et al., NDSS 2022, "MIRROR: Model Inversion for Deep Learning Network
with High Fidelity"), attack plugin ``mirror-b``: a genetic algorithm over the prior's latent space
whose fitness is the log of the target's released confidence in the attacked class.

Reference implementation: github.com/njuaplusplus/mirror, commit 2730a149eb966c49942f2c20794ce2abd1772aa2,
``my_blackbox_mirror.py`` (argument defaults) and ``scripts/run_*_blackbox.sh`` (the published runs). The
algorithm and defaults follow it; the code here is written anew and batched over identities.

1. Initial population: ``search_space_size`` (100,000: the reference's cached StyleGAN samples) latents
   are drawn from the prior and scored once by the oracle for every attacked identity; each identity
   starts from its ``population_size`` best (1000 in the run scripts; the argparse default is 100).
2. Each generation (100): the population is sorted by fitness and its best member (the elite) kept.
   An identity stops once its elite's confidence reaches ``min_score`` (0.95). Otherwise
   ``population_size - 1`` children are bred: both parents drawn with replacement with probability
   ``softmax(fitness)`` (= confidence-proportional), uniform crossover taking each coordinate from the
   first parent with probability ``f_a / (f_a + f_b)``, mutation of each coordinate with probability
   ``mutation_prob`` (0.1) by ``mutation_ce * U(-std, std)`` (0.1; ``std``: the per-coordinate standard
   deviation of the initial samples; the reference draws one noise vector per generation that all
   children share), then clipping to ``mean +- p_std_ce * std`` (1.0). The elite and the children are
   scored again (``population_size`` queries per identity and generation).
3. Result: the elite (``samples_per_target`` = 1 in the reference) of each identity.

Search space: the reference searches StyleGAN's w (one w for all layers) and applies mutation noise
and bounds in the "p space" before the mapping network's last leaky ReLU (slope 0.2), ``p =
lrelu^-1(w)``. ``p_space: auto`` does this for priors with a mapping (StyleGAN2-ADA here: the truncated
w); for priors whose latent is z itself (DCGAN) the search runs in z, and children are also kept
within the prior's ``latent_bound`` (``prior.constrain``).

Note on the crossover weight: with log-confidences (both negative) ``f_a / (f_a + f_b)`` gives the
*weaker* parent the larger share. That is what the reference does (default ``crossover_weight:
log_confidence``); ``confidence`` uses ``c_a / (c_a + c_b)`` on the confidences instead.
Randomness comes only from the job seed (``ctx.generator()``); fitness only from the oracle.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.optimize import attack_setup, frozen
from inversion_bench.errors import ConfigError, DivergedError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.oracle import plain
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)

TINY = torch.finfo(torch.float32).tiny  # confidences are floored here before the log (defended outputs may hold 0)
CrossoverWeight = Literal["log_confidence", "confidence"]


class MirrorParams(PluginParams):
    """Parameters of :class:`MirrorBlackBox` (defaults: the Mirror reference's black-box runs)."""

    search_space_size: int = Field(100_000, ge=1, description="prior samples scored once to seed every "
                                   "identity's population (reference: 100,000)")
    population_size: int = Field(1000, ge=2, description="latents per identity (reference run scripts: 1000; "
                                 "argparse default 100)")
    generations: int = Field(100, ge=0, description="generations per identity (0: best initial samples only)")
    mutation_prob: float = Field(0.1, ge=0, le=1, description="probability that a coordinate is mutated")
    mutation_ce: float = Field(0.1, ge=0, description="mutation noise: mutation_ce * U(-std, std) per coordinate")
    shared_mutation_noise: bool = Field(True, description="one noise vector per identity and generation shared "
                                        "by its children (reference); False: one per child")
    p_std_ce: float = Field(1.0, gt=0, description="children are clipped to mean +- p_std_ce * std of the "
                            "initial samples, per coordinate")
    min_score: float | None = Field(0.95, gt=0, le=1, description="an identity stops once its elite's "
                                    "confidence reaches this (None: run every generation)")
    crossover_weight: CrossoverWeight = Field("log_confidence", description="share of parent a: f_a / (f_a + f_b) "
                                              "on log-confidences (reference) or on confidences")
    p_space: Literal["auto", "on", "off"] = Field("auto", description="mutate and clip in p = lrelu^-1(w) "
                                                  "(auto: when the prior maps z to w, e.g. StyleGAN)")
    lrelu_slope: float = Field(0.2, gt=0, lt=1, description="negative slope of the leaky ReLU that p inverts")
    samples_per_target: int = Field(1, ge=1, description="best final latents kept per identity (reference: 1)")
    batch_size: int | None = Field(None, ge=1, description="images per oracle call (None: the run's batch size)")

    @model_validator(mode="after")
    def _check(self) -> MirrorParams:
        if self.population_size > self.search_space_size:
            raise ValueError(f"population_size ({self.population_size}) exceeds search_space_size "
                             f"({self.search_space_size})")
        if self.samples_per_target > self.population_size:
            raise ValueError(f"samples_per_target ({self.samples_per_target}) exceeds population_size "
                             f"({self.population_size})")
        return self


# --------------------------------------------------------------------------------------------
# The genetic algorithm's steps: small pure functions, batched over identities ([K, P, ...])
# --------------------------------------------------------------------------------------------
def log_confidence(probs: Tensor, labels: Tensor) -> Tensor:
    """Fitness: ``log p[label]`` of released probabilities [M, C] (floored at TINY, at most 0), [M]."""
    conf = plain(probs).float().gather(1, labels.view(-1, 1).to(probs.device)).squeeze(1)
    return conf.clamp(TINY, 1.0).log()


def to_search_space(w: Tensor, slope: float | None) -> Tensor:
    """p = lrelu^-1(w) (``slope`` None: the latent itself)."""
    return w if slope is None else torch.where(w >= 0, w, w / slope)


def from_search_space(p: Tensor, slope: float | None) -> Tensor:
    """w = lrelu(p) (``slope`` None: the latent itself)."""
    return p if slope is None else torch.where(p >= 0, p, p * slope)


def search_bounds(mean: Tensor, std: Tensor, std_ce: float) -> tuple[Tensor, Tensor]:
    """Per-coordinate clipping bounds ``mean -+ std_ce * std``."""
    return mean - std_ce * std, mean + std_ce * std


def select_elites(fitness: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` fittest along the last dimension, best first (ties: lower index first)."""
    return torch.sort(fitness, dim=-1, descending=True, stable=True).indices[..., :k]


def sort_population(pop: Tensor, fitness: Tensor) -> tuple[Tensor, Tensor]:
    """Population [K, P, d] and fitness [K, P], each identity's sorted best first."""
    order = select_elites(fitness, fitness.shape[-1])
    return pop.gather(1, order.unsqueeze(-1).expand_as(pop)), fitness.gather(1, order)


def select_parents(fitness: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` pairs of parent indices per identity, drawn with replacement with probability softmax(fitness).

    With log-confidences as fitness this is confidence-proportional selection. Returns two [K, n].
    """
    picks = torch.multinomial(torch.softmax(fitness.double(), dim=-1), 2 * n, replacement=True,
                              generator=generator)
    return picks[:, :n], picks[:, n:]


def crossover_probability(fit_a: Tensor, fit_b: Tensor, weight: CrossoverWeight = "log_confidence") -> Tensor:
    """Probability of taking a coordinate from parent a: ``a / (a + b)`` of the log-confidences
    (reference) or of the confidences; 0.5 where the sum is 0; clipped to [0, 1]."""
    a, b = (fit_a.exp(), fit_b.exp()) if weight == "confidence" else (fit_a, fit_b)
    total = a + b
    safe = torch.where(total == 0, torch.ones_like(total), total)
    return torch.where(total == 0, torch.full_like(total, 0.5), a / safe).clamp(0.0, 1.0)


def crossover(parents_a: Tensor, parents_b: Tensor, mask: Tensor) -> Tensor:
    """Uniform crossover: coordinates of ``parents_a`` where ``mask`` is true, else of ``parents_b``."""
    return torch.where(mask, parents_a, parents_b)


def mutate(pop: Tensor, prob: float, scale: Tensor, generator: torch.Generator, shared: bool = True) -> Tensor:
    """Adds ``scale * U(-1, 1)`` to each coordinate of ``pop`` [K, n, d] with probability ``prob``.

    ``scale``: [d] (or broadcastable) noise amplitude. The mask is drawn first, then the noise: one
    [K, 1, d] vector shared by the children of an identity (``shared``, the reference) or [K, n, d].
    """
    mask = torch.rand(pop.shape, generator=generator) < prob
    noise_shape = (pop.shape[0], 1, pop.shape[2]) if shared else pop.shape
    noise = (2 * torch.rand(noise_shape, generator=generator) - 1) * scale
    return pop + mask * noise


def next_generation(pop: Tensor, fitness: Tensor, p: MirrorParams, noise_scale: Tensor,
                    project: Callable[[Tensor], Tensor], generator: torch.Generator) -> Tensor:
    """The ``P - 1`` children [K, P - 1, d] of each identity's population [K, P, d] (selection,
    crossover, mutation, then ``project`` back into the bounds)."""
    k, n = pop.shape[0], pop.shape[1] - 1
    ia, ib = select_parents(fitness, n, generator)
    rows = torch.arange(k).unsqueeze(1)
    prob_a = crossover_probability(fitness[rows, ia], fitness[rows, ib], p.crossover_weight).unsqueeze(-1)
    mask = torch.rand((k, n, pop.shape[2]), generator=generator) < prob_a
    children = crossover(pop[rows, ia], pop[rows, ib], mask)
    children = mutate(children, p.mutation_prob, noise_scale, generator, p.shared_mutation_noise)
    return project(children)


# --------------------------------------------------------------------------------------------
# The oracle side: rendering and scoring (the only source of fitness)
# --------------------------------------------------------------------------------------------
class OracleFitness:
    """Renders search-space latents with the prior and scores them with the oracle, in batches."""

    def __init__(self, oracle: Any, prior: Generator, slope: float | None, batch_size: int,
                 device: torch.device) -> None:
        self.oracle, self.prior, self.slope, self.bs, self.device = oracle, prior, slope, batch_size, device
        self.queries = 0

    def images(self, p: Tensor) -> Tensor:
        """Images [M, 3, R, R] on the CPU of search-space latents [M, d]."""
        side = self.prior.resolution
        return torch.cat([torch.empty(0, 3, side, side)] + [
            self.prior.synthesize(from_search_space(p[i : i + self.bs], self.slope).to(self.device)).float().cpu()
            for i in range(0, p.shape[0], self.bs)])

    def probs(self, p: Tensor) -> Tensor:
        """Released probabilities [B, C] (CPU) of one batch of latents."""
        images = self.prior.synthesize(from_search_space(p, self.slope).to(self.device)).float()
        self.queries += int(images.shape[0])
        return plain(self.oracle(images)).float().cpu()

    def __call__(self, p: Tensor, labels: Tensor) -> Tensor:
        """Log-confidence [M] of each latent [M, d] for its label [M]."""
        out = [torch.empty(0)] + [log_confidence(self.probs(p[i : i + self.bs]), labels[i : i + self.bs])
                                  for i in range(0, p.shape[0], self.bs)]
        fit = torch.cat(out)
        if not torch.isfinite(fit).all():
            raise DivergedError("mirror-b: the oracle's confidences are NaN or inf")
        return fit


def initial_population(fitness: OracleFitness, z: Tensor, identities: Tensor, size: int,
                       to_latent: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores the prior samples ``z`` [S, z_dim] once for all identities and keeps each one's best ``size``.

    Returns (population [K, size, d] in the search space, fitness [K, size], per-coordinate mean and
    std [d] of the samples in the search space, the statistics of the mutation noise and bounds).
    """
    k, bs = identities.numel(), fitness.bs
    best_fit = torch.empty(k, 0)
    best_idx = torch.empty(k, 0, dtype=torch.long)
    total = total_sq = None
    for start in range(0, z.shape[0], bs):
        p = to_latent(z[start : start + bs])
        probs = fitness.probs(p)[:, identities]  # [B, K]
        fit = probs.clamp(TINY, 1.0).log().T
        if not torch.isfinite(fit).all():
            raise DivergedError("mirror-b: the oracle's confidences are NaN or inf")
        idx = torch.arange(start, start + p.shape[0]).expand(k, -1)
        cand_fit, cand_idx = torch.cat([best_fit, fit], 1), torch.cat([best_idx, idx], 1)
        keep = select_elites(cand_fit, size)
        best_fit, best_idx = cand_fit.gather(1, keep), cand_idx.gather(1, keep)
        s, sq = p.double().sum(0), (p.double() ** 2).sum(0)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    n = z.shape[0]
    mean = total / n
    std = (total_sq / n - mean**2).clamp_min(0).sqrt()
    chosen = z[best_idx.flatten()]
    pop = torch.cat([to_latent(chosen[i : i + bs]) for i in range(0, chosen.shape[0], bs)]).view(k, size, -1)
    return pop, best_fit, mean.float(), std.float()


@attacks.register("mirror-b")
class MirrorBlackBox(Attack):
    """Mirror-B (An et al., NDSS 2022): genetic search of the prior's latents on the target's scores."""

    Params = MirrorParams
    access = "black-box"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        text = (f"{p.search_space_size:,} initial samples, then up to {p.generations} generations x "
                f"{p.population_size:,} queries per identity")
        if p.min_score is None or p.generations == 0:
            return AttackBudget(text)
        return AttackBudget(text, f"an identity stops once its elite's confidence in the attacked class reaches "
                            f"min_score {p.min_score:g}; it cannot trigger on a target whose top confidence stays "
                            f"below {p.min_score:g} (label smoothing, or an output defense that flattens or rounds "
                            f"the scores): then every identity runs all {p.generations} generations")

    def run(self, target: Any, identities: Tensor, prior: Generator | None, ctx: AttackContext) -> Reconstruction:
        p: MirrorParams = self.params
        if prior is None:
            raise ConfigError("mirror-b needs an image prior (a generator: dcgan or stylegan2-ada)")
        identities, bs, g = attack_setup(None, prior, identities, p.batch_size, ctx)
        use_p = p.p_space == "on" or (p.p_space == "auto" and type(prior).map is not Generator.map)
        slope = p.lrelu_slope if use_p else None
        fitness = OracleFitness(target, prior, slope, bs, ctx.device)
        t_all = time.perf_counter()
        with frozen(prior), torch.no_grad():
            if identities.numel() == 0:
                return self._result(fitness, identities, torch.empty(0, 1, prior.w_dim), torch.empty(0, 1), {},
                                    {"total_s": 0.0})

            def to_latent(z: Tensor) -> Tensor:
                return to_search_space(prior.constrain(prior.map(z.to(ctx.device))).float().cpu(), slope)

            t0 = time.perf_counter()
            z = prior.sample_z(p.search_space_size, g)
            pop, fit, mean, std = initial_population(fitness, z, identities, p.population_size, to_latent)
            timings = {"search_s": time.perf_counter() - t0}
            lo, hi = search_bounds(mean, std, p.p_std_ce)

            def project(children: Tensor) -> Tensor:
                return to_latent_bounds(children.clamp(lo, hi), prior, slope, ctx.device)

            t0 = time.perf_counter()
            pop, fit, trace, runs = self._evolve(pop, fit, identities, fitness, p.mutation_ce * std, project, g)
            timings["evolve_s"] = time.perf_counter() - t0
            timings["total_s"] = time.perf_counter() - t_all
            stats = {"generations_run": runs, "p_space": use_p, "trace": trace}
            return self._result(fitness, identities, pop, fit, stats, timings)

    def _evolve(self, pop: Tensor, fit: Tensor, identities: Tensor, fitness: OracleFitness, noise_scale: Tensor,
                project: Callable[[Tensor], Tensor], g: torch.Generator
                ) -> tuple[Tensor, Tensor, dict[str, list[float]], Tensor]:
        """Runs the generations; returns the sorted population, its fitness, the trace and the
        generations each identity ran."""
        p: MirrorParams = self.params
        stop = math.log(p.min_score) if p.min_score is not None else math.inf
        runs = torch.zeros(identities.numel(), dtype=torch.long)
        trace: dict[str, list[float]] = {"best_fitness": [], "mean_fitness": [], "confidence": [], "active": []}
        for gen in range(p.generations + 1):
            pop, fit = sort_population(pop, fit)
            active = fit[:, 0] < stop
            trace["best_fitness"].append(float(fit[:, 0].mean()))
            trace["mean_fitness"].append(float(fit.mean()))
            trace["confidence"].append(float(fit[:, 0].exp().mean()))
            trace["active"].append(float(active.sum()))
            if gen == p.generations or not bool(active.any()):
                break
            rows = torch.nonzero(active).flatten()
            children = next_generation(pop[rows], fit[rows], p, noise_scale, project, g)
            new_pop = torch.cat([pop[rows, :1], children], dim=1)  # the elite is scored again (reference)
            labels = identities[rows].repeat_interleave(new_pop.shape[1])
            pop[rows] = new_pop
            fit[rows] = fitness(new_pop.flatten(0, 1), labels).view(rows.numel(), -1)
            runs[rows] += 1
        return pop, fit, trace, runs

    def _result(self, fitness: OracleFitness, identities: Tensor, pop: Tensor, fit: Tensor, stats: dict[str, Any],
                timings: dict[str, float]) -> Reconstruction:
        """The ``samples_per_target`` fittest latents of each identity (sorted populations) as a Reconstruction."""
        p: MirrorParams = self.params
        k = min(p.samples_per_target, pop.shape[1])
        kept, kept_fit = pop[:, :k].flatten(0, 1), fit[:, :k].flatten()
        images = fitness.images(kept)
        runs = stats.get("generations_run", torch.zeros(0))
        trace = stats.get("trace", {})
        info = {
            "population_size": p.population_size,
            "generations": p.generations,
            "generations_run": int(runs.max()) if runs.numel() else 0,
            "mean_generations_run": float(runs.float().mean()) if runs.numel() else 0.0,
            "stopped_at_min_score": int((fit[:, 0] >= math.log(p.min_score)).sum())
            if p.min_score is not None and fit.numel() else 0,
            "search_space_size": p.search_space_size,
            "num_identities": int(identities.numel()),
            "num_images": int(images.shape[0]),
            "p_space": bool(stats.get("p_space", False)),
            "initial_confidence": trace["confidence"][0] if trace.get("confidence") else 0.0,
            "selection_confidence": float(kept_fit.exp().mean()) if kept_fit.numel() else 0.0,
            "queries": fitness.queries,
            "image_size": int(images.shape[-1]),
            **{key: round(v, 3) for key, v in timings.items()},
        }
        latents = from_search_space(kept, fitness.slope)
        rec = Reconstruction(images=images.clamp(0, 1), labels=identities.repeat_interleave(k), latents=latents,
                             trace=trace, info=info)
        rec.check()
        log.info("mirror-b: %d identities, elite confidence %.3f -> %.3f, %d queries (%.1f s)", info["num_identities"],
                 info["initial_confidence"], info["selection_confidence"], info["queries"], timings["total_s"])
        return rec


def to_latent_bounds(p: Tensor, prior: Generator, slope: float | None, device: torch.device) -> Tensor:
    """Search-space latents kept within the prior's support (``prior.constrain``, e.g. DCGAN's latent_bound)."""
    if type(prior).constrain is Generator.constrain:
        return p
    w = prior.constrain(from_search_space(p, slope).to(device)).float().cpu()
    return to_search_space(w, slope)
