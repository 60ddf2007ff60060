"""Renders a :class:`~inversion_bench.leaderboard.model.LeaderboardTable` as Markdown and a wide CSV table.

Numbers and cells are written by :mod:`~inversion_bench.leaderboard.number_format`,
:mod:`~inversion_bench.leaderboard.cells` and :mod:`~inversion_bench.leaderboard.labels`, shared with
:mod:`inversion_bench.leaderboard.latex` and :mod:`inversion_bench.leaderboard.html`. Free text (labels,
names, notes, errors) goes through :func:`~inversion_bench.leaderboard.escape.md_text`: no raw HTML, and
a ``|`` never splits a table cell.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from tabulate import tabulate

from inversion_bench.leaderboard.cells import cell_rows, delta_text, display_text, seed_attacks, seed_coverage
from inversion_bench.leaderboard.equal_utility import to_markdown as eu_markdown
from inversion_bench.leaderboard.escape import md_text
from inversion_bench.leaderboard.labels import (
    ACCESS_HELP,
    ARROWS,
    NA_MARK,
    NEAR_CHANCE,
    NOT_RUN,
    SIGNIFICANT_MARK,
    attack_heading,
    guarantee_text,
    has_guarantees,
    seed_summary,
    worst_case_help,
)
from inversion_bench.leaderboard.legend import (
    AUDIT_HELP,
    cells_help,
    evaluator_items,
    interval_help,
    significance_help,
    testability_note,
)
from inversion_bench.leaderboard.model import WORST_CASE, Column, DefenseInfo, LeaderboardTable
from inversion_bench.leaderboard.number_format import decimals_by_column
from inversion_bench.leaderboard.paper_table import hidden_note, paper_view
from inversion_bench.leaderboard.setup_info import setup_lines
from inversion_bench.leaderboard.worst_case import ranked

Cells = dict[tuple[str, str], pd.Series]
"""The rows of :attr:`LeaderboardTable.data` keyed by (defense id, column key), see ``cell_rows``."""

# --------------------------------------------------------------------------------------------------
# Markdown


def _header(col: Column, arrows: dict[str, str], pct: str = "%") -> str:
    if col.placeholder:
        name = attack_heading(col)
    elif col.is_test_accuracy:
        name = "Test acc."
    elif col.is_target:
        name = f"Target: {col.metric_name}"
    else:
        name = f"{attack_heading(col)}: {col.metric_name}"
    if col.is_share and not col.placeholder:
        name += f" ({pct})"
    arrow = arrows.get(col.direction or "", "")
    return md_text(f"{name} {arrow}" if arrow else name)


def _row_label(lb: LeaderboardTable, info: DefenseInfo) -> str:
    label = md_text(info.label)
    if info.is_baseline:
        label += " (baseline)"
    if info.near_chance:
        label += f" {NEAR_CHANCE}"
    return label


def _provenance(lb: LeaderboardTable) -> str:
    """One line: records, seeds, suite hashes, code versions, devices and creation dates."""
    meta = lb.meta
    prov = [f"{meta.get('num_records', 0)} records", seed_summary(lb)]
    if meta.get("baseline_source"):
        prov.append(f"baseline {md_text(lb.baseline or 'none')} (from {md_text(meta['baseline_source'])})")
    if meta.get("suite_hashes"):
        prov.append("suite hash " + ", ".join(f"`{h}`" for h in meta["suite_hashes"]))
    if meta.get("code_versions"):
        prov.append("code " + ", ".join(f"`{v}`" for v in meta["code_versions"]))
    if meta.get("devices"):
        prov.append("device " + ", ".join(md_text(d) for d in meta["devices"]))
    if meta.get("created"):
        first, last = meta["created"]
        prov.append(f"created {first}" + (f" to {last}" if last != first else ""))
    return "; ".join(prov) + "."


def _evaluator(lb: LeaderboardTable) -> str:
    """One line: the evaluation model's test accuracy and audit (``not audited`` without one)."""
    items = evaluator_items(lb)
    return " ".join(f"{name[0].upper()}{name[1:]}: {md_text(text)}." for name, text in items)


def _main_table(lb: LeaderboardTable, cells: Cells, decimals: dict[str, int]) -> str:
    """The table of means ± stds (rows by worst case), with the ε column when a row reports a guarantee."""
    eps_col = has_guarantees(lb)
    headers = ["Defense", *(["ε (DP)"] if eps_col else []), *(_header(c, ARROWS) for c in lb.columns)]
    align = ["left", *(["right"] * (len(lb.columns) + int(eps_col)))]
    body = []
    for info in ranked(lb):
        row = [_row_label(lb, info), *([guarantee_text(info)] if eps_col else [])]
        for c in lb.columns:
            row.append(md_text(display_text(lb, info.defense, c, cells[(info.defense, c.key)], decimals[c.key])))
        body.append(row)
    return tabulate(body, headers=headers, tablefmt="github", colalign=align, disable_numparse=True)


def _delta_section(lb: LeaderboardTable, cells: Cells, decimals: dict[str, int]) -> list[str]:
    """The Δ table against the baseline (no lines without a baseline or other rows)."""
    others = [i for i in ranked(lb) if not i.is_baseline]
    if lb.baseline is None or not others:
        return []
    out = [
        f"## Δ vs {md_text(lb.baseline_label)}",
        "",
        f"Difference of means (defense − baseline); accuracies in percentage points. `{SIGNIFICANT_MARK}`: the "
        f"defense test over seeds gives an adjusted p < {lb.settings.significance:g} (see the legend); a Δ "
        "without it is not significant or not testable.",
        "",
    ]
    if testability_note(lb):
        out += [f"**{testability_note(lb)}**", ""]
    dbody = []
    for info in others:
        row = [_row_label(lb, info)]
        for c in lb.columns:
            row.append(delta_text(c, cells[(info.defense, c.key)], cells[(lb.baseline, c.key)], decimals[c.key],
                                  mark=SIGNIFICANT_MARK))
        dbody.append(row)
    dheaders = ["Defense", *(_header(c, ARROWS, pct="pp") for c in lb.columns)]
    dalign = ["left", *(["right"] * len(lb.columns))]
    return [*out, tabulate(dbody, headers=dheaders, tablefmt="github", colalign=dalign, disable_numparse=True), ""]


def _legend(lb: LeaderboardTable) -> list[str]:
    out = [
        "## Legend",
        "",
        "- ↑ higher is better for the defender; ↓ lower is better for the defender.",
        f"- {cells_help(lb, seed_summary(lb))}",
        f"- {interval_help(lb)} The intervals and p-values are in leaderboard.csv (`_ci_low`, `_ci_high`, "
        "`_p_value`, `_p_adjusted`, `_testable`, `_seeds_needed`, `_significant`, `_p_identity`) and the page's "
        "tooltips.",
        (
            "- `failed`: every seed of the pair failed (see Failures); `(k/n failed)`: the numbers "
            "cover the remaining seeds only."
        ),
    ]
    if any(c.is_worst_case for c in lb.columns):
        out += [
            f"- {worst_case_help(lb)} `(k/n attacks on every seed)`: only k of the table's attacks have a value on "
            "every seed of the row, and the worst case is taken over those; `(k/n failed)`: every attack failed on "
            "k seeds.",
            "- Rows are sorted by the worst case, lowest (best for the defender) first; rows whose worst case covers "
            "only some attacks after the complete ones; rows without one last.",
        ]
    if lb.baseline is not None:
        out.append(f"- {significance_help(lb, SIGNIFICANT_MARK)}")
    out.append(f"- {AUDIT_HELP}")
    levels = list(dict.fromkeys(c.access for c in lb.columns if c.is_attack and c.access))
    if levels:
        out.append("- [access]: what the attack sees of the defended target: "
                   + "; ".join(ACCESS_HELP.get(a, a) for a in levels) + ".")
    if has_guarantees(lb):
        out.append(
            "- ε (DP): the (ε, δ) differential-privacy guarantee of the target reported by the defense "
            f"(DP-SGD: Opacus' accountant), the largest ε over seeds; {NOT_RUN}: no formal guarantee."
        )
    if (lb.data["n_records"] == 0).any():
        out.append(f"- {NOT_RUN}: no record for this pair.")
    if any(i.near_chance for i in lb.defenses):
        out.append(
            f"- {NEAR_CHANCE}: the target's test accuracy is at most 2× chance level (1/num_classes); "
            "low attack numbers on such a row reflect a broken model, not privacy."
        )
    return [*out, ""]


def _missing_notes(lb: LeaderboardTable) -> list[str]:
    """The n/a footnote: every (defense, column) with values missing in ok records, and their seeds."""
    if not lb.missing:
        return []
    labels = {i.defense: i.label for i in lb.defenses}
    col_by_key = {c.key: c for c in lb.columns}
    grouped: dict[tuple[str, str], list[int]] = {}
    for d, key, seed in lb.missing:
        grouped.setdefault((d, key), []).append(seed)
    notes = [
        f"- {NA_MARK} n/a: the metric was not computed (None/NaN) in an otherwise successful run; "
        "it is left out of the mean, never counted as 0:"
    ]
    for (d, key), seeds in grouped.items():
        c = col_by_key[key]
        plural = "s" if len(seeds) > 1 else ""
        notes.append(
            f"  - {md_text(labels[d])} × {md_text(c.attack_label)}: {md_text(c.metric)}, seed{plural} "
            + ", ".join(str(s) for s in sorted(seeds))
        )
    return notes


def _notes(lb: LeaderboardTable) -> list[str]:
    notes = [*_missing_notes(lb), *(f"- {md_text(note)}" for note in lb.notes)]
    return ["## Notes", "", *notes, ""] if notes else []


def _failures(lb: LeaderboardTable) -> list[str]:
    out = ["## Failures", ""]
    if not lb.failures:
        return [*out, "None."]
    for f in lb.failures:
        err = md_text(f.error.replace("`", "'")) if f.error else "(no error message recorded)"
        ids = [str(x).replace("`", "'") for x in (f.defense, f.attack)]
        out.append(f"- {md_text(f.defense_label)} (`{ids[0]}`) × {md_text(f.attack_label)} (`{ids[1]}`), "
                   f"seed {f.seed}: {err}")
    return out


def render_markdown(lb: LeaderboardTable) -> str:
    """Renders the leaderboard as Markdown.

    Sections: title with the suite name and provenance, the main table (tabulate, github format; the
    columns ``report.table`` selects, :mod:`~inversion_bench.leaderboard.paper_table`), the Δ table
    against the baseline, a legend, notes/footnotes and the list of failures. Both tables
    list the rows by worst case, lowest first (:func:`~inversion_bench.leaderboard.worst_case.ranked`).

    Args:
        lb: the leaderboard.

    Returns:
        Markdown text ending with a newline.
    """
    decimals = decimals_by_column(lb)
    cells = cell_rows(lb)
    out: list[str] = [f"# Leaderboard: {md_text(lb.suite)}", "", _provenance(lb), "", _evaluator(lb), ""]
    if setup_lines(lb.setup):
        out += ["Setup:", "", *(f"- {md_text(line)}" for line in setup_lines(lb.setup)), ""]
    paper = paper_view(lb)
    out += [_main_table(paper, cells, decimals), ""]
    if hidden_note(lb):
        out += [md_text(hidden_note(lb)), ""]
    out += _delta_section(paper, cells, decimals)
    if lb.equal_utility is not None and not lb.equal_utility.empty:
        out += [eu_markdown(lb.equal_utility)]
    out += _legend(lb)
    out += _notes(lb)
    out += _failures(lb)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# CSV


def wide_frame(lb: LeaderboardTable) -> pd.DataFrame:
    """One row per defense with raw numbers (see :meth:`Leaderboard.wide`).

    Args:
        lb: the leaderboard.

    Returns:
        The wide DataFrame.
    """
    cells = cell_rows(lb)
    rows = []
    for info in lb.defenses:
        row: dict[str, Any] = {"defense": info.defense, "defense_label": info.label}
        for c in lb.columns:
            cell = cells[(info.defense, c.key)]
            if c.is_attack and f"{c.attack}/access" not in row:
                row[f"{c.attack}/access"] = c.access
                row[f"{c.attack}/queries_per_identity"] = cell["queries_per_identity"]
            if c.placeholder:
                continue
            row[f"{c.key}_mean"] = cell["mean"]
            row[f"{c.key}_std"] = cell["std"]
            row[f"{c.key}_n"] = int(cell["n"])
            row[f"{c.key}_delta"] = cell["delta"]
            row[f"{c.key}_failed"] = int(cell["n_failed"])
            for k in ("ci_low", "ci_high", "p_value", "p_adjusted", "significant", "testable", "seeds_needed",
                      "p_identity"):
                row[f"{c.key}_{k}"] = cell[k]
            if c.is_worst_case:
                row[f"{WORST_CASE}_mean_of_maxima"] = cell["mean_of_maxima"]
                wc = lb.worst_case.get(info.defense)
                row[f"{WORST_CASE}_attack"] = wc.attack if wc else None
                row[f"{WORST_CASE}_attacks"] = seed_attacks(wc)
                row[f"{WORST_CASE}_covered"] = seed_coverage(wc)
        row["num_classes"] = info.num_classes
        row["near_chance"] = info.near_chance
        row["epsilon"] = info.epsilon
        row["delta"] = info.delta
        rows.append(row)
    return pd.DataFrame(rows)
