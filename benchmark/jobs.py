"""The job graph of a run, walked by every executor (:mod:`inversion_bench.executors`).

A run is a graph of jobs: the evaluation model (with its audit, :mod:`inversion_bench.products.audit`),
the optional second evaluation model (``evaluation.second``) and the image prior (once per suite), one target
per (defense, seed), one generator job per (target, attack that fits its own GAN, generator settings),
one attack job per (defense, attack, seed) that stores the reconstructions, and one pair job per
(defense, attack, seed) that scores them and writes the record. An attack depends on its target, on
its own generator when it fits one, and on the prior when it needs one; a pair depends on its attack
and on the evaluation model(s) (so on a cluster attacks run while the evaluation model still trains). Jobs hand
their products over through the content-addressed store: a product job's result is its store key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inversion_bench.plan import PairJob, Plan
from inversion_bench.products.attack_generator import trained_generator
from inversion_bench.products.audit import audit
from inversion_bench.products.evaluator import evaluator, second_evaluator
from inversion_bench.products.prior import prior
from inversion_bench.products.reconstruction import reconstruct
from inversion_bench.products.record import failed_record, score_pair
from inversion_bench.products.target import target
from inversion_bench.results import write_record
from inversion_bench.run_context import RunContext

JobKind = Literal["evaluator", "second_evaluator", "prior", "target", "attack_generator", "attack", "pair"]


@dataclass(frozen=True)
class Job:
    """One unit of work; ``deps`` are the ids of the jobs whose products it reads from the store;
    ``defense`` is the id of the defense entry whose target it trains or uses."""

    kind: JobKind
    id: str
    deps: tuple[str, ...] = ()
    defense: str | None = None
    seed: int | None = None
    pair: PairJob | None = None


def target_job_id(defense: str, seed: int) -> str:
    return f"target:{defense}:{seed}"


def generator_job_id(gan_key: str) -> str:
    return f"generator:{gan_key}"


def job_graph(plan: Plan, todo: Sequence[PairJob]) -> list[Job]:
    """The jobs needed to run the pairs ``todo``, each listed after the jobs it depends on.

    Only the targets of pairs in ``todo`` are listed, and the prior only when one of their attacks
    reads it (``PairJob.prior_key``).
    """
    if not todo:
        return []
    jobs = [Job("evaluator", "evaluator")]
    scorers: tuple[str, ...] = ("evaluator",)
    if plan.second_evaluator_key is not None:
        jobs.append(Job("second_evaluator", "second_evaluator"))
        scorers = ("evaluator", "second_evaluator")
    if any(p.prior_key is not None for p in todo):
        jobs.append(Job("prior", "prior"))
    targets: dict[str, Job] = {}
    for p in todo:
        tid = target_job_id(p.defense, p.seed)
        targets.setdefault(tid, Job("target", tid, defense=p.defense, seed=p.seed))
    jobs.extend(targets.values())
    generators: dict[str, Job] = {}  # one per stored generator: attack entries may share one
    for p in todo:
        if p.gan_key is not None:
            gid = generator_job_id(p.gan_key)
            generators.setdefault(gid, Job("attack_generator", gid, (target_job_id(p.defense, p.seed),),
                                           p.defense, p.seed, p))
    jobs.extend(generators.values())
    for p in todo:
        deps = [target_job_id(p.defense, p.seed)]
        if p.gan_key is not None:
            deps.append(generator_job_id(p.gan_key))
        if p.prior_key is not None:
            deps.append("prior")
        jobs.append(Job("attack", f"attack:{p.record_name}", tuple(deps), p.defense, p.seed, p))
    for p in todo:
        jobs.append(Job("pair", f"pair:{p.record_name}", (f"attack:{p.record_name}", *scorers),
                        p.defense, p.seed, p))
    return jobs


def target_uses(job: Job) -> tuple[str, int] | None:
    """The (defense id, seed) of the target ``job`` holds in memory while it runs (attack and
    pair jobs), else None; an executor may release a target once no pending job uses it."""
    if job.kind in ("attack_generator", "attack", "pair") and job.defense is not None and job.seed is not None:
        return (job.defense, job.seed)
    return None


def run_job(ctx: RunContext, job: Job) -> Any:
    """Carries out ``job`` (products already in the store are loaded, not recomputed).

    Returns the product's store key, or for a pair ``{"record": ..., "trace": ...}`` after the
    record was written.
    """
    if job.kind == "evaluator":
        evaluator(ctx)
        audit(ctx)  # once per evaluation model (stored), before any pair reads it
        return ctx.plan.evaluator_key
    if job.kind == "second_evaluator":
        second_evaluator(ctx)
        return ctx.plan.second_evaluator_key
    if job.kind == "prior":
        prior(ctx)
        return ctx.plan.prior_key
    if job.kind == "target":
        assert job.defense is not None and job.seed is not None
        target(ctx, job.defense, job.seed)
        return ctx.plan.target_keys[(job.defense, job.seed)]
    if job.kind == "attack_generator":
        assert job.pair is not None and job.pair.gan_key is not None
        trained_generator(ctx, job.pair)
        return job.pair.gan_key
    if job.kind == "attack":
        assert job.pair is not None
        return reconstruct(ctx, job.pair)
    if job.kind == "pair":
        assert job.pair is not None
        return score_pair(ctx, job.pair)
    raise ValueError(f"unknown job kind {job.kind!r}")


def record_failed_pair(ctx: RunContext, pair: PairJob, error: str, trace_text: str) -> dict[str, Any]:
    """The record of a pair whose own job or a job it depends on failed, written to the run folder.

    An ok record of the same configuration written before the failure was reported (e.g. by a Ray
    worker that died after writing it) is kept and returned instead.
    """
    path = ctx.records_dir / pair.record_name
    if path.is_file():
        try:
            written = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            written = {}
        if written.get("status") == "ok" and written.get("config_hash") == pair.config_hash:
            return written
    record = failed_record(ctx, pair, error, trace_text)
    write_record(ctx.records_dir, record)
    return record
