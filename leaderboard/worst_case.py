"""The worst case of a defense (the strongest attack against it) and the default row order.

A defense is only as strong as the strongest attack against it. The worst case is the **strongest
attack's mean**: over the attacks that have an ``ok`` record with a finite
worst-case metric (the one the records name, :attr:`~inversion_bench.record_model.Record.worst_case_metric`:
the suite's ``report: {worst_case: ...}`` or the attack's, ``attack_acc@1`` by default; lower is better for the
defender) on every seed of the row (the seeds where some attack has a value; a seed where none has is
counted as failed), the highest mean over seeds. Its cell is that attack's mean ± std
over seeds, and its seed values are what the defense test compares with the baseline's.

The mean over seeds of each seed's maximum over attacks is a different estimand: for two equally
strong attacks it exceeds the strongest mean by ``sigma / sqrt(pi)`` (about 0.56 seed standard
deviations) whatever the number of seeds, whereas the strongest attack's mean is biased by that amount
divided by ``sqrt(seeds)``. It is kept beside the headline (CSV, tooltip). A maximum is only taken over
attacks present on every seed: an attack that failed on one seed would otherwise make the seeds'
maxima range over different attack sets. A row whose headline covers fewer attacks than the table
(:attr:`~inversion_bench.leaderboard.model.WorstCase.partial`) is flagged and sorted after the complete
rows.

Pure functions over records and the table model; :mod:`~inversion_bench.leaderboard.aggregate` calls
:func:`worst_case`, the renderers call :func:`ranked`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inversion_bench.leaderboard.model import (
    WORST_CASE,
    DefenseInfo,
    LeaderboardTable,
    WorstCase,
)
from inversion_bench.leaderboard.records import finite, is_ok


def _in_order(attacks: Sequence[str] | Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """``attacks`` in table ``order`` (those not in it last, by id)."""
    return [a for a in order if a in attacks] + sorted(a for a in attacks if a not in order)


def seed_maximum(values: Mapping[str, float], order: Sequence[str]) -> tuple[str, float] | None:
    """The attack with the highest value, the first in ``order`` on ties; ``None`` without values.

    Args:
        values: attack id -> value (on one seed, or a mean over seeds).
        order: attack ids in table order.
    """
    if not values:
        return None
    best = max(_in_order(values, order), key=values.__getitem__)  # max keeps the first of equals
    return best, values[best]


def _seed_values(recs: Sequence[dict[str, Any]], metric: str) -> dict[int, dict[str, float]]:
    """seed -> {attack: finite value of ``metric``} over the ok records."""
    out: dict[int, dict[str, float]] = {}
    for r in recs:
        out.setdefault(int(r["seed"]), {})
        if not is_ok(r):
            continue
        v = finite((r.get("metrics") or {}).get(metric))
        if v is not None:
            out[int(r["seed"])][str(r["attack"])] = v
    return out


def worst_case(recs: Sequence[dict[str, Any]], attacks: Sequence[str], metric: str) -> WorstCase:
    """The worst case of one defense from its (deduplicated) records.

    Args:
        recs: every record of the defense (ok and failed, any attack and seed).
        attacks: every attack id of the table, in table order (``n_attacks`` is their number, so an
            attack without a record on a seed counts as not covered).
        metric: the metric to take the maximum of.

    Returns:
        The :class:`~inversion_bench.leaderboard.model.WorstCase`.
    """
    by_seed = _seed_values(recs, metric)
    failed: list[int] = []
    missing: list[int] = []
    for s in sorted(by_seed):
        if not by_seed[s]:
            (failed if any(not is_ok(r) for r in recs if int(r["seed"]) == s) else missing).append(s)
    seeds = [s for s in sorted(by_seed) if by_seed[s]]  # a seed where no attack has a value is failed/missing
    complete = [a for a in _in_order({a for v in by_seed.values() for a in v}, attacks)
                if seeds and all(a in by_seed[s] for s in seeds)]
    means = {a: sum(by_seed[s][a] for s in seeds) / len(seeds) for a in complete}
    top = seed_maximum(means, attacks)
    tops = [seed_maximum({a: by_seed[s][a] for a in complete}, attacks) for s in seeds] if top else []
    return WorstCase(
        n_attacks=len(attacks),
        seeds=tuple(seeds) if top else (),
        values=tuple(by_seed[s][top[0]] for s in seeds) if top else (),
        attack=top[0] if top else None,
        complete=tuple(complete),
        maxima=tuple(t[1] for t in tops if t),
        attacks=tuple(t[0] for t in tops if t),
        covered=tuple((s, len(by_seed[s])) for s in sorted(by_seed)),
        failed=tuple(failed),
        missing=tuple(missing),
    )


def ranked(table: LeaderboardTable) -> list[DefenseInfo]:
    """The rows in the default order of the Markdown table and the HTML page.

    By the mean of the worst-case column, lowest (best for the defender) first; rows whose worst case
    covers only some attacks of the table after the complete ones (by their own worst case), rows
    without a worst case last; ties, and every row when the table has no worst-case column, in
    ``defense_index`` order. The baseline is not pinned: it sorts like any other row. Near-chance
    rows are not moved either: their flag travels with the row label.

    Args:
        table: the table model.

    Returns:
        The :attr:`~inversion_bench.leaderboard.model.LeaderboardTable.defenses`, reordered.
    """
    if not any(c.is_worst_case for c in table.columns):
        return list(table.defenses)

    def key(pos_info: tuple[int, DefenseInfo]) -> tuple[int, float, int]:
        pos, info = pos_info
        cell = table.cell(info.defense, WORST_CASE)
        if int(cell["n"]) == 0 or not math.isfinite(float(cell["mean"])):
            return 2, 0.0, pos
        wc = table.worst_case.get(info.defense)
        return int(wc is not None and wc.partial), float(cell["mean"]), pos

    return [info for _, info in sorted(enumerate(table.defenses), key=key)]
