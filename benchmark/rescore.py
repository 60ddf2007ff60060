"""``bench rescore RUN --evaluation FILE.yaml``: a run's stored reconstructions judged by another evaluation model.

The evaluation file holds what a suite's ``evaluation:`` block holds (architecture, training, checkpoint,
audit, second), validated with the same schema; a file whose only key is ``evaluation:`` is read as that
block. Nothing is attacked and no target is trained: every pair with an ``ok`` record of the run's present
configuration is scored again from the reconstructions and the target in the run's store, with the suite's
metrics, by the other evaluation model (trained once per its spec and stored with the run's evaluation
models, or read from its ``checkpoint:``). The records go to ``records/judges/<judge key>/``
(:mod:`inversion_bench.judges`), each the record an original run with that evaluation model would write
(same keys, config hash and metrics; its timings are the stored products' own, plus its scoring time),
with ``judge`` (its key, the default judge's key, the evaluation file) and ``judge_agreement`` (both judges'
top-1 decisions on the same reconstructions compared, :func:`~inversion_bench.judges.decision_agreement`).
A pair whose judge record is current is not scored again: a second rescore with the same file writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversion_bench.config import LoadedSuite, load_suite, read_yaml, validate_suite
from inversion_bench.errors import ConfigError
from inversion_bench.judges import decision_agreement, judge_records_dir
from inversion_bench.lock import RunLock
from inversion_bench.metrics.accuracy import model_logits
from inversion_bench.plan import PairJob
from inversion_bench.products.audit import top1
from inversion_bench.products.evaluator import evaluator
from inversion_bench.products.reconstruction import load_reconstruction
from inversion_bench.products.record import pending, score_pair, supersede
from inversion_bench.resources import check_checkpoints
from inversion_bench.results import write_record
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)


@dataclass
class RescoreSummary:
    """What :func:`rescore_run` did (record file names in each list)."""

    judge: str  # the other judge's key (its evaluation model's store key)
    default_judge: str  # the suite's evaluation model's key
    records_dir: Path  # records/judges/<judge>
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # written too, as failed records with the reason
    unchanged: list[str] = field(default_factory=list)  # judged before with the same configuration
    not_recorded: list[str] = field(default_factory=list)  # no ok record of the present configuration: not judged


def read_evaluation(path: Path) -> dict[str, Any]:
    """The ``evaluation:`` block of an evaluation file (the mapping itself, or its only key ``evaluation:``).

    Raises:
        ConfigError: no such file, malformed YAML, or not a mapping (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such evaluation file; give a YAML file that holds a suite's evaluation: block")
    data = read_yaml(path)
    if set(data) == {"evaluation"}:
        data = data["evaluation"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: must hold the mapping of a suite's evaluation: block (architecture: ..., "
                          "training: ...), got " + ("nothing" if not data else type(data).__name__))
    return data


def _in_file(exc: ConfigError, source: str) -> ConfigError:
    """An error of the suite's ``evaluation.`` fields as the evaluation file names them (``FILE: architecture...``)."""
    text = str(exc).replace(f"{source}: evaluation.", f"{source}: ")
    return ConfigError(text)


def judge_suite(run: LoadedSuite, block: dict[str, Any], source: str) -> LoadedSuite:
    """The run's suite with ``block`` as its ``evaluation:`` (validated like a suite's; errors name ``source`` and
    the field inside the block; its checkpoints checked on disk before any work).

    Raises:
        ConfigError: a field of the block is invalid, its architecture is the target's, a checkpoint is missing or
            does not fit, or it is the run's own evaluation model.
    """
    try:
        loaded = validate_suite({**run.raw, "evaluation": block}, source)
        from inversion_bench.plan import make_plan

        plan = make_plan(loaded)  # validates evaluation.second's architecture parameters
    except ConfigError as exc:
        raise _in_file(exc, source) from None
    loaded.overrides = run.overrides
    problems = [f"{source}: {r.problem.replace('evaluation.', '')}" for r in check_checkpoints(loaded)
                if r.field.startswith("evaluation") and not r.ok and r.blocking]
    if problems:
        raise ConfigError("\n".join(problems))
    if plan.evaluator_key == make_plan(run).evaluator_key:
        raise ConfigError(f"{source}: the run's own evaluation model (the same architecture, training and checkpoint; "
                          f"judge {plan.evaluator_key}): its records are the run's records/*.json; give another "
                          "architecture, training recipe or checkpoint")
    return loaded


def _check_stored(run: RunContext, pairs: list[PairJob]) -> None:
    """Refuses (before any work) pairs whose reconstructions or target are not in the store, and a store without
    the run's evaluation model: rescoring never attacks or trains a target."""
    store = run.store
    missing = [f"{p.record_name[:-5]}: {kind}" for p in pairs
               for kind, key in (("reconstructions", p.attack_key), ("target", p.target_key))
               if not store.has("attacks" if kind == "reconstructions" else "targets", key)]
    if pairs and not store.has("evaluators", run.plan.evaluator_key):
        missing.append(f"the run's evaluation model {run.plan.evaluator_key} (the judges' agreement compares with it)")
    if missing:
        shown = "; ".join(missing[:5]) + (f"; ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{run.run_dir}: not in the store {store.root}: {shown}. bench rescore scores stored "
                          "reconstructions and never reruns an attack; run `bench run` on the run's suite.json first")


def rescore_run(run_dir: Path, evaluation_file: Path, progress: bool = False) -> RescoreSummary:
    """Scores the stored reconstructions of ``run_dir`` with the evaluation model of ``evaluation_file``.

    Args:
        run_dir: a run folder written by ``bench run`` (its ``suite.json``, records and store).
        evaluation_file: a YAML file holding an ``evaluation:`` block.
        progress: progress bars while the other evaluation model trains.

    Returns:
        The :class:`RescoreSummary`.

    Raises:
        ConfigError: a bad run folder or evaluation file, products missing from the store, or the folder is in use
            (all before any work).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "suite.json").is_file() or not (run_dir / "records").is_dir():
        raise ConfigError(f"{run_dir}: not a run folder (no suite.json and records/ inside); give the folder "
                          "`bench run` wrote")
    run = load_suite(run_dir / "suite.json")
    judged = judge_suite(run, read_evaluation(Path(evaluation_file)), str(evaluation_file))
    rctx = RunContext(run, run_dir=run_dir, progress=progress)
    jctx = RunContext(judged, run_dir=run_dir, progress=progress)
    judge, default = jctx.plan.evaluator_key, rctx.plan.evaluator_key
    jctx.records_dir = judge_records_dir(rctx.records_dir, judge)  # the judge's context writes its own records
    _, current = pending(rctx)
    recorded = {p.record_name for p in current}
    summary = RescoreSummary(judge=judge, default_judge=default, records_dir=jctx.records_dir,
                             not_recorded=[p.record_name for p in rctx.plan.pairs if p.record_name not in recorded])
    by_name = {p.record_name: p for p in current}
    for p in jctx.plan.pairs:  # the same reconstructions and targets: only the judge differs
        q = by_name.get(p.record_name)
        if q is not None and (q.attack_key, q.target_key) != (p.attack_key, p.target_key):
            raise ConfigError(f"{evaluation_file}: the pair {p.record_name[:-5]} gets other reconstructions under "
                              "this evaluation block; an evaluation file may change the evaluation model only")
    todo, skip = pending(jctx)
    todo = [p for p in todo if p.record_name in recorded]
    summary.unchanged = [p.record_name for p in skip if p.record_name in recorded]
    if not todo:
        return summary
    _check_stored(rctx, todo)
    with RunLock(run_dir):
        first, _ = evaluator(rctx)
        jctx.held.splits = rctx.held.splits  # the same data: split once
        for job in todo:
            supersede(jctx, job)  # a judge record of another configuration goes to superseded/, never deleted
            record = score_pair(jctx, job, write=False)["record"]
            record["judge"] = {"key": judge, "default": default, "evaluation_file": str(evaluation_file)}
            if record.get("status") == "ok":
                record["judge_agreement"] = {"default": default, **_agreement(rctx, jctx, first, job)}
                summary.written.append(job.record_name)
            else:
                summary.failed.append(job.record_name)
            write_record(jctx.records_dir, record)
    return summary


def _agreement(rctx: RunContext, jctx: RunContext, first: Any, job: PairJob) -> dict[str, Any]:
    """Both judges' top-1 decisions on ``job``'s stored reconstructions, compared (:func:`decision_agreement`)."""
    rec = load_reconstruction(jctx, job.attack_key)
    second, _ = evaluator(jctx)
    batch = jctx.suite.run.eval_batch_size
    a = top1(model_logits(first, rec.images, rctx.device, batch))
    b = top1(model_logits(second, rec.images, jctx.device, batch))
    return decision_agreement(a.tolist(), b.tolist(), rec.labels.tolist())
