"""``bench site ENTRIES --out SITE``: a static, self-contained leaderboard site from published entries.

Layout::

    SITE/index.html                    the protocols, each with its number of entries
    SITE/protocol-<name>-<key>.html    one table per protocol key (name, data, judge, target setup, metric)
    SITE/entries/<entry id>.html       one page per entry: numbers, figures, provenance
    SITE/entries/<entry id>.json       the entry itself (linked from its page)

Entries of different protocol keys never share a table (two settings published under one name get a page
each, and the index says so). Rows are ranked by the worst case, lowest first (a defense is as strong as the
strongest evaluation against it, own or external), entries whose worst case covers only some evaluations after
the complete ones, entries without one last (:func:`rank`); every header sorts the table on click. Every value
cell carries its raw number in ``data-value`` (fractions, full precision) for sorting and for tests.

Self-contained: styles, scripts and figures are inline (SVG, and PNG as base64), links are relative, nothing
is fetched; the site opens from disk with no network. An entry page shows each evaluation's worst-case metric
with its interval (SVG) and, when the stored reconstructions are on this machine with the hashes the entry
holds, their image grids.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inversion_bench.entry_model import Entry, Evaluation, Numbers

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table.lb{border-collapse:collapse;font-size:.9rem;margin-top:1rem}
table.lb th,table.lb td{padding:.35rem .6rem;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
table.lb th{background:#f4f4f4;cursor:pointer;user-select:none} table.lb th:hover{background:#e8e8ee}
table.lb td.name,table.lb th.name,table.lb td.text{text-align:left}
.ci{display:block;font-size:.75rem;color:#666}
.flag{color:#9b1c1c;font-weight:600} .ext{color:#8a4b00}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;font-size:.85rem}
dl.prov dt{font-weight:600} dl.prov dd{margin:0;font-family:ui-monospace,monospace;overflow-wrap:anywhere}
figure{margin:1.5rem 0} figure img{max-width:100%;border:1px solid #eee;image-rendering:pixelated}
figure.grid img{height:320px;width:auto}
figcaption{font-size:.85rem;color:#444;max-width:900px}
p.small,ul.small{font-size:.85rem;color:#444}
"""

_JS = """
(function(){
  const table=document.getElementById('board');
  if(!table){return;}
  const body=table.tBodies[0];
  function value(row,key){
    const c=row.querySelector('td[data-key="'+key+'"]');
    if(!c||c.dataset.value===undefined||c.dataset.value===''){return null;}
    const v=parseFloat(c.dataset.value); return isNaN(v)?c.dataset.value:v;
  }
  table.querySelectorAll('th[data-key]').forEach(th=>th.addEventListener('click',()=>{
    const key=th.dataset.key;
    const dir=th.dataset.sort==='asc'?'desc':'asc';
    table.querySelectorAll('th[data-key]').forEach(h=>h.dataset.sort='');
    th.dataset.sort=dir;
    const rows=Array.from(body.rows);
    rows.sort((a,b)=>{
      const x=value(a,key),y=value(b,key);
      if(x===null&&y===null){return 0;} if(x===null){return 1;} if(y===null){return -1;}
      const c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
      return dir==='asc'?c:-c;
    });
    rows.forEach(r=>body.appendChild(r));
  }));
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return _SLUG.sub("-", str(text)).strip("-.") or "x"


def _raw(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def fmt(x: float | None, unit: str) -> str:
    """A number for display: a share in percent with two decimals, other units with four significant digits."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.2f} %" if unit == "share" else f"{x:.4g}"


def _interval(n: Numbers | None, unit: str, low: float | None = None, high: float | None = None) -> str:
    low, high = (n.ci_low, n.ci_high) if n is not None else (low, high)
    if low is None or high is None:
        return ""
    return f"[{fmt(low, unit)}, {fmt(high, unit)}]"


def protocol_page_name(entry: Entry) -> str:
    """The file name of an entry's protocol page: ``protocol-<name>-<protocol key>.html``."""
    return f"protocol-{_slug(entry.protocol.name)}-{entry.protocol.key}.html"


def rank(entries: Sequence[Entry]) -> list[Entry]:
    """Entries in leaderboard order: by the worst case's mean, lowest (best for the defender) first; entries whose
    worst case covers only some evaluations after the complete ones; entries without one last; ties by defense
    label, then id. (The rule of :func:`~inversion_bench.leaderboard.worst_case.ranked` for a run's table.)"""

    def key(e: Entry) -> tuple[int, float, str, str]:
        wc = e.worst_case
        if wc.mean is None:
            return 2, 0.0, e.defense.label, e.id
        return int(wc.partial), wc.mean, e.defense.label, e.id

    return sorted(entries, key=key)


def _unit(entry: Entry) -> str:
    metric = entry.worst_case.metric
    for ev in [*entry.attacks, *(x.evaluation for x in entry.external)]:
        if metric in ev.metrics:
            return ev.metrics[metric].unit
    return "share"


def _page(title: str, body: str, script: bool = False) -> str:
    js = f"<script>{_JS}</script>" if script else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>{body}{js}</body></html>\n")


def _setter(entry: Entry) -> str:
    wc = entry.worst_case
    if wc.evaluation is None:
        return "no evaluation covers every seed"
    if wc.source == "external":
        return f"external: {wc.label} ({wc.evaluation.removeprefix('external:')})"
    return f"{wc.label}"


def protocol_table(entries: Sequence[Entry]) -> str:
    """The ranked, sortable table of one protocol's entries (links to the entry pages)."""
    unit = _unit(entries[0])
    head = ("<thead><tr>"
            '<th data-key="rank">#</th><th class="name" data-key="defense">Defense</th>'
            '<th data-key="utility" title="the target\'s test accuracy (utility), mean over seeds">Test accuracy</th>'
            f'<th data-key="worst_case" title="the strongest evaluation\'s mean {_e(entries[0].worst_case.metric)} '
            '(own or external); lower is better for the defender">Worst case ↓</th>'
            '<th class="name" data-key="set_by">Set by</th><th data-key="evaluations">Evaluations</th>'
            '<th data-key="seeds">Seeds</th><th class="name" data-key="by">Published by</th>'
            '<th class="name" data-key="flags">Flags</th></tr></thead>')
    rows = []
    for i, e in enumerate(rank(entries), start=1):
        wc = e.worst_case
        flags = []
        if wc.unreliable:
            flags.append('<span class="flag" title="an external evaluation found a stronger attack than the '
                         'publisher\'s own">unreliable</span>')
        if wc.partial:
            flags.append('<span class="flag" title="some evaluation lacks a value on some seed">partial</span>')
        by = e.published.by or ""
        setter = _setter(e)
        rows.append(
            f'<tr data-entry="{_e(e.id)}">'
            f'<td data-key="rank" data-value="{i}">{i}</td>'
            f'<td class="name" data-key="defense" data-value="{_e(e.defense.label)}">'
            f'<a href="entries/{_e(e.id)}.html">{_e(e.defense.label)}</a></td>'
            f'<td data-key="utility" data-value="{_raw(e.utility.mean)}">{fmt(e.utility.mean, e.utility.unit)}'
            f'<span class="ci">{_interval(e.utility, e.utility.unit)}</span></td>'
            f'<td data-key="worst_case" data-value="{_raw(wc.mean)}">{fmt(wc.mean, unit)}'
            f'<span class="ci">{_interval(None, unit, wc.ci_low, wc.ci_high)}</span></td>'
            f'<td class="text{" ext" if wc.source == "external" else ""}" data-key="set_by" '
            f'data-value="{_e(setter)}">{_e(setter)}</td>'
            f'<td data-key="evaluations" data-value="{wc.evaluations}">{wc.evaluations}</td>'
            f'<td data-key="seeds" data-value="{len(e.seeds)}">{len(e.seeds)}</td>'
            f'<td class="text" data-key="by" data-value="{_e(by)}">{_e(by)}</td>'
            f'<td class="text" data-key="flags" data-value="{" ".join(["unreliable"] * wc.unreliable)}">'
            f'{" ".join(flags)}</td></tr>')
    return f'<table class="lb" id="board">{head}<tbody>{"".join(rows)}</tbody></table>'


def _protocol_facts(entry: Entry) -> str:
    p = entry.protocol
    ev = p.evaluation
    items = [("protocol key", p.key), ("data key", p.data_key),
             ("dataset", f"{p.dataset.get('name')} at {p.dataset.get('resolution')} px, "
                         f"split {p.dataset.get('split')}"),
             ("target", f"{p.target.get('architecture')} {p.target.get('params')}"),
             ("judge (evaluation model)", f"{ev.key}: {ev.architecture}, test accuracy "
                                          f"{fmt(ev.test_accuracy, 'share')}"),
             ("worst-case metric", p.worst_case_metric)]
    for name, audit in sorted(ev.audit.items()):
        if isinstance(audit, dict):
            items.append((f"judge audit ({name})", f"false acceptance {fmt(audit.get('false_acceptance'), 'share')} "
                                                   f"of {audit.get('images')} images"))
    return '<dl class="prov">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def protocol_page(entries: Sequence[Entry]) -> str:
    """The page of one protocol key."""
    p = entries[0].protocol
    body = (f'<p><a href="index.html">All protocols</a></p><h1>Protocol {_e(p.name)}</h1>'
            f'<p class="small">{len(entries)} entr{"y" if len(entries) == 1 else "ies"}, ranked by the worst case '
            "(lowest first: a defense is as strong as the strongest evaluation against it, its publisher's or an "
            "external one). Click a header to sort.</p>"
            f"{protocol_table(entries)}<h2>What this protocol fixes</h2>{_protocol_facts(entries[0])}")
    return _page(f"Protocol {p.name}", body, script=True)


def _evaluations(entry: Entry) -> list[tuple[str, str, Evaluation]]:
    """(reference, source, evaluation) of every evaluation, own first."""
    return ([(f"run:{a.attack}", "run", a) for a in entry.attacks]
            + [(f"external:{x.id}", "external", x.evaluation) for x in entry.external])


def evaluations_svg(entry: Entry) -> str:
    """A horizontal bar per evaluation: its mean of the worst-case metric with its interval (whiskers); the one
    that sets the worst case filled dark, external evaluations hatched orange."""
    metric = entry.worst_case.metric
    evs = [(ref, src, ev, ev.metrics[metric]) for ref, src, ev in _evaluations(entry) if metric in ev.metrics]
    if not evs:
        return ""
    unit = evs[0][3].unit
    top = max([1e-12] + [v for *_, n in evs for v in (n.mean, n.ci_high) if v is not None])
    scale = 1.0 if unit == "share" and top <= 1.0 else top
    width, left, bar_h, gap = 640, 220, 18, 10
    height = len(evs) * (bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="evaluations of {_e(entry.defense.label)}">']
    span = width - left - 20
    for i, (ref, src, ev, n) in enumerate(evs):
        y = 10 + i * (bar_h + gap)
        mean = n.mean or 0.0
        fill = "#333" if ref == entry.worst_case.evaluation else ("#d08a2e" if src == "external" else "#8da0cb")
        name = ev.label + (" (external)" if src == "external" else "")
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" font-size="12">{_e(name)}</text>')
        parts.append(f'<rect class="bar {src}" data-ref="{_e(ref)}" data-value="{_raw(n.mean)}" x="{left}" y="{y}" '
                     f'width="{span * mean / scale:.1f}" height="{bar_h}" fill="{fill}"/>')
        if n.ci_low is not None and n.ci_high is not None:
            x0, x1 = left + span * n.ci_low / scale, left + span * n.ci_high / scale
            parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" '
                         'stroke="#000" stroke-width="1.5"/>')
        parts.append(f'<text x="{left + span * mean / scale + 4:.1f}" y="{y + 13}" font-size="11">'
                     f'{_e(fmt(n.mean, unit))}</text>')
    axis_y = height - 14
    parts.append(f'<line x1="{left}" x2="{left + span}" y1="{axis_y}" y2="{axis_y}" stroke="#999"/>')
    parts.append(f'<text x="{left}" y="{axis_y + 12}" font-size="10">0</text>'
                 f'<text x="{left + span}" y="{axis_y + 12}" font-size="10" text-anchor="end">'
                 f'{_e(fmt(scale, unit))}</text></svg>')
    return "".join(parts)


def _grid_png(entry_store: str, key: str, files: dict[str, str]) -> bytes | None:
    """The stored reconstruction grid of ``key`` when it is on this machine with the hash the entry holds."""
    path = Path(entry_store) / "attacks" / key / "grid.png"
    expected = files.get("grid.png")
    if expected is None or not path.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _grids(entry: Entry) -> list[str]:
    out = []
    sources = [(a.label, a, entry.artifacts) for a in entry.attacks]
    sources += [(f"{x.evaluation.label} (external {x.id})", x.evaluation, x.artifacts) for x in entry.external]
    for label, ev, art in sources:
        if not ev.reconstruction_keys:
            continue
        seed, key = sorted(ev.reconstruction_keys.items(), key=lambda kv: int(kv[0]))[0]
        product = next((p for p in art.reconstructions if p.key == key), None)
        png = _grid_png(art.store, key, product.files) if product is not None else None
        if png is None:
            out.append(f'<p class="small">{_e(label)}: reconstructions not on this machine (or not as published); '
                       "their hashes are in the provenance below.</p>")
            continue
        out.append(f'<figure class="grid"><img alt="reconstructions of {_e(label)}" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>Reconstructions of '
                   f"{_e(label)} against {_e(entry.defense.label)}, seed {_e(seed)} (stored product {_e(key)})."
                   "</figcaption></figure>")
    return out


def _metric_rows(entry: Entry) -> str:
    rows = []
    for ref, src, ev in _evaluations(entry):
        for name, n in ev.metrics.items():
            arrow = {"lower": "↓", "higher": "↑"}.get(n.direction or "", "")
            rows.append(f'<tr data-ref="{_e(ref)}" data-metric="{_e(name)}"><td class="text">{_e(ev.label)}</td>'
                        f'<td class="text">{"external" if src == "external" else "own"}</td>'
                        f'<td class="text">{_e(ev.access or "")}</td><td class="text">{_e(n.label)} {arrow}</td>'
                        f'<td data-value="{_raw(n.mean)}">{fmt(n.mean, n.unit)}</td>'
                        f'<td>{_interval(n, n.unit) or _e(n.ci_method)}</td><td>{len(n.seeds)}</td></tr>')
    return ('<table class="lb"><thead><tr><th class="name">Attack</th><th class="name">Evaluation</th>'
            '<th class="name">Access</th><th class="name">Metric</th><th>Mean</th><th>Interval</th><th>Seeds</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def entry_page(entry: Entry) -> str:
    """The page of one entry: headline, figures, every evaluation's numbers, protocol and provenance."""
    wc = entry.worst_case
    unit = _unit(entry)
    flag = ""
    if wc.unreliable:
        flag = (f'<p class="flag">unreliable: an external evaluation ({_e(wc.evaluation)}) set the worst case; the '
                f"publisher's own attacks reached {fmt(wc.run_mean, unit)}.</p>")
    setter = (f"set by the external evaluation {_e(wc.evaluation)}" if wc.source == "external"
              else f"set by the publisher's attack {_e(wc.label)}" if wc.evaluation
              else "no evaluation covers every seed")
    art = entry.artifacts
    prov = [("entry id", entry.id), ("defense", f"{entry.defense.plugin} {entry.defense.params} "
                                                f"(version {entry.defense.version})"),
            ("published", f"{entry.published.created} with {entry.published.tool}"
                          + (f" by {entry.published.by}" if entry.published.by else "")),
            ("suite hash", entry.protocol.suite_hash), ("seeds", ", ".join(map(str, entry.seeds))),
            ("code versions", ", ".join(entry.code_versions)),
            ("plugins", "; ".join(f"{k} {v}" for k, v in entry.plugins.items())),
            ("target keys", ", ".join(f"seed {s}: {k}" for s, k in entry.defense.target_keys.items())),
            ("run folder", art.run_dir)]
    prov += [(f"record {f.path}", f"sha256 {f.sha256}") for f in art.records]
    prov += [(f"reconstructions {p.key}", "; ".join(f"{n} {h}" for n, h in p.files.items()))
             for p in art.reconstructions]
    for x in entry.external:
        prov.append((f"external {x.id}", f"submitted {x.submitted}" + (f" by {x.by}" if x.by else "")
                     + f"; run {x.artifacts.run_dir}; records "
                     + ", ".join(f"{f.path} {f.sha256}" for f in x.artifacts.records)))
    body = (f'<p><a href="../{_e(protocol_page_name(entry))}">Protocol {_e(entry.protocol.name)}</a> · '
            '<a href="../index.html">All protocols</a></p>'
            f"<h1>{_e(entry.defense.label)}</h1>"
            f'<p id="headline">Worst case <strong data-value="{_raw(wc.mean)}">{fmt(wc.mean, unit)}</strong> '
            f"{_interval(None, unit, wc.ci_low, wc.ci_high)} {_e(wc.metric)} over {wc.evaluations} evaluation(s), "
            f'{setter}; test accuracy <strong data-value="{_raw(entry.utility.mean)}">'
            f"{fmt(entry.utility.mean, entry.utility.unit)}</strong> {_interval(entry.utility, entry.utility.unit)}"
            f".</p>{flag}"
            f'<h2>Evaluations</h2><figure id="evaluations">{evaluations_svg(entry)}<figcaption>Each evaluation\'s '
            f"mean {_e(wc.metric)} over seeds with its interval; dark: the one that sets the worst case; orange: "
            f"external evaluations.</figcaption></figure>{_metric_rows(entry)}"
            f'<h2>Reconstructions</h2>{"".join(_grids(entry))}'
            f"<h2>Protocol</h2>{_protocol_facts(entry)}"
            f'<h2>Provenance</h2><p class="small">The entry: <a href="{_e(entry.id)}.json">{_e(entry.id)}.json</a>. '
            "Verify it with <code>bench publish --check ENTRY.json</code>: it recomputes these hashes and numbers "
            "from the files.</p>"
            f'<dl class="prov">{"".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in prov)}</dl>')
    return _page(f"{entry.defense.label} ({entry.protocol.name})", body)


@dataclass
class Site:
    """What :func:`build_site` wrote."""

    index: Path
    protocol_pages: list[Path] = field(default_factory=list)
    entry_pages: list[Path] = field(default_factory=list)


def group_by_protocol(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    """Entries by protocol key (first-seen order); entries of different keys are never in one group.

    Raises:
        ValueError: two entries with one id (the same entry twice, e.g. in two folders).
    """
    seen: dict[str, Entry] = {}
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.id in seen:
            raise ValueError(f"two entries with id {e.id}: keep one of them (the same defense of the same run, "
                             "published twice)")
        seen[e.id] = e
        groups.setdefault(e.protocol.key, []).append(e)
    return groups


def build_site(entries: Sequence[tuple[Path, Entry]] | Sequence[Entry], out_dir: Path) -> Site:
    """Writes the site (see the module docstring) and returns its pages.

    Args:
        entries: validated entries (or (path, entry) pairs as :func:`~inversion_bench.publish.read_entries` gives).
        out_dir: the folder to write (created; pages of the same names replaced).

    Raises:
        ValueError: no entries, or two entries with one id.
    """
    items = [e[1] if isinstance(e, tuple) else e for e in entries]
    if not items:
        raise ValueError("no entries to build a site from")
    groups = group_by_protocol(items)
    out = Path(out_dir)
    (out / "entries").mkdir(parents=True, exist_ok=True)
    site = Site(out / "index.html")
    names: dict[str, int] = {}
    for group in groups.values():
        names[group[0].protocol.name] = names.get(group[0].protocol.name, 0) + 1
    links = []
    for key, group in sorted(groups.items(), key=lambda kv: (kv[1][0].protocol.name, kv[0])):
        page = out / protocol_page_name(group[0])
        page.write_text(protocol_page(group), encoding="utf-8")
        site.protocol_pages.append(page)
        p = group[0].protocol
        twin = (f' <span class="flag">(one of {names[p.name]} settings published under this name: other data, judge '
                "or target)</span>" if names[p.name] > 1 else "")
        links.append(f'<li><a href="{_e(page.name)}">{_e(p.name)}</a> · key {_e(key)} · judge {_e(p.evaluation.key)} '
                     f"· {len(group)} entr{'y' if len(group) == 1 else 'ies'}{twin}</li>")
        for e in group:
            epage = out / "entries" / f"{e.id}.html"
            epage.write_text(entry_page(e), encoding="utf-8")
            epage.with_suffix(".json").write_text(json.dumps(e.model_dump(mode="json"), indent=2, sort_keys=True)
                                                  + "\n", encoding="utf-8")
            site.entry_pages.append(epage)
    body = ("<h1>Inversion Bench leaderboard</h1><p class=\"small\">Defenses against model inversion, one table per "
            "protocol (name, data and split, judge, target setup and worst-case metric). Every entry names the "
            "records and reconstructions it comes from, with their SHA-256; <code>bench publish --check</code> "
            f'verifies one.</p><ul id="protocols">{"".join(links)}</ul>')
    site.index.write_text(_page("Inversion Bench leaderboard", body), encoding="utf-8")
    return site
