"""The "Published numbers" section of a report: the run's rows and a protocol's published rows side by side.

:func:`published_section` keeps the published rows (:mod:`inversion_bench.leaderboard.published`) whose
metrics the run's table has (the target's test accuracy; an attack metric where the run has an attack of
the row's plugin with the row's parameters), puts them under the run's own rows (means over seeds, the
same numbers as the leaderboard) and lists, per published row, how its setup differs from the run's
(seeds, target and evaluation architecture, resolution, identities, dataset, defense settings). What
is left out, and why, is said below the table. The section is Markdown (appended to ``leaderboard.md``)
and HTML (a section of ``index.html``); the rows never enter the leaderboard's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from inversion_bench.leaderboard.model import TEST_ACCURACY, Column, LeaderboardTable
from inversion_bench.leaderboard.published import (
    METRICS,
    PublishedFile,
    Row,
    RunEntry,
    defense_difference,
    matching,
)

INTRO = ("Reference rows from papers and reference repositories, marked \"published\" with their citation; they "
         "are not part of this report's statistics (no intervals, Δ, tests or ranking). Accuracies in %; "
         "the run's numbers are its means over seeds.")


@dataclass
class RunSetup:
    """What the published rows are compared with: the run's seeds, models, data and entries."""

    seeds: int
    target: str | None
    evaluation: str | None
    evaluation_test_accuracy: float | None
    resolution: int | None
    private_identities: int | None
    dataset: str | None
    split: str | None
    defenses: list[RunEntry] = field(default_factory=list)
    attacks: list[RunEntry] = field(default_factory=list)


def _entries(records: Sequence[dict[str, Any]], kind: str) -> list[RunEntry]:
    out: dict[str, RunEntry] = {}
    for r in records:
        rid = str(r.get(kind))
        if rid not in out:
            out[rid] = RunEntry(rid, str(r.get(f"{kind}_label") or rid), r.get(f"{kind}_plugin"),
                                r.get(f"{kind}_params") or {})
    return list(out.values())


def run_setup(board: LeaderboardTable, records: Sequence[dict[str, Any]]) -> RunSetup:
    """The run's side of the comparison, from the table's ``setup`` (records' ``setup`` blocks) and records."""
    setup = board.setup or {}
    data, sizes = setup.get("dataset") or {}, setup.get("sizes") or {}
    seeds = {r.get("seed") for r in records if r.get("status") == "ok"} or {r.get("seed") for r in records}
    params = data.get("params") or {}
    return RunSetup(
        seeds=len(seeds), target=(setup.get("target") or {}).get("architecture"),
        evaluation=(setup.get("evaluation") or {}).get("architecture"),
        evaluation_test_accuracy=setup.get("evaluation_test_accuracy"), resolution=data.get("resolution"),
        private_identities=sizes.get("private_identities"), dataset=data.get("name"),
        split=params.get("split") if isinstance(params.get("split"), str) else None,
        defenses=_entries(records, "defense"), attacks=_entries(records, "attack"))


def _differ(what: str, paper: Any, run: Any) -> str | None:
    if paper is None or run is None or paper == run:
        return None
    return f"{what} differs: published {paper}; this run {run}"


def setup_differences(row: Row, pub: PublishedFile, run: RunSetup) -> list[str]:
    """How ``row``'s setup differs from the run's, one phrase each (empty when nothing known differs)."""
    s = pub.setup
    seeds = (f"published: {row.seeds} seed{'s' * (row.seeds > 1)}" if row.seeds is not None
             else "published: seeds not stated")
    out = [f"{seeds}; this run: {run.seeds}"] if row.seeds != run.seeds else []
    paper_data = f"{s.dataset} ({row.split or s.split})" if (row.split or s.split) else s.dataset
    run_data = f"{run.dataset} ({run.split})" if run.split else run.dataset
    if run.dataset is not None and (run.dataset != s.dataset or (row.split or s.split) != run.split):
        out.append(f"dataset differs: published {paper_data}; this run {run_data}")
    out += [d for d in (_differ("number of identities", s.private_identities, run.private_identities),
                        _differ("resolution", row.resolution or s.resolution, run.resolution),
                        _differ("target architecture", row.target, run.target)) if d]
    if row.attack is not None:
        ev = _differ("evaluation model", row.evaluation or s.evaluation, run.evaluation)
        out += [ev] if ev else []
        if s.evaluation_test_accuracy is not None and run.evaluation_test_accuracy is not None:
            ours = 100.0 * run.evaluation_test_accuracy
            if abs(ours - s.evaluation_test_accuracy) >= 0.005:
                out.append(f"evaluation model test accuracy: published {s.evaluation_test_accuracy:.2f} %; "
                           f"this run {ours:.2f} %")
    defense = defense_difference(row, run.defenses)
    return out + ([defense] if defense else [])


def _value_columns(board: LeaderboardTable) -> list[Column]:
    return [c for c in board.columns if c.metric in METRICS and (c.is_test_accuracy or c.is_attack)
            and not c.placeholder]


def row_values(row: Row, columns: Sequence[Column], run: RunSetup) -> dict[str, float]:
    """The row's numbers by column key, for the columns of the run's table that it reports."""
    attacks = {e.id for e in matching(row.attack, row.attack_params, run.attacks)}
    out: dict[str, float] = {}
    for c in columns:
        if c.metric not in row.metrics:
            continue
        if (c.is_test_accuracy and c.metric == TEST_ACCURACY) or (c.is_attack and c.attack in attacks):
            out[c.key] = row.metrics[c.metric]
    return out


@dataclass
class Section:
    """The rendered section and what it kept."""

    markdown: str
    html: str
    shown: list[str]  # ids of the published rows shown
    left_out: list[str]  # one sentence per row or metric left out


def _run_value(board: LeaderboardTable, defense: str, col: Column) -> float | None:
    try:
        mean = float(board.cell(defense, col.key)["mean"])
    except (KeyError, TypeError, ValueError):
        return None
    if not math.isfinite(mean):
        return None
    return 100.0 * mean if col.is_share else mean


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _heading(col: Column) -> str:
    return col.metric if col.is_test_accuracy else f"{col.attack_label} {col.metric}"


def published_section(pub: PublishedFile, board: LeaderboardTable, records: Sequence[dict[str, Any]]) -> Section:
    """The section of ``pub`` beside ``board`` (see the module)."""
    run = run_setup(board, records)
    columns = _value_columns(board)
    values = {r.id: row_values(r, columns, run) for r in pub.rows}
    shown = [r for r in pub.rows if values[r.id]]
    left_out = [f"{r.id} ({r.label}): its {', '.join(r.metrics)}"
                + (f" under {r.attack}" if r.attack else "") + " is not in this run's table"
                for r in pub.rows if not values[r.id]]
    for r in shown:
        rest = [m for m in r.metrics if all(not (c.metric == m and c.key in values[r.id]) for c in columns)]
        if rest:
            left_out.append(f"{r.id}: {', '.join(rest)} (not in this run's table)")
    cols = [c for c in columns if any(c.key in values[r.id] for r in shown)]
    diffs = {r.id: setup_differences(r, pub, run) for r in shown}
    run_rows = [(d.label, [_fmt(_run_value(board, d.defense, c)) for c in cols]) for d in board.defenses]
    pub_rows = [(r, [_fmt(values[r.id].get(c.key)) for c in cols]) for r in shown]
    return Section(markdown=_markdown(pub, cols, run, run_rows, pub_rows, diffs, left_out),
                   html=_html(pub, cols, run, run_rows, pub_rows, diffs, left_out),
                   shown=[r.id for r in shown], left_out=left_out)


def append_published(markdown: Path, pub: PublishedFile | None, board: LeaderboardTable,
                     records: Sequence[dict[str, Any]], sections: list[str]) -> list[str]:
    """Appends ``pub``'s section to the written ``leaderboard.md`` and to ``sections``; returns the page's HTML
    sections (none without ``pub``)."""
    if pub is None:
        return []
    section = published_section(pub, board, records)
    sections.append(section.markdown)
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n" + section.markdown, encoding="utf-8")
    return [section.html]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _evaluation_line(pub: PublishedFile) -> str | None:
    s = pub.setup
    if s.evaluation is None or s.evaluation_test_accuracy is None or s.evaluation_citation is None:
        return None
    return (f"The protocol's evaluation model: {s.evaluation}, test accuracy {s.evaluation_test_accuracy:.2f} % "
            f"({s.evaluation_citation.text()}).")


def _markdown(pub, cols, run, run_rows, pub_rows, diffs, left_out) -> str:
    lines = [f"## Published numbers: {pub.protocol}", "", f"{pub.title}. {INTRO}", ""]
    lines.append("| Row | Defense | Target | " + " | ".join(_md(_heading(c)) for c in cols) + " | Setup differences |")
    lines.append("|" + "---|" * (len(cols) + 4))
    seeds = f"this run ({run.seeds} seed{'s' * (run.seeds != 1)})"
    for label, vals in run_rows:
        lines.append(f"| {seeds} | {_md(label)} | {run.target or ''} | " + " | ".join(vals) + " | |")
    for k, (row, vals) in enumerate(pub_rows, 1):
        lines.append(f"| published [{k}] | {_md(row.label)} | {row.target} | " + " | ".join(vals)
                     + f" | {_md('; '.join(diffs[row.id]) or 'none known')} |")
    lines.append("")
    for k, (row, _) in enumerate(pub_rows, 1):
        note = f" {row.note}" if row.note else ""
        lines.append(f"[{k}] {_md(row.citation.text())}.{_md(note)}")
    evaluation = _evaluation_line(pub)
    if evaluation:
        lines += ["", evaluation]
    if left_out:
        lines += ["", f"Left out ({len(left_out)}): " + "; ".join(left_out) + "."]
    return "\n".join(lines) + "\n"


def _citation_html(row: Row, k: int) -> str:
    url = row.citation.url()
    text = escape(row.citation.text())
    link = f'<a href="{escape(url)}">{text}</a>' if url else text
    note = f" {escape(row.note)}" if row.note else ""
    return f'<li id="published-{k}">[{k}] {link}.{note}</li>'


def _html(pub, cols, run, run_rows, pub_rows, diffs, left_out) -> str:
    head = "".join(f"<th>{escape(_heading(c))}</th>" for c in cols)
    body = []
    seeds = f"this run ({run.seeds} seed{'s' * (run.seeds != 1)})"
    for label, vals in run_rows:
        cells = "".join(f"<td>{v}</td>" for v in vals)
        body.append(f'<tr class="run"><td>{escape(seeds)}</td><td>{escape(label)}</td>'
                    f"<td>{escape(run.target or '')}</td>{cells}<td></td></tr>")
    for k, (row, vals) in enumerate(pub_rows, 1):
        cells = "".join(f"<td>{v}</td>" for v in vals)
        items = "".join(f"<li>{escape(d)}</li>" for d in diffs[row.id]) or "<li>none known</li>"
        body.append(f'<tr class="published" style="font-style:italic;background:#f4f4f4" '
                    f'data-published="{escape(row.id)}" title="{escape(row.citation.text())}">'
                    f'<td>published <a href="#published-{k}">[{k}]</a></td><td>{escape(row.label)}</td>'
                    f"<td>{escape(row.target)}</td>{cells}<td><ul>{items}</ul></td></tr>")
    notes = "".join(_citation_html(row, k) for k, (row, _) in enumerate(pub_rows, 1))
    evaluation = _evaluation_line(pub)
    extra = f'<p class="small">{escape(evaluation)}</p>' if evaluation else ""
    if left_out:
        extra += f'<p class="small">Left out ({len(left_out)}): {escape("; ".join(left_out))}.</p>'
    return (f'<h2 id="published">Published numbers: {escape(pub.protocol)}</h2>'
            f'<p class="small">{escape(pub.title)}. {escape(INTRO)}</p>'
            f"<table><thead><tr><th>Row</th><th>Defense</th><th>Target</th>{head}<th>Setup differences</th></tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table><ul class=\"small\">{notes}</ul>{extra}")
