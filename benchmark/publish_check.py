"""``bench publish --check ENTRY``: an entry verified against the artifacts it names.

Three steps, each reported with the file it concerns:

1. the entry validates against :class:`~inversion_bench.entry_model.Entry` (else exit 2: bad input);
2. every record file and every file of every stored reconstruction it names (its own and its external
   evaluations') exists and has the SHA-256 the entry holds (a record edited after publishing fails here,
   named);
3. the numbers recomputed from those records (:func:`~inversion_bench.publish.entry_numbers`, the worst case by
   :func:`~inversion_bench.publish.combined_worst_case`) equal the entry's (an entry edited by hand fails here,
   with the field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversion_bench.entry_model import Artifacts, Entry
from inversion_bench.publish import (
    PublishError,
    combined_worst_case,
    entry_id,
    entry_numbers,
    read_entry,
    sha256_file,
)
from inversion_bench.record_model import judge_key


@dataclass
class CheckReport:
    """The outcome of :func:`check_entry`: what was verified and every problem found (none: the entry holds)."""

    path: Path
    entry: Entry
    records: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_artifacts(art: Artifacts, what: str) -> tuple[list[str], list[dict[str, Any]], int]:
    """Checks the hashes of ``art``'s files. Returns the problems, the records read (with ``_path``) and the
    number of files verified."""
    from inversion_bench.paths import inside
    from inversion_bench.results import read_record

    problems: list[str] = []
    records: list[dict[str, Any]] = []
    run_dir, store = Path(art.run_dir), Path(art.store)
    checked = 0
    for fh in art.records:
        path = run_dir / fh.path
        if not path.is_file():
            problems.append(f"record {path} ({what}) is missing")
            continue
        checked += 1
        digest = sha256_file(path)
        if digest != fh.sha256:
            problems.append(f"record {path} ({what}) was changed after publishing: its SHA-256 is {digest}, "
                            f"the entry holds {fh.sha256}")
            continue
        try:
            rec = read_record(path)
        except ValueError as exc:
            problems.append(f"record {path} ({what}) cannot be read: {exc}")
            continue
        rec["_path"] = str(path)
        records.append(rec)
    for product in art.reconstructions:
        try:
            folder = inside(inside(store, product.kind, "store kind"), product.key, "store key")
        except ValueError as exc:
            problems.append(f"reconstructions {product.kind}/{product.key} ({what}): {exc}")
            continue
        if not folder.is_dir():
            problems.append(f"reconstructions {folder} ({what}) are missing")
            continue
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        for name in sorted(present - set(product.files)):
            problems.append(f"reconstructions {folder / name} ({what}): a file the entry does not name")
        for name, expected in sorted(product.files.items()):
            path = folder / name
            if name not in present:
                problems.append(f"reconstructions {path} ({what}) is missing")
                continue
            checked += 1
            digest = sha256_file(path)
            if digest != expected:
                problems.append(f"reconstructions {path} ({what}) were changed after publishing: its SHA-256 is "
                                f"{digest}, the entry holds {expected}")
    return problems, records, checked


def differences(a: Any, b: Any, where: str = "", limit: int = 6) -> list[str]:
    """Where two JSON values differ (``field: entry X, records give Y``), at most ``limit`` of them; floats equal
    to 1e-12 relative count as equal."""
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else str(k))
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, float | int) and isinstance(y, float | int) and not isinstance(x, bool):
            if not math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-15):
                out.append(f"{path}: the entry holds {x!r}, its records give {y!r}")
        elif x != y:
            out.append(f"{path}: the entry holds {x!r}, its records give {y!r}")

    walk(a, b, where)
    return out


def _foreign(records: list[dict[str, Any]], entry: Entry) -> list[str]:
    """Why records of an external evaluation do not evaluate the entry's published targets under its protocol."""
    out = []
    for r in records:
        keys = r.get("keys") if isinstance(r.get("keys"), dict) else {}
        where = r.get("_path")
        if keys.get("target") != entry.defense.target_keys.get(str(r.get("seed"))):
            out.append(f"record {where} attacks target {keys.get('target')}, not the entry's target of seed "
                       f"{r.get('seed')}")
        elif r.get("status") == "ok" and (judge_key(r) != entry.protocol.evaluation.key
                                          or keys.get("data") != entry.protocol.data_key):
            out.append(f"record {where} is of another judge or data than the entry's protocol")
    return out


def check_entry(path: str | Path) -> CheckReport:
    """Verifies an entry against its artifacts (see the module docstring).

    Raises:
        PublishError: the entry cannot be read or does not validate (bad input, exit 2).
    """
    path = Path(path)
    entry = read_entry(path)
    report = CheckReport(path, entry)
    problems, own, checked = verify_artifacts(entry.artifacts, f"entry {entry.id}")
    report.problems += problems
    report.records += len(own)
    report.files += checked
    ext_records: dict[str, list[dict[str, Any]]] = {}
    for ext in entry.external:
        problems, recs, checked = verify_artifacts(ext.artifacts, f"external evaluation {ext.id}")
        report.problems += problems
        report.records += len(recs)
        report.files += checked
        ext_records[ext.id] = recs
    if report.problems:
        return report  # numbers from changed or missing files would only repeat the problem
    try:
        numbers = entry_numbers(own, entry.protocol.name)
    except PublishError as exc:
        report.problems.append(f"{path}: its records do not make an entry: {exc}")
        return report
    for name in ("protocol", "defense", "utility", "attacks", "seeds", "code_versions", "plugins"):
        mine = getattr(numbers, name)
        dumped = [m.model_dump(mode="json") for m in mine] if name == "attacks" else (
            mine.model_dump(mode="json") if hasattr(mine, "model_dump") else mine)
        theirs = getattr(entry, name)
        held = [m.model_dump(mode="json") for m in theirs] if name == "attacks" else (
            theirs.model_dump(mode="json") if hasattr(theirs, "model_dump") else theirs)
        report.problems += [f"{path}: {d}" for d in differences(held, dumped, name)]
    if entry.id != entry_id(numbers.protocol, numbers.defense):
        report.problems.append(f"{path}: id {entry.id!r} is not the id of its protocol and targets "
                               f"({entry_id(numbers.protocol, numbers.defense)!r})")
    for ext in entry.external:
        report.problems += [f"{path}: external evaluation {ext.id}: {p}"
                            for p in _foreign(ext_records[ext.id], entry)]
        try:
            ext_numbers = entry_numbers(ext_records[ext.id], entry.protocol.name)
        except PublishError as exc:
            report.problems.append(f"{path}: external evaluation {ext.id}: {exc}")
            continue
        found = next((e for e in ext_numbers.attacks if e.attack == ext.evaluation.attack), None)
        if found is None:
            report.problems.append(f"{path}: external evaluation {ext.id}: its records hold no attack "
                                   f"{ext.evaluation.attack!r}")
            continue
        report.problems += [f"{path}: {d}" for d in differences(ext.evaluation.model_dump(mode="json"),
                                                                found.model_dump(mode="json"),
                                                                f"external[{ext.id}].evaluation")]
    wc = combined_worst_case(entry.attacks, entry.external, entry.protocol.worst_case_metric, entry.seeds)
    report.problems += [f"{path}: {d}" for d in differences(entry.worst_case.model_dump(mode="json"),
                                                            wc.model_dump(mode="json"), "worst_case")]
    return report
