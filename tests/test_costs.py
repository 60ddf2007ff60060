"""The report's cost table (leaderboard/costs.py) against hand-computed means."""

from __future__ import annotations

import csv

from inversion_bench.leaderboard.costs import cost_rows, costs_html, write_costs


def _rec(defense, attack, attack_s, target_s, generator_s=None, queries=None, status="ok"):
    timings = {"attack_s": attack_s, "target_s": target_s, "metrics_s": 1.0}
    if generator_s is not None:
        timings["generator_s"] = generator_s
    return {"defense": defense, "attack": attack, "attack_label": attack.upper(), "defense_label": defense,
            "status": status, "timings": timings, "access": "white-box" if queries is None else "black-box",
            "queries": {"total": 0, "per_identity": queries} if queries is not None else None}


RECORDS = [_rec("hard", "ked", 10.0, 30.0, generator_s=50.0), _rec("ls", "ked", 20.0, 40.0, generator_s=70.0),
           _rec("hard", "mirror", 5.0, 30.0, queries=1000), _rec("ls", "mirror", 7.0, 40.0, queries=3000),
           _rec("ls", "broken", 99.0, 40.0, status="failed")]


def test_cost_rows_are_means_per_attack_and_per_defense(tmp_path):
    rows = {(r["kind"], r["id"]): r for r in cost_rows(RECORDS)}
    assert set(rows) == {("attack", "ked"), ("attack", "mirror"), ("defense", "hard"), ("defense", "ls")}
    ked, mirror = rows[("attack", "ked")], rows[("attack", "mirror")]
    assert (ked["pairs"], ked["mean_s"], ked["max_s"], ked["generator_mean_s"]) == (2, 15.0, 20.0, 60.0)
    assert ked["queries_per_identity"] is None and ked["label"] == "KED"
    assert (mirror["mean_s"], mirror["generator_mean_s"], mirror["queries_per_identity"]) == (6.0, None, 2000.0)
    assert mirror["access"] == "black-box"
    assert rows[("defense", "ls")]["mean_s"] == 40.0 and rows[("defense", "ls")]["pairs"] == 2  # failed left out
    path = write_costs(RECORDS, tmp_path / "costs.csv")
    table = list(csv.DictReader(path.open()))
    assert [r["id"] for r in table] == ["ked", "mirror", "hard", "ls"]
    assert float(table[0]["generator_mean_s"]) == 60.0 and table[1]["generator_mean_s"] == ""
    html = costs_html(RECORDS)
    assert "<h2>Cost</h2>" in html
    assert "<td>KED</td><td>white-box</td><td>2</td><td>15.0</td><td>20.0</td><td>60.0</td>" in html
    assert costs_html([]) == ""
