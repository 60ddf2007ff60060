"""Numbers that papers and reference repositories publish for a protocol, as reference rows of a report.

``bench report --published celeba64`` (and ``bench leaderboard``) reads ``published/<protocol>.yaml``
(package data next to this module), keeps the rows whose metrics the run's table has, and shows them
beside the run's own rows, marked "published", with their citation and the differences in setup
(:mod:`inversion_bench.leaderboard.published_render`). They never enter the statistics: no interval,
no Δ, no test, no ranking.

Every row carries a citation, either a paper (``paper``, ``table``, ``page``) or a repository
(``repository``, ``commit``, ``file``, ``line``), and the exact text the numbers are read from
(``quote``); a row without one is a load error naming the row. Accuracies are in percent, as
published; a metric a source does not report is left out (never 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PUBLISHED_DIR = "published"
"""Folder of the data files inside this package."""

METRICS = ("test_accuracy", "attack_acc@1", "attack_acc@5", "knn_distance", "fid")
"""The metrics a row may report (the run's metric keys); accuracies in percent."""


class PublishedError(ValueError):
    """An unknown protocol or a data file that does not validate (the CLI exits 2 with the message)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Citation(_Strict):
    """Where a number comes from: a paper (``paper``, ``table``, ``page``) or a repository (``repository``,
    ``commit``, ``file``, ``line``); ``quote`` is the text the numbers are read from, ``kind`` what it is."""

    paper: str | None = None
    table: str | None = None
    page: int | str | None = None
    repository: str | None = None
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{7,40}$")
    file: str | None = None
    line: int | None = Field(None, ge=1)
    quote: str = Field(min_length=1)
    kind: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Citation:
        paper = [self.paper, self.table, self.page]
        repo = [self.repository, self.commit, self.file, self.line]
        if all(v is not None for v in paper) or all(v is not None for v in repo):
            return self
        raise ValueError("a citation names a paper with its table and page (paper, table, page) or a repository "
                         "with commit, file and line (repository, commit, file, line)")

    def text(self) -> str:
        """One line: ``owner/name @ commit, file line N: "quote" (kind)`` or ``paper, table T, p. P: "quote"``."""
        if self.repository is not None:
            where = f"{self.repository} @ {self.commit[:7]}, {self.file} line {self.line}"
        else:
            where = f"{self.paper}, table {self.table}, p. {self.page}"
        return f'{where}: "{self.quote}"' + (f" ({self.kind})" if self.kind else "")

    def url(self) -> str | None:
        """The GitHub address of a repository citation (``None`` for a paper)."""
        if self.repository is None:
            return None
        return f"https://github.com/{self.repository}/blob/{self.commit}/{self.file}#L{self.line}"


class Row(_Strict):
    """One published result: a defense (plugin id and the parameters that identify it) on a target, under
    an attack (plugin id; ``None`` for a row with only the target's test accuracy), with its metrics."""

    id: str = Field(min_length=1)
    defense: str
    defense_params: dict[str, Any] = Field(default_factory=dict)
    label: str
    attack: str | None = None
    attack_params: dict[str, Any] = Field(default_factory=dict)
    target: str
    evaluation: str | None = None
    split: str | None = None
    resolution: int | None = None
    seeds: int | None = Field(None, ge=1)
    attacked_identities: int | None = Field(None, ge=1)
    metrics: dict[str, float] = Field(min_length=1)
    citation: Citation
    note: str | None = None

    @model_validator(mode="after")
    def _known_metrics(self) -> Row:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; a row reports some of {', '.join(METRICS)}")
        if self.attack is None and set(self.metrics) != {"test_accuracy"}:
            raise ValueError("a row without an attack reports only test_accuracy")
        return self


class Setup(_Strict):
    """What the protocol fixes (compared with the run's setup, row by row)."""

    dataset: str
    split: str | None = None
    resolution: int
    private_identities: int
    evaluation: str | None = None
    evaluation_test_accuracy: float | None = None
    evaluation_citation: Citation | None = None


class PublishedFile(_Strict):
    """One protocol's data file."""

    protocol: str
    title: str
    setup: Setup
    searched: list[str] = Field(default_factory=list)
    rows: list[Row]

    @model_validator(mode="after")
    def _unique_ids(self) -> PublishedFile:
        ids = [r.id for r in self.rows]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"row ids must be unique: {twice}")
        return self


def _folder():
    return resources.files("inversion_bench.leaderboard") / PUBLISHED_DIR


def known_protocols() -> list[str]:
    """The protocols with a data file, sorted."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def _row_name(data: Any, loc: tuple[Any, ...]) -> str:
    """``row 3 (id 'mid-0.003')`` for an error inside ``rows[3]``, else the field path."""
    if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
        rows = data.get("rows") if isinstance(data, dict) else None
        rid = rows[loc[1]].get("id") if isinstance(rows, list) and isinstance(rows[loc[1]], dict) else None
        field = ".".join(str(x) for x in loc[2:]) or "row"
        return f"row {loc[1]} (id {rid!r}), {field}"
    return ".".join(str(x) for x in loc) or "file"


def parse_published(data: Any, source: str) -> PublishedFile:
    """Validates a loaded data file; ``PublishedError`` naming ``source``, the row (index and id) and the field."""
    try:
        return PublishedFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_row_name(data, tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise PublishedError(f"{source}: " + "; ".join(problems)) from None


def load_published(protocol: str) -> PublishedFile:
    """The data file of ``protocol``; ``PublishedError`` listing the known protocols when there is none."""
    known = known_protocols()
    if protocol not in known:
        raise PublishedError(f"--published {protocol!r}: no published numbers for this protocol; known protocols: "
                             f"{', '.join(known)}")
    path = _folder() / f"{protocol}.yaml"
    return parse_published(yaml.safe_load(path.read_text(encoding="utf-8")), f"published/{protocol}.yaml")


def number_texts(value: float) -> set[str]:
    """How a published number may be written in its source (``88.5`` -> ``88.5``, ``88.50``)."""
    texts = {repr(value), f"{value:.2f}", f"{value:.1f}", f"{value:.3f}"}
    return {t for t in texts if float(t) == value}


def uncited_numbers(row: Row) -> list[str]:
    """The metrics of ``row`` whose number does not appear in its citation's quote (should be none)."""
    quote = row.citation.quote
    return [m for m, v in row.metrics.items()
            if not any(re.search(rf"(?<![\d.]){re.escape(t)}(?![\d])", quote) for t in number_texts(v))]


# ------------------------------------------------------------------------------------------ matching
@dataclass(frozen=True)
class RunEntry:
    """A defense or attack entry of the run: id, label, plugin and parameters."""

    id: str
    label: str
    plugin: str | None
    params: Mapping[str, Any]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
    return a == b


def params_match(published: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
    """Whether every parameter the published row names has the same value in the run entry."""
    return all(k in run and _close(v, run[k]) for k, v in published.items())


def matching(plugin: str | None, params: Mapping[str, Any], entries: list[RunEntry]) -> list[RunEntry]:
    """The run entries of ``plugin`` whose parameters agree with ``params``."""
    return [e for e in entries if plugin is not None and e.plugin == plugin and params_match(params, e.params)]


def _param_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def defense_difference(row: Row, defenses: list[RunEntry]) -> str | None:
    """How the row's defense relates to the run's defenses (``None`` when one of them has its settings)."""
    if matching(row.defense, row.defense_params, defenses):
        return None
    same = [e for e in defenses if e.plugin == row.defense]
    if not same:
        return f"defense {row.defense} ({_param_text(row.defense_params)}) is not in this run"
    keys = list(row.defense_params)
    theirs = "; ".join(f"{e.id}: {_param_text({k: e.params.get(k) for k in keys})}" for e in same)
    return f"defense settings differ: published {_param_text(row.defense_params)}; this run {theirs}"
