"""The worst case of a defense (the strongest attack against it, per seed) and the default row order.

A defense is only as strong as the strongest attack against it: per seed, the worst case is the
highest ``attack_acc@1`` (:data:`~inversion_bench.leaderboard.model.WORST_CASE_METRIC`, lower is better
for the defender) that any attack reached, over the ``ok`` records with a finite value. An attack that
failed on a seed is left out of that seed (the others still count, and the cell says how many attacks
it covers); a seed where no attack has a value has no worst case. The cell is the mean ± std of the
per-seed maxima, like every other cell.

Pure functions over records and the table model; :mod:`~inversion_bench.leaderboard.aggregate` calls
:func:`worst_case`, the renderers call :func:`ranked`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from inversion_bench.leaderboard.model import (
    WORST_CASE,
    WORST_CASE_METRIC,
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
        values: attack id -> value on one seed.
        order: attack ids in table order.
    """
    if not values:
        return None
    best = max(_in_order(values, order), key=values.__getitem__)  # max keeps the first of equals
    return best, values[best]


def named_attack(per_seed: Sequence[str], means: Mapping[str, float], order: Sequence[str]) -> str | None:
    """The attack named in a worst-case cell.

    The attack that is the maximum on most seeds; ties by the higher mean of the attack's own values
    (``means``), then the first in ``order``.

    Args:
        per_seed: the attack of each seed's maximum.
        means: attack id -> mean of its values over seeds against this defense.
        order: attack ids in table order.

    Returns:
        The attack id, or ``None`` when ``per_seed`` is empty.
    """
    if not per_seed:
        return None
    counts = Counter(per_seed)

    def key(a: str) -> tuple[int, float]:
        mean = means.get(a, math.nan)
        return counts[a], (mean if math.isfinite(mean) else -math.inf)

    return max(_in_order(counts, order), key=key)


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


def worst_case(recs: Sequence[dict[str, Any]], attacks: Sequence[str],
               metric: str = WORST_CASE_METRIC) -> WorstCase:
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
    seeds: list[int] = []
    values: list[float] = []
    winners: list[str] = []
    failed: list[int] = []
    missing: list[int] = []
    for s in sorted(by_seed):
        top = seed_maximum(by_seed[s], attacks)
        if top is None:
            seed_failed = any(not is_ok(r) for r in recs if int(r["seed"]) == s)
            (failed if seed_failed else missing).append(s)
            continue
        seeds.append(s)
        winners.append(top[0])
        values.append(top[1])
    own: dict[str, list[float]] = {}
    for vals in by_seed.values():
        for a, v in vals.items():
            own.setdefault(a, []).append(v)
    means = {a: sum(v) / len(v) for a, v in own.items()}
    return WorstCase(
        n_attacks=len(attacks),
        seeds=tuple(seeds),
        values=tuple(values),
        attacks=tuple(winners),
        covered=tuple((s, len(by_seed[s])) for s in sorted(by_seed)),
        failed=tuple(failed),
        missing=tuple(missing),
        attack=named_attack(winners, means, attacks),
    )


def ranked(table: LeaderboardTable) -> list[DefenseInfo]:
    """The rows in the default order of the Markdown table and the HTML page.

    By the mean of the worst-case column, lowest (best for the defender) first; rows without a
    worst case (every seed failed) last; ties, and every row when the table has no worst-case column,
    in ``defense_index`` order. The baseline is not pinned: it sorts like any other row. Near-chance
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
            return 1, 0.0, pos
        return 0, float(cell["mean"]), pos

    return [info for _, info in sorted(enumerate(table.defenses), key=key)]
