"""``bench publish``: a run folder's defenses as leaderboard entries, and external evaluations added to them.

One entry per defense (:class:`~inversion_bench.entry_model.Entry`), written as ``<out>/<entry id>.json``. Its
numbers are the cells of the run's leaderboard (:func:`~inversion_bench.leaderboard.build.build` over the
defense's records: means over seeds, intervals of :mod:`~inversion_bench.leaderboard.stats`), its worst case the
rule of :func:`~inversion_bench.leaderboard.worst_case.worst_case` (the strongest evaluation's mean over the seeds),
its artifacts the SHA-256 of every record file and every file of every stored reconstruction behind them.

**External evaluations** (:func:`add_external`): a run by anyone that attacks the *same published targets* (the
same target store keys, so the same data, recipe, defense and seed) under the same judge adds each of its
attacks to the entry as an external evaluation. The worst case is the maximum over own and external
evaluations, so an external evaluation can only raise it (lower the defense's standing); a weaker one changes
nothing. When an external one sets it, the entry is flagged ``unreliable`` (the publisher's attacks missed a
stronger one) and its worst case names that evaluation.

Every entry is computed from records alone (:func:`entry_numbers`), so ``bench publish --check``
(:mod:`~inversion_bench.publish_check`) recomputes it from the files it names and compares.
This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversion_bench.entry_model import (
    Artifacts,
    Defense,
    Entry,
    Evaluation,
    EvaluationModel,
    ExternalEvaluation,
    FileHash,
    Numbers,
    ProductHash,
    Protocol,
    Published,
    WorstCaseEntry,
    load_entry,
)
from inversion_bench.errors import ConfigError
from inversion_bench.record_model import DEFAULT_WORST_CASE_METRIC, judge_key

RECONSTRUCTIONS = "attacks"
"""The store kind of stored reconstructions (``<store>/attacks/<key>/``)."""
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


class PublishError(ConfigError):
    """A run folder, entry or option that cannot be published or checked (exit 2); the message names the file,
    field and fix."""


# --------------------------------------------------------------------------------------------------
# small pure helpers


def canonical_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 (hex, first ``length`` digits) of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    """The full SHA-256 (64 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of characters other than letters, digits, ``.``, ``_``, ``-`` -> ``-``."""
    return _SLUG.sub("-", str(text)).strip("-.") or "x"


def protocol_key(name: str, data_key: str, judge: str, target: dict[str, Any], metric: str) -> str:
    """The key entries are grouped by: the protocol's name, the data key (dataset, resolution, identity split),
    the judge, the target setup (architecture, parameters, training length, checkpoint) and the worst-case
    metric. Two entries with different keys never share a table."""
    return canonical_hash({"name": name, "data": data_key, "judge": judge, "target": target, "worst_case": metric})


def _none_if_nan(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _record_key(rec: dict[str, Any], name: str) -> str | None:
    keys = rec.get("keys")
    value = keys.get(name) if isinstance(keys, dict) else None
    return str(value) if value else None


def _where(rec: dict[str, Any]) -> str:
    return str(rec.get("_path") or "<record>")


def _one(recs: Sequence[dict[str, Any]], what: str, get) -> Any:
    """The one value ``get(rec)`` has over ``recs``; PublishError naming two records that differ."""
    seen: dict[str, tuple[Any, str]] = {}
    for r in recs:
        v = get(r)
        seen.setdefault(json.dumps(v, sort_keys=True, default=str), (v, _where(r)))
    if len(seen) > 1:
        (a, pa), (b, pb) = list(seen.values())[:2]
        raise PublishError(f"the records differ in {what} ({pa}: {a!r}; {pb}: {b!r}); publish runs of one suite "
                           "and one judge (one run folder, or several of the same protocol)")
    return next(iter(seen.values()))[0] if seen else None


# --------------------------------------------------------------------------------------------------
# reading a run folder


@dataclass
class RunFiles:
    """A run folder's records (each with ``_path``), its store root and its suite hash."""

    run_dir: Path
    store: Path
    records: list[dict[str, Any]] = field(default_factory=list)


def store_of(run_dir: Path) -> Path:
    """The run's product store as its ``suite.json`` names it (``run.store``, else ``<run folder>/store``)."""
    from inversion_bench.leaderboard.runs import ReportError, read_suite_json

    try:
        suite = read_suite_json(run_dir).get("suite") or {}
    except (ReportError, ValueError) as exc:
        raise PublishError(str(exc)) from None
    store = (suite.get("run") or {}).get("store") if isinstance(suite, dict) else None
    return (Path(store).expanduser() if store else Path(run_dir) / "store").absolute()


def read_run(run_dir: str | Path, judge: str | None = None) -> RunFiles:
    """Every record of a run folder (an unreadable one is an error naming it: an entry must cover all of them):
    those of the suite's evaluation model in ``records/``, or with ``judge`` those of that judge in
    ``records/judges/<judge>/`` (written by ``bench rescore``).

    Raises:
        PublishError: no such folder, no ``suite.json``, no records (of that judge), or an unreadable record.
    """
    from inversion_bench.judges import JUDGES_DIR, judge_records_dir
    from inversion_bench.results import load_records

    run = Path(run_dir).absolute()
    if not run.is_dir():
        raise PublishError(f"{run_dir}: no such run folder; give a folder written by `bench run`")
    store = store_of(run)
    rdir = run / "records"
    if judge is not None:
        try:
            rdir = judge_records_dir(rdir, judge)
        except ValueError as exc:
            raise PublishError(str(exc)) from None
        if not rdir.is_dir():
            there = sorted(p.name for p in (run / "records" / JUDGES_DIR).glob("*") if p.is_dir())
            raise PublishError(f"--judge {judge}: {run_dir} holds no records of that judge ({rdir}); judges there: "
                               f"{', '.join(there) or 'none (score the run with another judge with `bench rescore`)'}")
    unreadable: list[tuple[Path, str]] = []
    records = load_records(rdir, unreadable) if rdir.is_dir() else []
    if unreadable:
        path, reason = unreadable[0]
        raise PublishError(f"record {path} cannot be read ({reason}); run `bench run` on the folder to recompute it, "
                           "then publish")
    if not records:
        raise PublishError(f"{run_dir}: no records in {rdir}; run the suite with `bench run` first")
    return RunFiles(run, store, records)


# --------------------------------------------------------------------------------------------------
# numbers from records


def _numbers(board, defense: str, column: str) -> Numbers:
    col = next(c for c in board.columns if c.key == column)
    cell = board.cell(defense, column)
    info = board.metric_info.get(col.metric)
    pairs = [(int(s), float(v)) for s, v in zip(cell["seeds"], cell["values"], strict=True)]
    return Numbers(
        metric=col.metric, label=(info.label if info is not None else "") or col.metric,
        direction=col.direction if col.direction in ("higher", "lower") else None,
        unit=col.unit if col.unit in ("share", "score", "distance") else "score",
        mean=_none_if_nan(cell["mean"]), std=_none_if_nan(cell["std"]), ci_low=_none_if_nan(cell["ci_low"]),
        ci_high=_none_if_nan(cell["ci_high"]), ci_method=str(cell.get("ci_method") or ""),
        seeds=[s for s, _ in sorted(pairs)], values=[v for _, v in sorted(pairs)], n_failed=int(cell["n_failed"]),
    )


def _version(rec: dict[str, Any], kind: str, plugin: Any) -> str | None:
    versions = rec.get("plugin_versions")
    return str(versions.get(f"{kind}:{plugin}")) if isinstance(versions, dict) and versions.get(
        f"{kind}:{plugin}") is not None else None


def _evaluations(board, defense: str, recs: Sequence[dict[str, Any]]) -> list[Evaluation]:
    """One :class:`Evaluation` per attack of the defense's records, in table order."""
    out = []
    for attack in dict.fromkeys(c.attack for c in board.columns if c.is_attack):
        arecs = [r for r in recs if r["attack"] == attack]
        if not arecs:
            continue
        first = arecs[0]
        metrics = {c.metric: _numbers(board, defense, c.key) for c in board.columns
                   if c.attack == attack and not c.placeholder}
        out.append(Evaluation(
            attack=attack, label=str(first.get("attack_label") or attack), plugin=first.get("attack_plugin"),
            params=first.get("attack_params") or {}, version=_version(first, "attack", first.get("attack_plugin")),
            access=first.get("access"),
            reconstruction_keys={str(r["seed"]): k for r in sorted(arecs, key=lambda r: r["seed"])
                                 if r.get("status") == "ok" and (k := _record_key(r, "attack"))},
            metrics=metrics,
        ))
    return out


@dataclass(frozen=True)
class DefenseNumbers:
    """What an entry computes from one defense's records: protocol, defense, utility and own evaluations."""

    protocol: Protocol
    defense: Defense
    utility: Numbers
    attacks: list[Evaluation]
    seeds: list[int]
    code_versions: list[str]
    plugins: dict[str, str]


def entry_numbers(recs: Sequence[dict[str, Any]], protocol_name: str) -> DefenseNumbers:
    """The numbers of one defense's records (one defense, one suite, one judge).

    Raises:
        PublishError: the records are of several defenses, suites, data or judges; no record is ok; the records
            lack the keys or the test accuracy an entry needs.
    """
    from inversion_bench.leaderboard.build import build

    recs = list(recs)
    defense = _one(recs, "defense", lambda r: r["defense"])
    ok = [r for r in recs if r.get("status") == "ok"]
    if not ok:
        raise PublishError(f"defense {defense}: no ok record (every pair failed: {_where(recs[0])}); nothing to "
                           "publish")
    suite_hash = _one(recs, "suite_hash", lambda r: r.get("suite_hash"))
    data_key = _one(ok, "data key (keys.data)", lambda r: _record_key(r, "data"))
    judge = _one(ok, "judge (evaluation model key)", judge_key)
    metric = _one(recs, "worst_case_metric", lambda r: r.get("worst_case_metric") or DEFAULT_WORST_CASE_METRIC)
    setup = ok[0].get("setup") if isinstance(ok[0].get("setup"), dict) else {}
    for what, value in (("suite_hash", suite_hash), ("keys.data", data_key), ("keys.evaluator", judge)):
        if not value:
            raise PublishError(f"record {_where(ok[0])} lacks {what}; publish a run folder written by `bench run`")
    if not setup.get("dataset") or not setup.get("target"):
        raise PublishError(f"record {_where(ok[0])} lacks setup.dataset/setup.target (written before records kept "
                           "their setup); run the suite again with `bench run` to publish it")
    evaluator = ok[0].get("evaluator") if isinstance(ok[0].get("evaluator"), dict) else {}
    protocol = Protocol(
        name=protocol_name, key=protocol_key(protocol_name, data_key, judge, setup["target"], metric),
        suite_hash=str(suite_hash), data_key=data_key, dataset=setup["dataset"], target=setup["target"],
        evaluation=EvaluationModel(key=judge, architecture=evaluator.get("architecture"),
                                   test_accuracy=_none_if_nan(evaluator.get("test_accuracy")),
                                   audit=evaluator.get("audit") or {}),
        worst_case_metric=metric,
    )
    board = build(recs)
    if not any(c.key == "test_accuracy" for c in board.columns):
        raise PublishError(f"defense {defense}: its records hold no test_accuracy (the entry's utility); add the "
                           "test_accuracy metric to the suite and run it again")
    first = ok[0]
    target_keys = {}
    for r in sorted(ok, key=lambda r: r["seed"]):
        key = _record_key(r, "target")
        if not key:
            raise PublishError(f"record {_where(r)} lacks keys.target; publish a run folder written by `bench run`")
        if target_keys.setdefault(str(r["seed"]), key) != key:
            raise PublishError(f"defense {defense} seed {r['seed']}: two target keys ({target_keys[str(r['seed'])]}, "
                               f"{key} in {_where(r)}); publish one run of the defense")
    plugins: dict[str, str] = {}
    for r in recs:
        if isinstance(r.get("plugin_versions"), dict):
            plugins.update({str(k): str(v) for k, v in r["plugin_versions"].items()})
    return DefenseNumbers(
        protocol=protocol,
        defense=Defense(id=defense, label=str(first.get("defense_label") or defense),
                        plugin=first.get("defense_plugin"), params=first.get("defense_params") or {},
                        version=_version(first, "defense", first.get("defense_plugin")), target_keys=target_keys),
        utility=_numbers(board, defense, "test_accuracy"),
        attacks=_evaluations(board, defense, recs),
        seeds=sorted({int(r["seed"]) for r in recs}),
        code_versions=sorted({str(r["code_version"]) for r in recs if r.get("code_version")}),
        plugins=dict(sorted(plugins.items())),
    )


# --------------------------------------------------------------------------------------------------
# the worst case over own and external evaluations


def combined_worst_case(attacks: Sequence[Evaluation], external: Sequence[ExternalEvaluation], metric: str,
                        seeds: Sequence[int]) -> WorstCaseEntry:
    """The worst case over the entry's own evaluations and the external ones, by the leaderboard's rule
    (:func:`~inversion_bench.leaderboard.worst_case.worst_case`: the highest mean over the seeds among the
    evaluations with a value on every seed; the first in order on ties, own evaluations first). Its interval is
    that evaluation's own (crossed over seeds and identities where the records hold per-identity values).

    Args:
        attacks: the entry's own evaluations; ``external``: the external ones.
        metric: the worst-case metric.
        seeds: the entry's seeds (an evaluation without a value on one of them is not complete).
    """
    from inversion_bench.leaderboard.worst_case import worst_case

    refs: dict[str, tuple[str, Evaluation]] = {f"run:{a.attack}": ("run", a) for a in attacks}
    refs.update({f"external:{x.id}": ("external", x.evaluation) for x in external})
    rows: list[dict[str, Any]] = [{"seed": s, "attack": "", "status": "ok", "metrics": {}} for s in seeds]
    for ref, (_, ev) in refs.items():
        numbers = ev.metrics.get(metric)
        if numbers is not None:
            rows += [{"seed": s, "attack": ref, "status": "ok", "metrics": {metric: v}}
                     for s, v in zip(numbers.seeds, numbers.values, strict=True)]
    own = worst_case([r for r in rows if not r["attack"].startswith("external:")],
                     [r for r in refs if r.startswith("run:")], metric)
    wc = worst_case(rows, list(refs), metric)
    direction = next((ev.metrics[metric].direction for _, ev in refs.values() if metric in ev.metrics), "lower")
    run_mean = sum(own.values) / len(own.values) if own.values else None
    if wc.attack is None:
        return WorstCaseEntry(metric=metric, direction=direction, evaluation=None, source=None, attack=None,
                              label=None, mean=None, seeds=[], values=[], run_mean=run_mean, partial=True,
                              unreliable=False, evaluations=len(refs))
    source, ev = refs[wc.attack]
    numbers = ev.metrics[metric]
    return WorstCaseEntry(
        metric=metric, direction=direction, evaluation=wc.attack, source=source, attack=ev.attack, label=ev.label,
        mean=sum(wc.values) / len(wc.values), ci_low=numbers.ci_low, ci_high=numbers.ci_high,
        ci_method=numbers.ci_method, seeds=list(wc.seeds), values=list(wc.values), run_mean=run_mean,
        partial=wc.partial, unreliable=source == "external", evaluations=len(refs),
    )


# --------------------------------------------------------------------------------------------------
# artifacts


def product_hashes(store: Path, kind: str, key: str) -> ProductHash:
    """The SHA-256 of every file of the stored product ``<store>/<kind>/<key>/`` (paths relative to it).

    Raises:
        PublishError: the product is not in the store.
    """
    from inversion_bench.paths import inside

    folder = inside(inside(store, kind, "store kind"), key, "store key")
    if not folder.is_dir():
        raise PublishError(f"stored product {folder} is missing (the reconstructions of a record); publish from the "
                           "run folder with its store, or run `bench run` on it to recompute them")
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    return ProductHash(kind=kind, key=key, files=files)


def artifacts_of(run: RunFiles, recs: Sequence[dict[str, Any]]) -> Artifacts:
    """The hashes of ``recs``' files (relative to the run folder) and of their stored reconstructions."""
    records = []
    for r in sorted(recs, key=lambda r: _where(r)):
        path = Path(r["_path"]).absolute()
        records.append(FileHash(path=path.relative_to(run.run_dir).as_posix(), sha256=sha256_file(path)))
    keys = sorted({k for r in recs if r.get("status") == "ok" and (k := _record_key(r, "attack"))})
    return Artifacts(run_dir=str(run.run_dir), store=str(run.store), records=records,
                     reconstructions=[product_hashes(run.store, RECONSTRUCTIONS, k) for k in keys])


# --------------------------------------------------------------------------------------------------
# entries


def entry_id(protocol: Protocol, defense: Defense) -> str:
    """``<protocol>--<defense id>--<hash of protocol key and target keys>``: the same run published twice gives
    the same id (the file is replaced); another defense of the same id (other parameters, other people) not."""
    return f"{slug(protocol.name)}--{slug(defense.id)}--{canonical_hash([protocol.key, defense.target_keys], 10)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_entry(numbers: DefenseNumbers, artifacts: Artifacts, external: Sequence[ExternalEvaluation] = (),
               by: str | None = None, created: str | None = None) -> Entry:
    """An entry from its numbers, artifacts and external evaluations (the worst case computed over them)."""
    from inversion_bench import __version__

    return Entry(
        id=entry_id(numbers.protocol, numbers.defense), protocol=numbers.protocol, defense=numbers.defense,
        utility=numbers.utility, attacks=numbers.attacks, external=list(external),
        worst_case=combined_worst_case(numbers.attacks, external, numbers.protocol.worst_case_metric, numbers.seeds),
        seeds=numbers.seeds, code_versions=numbers.code_versions, plugins=numbers.plugins, artifacts=artifacts,
        published=Published(created=created or _now(), tool=f"inversion-bench {__version__}", by=by),
    )


def write_entry(entry: Entry, path: Path) -> Path:
    """Writes ``entry`` as JSON to ``path`` atomically (its folder created); returns the path."""
    from inversion_bench.results import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, entry.model_dump(mode="json"))
    return path


def read_entry(path: str | Path) -> Entry:
    """A validated entry file.

    Raises:
        PublishError: no such file, not JSON, or not a valid entry (the message names the file and field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{path}: no such entry file; give a JSON written by `bench publish`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PublishError(f"{path}: cannot be read as JSON ({type(exc).__name__}: {exc})") from None
    try:
        return load_entry(data, str(path))
    except ValueError as exc:
        raise PublishError(str(exc)) from None


def read_entries(folder: str | Path) -> list[tuple[Path, Entry]]:
    """Every ``*.json`` entry of a folder (recursively), sorted by path.

    Raises:
        PublishError: no such folder, no entries, or an invalid entry (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such folder of entries; give the --out folder of `bench publish`")
    paths = sorted(folder.rglob("*.json"))
    if not paths:
        raise PublishError(f"{folder}: no entries (*.json); write some with `bench publish RUN --protocol NAME "
                           f"--out {folder}`")
    return [(p, read_entry(p)) for p in paths]


@dataclass
class PublishResult:
    """What :func:`publish` wrote, and the defenses it left out with the reason."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def publish(run_dir: str | Path, protocol: str, out_dir: str | Path, by: str | None = None,
            judge: str | None = None) -> PublishResult:
    """Writes one entry per defense of a run folder into ``out_dir``.

    An entry already in ``out_dir`` under the same id (the same run published again) keeps its external
    evaluations (they evaluate the same targets), and its worst case is computed over them again. A defense whose
    published target (protocol key and target keys) is already an entry of another run folder is left out: one
    entry per published target; that run's attacks join it with :func:`add_external`.

    Raises:
        PublishError: bad protocol name, unreadable run, records of several suites or judges, missing
            reconstructions (nothing is written then).

    ``judge``: publish the records of that judge (``records/judges/<judge>/``) instead of the suite's evaluation
    model's; its entries get their own protocol key (never in one table with the other judge's).
    """
    if not protocol or not protocol.strip():
        raise PublishError("--protocol: give the protocol's name (e.g. --protocol celeba64)")
    run = read_run(run_dir, judge)
    _one(run.records, "suite_hash", lambda r: r.get("suite_hash"))
    out = Path(out_dir)
    existing = read_entries(out) if out.is_dir() and any(out.rglob("*.json")) else []
    published = {(e.protocol.key, json.dumps(e.defense.target_keys, sort_keys=True)): (p, e) for p, e in existing}
    result = PublishResult()
    entries: list[Entry] = []
    for defense in dict.fromkeys(r["defense"] for r in run.records):
        recs = [r for r in run.records if r["defense"] == defense]
        numbers = entry_numbers(recs, protocol.strip())
        same = published.get((numbers.protocol.key, json.dumps(numbers.defense.target_keys, sort_keys=True)))
        if same is not None and Path(same[1].artifacts.run_dir) != run.run_dir:
            result.skipped.append(f"defense {defense}: its trained targets are already the entry {same[0]} "
                                  f"(published from {same[1].artifacts.run_dir}); add this run's attacks to it with "
                                  f"`bench publish --external {run_dir} --into {out_dir}`")
            continue
        old = out / f"{entry_id(numbers.protocol, numbers.defense)}.json"
        external = read_entry(old).external if old.is_file() else []
        entries.append(make_entry(numbers, artifacts_of(run, recs), external, by=by))
    result.paths = [write_entry(e, out / f"{e.id}.json") for e in entries]
    return result


# --------------------------------------------------------------------------------------------------
# external evaluations


@dataclass
class ExternalResult:
    """What :func:`add_external` did to one entry: the evaluations it added and why others were not."""

    path: Path
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    before: float | None = None
    after: float | None = None


def external_evaluations(run: RunFiles, entry: Entry, by: str | None = None,
                         submitted: str | None = None) -> tuple[list[ExternalEvaluation], list[str]]:
    """The evaluations a run adds to ``entry``: each attack of the run on the entry's published targets (the
    same target keys) that the entry does not hold yet. Returns them and why other attacks were not added.

    A record counts when its target key is the entry's target key of its seed and its judge, data key and
    worst-case metric are the entry's protocol's. An attack must cover every seed of the entry.
    """
    targets = {v: int(s) for s, v in entry.defense.target_keys.items()}
    recs = [r for r in run.records if _record_key(r, "target") in targets
            and targets[_record_key(r, "target")] == int(r["seed"])]
    if not recs:
        return [], []
    skipped: list[str] = []
    proto = entry.protocol
    fit = []
    for r in recs:
        metric = r.get("worst_case_metric") or DEFAULT_WORST_CASE_METRIC
        if r.get("status") == "ok" and (judge_key(r) != proto.evaluation.key or _record_key(r, "data") != proto.data_key
                                        or metric != proto.worst_case_metric):
            skipped.append(f"{r['attack']} ({_where(r)}): another judge, data or worst-case metric than the protocol's")
        else:
            fit.append(r)
    own_keys = {k for a in entry.attacks for k in a.reconstruction_keys.values()}
    own_keys |= {k for x in entry.external for k in x.evaluation.reconstruction_keys.values()}
    ids = {x.id for x in entry.external}
    out = []
    for defense in dict.fromkeys(r["defense"] for r in fit):
        drecs = [r for r in fit if r["defense"] == defense]
        numbers = entry_numbers(drecs, proto.name)
        for ev in numbers.attacks:
            ext_id = f"{slug(ev.attack)}@{numbers.protocol.suite_hash}"
            covered = sorted(int(s) for s in ev.reconstruction_keys)
            if set(ev.reconstruction_keys.values()) & own_keys:
                skipped.append(f"{ev.attack}: the entry already holds these reconstructions (the same attack)")
            elif ext_id in ids:
                skipped.append(f"{ev.attack}: already added as {ext_id}")
            elif covered != entry.seeds:
                skipped.append(f"{ev.attack}: ok on seeds {covered}, the entry's seeds are {entry.seeds} (an external "
                               "evaluation must cover every seed)")
            else:
                arecs = [r for r in drecs if r["attack"] == ev.attack]
                out.append(ExternalEvaluation(
                    id=ext_id, evaluation=ev, suite_hash=numbers.protocol.suite_hash,
                    code_versions=sorted({str(r["code_version"]) for r in arecs if r.get("code_version")}),
                    plugins={k: v for k, v in numbers.plugins.items() if k.startswith(("attack:", "metric:"))},
                    artifacts=artifacts_of(run, arecs), submitted=submitted or _now(), by=by))
                ids.add(ext_id)
    return out, skipped


def add_external(run_dir: str | Path, entries_dir: str | Path, by: str | None = None,
                 judge: str | None = None) -> list[ExternalResult]:
    """Adds a run's attacks on published targets to every entry of ``entries_dir`` whose targets it attacked,
    and rewrites those entries (worst case recomputed). Returns what happened to each entry it touched.

    Raises:
        PublishError: the run attacks none of the entries' targets (nothing is written).

    ``judge``: take the run's records of that judge (``records/judges/<judge>/``); they evaluate only entries
    published under that judge.
    """
    run = read_run(run_dir, judge)
    results = []
    for path, entry in read_entries(entries_dir):
        added, skipped = external_evaluations(run, entry, by=by)
        if not added and not skipped:
            continue
        result = ExternalResult(path, [x.id for x in added], skipped, before=entry.worst_case.mean)
        if added:
            data = entry.model_dump()
            numbers = DefenseNumbers(protocol=entry.protocol, defense=entry.defense, utility=entry.utility,
                                     attacks=entry.attacks, seeds=entry.seeds, code_versions=entry.code_versions,
                                     plugins=entry.plugins)
            new = make_entry(numbers, entry.artifacts, [*entry.external, *added], by=entry.published.by,
                             created=data["published"]["created"])
            write_entry(new, path)
            result.after = new.worst_case.mean
        else:
            result.after = entry.worst_case.mean
        results.append(result)
    if not results:
        raise PublishError(f"{run_dir}: none of its records attack a published target of the entries in {entries_dir} "
                           "(an external evaluation runs the entry's defense with the protocol's data, recipe, judge "
                           "and seeds, so that its target keys are the entry's defense.target_keys)")
    return results
