"""The jobs of a run, and the run itself: one ``Runner`` per suite and run folder.

The job code lives here and is shared by every executor (``inversion_bench.executors``): ``evaluator()``,
``prior()``, ``target()`` and ``run_pair()`` (attack + score + record). The local executor calls them
in this process; the Ray executor calls the same methods on a ``Runner`` that each worker rebuilds
from the suite, the jobs handing their products over through the store.

Products (evaluation model, prior, targets, reconstructions, features) come from the store when
their key is there and are computed and stored otherwise; a pair whose record exists with the same
config hash is skipped. This is both the cache and ``--resume``: a run killed at any point and
started again finishes only what is missing.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from inversion_bench import __version__
from inversion_bench.config import LoadedSuite, entry_label
from inversion_bench.data.splits import Splits, make_splits
from inversion_bench.errors import BenchError, MetricUnavailableError
from inversion_bench.features import FeatureCache
from inversion_bench.interfaces import (
    AttackContext,
    Classifier,
    MetricContext,
    PostprocessedClassifier,
    PriorContext,
    Reconstruction,
)
from inversion_bench.models import load_state_dict_file
from inversion_bench.plan import PairJob, Plan, make_plan
from inversion_bench.registry import REGISTRIES
from inversion_bench.results import load_records, record_filename, write_json_atomic, write_record
from inversion_bench.store import Store
from inversion_bench.training import RunSettings, Trainer

log = logging.getLogger(__name__)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def code_version() -> str:
    """The git commit of the code (with '+dirty' for local changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"v{__version__}"


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_identity: int = 4,
              max_identities: int = 16) -> Path:
    """A PNG grid: one row per identity (first ``per_identity`` images of each)."""
    import torchvision

    rows = []
    for c in labels.unique()[:max_identities]:
        imgs = images[labels == c][:per_identity]
        if imgs.shape[0] < per_identity:
            pad = torch.ones(per_identity - imgs.shape[0], *imgs.shape[1:])
            imgs = torch.cat([imgs, pad])
        rows.append(imgs)
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=per_identity, padding=1, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, path)
    return path


@dataclass
class RunSummary:
    run_dir: Path
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Runner:
    """Runs one suite into ``run_dir`` (default ``<run.output>/<suite name>``)."""

    def __init__(self, loaded: LoadedSuite, run_dir: Path | None = None, tracking_uri: str | None = None,
                 progress: bool | None = None) -> None:
        self.loaded = loaded
        s = loaded.suite
        self.suite = s
        self.run_dir = Path(run_dir) if run_dir else Path(s.run.output) / s.name
        self.store = Store(self.run_dir / "store")
        self.records_dir = self.run_dir / "records"
        self.device = resolve_device(s.run.device)
        self.settings = RunSettings(device=self.device, amp=s.run.amp, channels_last=s.run.channels_last,
                                    compile=s.run.compile, progress=s.run.progress if progress is None else progress,
                                    eval_batch_size=s.run.eval_batch_size)
        self.tracking_uri = tracking_uri or s.run.tracking_uri
        if s.run.threads is not None:
            torch.set_num_threads(s.run.threads)
        self.weights = loaded.weights()
        self.plan: Plan = make_plan(loaded)
        self._splits: Splits | None = None
        self._targets: dict[tuple[int, int], tuple[Classifier, dict[str, Any]]] = {}
        self._target_errors: dict[tuple[int, int], BaseException] = {}
        self._evaluator: tuple[Classifier, dict[str, Any]] | None = None
        self._prior: Any = None
        self._features: FeatureCache | None = None
        self._code_version: str | None = None
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- data
    @property
    def splits(self) -> Splits:
        if self._splits is None:
            s = self.suite
            t0 = time.perf_counter()
            plugin = REGISTRIES["datasets"].get(s.dataset.name)(self.loaded.dataset_params)
            collection = plugin.load(s.dataset.resolution)
            self._splits = make_splits(collection, s.dataset.split)
            for part in (self._splits.private_train, self._splits.private_test, self._splits.public):
                part.key = f"{self.plan.data_key}-{part.name}"
            log.info("data: %d private identities (%d train / %d test images), %d public identities (%d images), "
                     "%.1f s", self._splits.num_classes, len(self._splits.private_train),
                     len(self._splits.private_test), len(self._splits.public_names), len(self._splits.public),
                     time.perf_counter() - t0)
        return self._splits

    @property
    def features(self) -> FeatureCache:
        if self._features is None:
            self._features = FeatureCache(self.store, self.device, self.suite.run.eval_batch_size,
                                          progress=self.settings.progress)
        return self._features

    # ---------------------------------------------------------------- models
    def _load_checkpoint(self, model: Classifier, ref: str) -> None:
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else self.loaded.folder / path
        state = load_state_dict_file(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BenchError(f"checkpoint {path} does not fit the architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}; check the suite's architecture and num classes")

    def _train_or_load(self, kind: str, key: str, arch: Any, arch_params: Any, recipe: Any, checkpoint: str | None,
                       seed: int, desc: str, defense: Any = None) -> tuple[Classifier, dict[str, Any]]:
        sp = self.splits

        def build() -> Classifier:
            cls = REGISTRIES["architectures"].get(arch.name)
            model = cls(arch_params).build(sp.num_classes, self.suite.dataset.resolution, self.weights)
            return defense.configure_model(model) if defense is not None else model

        if self.store.has(kind, key):
            state = self.store.load_torch(kind, key)
            model = build()
            model.load_state_dict(state["state_dict"])
            report = dict(state["report"])
        else:
            torch.manual_seed(seed)
            model = build()
            trainer = Trainer(recipe, sp.private_train, sp.private_test, self.settings, seed, desc=desc,
                              public=sp.public)
            t0 = time.perf_counter()
            if checkpoint is not None:
                self._load_checkpoint(model, checkpoint)
                model.to(self.device)
                from inversion_bench.training import accuracy, predict_logits

                logits = predict_logits(model, sp.private_test, self.settings)
                report = {"test_accuracy": accuracy(logits, sp.private_test.labels), "checkpoint": checkpoint,
                          "logit_std": float(logits.std(dim=1).mean())}
            else:
                if defense is not None:
                    defense.fit(model, trainer)
                    result = trainer.result
                else:
                    result = trainer.fit(model, lambda lo, y, pr: torch.nn.functional.cross_entropy(lo, y))
                report = {"test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
                          "logit_std": result.logit_std, "images_per_second": result.images_per_second,
                          "history": result.history}
                if defense is not None:
                    report.update(defense.report())
            report["seconds"] = time.perf_counter() - t0
            self.store.save_torch(kind, key, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                              "report": report},
                                  meta={"desc": desc, "test_accuracy": report["test_accuracy"]})
        model.to(self.device).eval()
        model.cache_key = key
        return model, report

    def evaluator(self) -> tuple[Classifier, dict[str, Any]]:
        if self._evaluator is None:
            ev = self.suite.evaluation
            self._evaluator = self._train_or_load("evaluators", self.plan.evaluator_key, ev.architecture,
                                                  self.loaded.eval_arch_params, ev.training, ev.checkpoint,
                                                  seed=0, desc="evaluation model")
        return self._evaluator

    def defense(self, di: int) -> Any:
        """A fresh instance of defense ``di`` with its validated parameters (no state shared between
        the instance that trains a target and the one whose ``postprocess`` wraps it for an attack)."""
        return REGISTRIES["defenses"].get(self.suite.defenses[di].name)(self.loaded.defense_params[di])

    def target(self, di: int, seed: int) -> tuple[Classifier, dict[str, Any]]:
        k = (di, seed)
        if k in self._target_errors:
            raise self._target_errors[k]
        if k not in self._targets:
            d = self.suite.defenses[di]
            defense = self.defense(di)
            try:
                model, report = self._train_or_load(
                    "targets", self.plan.target_keys[k], self.suite.target.architecture,
                    self.loaded.target_arch_params, self.suite.target.training, d.checkpoint, seed,
                    desc=f"target {entry_label(d)} seed {seed}", defense=defense)
            except BaseException as exc:
                self._target_errors[k] = exc
                raise
            self._targets = {kk: v for kk, v in self._targets.items() if kk[1] == seed}  # bound memory
            self._targets[k] = (model, report)
        return self._targets[k]

    def forget_failures(self) -> None:
        """Drops remembered target failures, so that a retried job trains the target again."""
        self._target_errors.clear()

    def prior(self):
        if self._prior is None:
            s = self.suite
            plugin = REGISTRIES["generators"].get(s.prior.name)(self.loaded.prior_params)
            figures = self.run_dir / "figures"

            def log_image(name: str, grid: torch.Tensor) -> None:
                import torchvision

                figures.mkdir(parents=True, exist_ok=True)
                torchvision.utils.save_image(grid, figures / f"prior_{name}.png")

            ctx = PriorContext(public=self.splits.public, resolution=s.dataset.resolution, seed=s.prior_seed,
                               device=self.device, weights=self.weights, progress=self.settings.progress,
                               log_image=log_image)
            key = self.plan.prior_key
            if self.store.has("priors", key):
                gen = plugin.load(self.store.path("priors", key), ctx)
            else:
                t0 = time.perf_counter()
                gen = plugin.fit(ctx)
                with self.store.writing("priors", key) as tmp:
                    plugin.save(gen, tmp)
                self.timings["prior_s"] = time.perf_counter() - t0
            self._prior = gen.to(self.device).eval()
        return self._prior

    # ---------------------------------------------------------------- pairs
    def attack(self, job: PairJob, target: torch.nn.Module) -> tuple[Reconstruction, float]:
        if self.store.has("attacks", job.attack_key):
            state = self.store.load_torch("attacks", job.attack_key)
            return Reconstruction.from_state(state), float(state.get("info", {}).get("seconds", 0.0))
        a = self.suite.attacks[job.attack_index]
        attack = REGISTRIES["attacks"].get(a.name)(self.loaded.attack_params[job.attack_index])
        prior = self.prior() if attack.needs_prior else None
        n_classes = self.splits.num_classes
        if a.identities == "all":
            identities = torch.arange(n_classes)
        elif isinstance(a.identities, int):
            identities = torch.arange(min(a.identities, n_classes))
        else:
            bad = [i for i in a.identities if not 0 <= i < n_classes]
            if bad:
                raise BenchError(f"attacks[{job.attack_index}].identities: {bad} outside 0..{n_classes - 1}")
            identities = torch.tensor(a.identities)
        ctx = AttackContext(device=self.device, seed=job.seed, batch_size=self.suite.run.attack_batch_size,
                            amp=self.suite.run.amp, progress=self.settings.progress,
                            resolution=self.suite.dataset.resolution)
        torch.manual_seed(job.seed)
        t0 = time.perf_counter()
        rec = attack.run(target, identities, prior, ctx)
        seconds = time.perf_counter() - t0
        rec.images = rec.images.detach().float().cpu()
        rec.labels = rec.labels.detach().long().cpu()
        rec.check()
        rec.info["seconds"] = seconds
        with self.store.writing("attacks", job.attack_key) as tmp:
            torch.save(rec.to_state(), tmp / "data.pt")
            save_grid(rec.images, rec.labels, tmp / "grid.png")
        return rec, seconds

    def score(self, rec: Reconstruction, target: torch.nn.Module, report: dict[str, Any]
              ) -> tuple[dict[str, float], dict[str, str], dict[str, Any], dict[str, str]]:
        evaluator, _ = self.evaluator()
        ctx = MetricContext(evaluation_model=evaluator, target=target, target_report=report,
                            private_train=self.splits.private_train, features=self.features, device=self.device,
                            batch_size=self.suite.run.eval_batch_size, weights=self.weights)
        values: dict[str, float] = {}
        directions: dict[str, str] = {}
        errors: dict[str, str] = {}
        for m, params in zip(self.suite.metrics, self.loaded.metric_params, strict=True):
            metric = REGISTRIES["metrics"].get(m.name)(params)
            directions.update(metric.better)
            try:
                out = metric.compute(rec, ctx)
            except MetricUnavailableError as exc:
                for name in metric.better:
                    errors[name] = str(exc)
                continue
            for name, v in out.items():
                if v is None or not torch.isfinite(torch.tensor(float(v))):
                    errors[name] = f"{m.name} returned {v}"
                else:
                    values[name] = float(v)
        return values, directions, ctx.details, errors

    def _base_record(self, job: PairJob) -> dict[str, Any]:
        s = self.suite
        d, a = s.defenses[job.defense_index], s.attacks[job.attack_index]
        dp, ap = self.loaded.defense_params[job.defense_index], self.loaded.attack_params[job.attack_index]
        if self._code_version is None:
            self._code_version = code_version()
        return {
            "suite": s.name, "suite_hash": self.plan.suite_hash, "run_dir": str(self.run_dir),
            "defense": job.defense, "defense_label": entry_label(d), "defense_plugin": d.name,
            "defense_params": dp.model_dump(mode="json"), "defense_index": job.defense_index,
            "attack": job.attack, "attack_label": entry_label(a), "attack_plugin": a.name,
            "attack_params": ap.model_dump(mode="json"), "attack_index": job.attack_index,
            "seed": job.seed, "baseline": s.baseline_id, "config_hash": job.config_hash,
            "keys": {"target": job.target_key, "attack": job.attack_key, "evaluator": self.plan.evaluator_key,
                     "prior": self.plan.prior_key, "data": self.plan.data_key},
            "code_version": self._code_version,
            "plugin_versions": {f"defense:{d.name}": REGISTRIES["defenses"].info(d.name).version,
                                f"attack:{a.name}": REGISTRIES["attacks"].info(a.name).version,
                                **{f"metric:{m.name}": REGISTRIES["metrics"].info(m.name).version
                                   for m in s.metrics}},
            "device": f"{self.device} ({platform.processor() or platform.machine()}, torch {torch.__version__})",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def attacked_target(self, di: int, seed: int) -> tuple[Classifier, dict[str, Any], torch.nn.Module]:
        """(target, its training report, the target as attacks see it: behind the defense's postprocess)."""
        model, report = self.target(di, seed)
        defense = self.defense(di)
        attacked = PostprocessedClassifier(model, defense.postprocess) if defense.has_postprocess else model
        return model, report, attacked

    def reconstruct(self, job: PairJob) -> str:
        """Only the attack of ``job``: its reconstructions land in the store; returns their key.

        The Ray executor runs this as a task of its own, so attacks do not wait for the evaluation
        model; :meth:`run_pair` then loads the reconstructions instead of attacking again.
        """
        _, _, attacked = self.attacked_target(job.defense_index, job.seed)
        self.attack(job, attacked)
        return job.attack_key

    def run_pair(self, job: PairJob) -> dict[str, Any]:
        rec_out = self._base_record(job)
        timings: dict[str, float] = {}
        trace = None
        try:
            t0 = time.perf_counter()
            model, report, attacked = self.attacked_target(job.defense_index, job.seed)
            timings["target_s"] = float(report.get("seconds", time.perf_counter() - t0))
            rec_out["num_classes"] = self.splits.num_classes
            rec_out["target"] = {k: v for k, v in report.items() if k != "history"}
            ev, ev_report = self.evaluator()
            rec_out["evaluator"] = {"test_accuracy": ev_report["test_accuracy"],
                                    "architecture": self.suite.evaluation.architecture.name}
            rec, timings["attack_s"] = self.attack(job, attacked)
            trace = rec.trace
            t1 = time.perf_counter()
            values, directions, details, errors = self.score(rec, model, report)
            timings["metrics_s"] = time.perf_counter() - t1
            values = {"test_accuracy": float(report["test_accuracy"]), **values}
            directions = {"test_accuracy": "higher", **directions}
            rec_out.update(status="ok", error=None, metrics=values, directions=directions,
                           metric_details=details, metric_errors=errors,
                           attack_info={k: v for k, v in rec.info.items() if isinstance(v, int | float | str)},
                           num_reconstructions=int(rec.images.shape[0]))
        except Exception as exc:  # a failing pair is recorded, the others still run
            rec_out = self.failed_record(job, f"{type(exc).__name__}: {exc}", traceback.format_exc(), rec_out)
        rec_out["timings"] = timings
        path = write_record(self.records_dir, rec_out)
        return {"record": rec_out, "path": path, "trace": trace}

    def failed_record(self, job: PairJob, error: str, trace_text: str,
                      base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record of a pair that failed with ``error`` (``"Type: message"``) and its traceback.

        The target's test accuracy is kept when the target was trained (in this process or, by
        another worker, in the store): nothing computed is lost.
        """
        log.error("pair %s x %s seed %d failed: %s", job.defense, job.attack, job.seed, error)
        rec = dict(base) if base is not None else self._base_record(job)
        rec.update(status="failed", error=error, traceback=trace_text, metrics={}, directions={})
        rec.setdefault("timings", {})
        accuracy = self._known_test_accuracy(job)
        if accuracy is not None:
            rec["metrics"] = {"test_accuracy": accuracy}
            rec["directions"] = {"test_accuracy": "higher"}
        return rec

    def _known_test_accuracy(self, job: PairJob) -> float | None:
        tr = self._targets.get((job.defense_index, job.seed))
        if tr is not None:
            return float(tr[1]["test_accuracy"])
        if self.store.has("targets", job.target_key):
            value = self.store.load_meta("targets", job.target_key).get("test_accuracy")
            return float(value) if value is not None else None
        return None

    # ---------------------------------------------------------------- whole run
    def pending(self) -> tuple[list[PairJob], list[PairJob]]:
        """(pairs to run, pairs whose ok record with the same config hash exists)."""
        done = {}
        for r in load_records(self.records_dir) if self.records_dir.is_dir() else []:
            done[(r["defense"], r["attack"], r["seed"])] = r
        todo, skip = [], []
        for job in self.plan.pairs:
            r = done.get((job.defense, job.attack, job.seed))
            if r is not None and r.get("status") == "ok" and r.get("config_hash") == job.config_hash:
                skip.append(job)
            else:
                todo.append(job)
        return todo, skip

    def _supersede(self, job: PairJob) -> None:
        """Moves an existing record of ``job`` with another config hash aside (never deletes it)."""
        path = self.records_dir / job.record_name
        if not path.exists():
            return
        import json

        old = json.loads(path.read_text())
        if old.get("config_hash") == job.config_hash:
            return
        dest = self.records_dir / "superseded" / f"{path.stem}.{old.get('config_hash', 'unknown')}.json"
        write_json_atomic(dest, old)
        path.unlink()

    def run(self, tracker: Any = None, executor: Any = None) -> RunSummary:
        """Runs every pending pair with ``executor`` (default: the in-process ``LocalExecutor``)."""
        if executor is None:
            from inversion_bench.executors.local import LocalExecutor

            executor = LocalExecutor()
        return executor.run(self, tracker)

    def begin(self) -> tuple[RunSummary, list[PairJob]]:
        """Prepares the run folder; returns the summary (skipped pairs filled in) and the pairs to run.

        Records of pairs to run whose configuration changed are moved to ``records/superseded/``.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store.clean_partial()
        write_json_atomic(self.run_dir / "suite.json", {"source": self.loaded.source,
                                                        "suite": self.suite.model_dump(mode="json"),
                                                        "suite_hash": self.plan.suite_hash})
        summary = RunSummary(self.run_dir)
        todo, skip = self.pending()
        summary.skipped = [j.record_name for j in skip]
        log.info("%d pair(s) to run, %d already recorded", len(todo), len(skip))
        for job in todo:
            self._supersede(job)
        return summary, todo

    def finish_pair(self, summary: RunSummary, record: dict[str, Any], trace: dict | None, tracker: Any) -> None:
        """Counts a written record in ``summary`` and mirrors it to MLflow."""
        name = record_filename(record["defense"], record["attack"], record["seed"])
        (summary.ok if record["status"] == "ok" else summary.failed).append(name)
        if tracker is not None:
            self.mirror(tracker, record, trace)

    def mirror(self, tracker: Any, record: dict[str, Any], trace: dict | None) -> None:
        artifacts = []
        grid = self.store.path("attacks", record.get("keys", {}).get("attack", "")) / "grid.png"
        if grid.exists():
            artifacts.append(grid)
        try:
            tracker.mirror(record, artifacts, trace)
        except Exception as exc:  # tracking must never lose a computed record
            log.warning("MLflow mirror of %s failed: %s", record.get("defense"), exc)

    def mirror_missing(self, tracker: Any) -> None:
        """Mirrors records that have no MLflow run yet (e.g. after a kill between record and mirror)."""
        from inversion_bench.tracking import record_id

        have = tracker.mirrored()
        for rec in load_records(self.records_dir):
            if record_id(rec) not in have:
                trace = None
                akey = rec.get("keys", {}).get("attack")
                if akey and self.store.has("attacks", akey):
                    trace = self.store.load_torch("attacks", akey).get("trace")
                self.mirror(tracker, rec, trace)
