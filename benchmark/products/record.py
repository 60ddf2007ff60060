"""Scoring a pair's reconstructions and its JSON record (the truth of a run; see :mod:`inversion_bench.results`)."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inversion_bench.checkpoints import checkpoint_json
from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.paths import inside
from inversion_bench.plan import PairJob
from inversion_bench.products.audit import evaluator_summary
from inversion_bench.products.data import splits
from inversion_bench.products.evaluator import evaluator, second_evaluator
from inversion_bench.products.reconstruction import attacked_identities, budget_info, load_reconstruction
from inversion_bench.products.target import known_test_accuracy, target
from inversion_bench.record_model import SCHEMA_VERSION, MetricInfo, upgrade
from inversion_bench.registry import REGISTRIES
from inversion_bench.results import CORRUPT_DIR, load_records, move_aside, read_record, write_json_atomic, write_record
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """Every metric of a suite on one pair: values, directions (better for the defender), details by metric
    plugin, errors and scopes by output name, per-identity values by output name."""

    values: dict[str, float] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    per_identity: dict[str, dict[str, float]] = field(default_factory=dict)


def metric_info(cls: type[Metric], plugin: str) -> dict[str, dict[str, Any]]:
    """The declarations of a metric plugin's outputs as the record keeps them (``metric_info``)."""
    return {name: MetricInfo(**out.model_dump(), plugin=plugin, scope=cls.scope).model_dump()
            for name, out in cls.outputs.items()}


def worst_case_metric(ctx: RunContext, attack_plugin: str) -> str:
    """The metric the worst case takes for records of ``attack_plugin``: the attack's own
    ``worst_case_metric``, else the suite's ``report: {worst_case: ...}``."""
    cls = REGISTRIES["attacks"].get(attack_plugin) if attack_plugin in REGISTRIES["attacks"] else None
    return str(getattr(cls, "worst_case_metric", None) or ctx.suite.report.worst_case)


def report_settings(ctx: RunContext) -> dict[str, Any]:
    """How the tables present the numbers (the suite's ``report:``), as records keep it; the worst-case metric
    travels as the record's own ``worst_case_metric``."""
    return ctx.suite.report.model_dump(mode="json", exclude={"worst_case"})


def metric_context(ctx: RunContext, job: PairJob, target_model: torch.nn.Module,
                   report: dict[str, Any]) -> MetricContext:
    """What the suite's metrics may use to score ``job``'s reconstructions."""
    ev, _ = evaluator(ctx)
    data = splits(ctx)
    a = ctx.loaded.attacks[job.attack]
    attacked = attacked_identities(a.identities, data.num_classes, f"{a.where}.identities")
    second = second_evaluator(ctx)
    return MetricContext(evaluation_model=ev, target=target_model, target_report=report,
                         private_train=data.private_train, private_test=data.private_test,
                         attacked=tuple(int(c) for c in attacked.tolist()), seed=job.seed,
                         second_evaluation_model=second[0] if second is not None else None,
                         features=ctx.features, device=ctx.device,
                         batch_size=ctx.suite.run.eval_batch_size, weights=ctx.weights)


def score(ctx: RunContext, rec: Reconstruction, mctx: MetricContext) -> Scores:
    """Every metric of the suite on ``rec`` (:class:`Scores`; scopes ``"attack"`` or ``"target"``, see
    :class:`~inversion_bench.interfaces.Metric`).

    A metric that cannot be computed (``MetricUnavailableError``) or returns a non-finite value is
    reported under ``errors`` with its reason, never as a number; the details it gathered before it
    stopped are kept.

    Raises:
        TypeError: a metric plugin's ``compute`` returned something other than a
            :class:`~inversion_bench.interfaces.MetricResult`.
    """
    out = Scores()
    for m in ctx.loaded.metrics:
        metric = m.build()
        out.directions.update(metric.better)
        out.scopes.update(dict.fromkeys(metric.better, metric.scope))
        try:
            result = metric.compute(rec, mctx)
        except MetricUnavailableError as exc:
            out.errors.update(dict.fromkeys(metric.better, str(exc)))
            if exc.details:
                out.details[m.name] = exc.details
            continue
        if not isinstance(result, MetricResult):
            raise TypeError(f"metric {m.name!r}: compute returned a {type(result).__name__}; it must return "
                            "inversion_bench.interfaces.MetricResult(values=..., per_identity=..., details=...)")
        if result.details:
            out.details[m.name] = dict(result.details)
        for name, v in result.values.items():
            if v is None or not torch.isfinite(torch.tensor(float(v))):
                out.errors[name] = f"{m.name} returned {v}"
            else:
                out.values[name] = float(v)
        for name, per in result.per_identity.items():
            if name in out.values and metric.outputs.get(name) is not None and metric.outputs[name].per_identity:
                out.per_identity[name] = {str(k): float(v) for k, v in per.items()}
    return out


def query_counts(info: dict[str, Any]) -> dict[str, float] | None:
    """``{"total": images asked about, "per_identity": total / attacked identities}`` of an attack's
    info (None for reconstructions stored before queries were counted)."""
    if "queries" not in info or not info.get("identities"):
        return None
    return {"total": int(info["queries"]), "per_identity": float(info["queries"]) / int(info["identities"])}


def base_record(ctx: RunContext, job: PairJob) -> dict[str, Any]:
    """What every record of ``job`` holds, ok or failed: the pair, its settings, keys and provenance."""
    s, plan = ctx.suite, ctx.plan
    d, a = ctx.loaded.defenses[job.defense], ctx.loaded.attacks[job.attack]
    # the setup behind the numbers, for every output (page, Markdown, LaTeX, MLflow params); the --set
    # overrides are recorded when LoadedSuite keeps them (``overrides``), else only their resolved values
    overrides = getattr(ctx.loaded, "overrides", None)
    setup: dict[str, Any] = {
        "dataset": {"name": s.dataset.name, "params": ctx.loaded.dataset_params.model_dump(mode="json"),
                    "resolution": s.dataset.resolution, "split": s.dataset.split.model_dump(mode="json")},
        "target": {"architecture": s.target.architecture.name, "params": ctx.loaded.target_arch_params.model_dump(
            mode="json"), "epochs": s.target.training.epochs, "steps": s.target.training.steps,
                   "checkpoint": checkpoint_json(s.target.checkpoint)},
        "evaluation": {"architecture": s.evaluation.architecture.name, "params": ctx.loaded.eval_arch_params.model_dump(
            mode="json"), "epochs": s.evaluation.training.epochs, "steps": s.evaluation.training.steps,
                       "checkpoint": checkpoint_json(s.evaluation.checkpoint)},
        "metrics": [{"name": m.name, "params": m.params_json(), "keys": sorted(getattr(m.cls, "better", None) or {})}
                    for m in ctx.loaded.metrics],
        "overrides": [str(o) for o in overrides] if overrides is not None else None,
    }
    try:
        sp = splits(ctx)
        setup["sizes"] = {"private_identities": sp.num_classes, "public_identities": len(sp.public_names),
                          "private_train_images": len(sp.private_train), "private_test_images": len(sp.private_test),
                          "public_images": len(sp.public)}
    except Exception as exc:  # a failed record still gets written (its error says why the data failed)
        log.debug("setup without split sizes: %s", exc)
    return {
        "suite": s.name, "suite_hash": plan.suite_hash, "run_dir": str(ctx.run_dir),
        "defense": d.id, "defense_label": d.label, "defense_plugin": d.name,
        "defense_params": d.params_json(), "defense_index": d.index,
        "defense_swept": d.swept.model_dump(mode="json") if d.swept else None,
        "attack": a.id, "attack_label": a.label, "attack_plugin": a.name,
        "attack_params": a.params_json(), "attack_index": a.index,
        "access": a.access,
        "seed": job.seed, "baseline": s.baseline_id, "config_hash": job.config_hash,
        "schema_version": SCHEMA_VERSION,
        "report_settings": report_settings(ctx),
        "metric_info": {**metric_info(REGISTRIES["metrics"].get("test_accuracy"), "test_accuracy"),
                        **{k: v for m in ctx.loaded.metrics for k, v in metric_info(m.cls, m.name).items()}},
        "worst_case_metric": worst_case_metric(ctx, a.name),
        "keys": {"target": job.target_key, "attack": job.attack_key, "evaluator": plan.evaluator_key,
                 "prior": plan.prior_key, "data": plan.data_key,
                 **({"second_evaluator": plan.second_evaluator_key} if plan.second_evaluator_key else {})},
        "code_version": ctx.code_version,
        "plugin_versions": {f"defense:{d.name}": d.version_label, f"attack:{a.name}": a.version_label,
                            **{f"metric:{m.name}": m.version_label for m in ctx.loaded.metrics}},
        "device": f"{ctx.device} ({platform.processor() or platform.machine()}, torch {torch.__version__})",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "setup": setup,
    }


def _score_into(ctx: RunContext, job: PairJob, out: dict[str, Any], timings: dict[str, float],
                keep: dict[str, Any]) -> None:
    """Fills ``out`` with the scores of ``job``'s stored reconstructions (their trace into ``keep``)."""
    t0 = time.perf_counter()
    model, report = target(ctx, job.defense, job.seed)
    timings["target_s"] = float(report.get("seconds", time.perf_counter() - t0))
    out["num_classes"] = splits(ctx).num_classes
    out["target"] = {k: v for k, v in report.items() if k != "history"}
    out["evaluator"] = evaluator_summary(ctx)
    rec = load_reconstruction(ctx, job.attack_key)
    keep["trace"] = rec.trace
    timings["attack_s"] = float(rec.info.get("seconds", 0.0))
    if "generator_seconds" in rec.info:  # the attack's own GAN (KED-MI, PLG-MI), fitted once per target
        timings["generator_s"] = float(rec.info["generator_seconds"])
    t1 = time.perf_counter()
    scores = score(ctx, rec, metric_context(ctx, job, model, report))
    timings["metrics_s"] = time.perf_counter() - t1
    out.update(status="ok", error=None, metrics={"test_accuracy": float(report["test_accuracy"]), **scores.values},
               directions={"test_accuracy": "higher", **scores.directions}, metric_details=scores.details,
               metric_errors=scores.errors, metric_scopes={"test_accuracy": "target", **scores.scopes},
               per_identity={m: {"values": v} for m, v in scores.per_identity.items()},
               attack_info={**{k: v for k, v in rec.info.items() if isinstance(v, int | float | str)},
                            **budget_info(ctx, job)},
               num_reconstructions=int(rec.images.shape[0]), queries=query_counts(rec.info))


def score_pair(ctx: RunContext, job: PairJob, write: bool = True) -> dict[str, Any]:
    """Scores ``job``'s stored reconstructions and writes its record (failed, with the reason, when
    scoring raises; ``write=False``: a local worker process, whose driver writes it). Returns
    ``{"record": ..., "trace": ...}``; the trace feeds the MLflow mirror."""
    out = base_record(ctx, job)
    timings: dict[str, float] = {}
    keep: dict[str, Any] = {}
    try:
        _score_into(ctx, job, out, timings, keep)
    except Exception as exc:  # a failing pair is recorded, the others still run
        out = failed_record(ctx, job, f"{type(exc).__name__}: {exc}", traceback.format_exc(), out)
    out["timings"] = timings
    if write:
        write_record(ctx.records_dir, out)
    return {"record": out, "trace": keep.get("trace")}


def failed_record(ctx: RunContext, job: PairJob, error: str, trace_text: str,
                  base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a pair that failed with ``error`` (``"Type: message"``) and its traceback.

    The target's test accuracy is kept when the target was trained (in this process or, by
    another worker, in the store): nothing computed is lost.
    """
    log.error("pair %s x %s seed %d failed: %s", job.defense, job.attack, job.seed, error)
    rec = dict(base) if base is not None else base_record(ctx, job)
    rec.update(status="failed", error=error, traceback=trace_text, metrics={}, directions={})
    rec.setdefault("timings", {})
    accuracy = known_test_accuracy(ctx, job.defense, job.seed)
    if accuracy is not None:
        rec["metrics"] = {"test_accuracy": accuracy}
        rec["directions"] = {"test_accuracy": "higher"}
    return rec


def pending(ctx: RunContext) -> tuple[list[PairJob], list[PairJob]]:
    """(pairs to run, pairs whose ok record with the same config hash exists).

    A record file that cannot be read is named in a warning (path and reason) and its pair is pending;
    :func:`supersede` moves it aside before the pair runs (nothing is moved here: a dry run calls this).
    """
    unreadable: list[tuple[Path, str]] = []
    done = {}
    for r in load_records(ctx.records_dir, unreadable) if ctx.records_dir.is_dir() else []:
        done[(r["defense"], r["attack"], r["seed"])] = r
    for path, reason in unreadable:
        log.warning("record %s cannot be read (%s); its pair runs again (the file is moved to %s/)",
                    path, reason, path.parent / CORRUPT_DIR)
    todo, skip = [], []
    for job in ctx.plan.pairs:
        r = done.get((job.defense, job.attack, job.seed))
        if r is not None and r.get("status") == "ok" and r.get("config_hash") == job.config_hash:
            skip.append(job)
        else:
            todo.append(job)
    return todo, skip


def supersede(ctx: RunContext, job: PairJob) -> None:
    """Moves an existing record of ``job`` with another config hash aside to ``records/superseded/``,
    and one that cannot be read to ``records/corrupt/`` (never deletes either)."""
    path = inside(ctx.records_dir, job.record_name, "record file")
    if not path.exists():
        return
    try:
        old = read_record(path)
    except ValueError as exc:
        dest = move_aside(path)
        log.warning("record %s cannot be read (%s); moved to %s, its pair runs again", path, exc, dest)
        return
    if old.get("config_hash") == job.config_hash:
        return
    tag = re.sub(r"[^A-Za-z0-9_-]", "_", str(old.get("config_hash", "unknown")))[:64]
    dest = inside(ctx.records_dir / "superseded", f"{path.stem}.{tag}.json", "superseded record")
    write_json_atomic(dest, old)
    path.unlink()


def refresh_report_settings(ctx: RunContext, skip: list[PairJob]) -> int:
    """Gives the ok records of ``skip`` (pairs not run again) the suite's present ``report:`` section.

    ``report_settings`` say how the tables present the numbers (intervals, correction, the paper
    table's columns and caption), not what was computed, so a rerun with another ``report:`` (or
    ``--set report.table.metrics=[...]``) applies it without recomputing anything. Records that
    already agree are not touched (a no-op rerun writes nothing).

    Args:
        ctx: the run's context.
        skip: the pairs whose ok record with the same config hash exists (:func:`pending`).

    Returns:
        The number of records rewritten.
    """
    wanted = report_settings(ctx)
    changed = 0
    for job in skip:
        rec = read_record(inside(ctx.records_dir, job.record_name, "record file"))
        worst = worst_case_metric(ctx, str(rec.get("attack_plugin") or ""))
        if rec.get("report_settings") != wanted or upgrade(rec)["worst_case_metric"] != worst:
            write_record(ctx.records_dir, {**upgrade(rec), "report_settings": wanted, "worst_case_metric": worst})
            changed += 1
    if changed:
        log.info("report settings of %d recorded pair(s) updated to the suite's report: section", changed)
    return changed
