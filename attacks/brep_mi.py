"""BREP-MI, label-only model inversion by boundary repulsion, attack plugin ``brep-mi``.

Kahla, Chen, Just and Jia, "Label-Only Model Inversion Attacks via Boundary Repulsion", CVPR 2022.
Reference implementation: github.com/m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion,
commit 8a2e200c24743680fb6c49dc011018213c11be97: ``brep_mi.py`` (the loop), ``brep_mi_utils.py`` (the
initial search) and ``config2.yaml`` (the defaults). The algorithm and defaults follow it; the code is
written anew and advances all attacked identities together. The target is seen only through its top-1
labels (a :class:`~inversion_bench.oracle.LabelOracle`).

1. Initial search: batches of ``initial_batch_size`` (256) prior latents, clamped to ``point_clamp``
   ([-1.5, 1.5]), are labelled by the target; each identity starts from the first latent labelled as it.
2. Each iteration, per identity with latent ``z`` and sphere radius ``R`` (start 2.0): ``sphere_points``
   (32) points ``z + d_i``, ``d_i = R u_i / |u_i|``, ``u_i ~ N(0, I)``, are labelled, ``s_i = +1`` in the
   identity's class, ``-1`` outside. If ``sum_i s_i > expansion_margin * n`` (0.75: more than 87.5 % of
   the points, 29 of 32, in the class) the radius grows by ``expansion_coeff`` (1.3). The step is
   ``z' = clamp(z + min(R / 3, 3) * mean_i(w_i d_i) / R')`` with ``w_i = (s_i - 1) / 2`` (``repulsion_only``:
   only points outside the class push, away from them; else ``w_i = s_i``), where the step size uses the
   radius before this iteration's growth and ``R'`` the radius after it (as the reference does). ``z'`` is
   kept only if the target labels it as the identity; otherwise the step is dropped.
3. Counting and stopping (as the reference): an iteration counts when its step is kept and the radius did
   not grow; a growth restarts the count; an identity stops after ``max_iters_at_radius`` (1000) counted
   iterations without growth. Dropped steps and growths do not count.
4. Result per identity (the reference's scored point): the latent right after the last kept step on which
   the radius grew (``result: last_expansion``). The reference scores an identity whose radius never grew
   as a miss and saves no result for it; here its initial latent is returned (``info.radius_never_grew``
   counts them). ``result: final`` returns the last latent instead.

Departures, all reported in ``info``: the reference searches for initial latents until every identity is
found and has no cap on iterations, so both can run forever (e.g. a class the target never predicts on
prior samples, or a step that is dropped again and again). ``max_initial_batches`` (1000) and
``max_rounds`` (20,000 rounds of sphere + step per identity) bound them; both are benchmark additions.
The reference attacks exactly the identities its search has hit (and scores its accuracy over them), so an
identity not hit within ``max_initial_batches`` is not attacked: no image is returned for it (never a
stand-in labelled as it) and it is listed in ``info.identities_not_found``. An identity whose sphere images
are not finite (a radius grown without bound) stops there. Sphere points are neither clamped nor
constrained; only the iterate is (as in the reference). The reference also computes the target's
cross-entropy (scores) and an evaluation model's label at every step for its logs; both are left out, so the
queries are exactly ``initial_search_batches * initial_batch_size + sum over rounds of active * (n + 1)``
(``trace.active``; latents whose images are not finite are never asked about).
Latents are the prior's ``z`` (``sample_z``; images ``synthesize(map(z))``); when ``z`` is the image latent
(DCGAN) the prior's ``constrain`` (its ``latent_bound``) is applied after the clamp. ``config2.yaml``'s
``step_size: 0`` is not read by the reference (it uses ``min(R / 3, 3)``). Randomness comes only from the
job seed (``ctx.generator()``); every round draws sphere noise for all identities, so an identity's noise
does not depend on when the others stop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from inversion_bench.attack_budget import AttackBudget
from inversion_bench.attacks.common.optimize import attack_setup, frozen
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Attack, AttackContext, Generator, Reconstruction
from inversion_bench.oracle import plain
from inversion_bench.registry import PluginParams, attacks

log = logging.getLogger(__name__)


class BrepMIParams(PluginParams):
    """Parameters of :class:`BoundaryRepulsionMI` (defaults: the reference's ``config2.yaml`` and code)."""

    sphere_points: int = Field(32, ge=1, description="points labelled on the sphere per iteration "
                               "(reference: sphere_points_count 32)")
    initial_radius: float = Field(2.0, gt=0, description="starting sphere radius (reference: 2)")
    expansion_coeff: float = Field(1.3, gt=1, description="the radius is multiplied by this when it grows "
                                   "(reference: sphere_expansion_coeff 1.3)")
    expansion_margin: float = Field(0.75, ge=-1, lt=1, description="the radius grows when the sum of the +-1 "
                                    "labels of the sphere points exceeds margin * points (reference: 0.75, "
                                    "i.e. more than 87.5 % of the points in the class)")
    step_divisor: float = Field(3.0, gt=0, description="step size = min(radius / step_divisor, max_step) "
                                "(reference: 3)")
    max_step: float = Field(3.0, gt=0, description="largest step size (reference: 3)")
    max_iters_at_radius: int = Field(1000, ge=0, description="an identity stops after this many counted "
                                     "iterations without growth (reference: max_iters_at_radius_before_terminate "
                                     "1000; 0: the initial latents are returned)")
    point_clamp: tuple[float, float] | None = Field((-1.5, 1.5), description="initial and updated latents are "
                                                    "clamped to [min, max] (reference: point_clamp_min/max; "
                                                    "None: no clamp)")
    repulsion_only: bool = Field(True, description="only points outside the class move the latent (reference); "
                                 "False: points inside attract as well")
    initial_batch_size: int = Field(256, ge=1, description="latents per initial-search batch "
                                    "(reference: batch_dim_for_initial_points 256)")
    max_initial_batches: int | None = Field(1000, ge=1, description="initial-search batches before giving up "
                                            "on the identities not yet hit (reference: no limit; None: none)")
    max_rounds: int | None = Field(20_000, ge=1, description="rounds (sphere + step, counted or not) per "
                                   "identity before it stops (reference: no limit; None: none)")
    result: Literal["last_expansion", "final"] = Field("last_expansion", description="latent returned per "
                                                       "identity: after the last radius growth (reference) "
                                                       "or the last one")
    batch_size: int | None = Field(None, ge=1, description="images per oracle call (None: the run's batch size)")

    @field_validator("point_clamp")
    @classmethod
    def _check_clamp(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"point_clamp must be (min, max) with min < max, got {v}")
        return v


# --------------------------------------------------------------------------------------------
# The core step: small pure functions, batched over identities ([K, n, d])
# --------------------------------------------------------------------------------------------
def points_on_sphere(z: Tensor, radius: Tensor | float, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` points uniformly on the sphere of ``radius`` around each latent.

    Args:
        z: [K, d] centres. radius: [K] or a number. generator: the CPU random generator.

    Returns:
        (points [K, n, d], directions [K, n, d]): ``points = z + directions``, ``|directions| = radius``.
    """
    noise = torch.randn((z.shape[0], n, z.shape[1]), generator=generator, dtype=z.dtype).to(z.device)
    r = torch.as_tensor(radius, dtype=z.dtype, device=z.device).reshape(-1, 1, 1)
    directions = noise * (r / noise.norm(dim=-1, keepdim=True))
    return z.unsqueeze(1) + directions, directions


def class_signs(in_class: Tensor) -> Tensor:
    """+1 where a point is in the attacked class, -1 where not (the reference's ``is_target_class``)."""
    return in_class.float() * 2 - 1


def repulsion_direction(directions: Tensor, in_class: Tensor, radius: Tensor | float,
                        repulsion_only: bool = True) -> Tensor:
    """The update direction ``mean_i(w_i d_i) / radius`` of each identity, [K, d].

    ``w_i = -1`` for points outside the class and 0 inside (``repulsion_only``), else ``w_i = +-1``; the
    mean runs over all ``n`` points. ``directions`` [K, n, d], ``in_class`` [K, n] bool, ``radius`` [K].
    """
    s = class_signs(in_class).to(directions.dtype)
    w = (s - 1) / 2 if repulsion_only else s
    r = torch.as_tensor(radius, dtype=directions.dtype, device=directions.device).reshape(-1, 1)
    return (w.unsqueeze(-1) * directions).mean(dim=-2) / r


def next_radius(radius: Tensor, in_class: Tensor, coeff: float, margin: float) -> tuple[Tensor, Tensor]:
    """(new radius [K], grew [K]): the radius grows by ``coeff`` where ``sum(signs) > margin * n``."""
    n = in_class.shape[-1]
    grew = class_signs(in_class).sum(-1) > margin * n
    return torch.where(grew, radius * coeff, radius), grew


def step_size(radius: Tensor, divisor: float = 3.0, cap: float = 3.0) -> Tensor:
    """``min(radius / divisor, cap)``, [K]."""
    return (radius / divisor).clamp(max=cap)


# --------------------------------------------------------------------------------------------
# The oracle side: rendering and labelling (the only information about the target)
# --------------------------------------------------------------------------------------------
class LabelQueries:
    """Renders latents with the prior and asks the oracle for their labels, in batches; counts queries."""

    def __init__(self, oracle: Any, prior: Generator, batch_size: int, device: torch.device) -> None:
        self.oracle, self.prior, self.bs, self.device = oracle, prior, batch_size, device
        self.identity_map = type(prior).map is Generator.map
        self.queries = 0

    def render(self, z: Tensor) -> Tensor:
        z = z.to(self.device)
        return self.prior.synthesize(z if self.identity_map else self.prior.map(z)).float()

    def images(self, z: Tensor) -> Tensor:
        """Images [M, 3, R, R] in [0, 1] on the CPU of latents [M, d]."""
        side = self.prior.resolution
        return torch.cat([torch.empty(0, 3, side, side)] + [self.render(z[i : i + self.bs]).cpu()
                                                            for i in range(0, z.shape[0], self.bs)]).clamp(0, 1)

    def labels(self, z: Tensor) -> Tensor:
        """Top-1 labels [G, m] (CPU) of latents [G, m, d] (groups of m, e.g. one identity's sphere).

        A group with a non-finite image is not asked about; its labels are -1 (never a class).
        """
        g, m = z.shape[0], z.shape[1]
        out = torch.full((g, m), -1, dtype=torch.long)
        per = max(1, self.bs // m)
        for i in range(0, g, per):
            images = self.render(z[i : i + per].flatten(0, 1))
            ok = torch.isfinite(images).flatten(1).all(1).view(-1, m).all(1).cpu()
            if not bool(ok.any()):
                continue
            keep = images.reshape(-1, m, *images.shape[1:])[ok.to(images.device)].flatten(0, 1)
            self.queries += int(keep.shape[0])
            out[i : i + per][ok] = plain(self.oracle(keep)).long().cpu().view(-1, m)
        return out


def initial_search(queries: LabelQueries, prior: Generator, identities: Tensor, p: BrepMIParams,
                   project: Any, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
    """First prior latent labelled as each identity (the reference's initial points).

    Returns (latents [K, z_dim] (zeros where not found), found [K] bool, batches drawn).
    """
    k = identities.numel()
    z0 = torch.zeros(k, prior.z_dim)
    found = torch.zeros(k, dtype=torch.bool)
    batches = 0
    while not bool(found.all()) and (p.max_initial_batches is None or batches < p.max_initial_batches):
        z = project(prior.sample_z(p.initial_batch_size, generator).float())
        labels = queries.labels(z.unsqueeze(1)).squeeze(1)
        batches += 1
        match = (labels.unsqueeze(0) == identities.unsqueeze(1)) & ~found.unsqueeze(1)  # [K, B]
        hit = match.any(1)
        z0[hit] = z[match.int().argmax(1)[hit]]
        found |= hit
    return z0, found, batches


@dataclass
class RepulsionState:
    """Per-identity state of the boundary-repulsion loop (all [K] or [K, d], on the CPU)."""

    ids: Tensor
    z: Tensor
    radius: Tensor
    result: Tensor
    iters: Tensor
    last_growth: Tensor
    rounds: Tensor
    growths: Tensor
    nonfinite: Tensor

    @classmethod
    def start(cls, ids: Tensor, z0: Tensor, radius: float) -> RepulsionState:
        k = ids.numel()
        zeros = torch.zeros(k, dtype=torch.long)
        return cls(ids=ids, z=z0.clone(), radius=torch.full((k,), float(radius)), result=z0.clone(),
                   iters=zeros.clone(), last_growth=zeros.clone(), rounds=zeros.clone(), growths=zeros.clone(),
                   nonfinite=torch.zeros(k, dtype=torch.bool))

    def active(self, max_iters: int, max_rounds: int | None) -> Tensor:
        run = (self.iters - self.last_growth < max_iters) & ~self.nonfinite
        return run & (self.rounds < max_rounds) if max_rounds is not None else run


def repulsion_round(s: RepulsionState, rows: Tensor, queries: LabelQueries, p: BrepMIParams, project: Any,
                    generator: torch.Generator) -> dict[str, float]:
    """One iteration of the identities ``rows`` (sphere labels, radius growth, step); updates ``s``."""
    points, dirs = points_on_sphere(s.z, s.radius, p.sphere_points, generator)  # all identities: own noise
    sphere = queries.labels(points[rows])
    finite = (sphere >= 0).all(1)
    s.nonfinite[rows[~finite]] = True
    rows, sphere, dirs = rows[finite], sphere[finite], dirs[rows[finite]]
    if rows.numel() == 0:
        return {"active": 0.0, "radius": 0.0, "in_class_share": 0.0, "accepted": 0.0, "grew": 0.0}
    in_class = sphere == s.ids[rows].unsqueeze(1)
    old = s.radius[rows]
    new, grew = next_radius(old, in_class, p.expansion_coeff, p.expansion_margin)
    s.radius[rows] = new
    s.last_growth[rows[grew]] = s.iters[rows[grew]]
    s.growths[rows[grew]] += 1
    direction = repulsion_direction(dirs, in_class, new, p.repulsion_only)
    candidate = project(s.z[rows] + step_size(old, p.step_divisor, p.max_step).unsqueeze(1) * direction)
    kept = queries.labels(candidate.unsqueeze(1)).squeeze(1) == s.ids[rows]
    s.z[rows[kept]] = candidate[kept]
    s.result[rows[kept & grew]] = candidate[kept & grew]
    s.iters[rows[kept & ~grew]] += 1
    s.rounds[rows] += 1
    return {"active": float(rows.numel()), "radius": float(new.mean()),
            "in_class_share": float(in_class.float().mean()), "accepted": float(kept.float().mean()),
            "grew": float(grew.sum())}


@attacks.register("brep-mi")
class BoundaryRepulsionMI(Attack):
    """BREP-MI (Kahla et al., CVPR 2022): label-only latent search repelled from the class boundary."""

    Params = BrepMIParams
    access = "label-only"
    needs_prior = True

    def budget(self) -> AttackBudget:
        """The budget of one run from the parameters (the report's cost table)."""
        p = self.params
        rounds = f"up to {p.max_rounds:,} rounds" if p.max_rounds else "rounds without limit"
        initial = (f"up to {p.max_initial_batches:,} x {p.initial_batch_size}" if p.max_initial_batches
                   else "unlimited")
        return AttackBudget(f"initial search {initial} samples; then {rounds} x {p.sphere_points} queries per identity",
                            f"an identity stops {p.max_iters_at_radius} counted iterations after its sphere last grew; "
                            "it cannot trigger while the sphere keeps growing (then max_rounds ends it)")

    def run(self, target: Any, identities: Tensor, prior: Generator | None, ctx: AttackContext) -> Reconstruction:
        p: BrepMIParams = self.params
        if prior is None:
            raise ConfigError("brep-mi needs an image prior (a generator: dcgan or stylegan2-ada)")
        identities, bs, g = attack_setup(None, prior, identities, p.batch_size, ctx)
        queries = LabelQueries(target, prior, bs, ctx.device)
        project = self.projection(prior, ctx.device)
        t_all = time.perf_counter()
        with frozen(prior), torch.no_grad():
            z0, found, batches = initial_search(queries, prior, identities, p, project, g)
            search = {"initial_search_batches": batches, "queries_initial_search": queries.queries,
                      "search_s": round(time.perf_counter() - t_all, 3)}
            state = RepulsionState.start(identities[found], z0[found], p.initial_radius)
            t0 = time.perf_counter()
            trace = self.repel(state, queries, project, g, ctx.progress)
            search["attack_s"] = round(time.perf_counter() - t0, 3)
            latents = state.result if p.result == "last_expansion" else state.z
            images = queries.images(latents)
        search["total_s"] = round(time.perf_counter() - t_all, 3)
        return self.reconstruction(state, identities, found, latents, images, trace, queries, search, z0[found])

    def repel(self, s: RepulsionState, queries: LabelQueries, project: Any, g: torch.Generator,
              progress: bool) -> dict[str, list[float]]:
        """Runs rounds until every identity has stopped; returns the per-round trace (means over the
        identities that took part)."""
        p: BrepMIParams = self.params
        trace: dict[str, list[float]] = {k: [] for k in ("active", "radius", "in_class_share", "accepted", "grew")}
        rounds = 0
        while True:
            active = s.active(p.max_iters_at_radius, p.max_rounds)
            if s.ids.numel() == 0 or not bool(active.any()):
                break
            stats = repulsion_round(s, torch.nonzero(active).flatten(), queries, p, project, g)
            for key, v in stats.items():
                trace[key].append(v)
            rounds += 1
            if progress and rounds % 100 == 0:
                log.info("brep-mi: round %d, %d identities active, mean radius %.3f", rounds,
                         int(stats["active"]), stats["radius"])
        return trace

    def projection(self, prior: Generator, device: torch.device) -> Any:
        """Clamp to ``point_clamp``, then ``prior.constrain`` when z is the image latent (e.g. DCGAN's bound)."""
        clamp = self.params.point_clamp
        constrain = type(prior).constrain is not Generator.constrain and type(prior).map is Generator.map

        def project(z: Tensor) -> Tensor:
            if clamp is not None:
                z = z.clamp(clamp[0], clamp[1])
            return prior.constrain(z.to(device)).float().cpu() if constrain else z

        return project

    def reconstruction(self, s: RepulsionState, identities: Tensor, found: Tensor, latents: Tensor, images: Tensor,
                       trace: dict[str, list[float]], queries: LabelQueries, timings: dict[str, Any],
                       initial: Tensor) -> Reconstruction:
        p: BrepMIParams = self.params
        missing = identities[~found].tolist()
        stopped_cap = (s.active(p.max_iters_at_radius, None) & ~s.active(p.max_iters_at_radius, p.max_rounds))
        sphere_q = int(sum(trace["active"])) * p.sphere_points
        info = {
            "num_identities": int(identities.numel()),
            "identities_found": int(found.sum()),
            "identities_not_found": ", ".join(str(c) for c in missing),
            "num_not_found": len(missing),
            "num_images": int(images.shape[0]),
            "result": p.result,
            "rounds": len(trace["active"]),
            "mean_rounds": float(s.rounds.float().mean()) if s.ids.numel() else 0.0,
            "mean_iterations": float(s.iters.float().mean()) if s.ids.numel() else 0.0,
            "mean_growths": float(s.growths.float().mean()) if s.ids.numel() else 0.0,
            "mean_final_radius": float(s.radius.mean()) if s.ids.numel() else 0.0,
            "radius_never_grew": int((s.growths == 0).sum()),
            "stopped_max_rounds": int(stopped_cap.sum()),
            "stopped_nonfinite": int(s.nonfinite.sum()),
            "queries_sphere": sphere_q,
            "queries_steps": queries.queries - timings["queries_initial_search"] - sphere_q,
            "queries": queries.queries,
            "image_size": int(images.shape[-1]),
            **timings,
        }
        extras = {"initial_latents": initial, "final_radius": s.radius.clone(), "growths": s.growths.clone(),
                  "iterations": s.iters.clone(), "rounds": s.rounds.clone()}
        rec = Reconstruction(images=images, labels=s.ids.clone(), latents=latents.clone(), trace=trace, info=info,
                             extras=extras)
        rec.check()
        if missing:
            log.warning("brep-mi: the initial search found no latent labelled as %d of %d identities (%s); they are "
                        "not attacked and have no reconstruction", len(missing), identities.numel(),
                        info["identities_not_found"])
        log.info("brep-mi: %d identities, %d rounds, mean final radius %.3f, %d queries (%.1f s)", s.ids.numel(),
                 info["rounds"], info["mean_final_radius"], info["queries"], timings["total_s"])
        return rec
