"""Equal-utility reading of a sweep curve against hand-computed values."""

from __future__ import annotations

import math

import pytest

from inversion_bench.leaderboard.aggregate import aggregate
from inversion_bench.leaderboard.equal_utility import equal_utility, read_at, to_markdown


def test_a_single_crossing_is_the_linear_interpolation():
    r = read_at([(0.80, 0.50), (0.90, 0.70)], 0.85)
    assert r.value == pytest.approx(0.60) and r.crossings == 1


def test_a_point_exactly_at_the_utility_gives_its_value():
    r = read_at([(0.80, 0.50), (0.90, 0.70), (0.95, 0.2)], 0.90)
    # the point itself (0.70) and no open segment crossing 0.90 except none -> 0.70
    assert r.value == pytest.approx(0.70) and r.crossings == 1


def test_several_crossings_give_the_lowest_value():
    # test accuracy goes up then down again: 0.85 is crossed twice
    r = read_at([(0.80, 0.50), (0.90, 0.70), (0.80, 0.30)], 0.85)
    assert r.crossings == 2
    assert r.value == pytest.approx(min(0.60, 0.50))


def test_outside_the_range_is_never_extrapolated():
    r = read_at([(0.80, 0.50), (0.90, 0.70)], 0.95)
    assert math.isnan(r.value) and r.crossings == 0
    assert "above the swept range 80.0-90.0 %" in r.reason


def _rec(defense, index, test_acc, acc1, value, attack="ppa"):
    return {"defense": defense, "defense_index": index, "attack": attack, "attack_index": 0, "seed": 0,
            "status": "ok", "baseline": "ls.alpha0", "suite": "s", "suite_hash": "h",
            "defense_swept": {"group": "ls", "param": "alpha", "value": value},
            "metrics": {"test_accuracy": test_acc, "attack_acc@1": acc1},
            "directions": {"test_accuracy": "higher", "attack_acc@1": "lower"}}


def test_the_baseline_is_read_on_the_curve_of_the_other_settings():
    recs = [_rec("ls.alpha-0.1", 0, 0.80, 0.40, -0.1), _rec("ls.alpha0", 1, 0.90, 0.90, 0),
            _rec("ls.alpha0.1", 2, 0.95, 0.60, 0.1)]
    board = aggregate(recs)
    table = equal_utility(board, recs)
    assert len(table) == 1
    row = table.iloc[0]
    # baseline left out: segment (0.80, 0.40)-(0.95, 0.60) read at 0.90 -> 0.40 + 0.2 * 10/15
    assert row["value"] == pytest.approx(0.40 + 0.20 * (0.10 / 0.15))
    assert row["baseline_value"] == pytest.approx(0.90)
    md = to_markdown(table)
    assert "| ls (alpha) | ppa | 53.3 | 90.0 | -36.7 | 1 |" in md


def test_no_sweep_gives_an_empty_table():
    recs = [_rec("a", 0, 0.9, 0.5, 0), _rec("b", 1, 0.8, 0.4, 0)]
    for r in recs:
        r["defense_swept"] = None
    assert equal_utility(aggregate(recs), recs).empty
    assert to_markdown(equal_utility(aggregate(recs), recs)) == ""


def test_the_leaderboard_writes_the_equal_utility_table(tmp_path):
    from inversion_bench.leaderboard.build import build
    from inversion_bench.leaderboard.html import render_html

    recs = [_rec("ls.alpha-0.1", 0, 0.80, 0.40, -0.1), _rec("ls.alpha0", 1, 0.90, 0.90, 0),
            _rec("ls.alpha0.1", 2, 0.95, 0.60, 0.1)]
    board = build(recs)
    files = board.write(tmp_path)
    assert "### Equal utility: attack Acc@1 at the baseline's test accuracy (90.0 %)" in files["markdown"].read_text()
    assert files["equal_utility_csv"].read_text().splitlines()[0].startswith("group,param,attack")
    assert "Equal utility (baseline test accuracy 90.0 %)" in render_html(board)
