"""The executor interface and the job graph of a run.

A run is a graph of jobs: the evaluation model and the image prior (once per suite), one target
per (defense, seed), one attack job per (defense, attack, seed) that stores the reconstructions,
and one pair job per (defense, attack, seed) that scores them and writes the record. An attack
depends on its target and, when it needs one, on the prior; a pair depends on its attack and on the
evaluation model (so attacks run while the evaluation model still trains). Jobs hand their products over through the
content-addressed store: a product job's result is its store key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from inversion_bench.plan import PairJob, Plan

if TYPE_CHECKING:
    from inversion_bench.config import LoadedSuite, RunConfig
    from inversion_bench.runner import Runner, RunSummary

JobKind = Literal["evaluator", "prior", "target", "attack", "pair"]


@dataclass(frozen=True)
class Job:
    """One unit of work; ``deps`` are the ids of the jobs whose products it reads from the store."""

    kind: JobKind
    id: str
    deps: tuple[str, ...] = ()
    defense_index: int | None = None
    seed: int | None = None
    pair: PairJob | None = None


def target_job_id(defense_index: int, seed: int) -> str:
    return f"target:{defense_index}:{seed}"


def job_graph(plan: Plan, todo: Sequence[PairJob], attack_needs_prior: Sequence[bool]) -> list[Job]:
    """The jobs needed to run the pairs ``todo``, each listed after the jobs it depends on.

    ``attack_needs_prior[i]`` says whether attack ``i`` needs the image prior. Only the targets of
    pairs in ``todo`` are listed, and the prior only when one of their attacks needs it.
    """
    if not todo:
        return []
    jobs = [Job("evaluator", "evaluator")]
    if plan.prior_key is not None and any(attack_needs_prior[p.attack_index] for p in todo):
        jobs.append(Job("prior", "prior"))
    targets: dict[str, Job] = {}
    for p in todo:
        tid = target_job_id(p.defense_index, p.seed)
        targets.setdefault(tid, Job("target", tid, defense_index=p.defense_index, seed=p.seed))
    jobs.extend(targets.values())
    for p in todo:
        deps = [target_job_id(p.defense_index, p.seed)]
        if attack_needs_prior[p.attack_index] and plan.prior_key is not None:
            deps.append("prior")
        jobs.append(Job("attack", f"attack:{p.record_name}", tuple(deps), p.defense_index, p.seed, p))
    for p in todo:
        jobs.append(Job("pair", f"pair:{p.record_name}", (f"attack:{p.record_name}", "evaluator"),
                        p.defense_index, p.seed, p))
    return jobs


def attack_needs_prior(loaded: LoadedSuite) -> list[bool]:
    """For each attack of the suite, whether it needs the image prior."""
    from inversion_bench.registry import REGISTRIES

    return [bool(getattr(REGISTRIES["attacks"].get(a.name), "needs_prior", False)) for a in loaded.suite.attacks]


def run_job(runner: Runner, job: Job) -> Any:
    """Carries out ``job`` with ``runner`` (products already in the store are loaded, not recomputed).

    Returns the product's store key, or for a pair ``{"record": ..., "trace": ...}`` after the
    record was written.
    """
    if job.kind == "evaluator":
        runner.evaluator()
        return runner.plan.evaluator_key
    if job.kind == "prior":
        runner.prior()
        return runner.plan.prior_key
    if job.kind == "target":
        assert job.defense_index is not None and job.seed is not None
        runner.target(job.defense_index, job.seed)
        return runner.plan.target_keys[(job.defense_index, job.seed)]
    if job.kind == "attack":
        assert job.pair is not None
        return runner.reconstruct(job.pair)
    if job.kind == "pair":
        assert job.pair is not None
        out = runner.run_pair(job.pair)
        return {"record": out["record"], "trace": out["trace"]}
    raise ValueError(f"unknown job kind {job.kind!r}")


class Executor(ABC):
    """Carries out the pending pairs of a ``Runner``'s suite and writes their records."""

    name: str

    @abstractmethod
    def run(self, runner: Runner, tracker: Any = None) -> RunSummary:
        """Runs every pending pair; records are written as they finish and mirrored to ``tracker``."""


def make_executor(run: RunConfig) -> Executor:
    """The executor ``run.executor`` names; raises ``ConfigError`` (exit 2) when Ray is missing."""
    if run.executor == "ray":
        from inversion_bench.executors.ray import RayExecutor

        return RayExecutor(run.ray, threads=run.threads)
    from inversion_bench.executors.local import LocalExecutor

    return LocalExecutor()
