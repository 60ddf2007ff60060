"""Renders a :class:`~inversion_bench.leaderboard.build.Leaderboard` as Markdown and a wide CSV table; the number and
cell formatting shared with :mod:`inversion_bench.leaderboard.latex` and :mod:`inversion_bench.leaderboard.html`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd
from tabulate import tabulate

if TYPE_CHECKING:
    from inversion_bench.leaderboard.build import Column, Leaderboard

ARROWS = {"higher": "↑", "lower": "↓"}
NEAR_CHANCE = "⚠ near chance"
NA_MARK = "†"
NOT_RUN = "—"



# --------------------------------------------------------------------------------------------------
# numbers


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def column_decimals(lb: Leaderboard, col: Column) -> int:
    """Decimals used for every number of a column (means, stds and differences alike).

    Accuracies are shown in percent with one decimal. Other metrics get about three significant
    digits from the largest absolute mean of the column: ``0.412``, ``1.234``, ``12.3``, ``123.4``.

    Args:
        lb: the leaderboard.
        col: the column.

    Returns:
        Number of decimals.
    """
    if col.is_accuracy:
        return 1
    means = lb.data.loc[lb.data["column"] == col.key, "mean"].dropna().abs()
    biggest = float(means.max()) if not means.empty else 0.0
    if biggest >= 10:
        return 1
    if biggest >= 1 or biggest == 0.0:
        return 3
    return min(6, 2 - math.floor(math.log10(biggest)))


def cell_rows(lb: Leaderboard) -> dict[tuple[str, str], pd.Series]:
    """Every row of :attr:`Leaderboard.data` keyed by (defense id, column key), for rendering."""
    return {(r.defense, r.column): r for _, r in lb.data.iterrows()}


def decimals_by_column(lb: Leaderboard) -> dict[str, int]:
    """:func:`column_decimals` of every column, keyed by column key."""
    return {c.key: column_decimals(lb, c) for c in lb.columns}


def _scaled(col: Column, x: float) -> float:
    return x * 100.0 if col.is_accuracy else x


def format_value(col: Column, x: float, decimals: int, signed: bool = False) -> str:
    """Formats one raw number of ``col`` (accuracies as percentages).

    Args:
        col: the column the number belongs to.
        x: the raw number (accuracies as fractions).
        decimals: decimals to show.
        signed: prefix a ``+`` for positive numbers (differences).

    Returns:
        The text.
    """
    v = _scaled(col, x)
    text = f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"
    if float(text) == 0.0:  # no "-0.0" / "+0.0"
        text = f"{0.0:.{decimals}f}"
    return text


def _annotation(cell: pd.Series, na_mark: str) -> str:
    parts = []
    total = int(cell["n_records"])
    if cell["n_failed"]:
        parts.append(f"{cell['n_failed']}/{total} failed")
    if cell["n_missing"]:
        parts.append(f"{cell['n_missing']}/{total} n/a{na_mark}")
    return f" ({', '.join(parts)})" if parts else ""


def cell_text(col: Column, cell: pd.Series, decimals: int, pm: str = "±", na_mark: str = NA_MARK) -> str:
    """Display text of a main-table cell.

    ``"36.9 ± 2.1"``; one seed: ``"36.9"``; every seed failed: ``"failed"``; some failed:
    ``"36.9 (1/3 failed)"``; value missing in an ok record: ``"n/a†"``; no record: ``"—"``.

    Args:
        col: the column.
        cell: the row of :attr:`Leaderboard.data`.
        decimals: decimals of the column.
        pm: the plus-minus sign.
        na_mark: footnote mark for missing values.

    Returns:
        The text.
    """
    if cell["n"] == 0:
        if cell["n_failed"]:
            return "failed"
        if cell["n_missing"]:
            return f"n/a{na_mark}"
        return NOT_RUN
    text = format_value(col, float(cell["mean"]), decimals)
    if cell["n"] > 1 and not _isnan(cell["std"]):
        text += f" {pm} {format_value(col, float(cell['std']), decimals)}"
    return text + _annotation(cell, na_mark)


def delta_text(col: Column, cell: pd.Series, base: pd.Series, decimals: int, na_mark: str = NA_MARK) -> str:
    """Display text of a Δ-table cell (difference of means to the baseline).

    Args:
        col: the column.
        cell: the defense's row of :attr:`Leaderboard.data`.
        base: the baseline's row for the same column.
        decimals: decimals of the column.
        na_mark: footnote mark for missing values.

    Returns:
        The text (``"failed"``/``"n/a"``/``"—"`` where no difference can be taken).
    """
    if cell["n"] == 0:
        return cell_text(col, cell, decimals, na_mark=na_mark)
    if base["n"] == 0 or _isnan(cell["delta"]):
        return NOT_RUN
    return format_value(col, float(cell["delta"]), decimals, signed=True) + _annotation(cell, na_mark)


# --------------------------------------------------------------------------------------------------
# Markdown


def _header(col: Column, arrows: dict[str, str], pct: str = "%") -> str:
    if col.placeholder:
        name = col.attack_label
    elif col.is_target:
        name = "Test acc."
    else:
        name = f"{col.attack_label}: {col.metric}"
    if col.is_accuracy and not col.placeholder:
        name += f" ({pct})"
    arrow = arrows.get(col.direction or "", "")
    return f"{name} {arrow}" if arrow else name


def _row_label(lb: Leaderboard, info: Any) -> str:
    label = info.label
    if info.is_baseline:
        label += " (baseline)"
    if info.near_chance:
        label += f" {NEAR_CHANCE}"
    return label


def has_guarantees(lb: Leaderboard) -> bool:
    """Whether any row reports a formal (epsilon, delta) guarantee (then the ε column is shown)."""
    return any(i.epsilon is not None for i in lb.defenses)


def guarantee_text(info: Any, latex: bool = False) -> str:
    """The (epsilon, delta) cell of a row: ``"8.52 (δ=1e-05)"``, ``"∞"`` or ``"—"`` (none reported).

    Args:
        info: a :class:`~inversion_bench.leaderboard.build.DefenseInfo`.
        latex: LaTeX markup instead of Unicode.
    """
    if info.epsilon is None:
        return "--" if latex else NOT_RUN
    if math.isinf(info.epsilon):
        eps = r"$\infty$" if latex else "∞"
    else:
        eps = f"{info.epsilon:.2f}"
    if info.delta is None:
        return eps
    return f"{eps} ($\\delta$={info.delta:.0e})" if latex else f"{eps} (δ={info.delta:.0e})"


def seed_summary(lb: Leaderboard) -> str:
    seeds = lb.meta.get("seeds") or []
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(str(s) for s in seeds)}"


def render_markdown(lb: Leaderboard) -> str:
    """Renders the leaderboard as Markdown.

    Sections: title with the suite name and provenance, the main table (tabulate, github format),
    the Δ table against the baseline, a legend, notes/footnotes and the list of failures.

    Args:
        lb: the leaderboard.

    Returns:
        Markdown text ending with a newline.
    """
    decimals = decimals_by_column(lb)
    cells = cell_rows(lb)
    eps_col = has_guarantees(lb)
    headers = ["Defense", *(["ε (DP)"] if eps_col else []), *(_header(c, ARROWS) for c in lb.columns)]
    align = ["left", *(["right"] * (len(lb.columns) + int(eps_col)))]

    out: list[str] = [f"# Leaderboard: {lb.suite}", ""]
    meta = lb.meta
    prov = [f"{meta.get('num_records', 0)} records", seed_summary(lb)]
    if meta.get("suite_hashes"):
        prov.append("suite hash " + ", ".join(f"`{h}`" for h in meta["suite_hashes"]))
    if meta.get("code_versions"):
        prov.append("code " + ", ".join(f"`{v}`" for v in meta["code_versions"]))
    if meta.get("devices"):
        prov.append("device " + ", ".join(meta["devices"]))
    if meta.get("created"):
        first, last = meta["created"]
        prov.append(f"created {first}" + (f" to {last}" if last != first else ""))
    out += ["; ".join(prov) + ".", ""]

    body = []
    for info in lb.defenses:
        row = [_row_label(lb, info), *([guarantee_text(info)] if eps_col else [])]
        for c in lb.columns:
            row.append(cell_text(c, cells[(info.defense, c.key)], decimals[c.key]))
        body.append(row)
    out += [tabulate(body, headers=headers, tablefmt="github", colalign=align, disable_numparse=True), ""]

    base_label = lb.baseline_label
    others = [i for i in lb.defenses if not i.is_baseline]
    if lb.baseline is not None and others:
        out += [f"## Δ vs {base_label}", ""]
        out += [
            "Difference of means (defense − baseline); accuracies in percentage points.",
            "",
        ]
        dbody = []
        for info in others:
            row = [_row_label(lb, info)]
            for c in lb.columns:
                row.append(
                    delta_text(c, cells[(info.defense, c.key)], cells[(lb.baseline, c.key)], decimals[c.key])
                )
            dbody.append(row)
        dheaders = ["Defense", *(_header(c, ARROWS, pct="pp") for c in lb.columns)]
        dalign = ["left", *(["right"] * len(lb.columns))]
        out += [
            tabulate(dbody, headers=dheaders, tablefmt="github", colalign=dalign, disable_numparse=True),
            "",
        ]

    out += [
        "## Legend",
        "",
        "- ↑ higher is better for the defender; ↓ lower is better for the defender.",
        (
            f"- Cells: mean ± sample standard deviation (ddof=1) over seeds ({seed_summary(lb)}); "
            "a cell with a single seed shows the mean only. Accuracies in %."
        ),
        (
            "- `failed`: every seed of the pair failed (see Failures); `(k/n failed)`: the numbers "
            "cover the remaining seeds only."
        ),
    ]
    if eps_col:
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
    out.append("")

    notes: list[str] = []
    if lb.missing:
        labels = {i.defense: i.label for i in lb.defenses}
        col_by_key = {c.key: c for c in lb.columns}
        grouped: dict[tuple[str, str], list[int]] = {}
        for d, key, seed in lb.missing:
            grouped.setdefault((d, key), []).append(seed)
        notes.append(
            f"- {NA_MARK} n/a: the metric was not computed (None/NaN) in an otherwise successful run; "
            "it is left out of the mean, never counted as 0:"
        )
        for (d, key), seeds in grouped.items():
            c = col_by_key[key]
            plural = "s" if len(seeds) > 1 else ""
            notes.append(
                f"  - {labels[d]} × {c.attack_label}: {c.metric}, seed{plural} "
                + ", ".join(str(s) for s in sorted(seeds))
            )
    notes += [f"- {note}" for note in lb.notes]
    if notes:
        out += ["## Notes", "", *notes, ""]

    out += ["## Failures", ""]
    if lb.failures:
        for f in lb.failures:
            err = f.error.replace("`", "'") if f.error else "(no error message recorded)"
            out.append(
                f"- {f.defense_label} (`{f.defense}`) × {f.attack_label} (`{f.attack}`), seed {f.seed}: {err}"
            )
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# CSV


def wide_frame(lb: Leaderboard) -> pd.DataFrame:
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
            if c.placeholder:
                continue
            cell = cells[(info.defense, c.key)]
            row[f"{c.key}_mean"] = cell["mean"]
            row[f"{c.key}_std"] = cell["std"]
            row[f"{c.key}_n"] = int(cell["n"])
            row[f"{c.key}_delta"] = cell["delta"]
            row[f"{c.key}_failed"] = int(cell["n_failed"])
        row["num_classes"] = info.num_classes
        row["near_chance"] = info.near_chance
        row["epsilon"] = info.epsilon
        row["delta"] = info.delta
        rows.append(row)
    return pd.DataFrame(rows)
