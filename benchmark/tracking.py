"""MLflow mirror of the records: one experiment per suite, one MLflow run per record.

The records are the truth; this module only mirrors them. A record already mirrored (same record
id and config hash, kept in the run's tags) is not logged again, so a resumed run adds only the new
pairs. The default tracking store is an SQLite file inside the run folder, with artifacts next to
it; ``--tracking-uri`` (or ``run.tracking_uri``) points elsewhere, e.g. an ``mlflow server``.

Only the process that runs ``bench run`` (the driver) logs: with the Ray executor the workers write
records to the run folder and return them, and the driver mirrors each record as it arrives, so a
cluster has one tracking store (the run folder's SQLite file or the server), never one per node.

A tracking store that cannot be opened at the start of a run (unknown URI scheme, an ``mlflow.db``
that is not a database) is an input error (:func:`open_tracker`: one line with the store and the
fix, exit 2, before any work). One that breaks during the run (the file deleted or damaged, the server
gone) costs no record: mirroring stops with a warning and the next run mirrors what is missing.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inversion_bench.errors import ConfigError

log = logging.getLogger(__name__)


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (``http(s)://``) rather than a file or database of this machine."""
    return uri.startswith(("http://", "https://"))


PROBE_TIMEOUT_S = 3.0
"""How long :func:`server_problem` waits for a tracking server to accept a connection."""


def server_problem(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the tracking server at ``uri`` (``http(s)://host[:port]``) cannot be reached, or None.

    One TCP connection with a short timeout, made before any work: MLflow's own client retries a
    server that is down for minutes before it gives up.

    Args:
        uri: the tracking URI (``--tracking-uri`` or ``run.tracking_uri``).
        timeout: seconds to wait for the connection.
    """
    named = f"tracking URI {uri} (--tracking-uri / run.tracking_uri)"
    fix = "start the MLflow server (mlflow server --host HOST --port PORT), correct the URI, or run with --no-tracking"
    try:
        parts = urllib.parse.urlsplit(uri)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"{named}: not a valid server address ({exc}); give http(s)://HOST:PORT, or run with --no-tracking"
    if not host:
        return f"{named}: names no host; give http(s)://HOST:PORT, or run with --no-tracking"
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}" if not isinstance(exc, TimeoutError) else \
            f"no answer within {timeout:g} s"
        waited = time.monotonic() - t0
        log.debug("tracking server probe of %s failed after %.2f s: %s", uri, waited, reason)
        return f"{named}: no server answers at {host}:{port} ({reason}); {fix}"


def mlflow_key(name: str) -> str:
    """An MLflow-safe metric key ('attack_acc@1' -> 'attack_acc_top1')."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name.replace("@", "_top"))


def record_id(record: Mapping[str, Any]) -> str:
    return f"{record['defense']}__{record['attack']}__seed{record['seed']}@{record['config_hash']}"


# the evaluation model's audit sets in a record -> the suffix of their MLflow metric names
_AUDIT_SETS = {"private_other": "private", "public": "public"}


def evaluator_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The evaluation model's numbers of a record as MLflow metrics: its test accuracy, its audit
    (``evaluator_far_<set>``, ``evaluator_impostor_acc1_<set>`` for the sets private and public) and
    the second evaluation model's test accuracy; numbers a record lacks are left out."""
    ev = record.get("evaluator") or {}
    out: dict[str, float] = {}
    if ev.get("test_accuracy") is not None:
        out["evaluator_test_accuracy"] = float(ev["test_accuracy"])
    for name, suffix in _AUDIT_SETS.items():
        scores = (ev.get("audit") or {}).get(name) or {}
        if scores.get("false_acceptance") is not None:
            out[f"evaluator_far_{suffix}"] = float(scores["false_acceptance"])
        if scores.get("impostor_acc@1") is not None:
            out[f"evaluator_impostor_acc1_{suffix}"] = float(scores["impostor_acc@1"])
    second = ev.get("second") or {}
    if second.get("test_accuracy") is not None:
        out["second_evaluator_test_accuracy"] = float(second["test_accuracy"])
    return out


def _flat_params(prefix: str, params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}.{k}"
        if isinstance(v, Mapping):
            out.update(_flat_params(key, v))
        else:
            out[key] = str(v)[:500]
    return out


def setup_params(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's ``setup`` (dataset, split sizes, models and epochs, metrics, ``--set`` overrides) and
    the evaluation model's test accuracy as ``setup.*`` MLflow params."""
    setup = dict(record.get("setup") or {})
    metrics = {str(m.get("name")): m.get("params") or {} for m in setup.pop("metrics", None) or []}
    overrides = setup.pop("overrides", None)
    out = _flat_params("setup", setup)
    out.update(_flat_params("setup.metrics", metrics))
    out["setup.overrides"] = ("not recorded" if overrides is None else "; ".join(map(str, overrides)) or "none")[:500]
    acc = (record.get("evaluator") or {}).get("test_accuracy")
    if acc is not None:
        out["setup.evaluation.test_accuracy"] = str(acc)
    return out


def short_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (capped) of the exception at the root of ``exc``'s chain (the
    database's or the network's own error rather than MLflow's wrapper), for one-line messages."""
    for _ in range(10):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_tracker(uri: str | None, run_dir: Path, experiment: str) -> Tracker:
    """The :class:`Tracker` of a run: ``uri`` (``--tracking-uri``/``run.tracking_uri``), else the SQLite
    file in ``run_dir``; raises ``ConfigError`` (exit 2) naming the store and the fix when it cannot be
    opened."""
    target = uri or default_tracking_uri(run_dir)
    try:
        return Tracker(target, experiment, artifact_dir=run_dir / "mlartifacts")
    except Exception as exc:  # MLflow, SQLAlchemy and HTTP errors alike: the store is unusable
        reason = short_error(exc)
        if uri is None:
            db = run_dir / "mlflow.db"
            raise ConfigError(f"MLflow store {db} cannot be opened ({reason}); move it away (the records in "
                              f"{run_dir / 'records'} are kept and the next run mirrors them into a new store) or "
                              "run with --no-tracking") from None
        raise ConfigError(f"tracking URI {uri} (--tracking-uri / run.tracking_uri) cannot be opened ({reason}); "
                          "give sqlite:///PATH/mlflow.db or an http(s):// MLflow server, leave it out for the run "
                          "folder's SQLite file, or run with --no-tracking") from None


class Tracker:
    """Mirrors records to MLflow runs.

    ``broken`` is the reason the store failed during this run (set by
    :mod:`inversion_bench.products.mirror`); while it is set, records are not mirrored. ``warned``:
    that failure has been reported (one warning per run).
    """

    broken: str | None = None
    warned: bool = False
    """Whether this run has warned that the store failed (the mirror warns once per run)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        # MLflow logs a database error with its traceback before raising it; the mirror reports it in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # a tracking server stores artifacts where it was told to (mlflow server --artifacts-destination)
            local = artifact_dir is not None and not is_server_uri(tracking_uri)
            location = artifact_dir.resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    def mirrored(self) -> set[str]:
        """Record ids that already have a complete MLflow run.

        A run left unfinished by a killed process (status RUNNING) is deleted, so that the record
        is mirrored again in full instead of being counted twice.
        """
        ids: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            for r in page:
                rid = r.data.tags.get("bench.record_id", "")
                if r.info.status == "RUNNING":
                    self.client.delete_run(r.info.run_id)
                elif rid:
                    ids.add(rid)
            token = page.token
            if not token:
                return ids

    def mirror(self, record: Mapping[str, Any], artifacts: list[Path] = (),
               trace: Mapping[str, list[float | None]] | None = None) -> str:
        """Logs one record as an MLflow run; returns the run id."""
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "bench.record_id": record_id(record), "defense": record["defense"], "attack": record["attack"],
            "seed": str(record["seed"]), "status": record["status"], "code_version": str(record.get("code_version")),
            "suite": record.get("suite", ""), "config_hash": record["config_hash"],
            "mlflow.runName": f"{record['defense']} x {record['attack']} (seed {record['seed']})",
        }
        if record.get("error"):
            tags["error"] = str(record["error"])[:4000]
        params = {"defense.plugin": record.get("defense_plugin", ""), "attack.plugin": record.get("attack_plugin", ""),
                  "seed": str(record["seed"])}
        params.update(_flat_params("defense", record.get("defense_params", {})))
        params.update(_flat_params("attack", record.get("attack_params", {})))
        params.update(setup_params(record))
        run = self.client.create_run(self.experiment_id, tags=tags)
        rid = run.info.run_id
        import time

        now = int(time.time() * 1000)
        values = (record.get("metrics") or {}).items()
        metrics = [Metric(mlflow_key(k), float(v), now, 0) for k, v in values if v is not None]
        metrics += [Metric(k, v, now, 0) for k, v in evaluator_metrics(record).items()]
        metrics += [Metric(f"time.{k}", float(v), now, 0) for k, v in (record.get("timings") or {}).items()]
        for name, series in (trace or {}).items():
            metrics += [Metric(f"trace.{name}", float(v), now, step) for step, v in enumerate(series) if v is not None]
        param_list = [Param(k, v) for k, v in params.items()]
        for i in range(0, max(len(metrics), len(param_list), 1), 900):
            self.client.log_batch(rid, metrics=metrics[i : i + 900], params=param_list[i : i + 100] if i == 0 else [],
                                  tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
        for i in range(100, len(param_list), 100):
            self.client.log_batch(rid, params=param_list[i : i + 100])
        for path in artifacts:
            if Path(path).exists():
                self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, status="FINISHED" if record["status"] == "ok" else "FAILED")
        return rid
