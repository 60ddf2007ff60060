"""What each attack and each defense cost in a run: the ``costs.csv`` of the report and its page section.

From the ok records' ``timings`` (seconds): per attack entry, the attack's own wall time
(``attack_s``: the reconstruction, its GAN fit excluded), the fit of the GAN it trains with the
target's knowledge (``generator_s``, KED-MI and PLG-MI; counted once per target however many entries
share it, here shown per pair) and the queries per identity; per defense, the target's training time
(``target_s``). Means over the records; a cached product keeps the time of the run that computed it.

Each attack's budget and early-stop rule come from its parameters (``Attack.budget``, recorded in
``attack_info``): the page states when the early stop cannot trigger, i.e. when an attack runs its whole
budget (e.g. Mirror-B on a target whose confidence stays below its ``min_score``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.model import DEFAULT_ACCESS

COLUMNS = ("kind", "id", "label", "access", "pairs", "mean_s", "max_s", "generator_mean_s", "queries_per_identity",
           "budget", "early_stop")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cost_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per attack entry (suite order) and per defense: pairs, mean and max seconds, the mean GAN
    fit (attacks that train one; None otherwise) and the mean queries per identity (None when not counted)."""
    ok = [r for r in records if r.get("status") == "ok"]
    rows: list[dict[str, Any]] = []
    for kind, key, seconds in (("attack", "attack", "attack_s"), ("defense", "defense", "target_s")):
        for name in dict.fromkeys(str(r.get(key)) for r in ok):
            mine = [r for r in ok if str(r.get(key)) == name]
            times = [float(r["timings"][seconds]) for r in mine if seconds in (r.get("timings") or {})]
            gans = [float(r["timings"]["generator_s"]) for r in mine if "generator_s" in (r.get("timings") or {})]
            queries = [float(q) for r in mine if (q := (r.get("queries") or {}).get("per_identity")) is not None]
            rows.append({
                "kind": kind, "id": name, "label": mine[0].get(f"{key}_label") or name,
                "access": (mine[0].get("access") or DEFAULT_ACCESS) if kind == "attack" else "",
                "pairs": len(mine), "mean_s": _mean(times), "max_s": max(times) if times else None,
                "generator_mean_s": _mean(gans) if kind == "attack" else None,
                "queries_per_identity": _mean(queries) if kind == "attack" else None,
                **(_budget(mine) if kind == "attack" else {"budget": None, "early_stop": None}),
            })
    return rows


def _budget(records: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """The budget and early-stop rule an attack's records state (the newest record that states one)."""
    for r in sorted(records, key=lambda r: str(r.get("created") or ""), reverse=True):
        info = r.get("attack_info") or {}
        if info.get("budget"):
            return {"budget": str(info["budget"]), "early_stop": str(info["early_stop"]) if info.get("early_stop")
                    else None}
    return {"budget": None, "early_stop": None}


def write_costs(records: Sequence[dict[str, Any]], path: Path) -> Path:
    from inversion_bench.leaderboard.escape import write_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(pd.DataFrame(cost_rows(records), columns=list(COLUMNS)), path)


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _q(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def costs_html(records: Sequence[dict[str, Any]]) -> str:
    """The page's "Cost" section (empty without ok records)."""
    rows = cost_rows(records)
    if not rows:
        return ""
    attacks = "".join(
        f"<tr><td>{escape(r['label'])}</td><td>{escape(r['access'])}</td><td>{r['pairs']}</td><td>{_s(r['mean_s'])}"
        f"</td><td>{_s(r['max_s'])}</td><td>{_s(r['generator_mean_s'])}</td>"
        f"<td>{_q(r['queries_per_identity'])}</td><td>{escape(r['budget'] or '—')}</td></tr>"
        for r in rows if r["kind"] == "attack")
    stops = "".join(f"<li><b>{escape(r['label'])}</b>: {escape(r['early_stop'])}.</li>"
                    for r in rows if r["kind"] == "attack" and r["early_stop"])
    defenses = "".join(f"<tr><td>{escape(r['label'])}</td><td>{r['pairs']}</td><td>{_s(r['mean_s'])}</td></tr>"
                       for r in rows if r["kind"] == "defense")
    return ('<h2 id="cost">Cost</h2><table><thead><tr><th>Attack</th><th>Access</th><th>Pairs</th><th>Mean s</th>'
            "<th>Max s</th><th>Own GAN fit s</th><th>Queries / identity</th><th>Budget (from its parameters)</th>"
            "</tr></thead><tbody>" + attacks + "</tbody></table>"
            + (f'<p class="small">Early stops (an attack whose stop cannot trigger runs its whole budget):</p>'
               f'<ul class="small">{stops}</ul>' if stops else "")
            + "<table><thead><tr><th>Defense</th><th>Pairs</th><th>Target training s</th></tr></thead>"
            "<tbody>" + defenses + '</tbody></table><p class="small">Wall seconds per pair from the records '
            "(means; a cached product keeps the time of the run that computed it; shared cores slow every "
            "entry). The attack's time excludes the GAN it fits with the target's knowledge (own column, "
            "once per target). Also in costs.csv.</p>")
