"""A self-contained static HTML page of a leaderboard (no network at view time).

The page holds, inline: the sortable defense x attack table (rows start sorted by the worst case,
lowest first; click a metric header to sort; arrows mark the direction that is better for the
defender), mean ± std over seeds, the difference to the baseline under each value (green/red only when the
defense test over seeds against the baseline is significant after the table's multiplicity correction, grey
otherwise or when not testable), the interval, n and the test's p-values in each cell's tooltip, the target
columns (test accuracy and the
other target-scope metrics) first and the worst case over attacks next, each attack's access
level in its header (and the queries per identity of black-box and label-only attacks in the cell
tooltips), the (epsilon, delta) guarantee where a defense reports one, the provenance of the numbers (suite hash,
code version, creation dates, device, seeds, the evaluation model's test accuracy and audit), the figures as base64
PNG (with links to the SVG files next to the page), notes and failures.

Every value cell carries its raw number in ``data-value`` (accuracies as fractions, full precision):
sorting uses it, and tests compare it with the records; ``data-ci-low``/``data-ci-high`` hold its interval
and the Δ span's ``data-p`` the defense test's p-value (empty where there is none).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inversion_bench.leaderboard.cells import (
    cell_rows,
    delta_text,
    display_text,
    interval_text,
    is_significant,
    test_text,
    worst_case_title,
)
from inversion_bench.leaderboard.labels import (
    ACCESS_HELP,
    ARROWS,
    NEAR_CHANCE,
    attack_heading,
    guarantee_text,
    has_guarantees,
    queries_text,
    seed_summary,
    worst_case_help,
)
from inversion_bench.leaderboard.headline import headline_table, tradeoff_svg
from inversion_bench.leaderboard.legend import (
    AUDIT_HELP,
    cells_help,
    evaluator_items,
    interval_help,
    significance_help,
    testability_note,
)
from inversion_bench.leaderboard.model import WORST_CASE, Column, DefenseInfo, LeaderboardTable
from inversion_bench.leaderboard.number_format import decimals_by_column, format_value
from inversion_bench.leaderboard.setup_info import setup_lines
from inversion_bench.leaderboard.worst_case import ranked

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1400px;
padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse} table td,table th{padding:.2rem .6rem;text-align:left}
table.lb{border-collapse:collapse;font-size:.9rem;margin-top:1rem}
table.lb th,table.lb td{padding:.35rem .6rem;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
table.lb th{background:#f4f4f4;position:sticky;top:0}
table.lb th.sortable{cursor:pointer;user-select:none} table.lb th.sortable:hover{background:#e8e8ee}
table.lb td.name,table.lb th.name{text-align:left}
table.lb tr.baseline td{background:#fbf8e8}
table.lb .delta{display:block;font-size:.75rem;color:#666}
table.lb .good{color:#17663a} table.lb .bad{color:#9b1c1c} table.lb .ns{color:#999}
table.lb .ind{color:#555;font-size:.8rem}
.warn{color:#9b1c1c;font-weight:600}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;font-size:.85rem}
dl.prov dt{font-weight:600} dl.prov dd{margin:0;font-family:ui-monospace,monospace}
figure{margin:1.5rem 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#444;max-width:900px}
ul.small,p.small{font-size:.85rem}
p.lead{color:#444;margin-top:0}
#answer figure{margin:.5rem 0} #answer svg{max-width:100%;height:auto}
table.headline{font-size:.95rem}
table.headline th{white-space:normal;vertical-align:bottom;max-width:9rem}
table.headline th .acc{display:block;font-weight:normal;font-size:.75rem;color:#666}
table.headline td .delta .good{color:#17663a} table.headline td .delta .bad{color:#9b1c1c}
details#provenance{margin-top:2rem} details#provenance summary{cursor:pointer;font-weight:600}
"""

_JS = """
(function(){
  const table=document.getElementById('leaderboard');
  const body=table.tBodies[0];
  function value(row,key){
    const c=row.querySelector('td[data-key="'+key+'"]');
    if(!c||c.dataset.value===''||c.dataset.value===undefined){return null;}
    return parseFloat(c.dataset.value);
  }
  function sortBy(th){
    const key=th.dataset.key;
    const first=key==='name'?'asc':'desc';
    const dir=th.dataset.sort===first?(first==='asc'?'desc':'asc'):first;
    table.querySelectorAll('th.sortable').forEach(h=>{h.dataset.sort='';h.querySelector('.ind').textContent='';});
    th.dataset.sort=dir;
    th.querySelector('.ind').textContent=dir==='desc'?' \\u25BC':' \\u25B2';
    const rows=Array.from(body.rows);
    rows.sort((a,b)=>{
      if(key==='name'){
        const x=a.dataset.name,y=b.dataset.name;
        return dir==='asc'?x.localeCompare(y):y.localeCompare(x);
      }
      const x=value(a,key),y=value(b,key);
      if(x===null&&y===null){return 0;} if(x===null){return 1;} if(y===null){return -1;}
      return dir==='asc'?x-y:y-x;
    });
    rows.forEach(r=>body.appendChild(r));
  }
  table.querySelectorAll('th.sortable').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _raw(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(float(x))


def _delta_class(col: Column, delta: float, significant: bool = True) -> str:
    """``good``/``bad`` for a significant Δ with a known direction, ``ns`` (grey) otherwise."""
    if col.direction not in ("higher", "lower") or not math.isfinite(delta) or delta == 0 or not significant:
        return "ns"
    good = (delta > 0) == (col.direction == "higher")
    return "good" if good else "bad"


def _metric_head(col: Column, initial_sort: str | None) -> str:
    if col.placeholder:
        name = "status"
    elif col.is_test_accuracy:
        name = "Test acc. (%)"
    else:
        name = col.metric_name + (" (%)" if col.is_share else "")
    arrow = ARROWS.get(col.direction or "", "")
    title = {"higher": "higher is better for the defender", "lower": "lower is better for the defender"}.get(
        col.direction or "", "direction unknown")
    sort = ""
    if initial_sort is not None:  # the rows start sorted by this column
        sort = f' data-sort="{initial_sort}"'
    ind = {"asc": " \u25B2", "desc": " \u25BC"}.get(initial_sort or "", "")
    return (f'<th class="sortable" data-key="{_e(col.key)}"{sort} title="{_e(title)}">{_e(name)} {arrow}'
            f'<span class="ind">{ind}</span></th>')


def _cell_title(lb: LeaderboardTable, defense: str, col: Column, cell: Any, decimals: int) -> str:
    """Tooltip of a cell: the value of every seed behind it (and its attack, for the worst case), what
    was left out, and the queries per identity of a black-box or label-only attack."""
    if col.is_worst_case:
        parts = [worst_case_title(lb, defense, col, decimals)]
    else:
        parts = [f"seed {seed}: {format_value(col, v, decimals)}" for seed, v in zip(cell["seeds"], cell["values"],
                                                                                     strict=True)]
    if cell["n_failed"] and not col.is_worst_case:  # the worst case's title names its failed seeds
        parts.append(f"{int(cell['n_failed'])} failed")
    if cell["n_missing"] and not col.is_worst_case:
        parts.append(f"{int(cell['n_missing'])} not computed")
    if col.is_attack and queries_text(col, cell):
        parts.append(f"{queries_text(col, cell)} (mean over seeds)")
    if cell["n"]:
        parts.append(interval_text(col, cell, decimals, lb.settings.confidence))
        if test_text(cell):
            parts.append(f"vs baseline: {test_text(cell)}")
    return "; ".join(parts) or "no record"


def _head(lb: LeaderboardTable, eps_col: bool) -> str:
    """The two header rows: attacks (with their access level) spanning their metric columns, then metrics."""
    cols = lb.columns
    spans: list[tuple[Column, int]] = []  # first column of the group, number of metric columns
    for c in cols:
        if spans and spans[-1][0].attack == c.attack:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((c, 1))
    head1 = ['<th class="sortable name" rowspan="2" data-key="name">Defense<span class="ind"></span></th>']
    if eps_col:
        head1.append('<th class="sortable" rowspan="2" data-key="epsilon" title="differential privacy guarantee, '
                     'lower is more private">ε (DP) ↓<span class="ind"></span></th>')
    for c, n in spans:
        title = ACCESS_HELP.get(c.access or "", worst_case_help(lb) if c.is_worst_case else "")
        title_attr = f' title="{_e(title)}"' if title else ""
        access = f' data-access="{_e(c.access)}"' if c.is_attack and c.access else ""
        head1.append(f'<th colspan="{n}"{access}{title_attr}>{_e(attack_heading(c))}</th>')
    head2 = [_metric_head(c, "asc" if c.is_worst_case else None) for c in cols]
    return "<tr>" + "".join(head1) + "</tr><tr>" + "".join(head2) + "</tr>"


def _row(lb: LeaderboardTable, info: DefenseInfo, cells: dict[tuple[str, str], Any], decimals: dict[str, int],
         eps_col: bool) -> str:
    """One ``<tr>`` of the table."""
    tr_cls = ' class="baseline"' if info.is_baseline else ""
    name = _e(info.label) + (" <small>(baseline)</small>" if info.is_baseline else "")
    if info.near_chance:
        name += f' <span class="warn" title="test accuracy at most 2x chance level">{_e(NEAR_CHANCE)}</span>'
    tds = [f'<td class="name" data-key="name">{name}</td>']
    if eps_col:
        tds.append(f'<td data-key="epsilon" data-value="{_raw(info.epsilon)}">{_e(guarantee_text(info))}</td>')
    for c in lb.columns:
        cell = cells[(info.defense, c.key)]
        text = _e(display_text(lb, info.defense, c, cell, decimals[c.key]))
        delta = ""
        if lb.baseline is not None and not info.is_baseline and not c.placeholder and cell["n"]:
            d = delta_text(c, cell, cells[(lb.baseline, c.key)], decimals[c.key])
            cls = _delta_class(c, float(cell["delta"]), is_significant(cell))
            title = f"difference to the baseline; {test_text(cell) or 'no test'}"
            delta = (f'<span class="delta {cls}" data-p="{_raw(cell["p_value"])}" title="{_e(title)}">'
                     f'Δ {_e(d)}</span>')
        raw = _raw(cell["mean"]) if cell["n"] else ""
        wc = lb.worst_case.get(info.defense) if c.is_worst_case else None
        attack = f' data-attack="{_e(wc.attack)}"' if wc is not None and wc.attack else ""
        tds.append(f'<td data-key="{_e(c.key)}" data-value="{raw}" data-std="{_raw(cell["std"])}" '
                   f'data-ci-low="{_raw(cell["ci_low"])}" data-ci-high="{_raw(cell["ci_high"])}" '
                   f'data-n="{int(cell["n"])}"{attack} '
                   f'title="{_e(_cell_title(lb, info.defense, c, cell, decimals[c.key]))}">{text}{delta}</td>')
    near = ' data-near-chance="true"' if info.near_chance else ""
    return (f'<tr{tr_cls} data-defense="{_e(info.defense)}" data-name="{_e(info.label)}"{near}>'
            + "".join(tds) + "</tr>")


def _table(lb: LeaderboardTable) -> str:
    """The table, rows sorted by the worst case (:func:`~inversion_bench.leaderboard.worst_case.ranked`)."""
    decimals = decimals_by_column(lb)
    cells = cell_rows(lb)
    eps_col = has_guarantees(lb)
    rows_html = [_row(lb, info, cells, decimals, eps_col) for info in ranked(lb)]
    return (f'<div class="scroll"><table class="lb" id="leaderboard"><thead>{_head(lb, eps_col)}</thead>'
            f'<tbody>{"".join(rows_html)}</tbody></table></div>')


def _provenance(lb: LeaderboardTable) -> str:
    meta = lb.meta
    items = [
        ("suite", lb.suite),
        ("suite hash", ", ".join(meta.get("suite_hashes") or []) or "unknown"),
        ("code version", ", ".join(meta.get("code_versions") or []) or "unknown"),
        ("device", "; ".join(meta.get("devices") or []) or "unknown"),
        ("created", " to ".join(dict.fromkeys(meta.get("created") or ())) or "unknown"),
        ("seeds", seed_summary(lb)),
        ("records", str(meta.get("num_records", 0))),
        ("baseline", (lb.baseline_label or "none")
         + (f" (from {meta['baseline_source']})" if meta.get("baseline_source") else "")),
        *(("setup", line) for line in setup_lines(lb.setup)),
    ]
    return ('<details id="provenance"><summary>Provenance and setup (suite hash, code version, device, seeds, '
            'every setting)</summary><dl class="prov">'
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl></details>")


def _evaluation(lb: LeaderboardTable) -> str:
    """The evaluation model and its audit (how far its verdicts can be trusted)."""
    items = evaluator_items(lb)
    if not items:
        return ""
    return ('<h2 id="audit">Evaluation model and audit</h2><dl class="prov">'
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>")


def _answer(lb: LeaderboardTable, headline_metric: str | None) -> str:
    """The top of the page: the privacy–utility figure and the headline table."""
    svg = tradeoff_svg(lb)
    figure = (f'<figure id="fig-tradeoff">{svg}<figcaption>Each defense\'s worst case over attacks (y, lower is '
              "more private) against its target's test accuracy (x, higher is more useful): means over seeds with "
              f"their {lb.settings.confidence:.0%} intervals where the table has them; the baseline is the diamond. "
              "The best defenses sit bottom right.</figcaption></figure>") if svg else ""
    return ('<section id="answer"><h2>Who is private, at what cost</h2>' + figure
            + headline_table(lb, headline_metric) + "</section>")


def _figure(entry: dict[str, Any], base: Path | None) -> str:
    png = Path(entry["png"])
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    svg = Path(entry["svg"])
    link = svg.relative_to(base).as_posix() if base is not None and svg.is_relative_to(base) else svg.name
    return (f'<figure id="fig-{_e(entry.get("name", png.stem))}"><h3>{_e(entry["title"])}</h3>'
            f'<img alt="{_e(entry["title"])}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_e(entry["caption"])} <a href="{_e(link)}">SVG</a></figcaption></figure>')


def render_html(lb: LeaderboardTable, figures: Sequence[dict[str, Any]] = (), notes: Sequence[str] = (),
                base: Path | None = None, extra: Sequence[str] = (), headline_metric: str | None = None) -> str:
    """The whole page as one string, the answer first: the privacy–utility figure and the headline table
    (:mod:`inversion_bench.leaderboard.headline`), then the full table, the ``extra`` sections (costs), the
    evaluation model's audit, the figures, notes and failures; provenance and setup in a closed ``<details>``.

    Args:
        lb: the leaderboard.
        figures: ``{name, title, caption, png, svg}`` entries (PNG inlined as base64).
        notes: extra remarks (e.g. figures that could not be drawn).
        base: folder the page is written to (for relative SVG links).
        extra: HTML sections placed after the full table (e.g. the cost table).
        headline_metric: the metric the headline table shows per attack (default: the worst case's metric).
    """
    legend = [
        "↑ higher is better for the defender; ↓ lower is better. Click a header to sort.",
        cells_help(lb, seed_summary(lb)).replace("`", ""),
        interval_help(lb) + " Hover a cell for its interval, n and the defense test's p-value.",
    ]
    if WORST_CASE in {c.key for c in lb.columns}:
        legend += [worst_case_help(lb) + " (k/n attacks on every seed): only k attacks have a value on every seed; "
                   "such rows sort after the complete ones.",
                   "Rows start sorted by the worst case, lowest (best for the defender) first."]
    levels = list(dict.fromkeys(c.access for c in lb.columns if c.is_attack and c.access))
    if levels:
        legend.append("[access]: what the attack sees of the defended target: "
                      + "; ".join(ACCESS_HELP.get(a, a) for a in levels) + ".")
    if lb.baseline is not None:
        legend.append(f"Δ: difference of means to the baseline ({lb.baseline_label}); accuracies in percentage "
                      "points; green: better for the defender, red: worse, grey: not significant or not testable.")
        legend.append(significance_help(lb, ""))
        if testability_note(lb):
            legend.append(testability_note(lb))
    legend.append(AUDIT_HELP)
    if has_guarantees(lb):
        legend.append("ε (DP): the (ε, δ) differential-privacy guarantee reported by the defense (largest ε over "
                      "seeds); — : no formal guarantee.")
    legend.append("A defense is only private if its test accuracy stays useful: compare both columns.")
    all_notes = [*lb.notes, *notes]
    fails = [f"{f.defense_label} × {f.attack_label}, seed {f.seed}: {f.error or '(no error recorded)'}"
             for f in lb.failures]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Leaderboard: {_e(lb.suite)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Leaderboard: {_e(lb.suite)}</h1>",
        f'<p class="lead">{_e(_lead(lb))}</p>',
        _answer(lb, headline_metric),
        '<h2 id="full">Full table</h2>',
        _table(lb),
        '<ul class="small">' + "".join(f"<li>{_e(x)}</li>" for x in legend) + "</ul>",
    ]
    if lb.equal_utility is not None and not lb.equal_utility.empty:
        parts.append(_equal_utility(lb))
    parts += [x for x in extra if x]
    parts.append(_evaluation(lb))
    if figures:
        parts.append('<h2 id="figures">Figures</h2>')
        parts += [_figure(f, base) for f in figures]
    if all_notes:
        parts += ["<h2>Notes</h2>", '<ul class="small">' + "".join(f"<li>{_e(n)}</li>" for n in all_notes) + "</ul>"]
    parts += ["<h2>Failures</h2>",
              ('<ul class="small" id="failures">' + "".join(f"<li>{_e(x)}</li>" for x in fails) + "</ul>")
              if fails else "<p>None.</p>"]
    parts.append(_provenance(lb))
    parts += [f"<script>{_JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _lead(lb: LeaderboardTable) -> str:
    """One line under the title: what was compared, over how many seeds, against which baseline."""
    attacks = [c for c in lb.columns if c.is_attack]
    n_attacks = len(dict.fromkeys(c.attack for c in attacks))
    worst = next((c for c in lb.columns if c.is_worst_case), None)
    text = (f"{len(lb.defenses)} defense(s) against {n_attacks} attack(s); {seed_summary(lb)}"
            + (f"; baseline {lb.baseline_label}" if lb.baseline is not None else ""))
    if worst is not None:
        text += f". Worst case: the highest {worst.metric} over the attacks, per seed."
    return text


def _equal_utility(lb: LeaderboardTable) -> str:
    """The equal-utility table (see :mod:`inversion_bench.leaderboard.equal_utility`)."""
    eu = lb.equal_utility
    u0 = float(eu["baseline_test_accuracy"].iloc[0])
    rows = []
    for _, r in eu.iterrows():
        value = "n/a" if r["value"] != r["value"] else f"{100 * r['value']:.1f}"
        delta = "" if r["value"] != r["value"] else f"{100 * (r['value'] - r['baseline_value']):+.1f}"
        rows.append(f"<tr><td>{_e(r['group'])} ({_e(r['param'])})</td><td>{_e(r['attack_label'])}</td>"
                    f'<td title="{_e(r["reason"])}">{_e(value)}</td><td>{100 * r["baseline_value"]:.1f}</td>'
                    f"<td>{_e(delta)}</td><td>{int(r['crossings'])}</td></tr>")
    return (f"<h2>Equal utility (baseline test accuracy {100 * u0:.1f} %)</h2>"
            "<table><thead><tr><th>Sweep</th><th>Attack</th><th>Acc@1 at equal utility</th>"
            "<th>Baseline Acc@1</th><th>Δ</th><th>Crossings</th></tr></thead><tbody>" + "".join(rows)
            + '</tbody></table><p class="small">Attack accuracy of the sweep read at the baseline\'s test '
            "accuracy: linear interpolation between neighbouring swept values, never extrapolated, the lowest "
            "of several crossings, the baseline left out of its own sweep; means over seeds, no interval.</p>")
