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


def test_tied_utilities_give_the_lowest_reading_whatever_their_order():
    # two settings at test accuracy 0.80 (attack .50 and .30), one at 0.90 (.70): read at 0.85 on both
    # segments, 0.60 and 0.50; the lowest, in either order of the tied points
    for pts in ([(0.80, 0.50), (0.90, 0.70), (0.80, 0.30)], [(0.80, 0.30), (0.80, 0.50), (0.90, 0.70)]):
        r = read_at(pts, 0.85)
        assert r.crossings == 2 and r.value == pytest.approx(0.50)
    r = read_at([(0.85, 0.4), (0.80, 0.5), (0.85, 0.2)], 0.85)  # two points exactly at u0
    assert r.crossings == 2 and r.value == pytest.approx(0.2)


def test_points_are_read_in_order_of_utility_not_of_the_swept_value():
    """A sweep listed as [0.1, -0.1, 0, 0.05, -0.05]: joined in that order the curve crosses the baseline's
    utility on segments between settings that are not neighbours in utility; sorted, it is read between
    the two settings whose test accuracies enclose it."""
    values = [0.1, -0.1, 0.0, 0.05, -0.05]
    test_acc = {0.1: 0.86, -0.1: 0.95, 0.0: 0.90, 0.05: 0.88, -0.05: 0.92}
    attack = {0.1: 0.80, -0.1: 0.30, 0.0: 0.70, 0.05: 0.75, -0.05: 0.50}
    recs = [_rec(f"ls.alpha{v}", k, test_acc[v], attack[v], v) for k, v in enumerate(values)]
    for r in recs:
        r["baseline"] = "ls.alpha0.0"
    row = equal_utility(aggregate(recs), recs).iloc[0]
    # sorted without the baseline: (0.86, .80) (0.88, .75) (0.92, .50) (0.95, .30); 0.90 lies between 0.88
    # and 0.92: .75 + (.50 - .75) * (0.02 / 0.04) = .625
    assert row["value"] == pytest.approx(0.625) and row["crossings"] == 1
    # joined in suite order, (0.86, .80)-(0.95, .30) and (0.88, .75)-(0.92, .50) would both cross
    assert read_at([(test_acc[v], attack[v]) for v in values if v != 0.0], 0.90).value == pytest.approx(0.625)


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
