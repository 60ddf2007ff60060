"""The report's cost table (leaderboard/costs.py) against hand-computed means."""

from __future__ import annotations

import csv

import torch

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
    assert '<h2 id="cost">Cost</h2>' in html
    assert "<td>KED</td><td>white-box</td><td>2</td><td>15.0</td><td>20.0</td><td>60.0</td>" in html
    assert costs_html([]) == ""


def test_the_cost_table_states_each_attack_budget_and_when_its_early_stop_cannot_trigger(tmp_path):
    from inversion_bench.attacks.mirror import MirrorBlackBox, MirrorParams

    budget = MirrorBlackBox(MirrorParams(search_space_size=500, population_size=20, generations=7,
                                         min_score=0.9)).budget()
    assert budget.text == "500 initial samples, then up to 7 generations x 20 queries per identity"
    assert budget.early_stop.startswith("an identity stops once its elite's confidence in the attacked class "
                                        "reaches min_score 0.9; it cannot trigger on a target whose top confidence "
                                        "stays below 0.9")
    assert MirrorBlackBox(MirrorParams(min_score=None)).budget().early_stop is None
    old, new = _rec("hard", "mirror", 5.0, 30.0, queries=1000), _rec("ls", "mirror", 7.0, 40.0, queries=3000)
    new.update(created="2026-12-07T06:00:00", attack_info=budget.as_info())
    old.update(created="2026-12-06T06:00:00", attack_info={"budget": "stale"})
    mirror = {r["id"]: r for r in cost_rows([old, new, *RECORDS[:2]])}
    assert mirror["mirror"]["budget"] == budget.text and mirror["mirror"]["early_stop"] == budget.early_stop
    assert mirror["ked"]["budget"] is None  # records written before budgets were stated
    html = costs_html([old, new])
    assert f"<td>{budget.text}</td>" in html and "runs all 7 generations" in html
    table = list(csv.DictReader(write_costs([old, new], tmp_path / "costs.csv").open()))
    assert table[0]["budget"] == budget.text and table[0]["early_stop"] == budget.early_stop


class _Smoothed(torch.nn.Module):
    """A target whose released probabilities are mixed with the uniform: (1 - eps) p + eps / C, so its top
    confidence is at most 1 - eps + eps / C (a label-smoothed target's ceiling)."""

    def __init__(self, model: torch.nn.Module, eps: float) -> None:
        super().__init__()
        self.model, self.eps = model, eps
        self.num_classes, self.input_size = model.num_classes, model.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x).softmax(1)
        return ((1 - self.eps) * p + self.eps / p.shape[1]).log()


def test_mirror_early_stop_never_triggers_below_min_score_as_the_cost_table_states(one_thread):
    from tests.test_mirror import _LinearPrior, _LinearTarget, _run

    kw = {"seed": 1, "ids": torch.tensor([0, 2, 5]), "search_space_size": 64, "population_size": 16,
          "generations": 10, "min_score": 0.85}
    confident, _ = _run(_LinearTarget(), _LinearPrior(), **kw)
    assert confident.info["stopped_at_min_score"] > 0  # the plain target triggers the early stop
    smoothed, oracle = _run(_Smoothed(_LinearTarget(), eps=0.2), _LinearPrior(), **kw)  # ceiling 0.8 + 0.2/6 < 0.85
    assert smoothed.info["stopped_at_min_score"] == 0
    assert oracle.queries == 64 + 16 * 3 * 10  # the whole budget: every identity, every generation
