"""``bench run --dry-run``: which products a run would reuse from the store and which it would compute.

The jobs of the pending pairs (:func:`inversion_bench.jobs.job_graph`) are looked up in the store by
their content keys, product kind by product kind: targets, evaluation model(s), image prior, the GANs
some attacks fit, attack runs (reconstructions) and scores (one record per pair, always computed for
a pending pair). Nothing is run, loaded or moved: a product is "found" when its folder is in the store
(its checksums are verified when the run reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from inversion_bench.jobs import Job
from inversion_bench.plan import PairJob, Plan

KINDS: tuple[tuple[str, str | None, str], ...] = (
    ("target", "targets", "targets"),
    ("evaluator", "evaluators", "evaluation model"),
    ("second_evaluator", "evaluators", "second evaluation model"),
    ("prior", "priors", "prior"),
    ("attack_generator", "generators", "attack GANs"),
    ("attack", "attacks", "attack runs"),
    ("pair", None, "scores"),
)
"""(job kind, store kind or None when not stored, what the listing calls it), in the order listed."""


@dataclass
class KindState:
    """The products of one kind: names found in the store and names to compute."""

    title: str
    reuse: list[str] = field(default_factory=list)
    compute: list[str] = field(default_factory=list)


def product_key(plan: Plan, job: Job) -> str | None:
    """The store key of ``job``'s product (None for a pair's scores, which are not stored)."""
    if job.kind == "evaluator":
        return plan.evaluator_key
    if job.kind == "second_evaluator":
        return plan.second_evaluator_key
    if job.kind == "prior":
        return plan.prior_key
    if job.kind == "target":
        return plan.target_keys[(job.defense, job.seed)]  # type: ignore[index]
    if job.kind == "attack_generator":
        return job.pair.gan_key if job.pair is not None else None
    if job.kind == "attack":
        return job.pair.attack_key if job.pair is not None else None
    return None


def pair_name(pair: PairJob) -> str:
    """How the listing names a pair's products, e.g. ``hard x mif seed 0``."""
    return f"{pair.defense} x {pair.attack} seed {pair.seed}"


def job_name(job: Job) -> str:
    """How the listing names ``job``'s product, e.g. ``hard seed 0`` or ``hard x mif seed 0``."""
    if job.kind == "target":
        return f"{job.defense} seed {job.seed}"
    if job.pair is not None:
        return pair_name(job.pair)
    return dict((k, t) for k, _, t in KINDS)[job.kind]


def product_states(plan: Plan, jobs: Sequence[Job], todo: Sequence[PairJob], recorded: Sequence[PairJob],
                   stored: Callable[[str, str], bool]) -> list[KindState]:
    """Per product kind (in :data:`KINDS` order, kinds without jobs left out), what is found in the store
    (``stored(store kind, key)``) and what would be computed; the scores of the pairs ``recorded`` (an ok
    record with the same configuration) count as reused."""
    states = {kind: KindState(title) for kind, _, title in KINDS}
    store_kinds = {kind: store_kind for kind, store_kind, _ in KINDS}
    for job in jobs:
        state = states[job.kind]
        key, store_kind = product_key(plan, job), store_kinds[job.kind]
        found = store_kind is not None and key is not None and stored(store_kind, key)
        (state.reuse if found else state.compute).append(job_name(job))
    states["pair"].reuse.extend(map(pair_name, recorded))
    return [s for s in states.values() if s.reuse or s.compute]


def _names(names: list[str], most: int) -> str:
    shown = ", ".join(names[:most])
    return f" ({shown}{', ...' if len(names) > most else ''})" if names else ""


def dry_run_lines(states: Sequence[KindState], todo: int, recorded: int, where: str, most: int = 6) -> list[str]:
    """The listing: a line of pair counts, then per product kind how many are reused and computed, with names."""
    reuse = sum(len(s.reuse) for s in states)
    compute = sum(len(s.compute) for s in states)
    lines = [f"{todo} pair(s) to run, {recorded} already recorded in {where}"]
    if not states:
        return lines
    lines.append(f"products: {reuse} found in the store (reused), {compute} to compute")
    width = max(len(s.title) for s in states) + 1
    for s in states:
        lines.append(f"  {s.title + ':':<{width}} {len(s.reuse)} reused{_names(s.reuse, most)}; "
                     f"{len(s.compute)} to compute{_names(s.compute, most)}")
    return lines
