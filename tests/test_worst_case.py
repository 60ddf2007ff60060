"""The worst-case column (the strongest attack per seed), the default sort by it, and access levels in
the headers, from hand-made records whose numbers are checked against hand computation."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inversion_bench.leaderboard import build
from inversion_bench.leaderboard.html import render_html
from inversion_bench.leaderboard.report import write_records_csv
from inversion_bench.leaderboard.worst_case import ranked, seed_maximum, worst_case
from tests.test_leaderboard import make_record, md_row, md_tables

ATTACKS = {"gmi": ("GMI", 0, "white-box"), "mirror": ("Mirror", 1, "black-box"), "brep": ("BREP-MI", 2, "label-only")}
DEFENSES = {"none": ("No defense", 0), "round": ("Rounding", 1), "broken": ("Broken", 2)}
# attack_acc@1 per (defense, attack) and seed 0, 1; None: the pair failed on that seed
ACC = {
    ("none", "gmi"): (0.80, 0.70),
    ("none", "mirror"): (0.60, 0.75),
    ("none", "brep"): (0.40, 0.30),
    # gradient masking: GMI finds nothing, the attacks without gradients still do
    ("round", "gmi"): (0.05, None),
    ("round", "mirror"): (0.55, 0.50),
    ("round", "brep"): (0.35, 0.52),
    # a broken model (near chance): every attack is weak
    ("broken", "gmi"): (0.10, 0.12),
    ("broken", "mirror"): (0.11, 0.09),
    ("broken", "brep"): (0.10, 0.10),
}
TEST_ACC = {"none": 0.9, "round": 0.9, "broken": 0.12}
QUERIES = {"gmi": 40.0, "mirror": 1500.0, "brep": 25000.0}


def record(defense: str, attack: str, seed: int, access: bool = True) -> dict[str, Any]:
    value = ACC[(defense, attack)][seed]
    d_label, d_index = DEFENSES[defense]
    a_label, a_index, level = ATTACKS[attack]
    if value is None:
        rec = make_record((defense, d_label, d_index), (attack, a_label, a_index), seed, None, status="failed",
                          error="RuntimeError: boom")
    else:
        rec = make_record((defense, d_label, d_index), (attack, a_label, a_index), seed,
                          {"test_accuracy": TEST_ACC[defense], "attack_acc@1": value})
        rec["directions"] = {"test_accuracy": "higher", "attack_acc@1": "lower"}
        rec["queries"] = {"total": int(QUERIES[attack] * 5), "per_identity": QUERIES[attack]}
    if access:
        rec["access"] = level
    return rec


def hand_records() -> list[dict[str, Any]]:
    """3 defenses x 3 attacks (white-box, black-box, label-only) x 2 seeds; Rounding x GMI fails on seed 1."""
    return [record(d, a, s) for d in DEFENSES for a in ATTACKS for s in (0, 1)]


@pytest.fixture()
def lb():
    return build(hand_records())


def test_seed_maximum() -> None:
    order = ["gmi", "mirror", "brep"]
    assert seed_maximum({"brep": 0.5, "mirror": 0.7, "gmi": 0.2}, order) == ("mirror", 0.7)
    assert seed_maximum({"brep": 0.5, "mirror": 0.5}, order) == ("mirror", 0.5)  # tie: table order
    assert seed_maximum({}, order) is None


def test_worst_case_values_by_hand(lb) -> None:
    # none: every attack on both seeds; means GMI .75, Mirror .675, BREP-MI .35: the strongest is GMI (.75);
    # per-seed maxima .80 (GMI) and .75 (Mirror): their mean .775 is larger, as it must be
    wc = lb.worst_case["none"]
    assert wc.attack == "gmi" and wc.values == (0.80, 0.70) and wc.complete == ("gmi", "mirror", "brep")
    assert wc.maxima == (0.80, 0.75) and wc.attacks == ("gmi", "mirror") and not wc.partial
    assert wc.mean_of_maxima == pytest.approx(0.775) and wc.covered == ((0, 3), (1, 3))
    cell = lb.cell("none", "worst_case")
    assert cell["mean"] == pytest.approx(0.75) and cell["std"] == pytest.approx(np.std([0.80, 0.70], ddof=1))
    assert cell["mean_of_maxima"] == pytest.approx(0.775)
    assert cell["n"] == 2 and cell["n_failed"] == 0 and math.isnan(cell["delta"])
    # round: GMI failed on seed 1, so only Mirror (.525) and BREP-MI (.435) are on every seed: Mirror; the
    # row is flagged (2/3 attacks); per-seed maxima over those two: .55 (Mirror), .52 (BREP-MI)
    wc = lb.worst_case["round"]
    assert wc.attack == "mirror" and wc.values == (0.55, 0.50) and wc.complete == ("mirror", "brep")
    assert wc.partial and wc.n_attacks == 3 and wc.maxima == (0.55, 0.52) and wc.attacks == ("mirror", "brep")
    cell = lb.cell("round", "worst_case")
    assert cell["mean"] == pytest.approx(0.525) and cell["std"] == pytest.approx(np.std([0.55, 0.50], ddof=1))
    assert cell["n"] == 2 and cell["n_failed"] == 0
    assert cell["delta"] == pytest.approx(0.525 - 0.75)
    # broken: GMI (.11) beats Mirror (.10) and BREP-MI (.10)
    assert lb.cell("broken", "worst_case")["mean"] == pytest.approx(0.11)
    # the GMI column alone would call Rounding the best defense by far
    assert lb.cell("round", "gmi/attack_acc@1")["mean"] == pytest.approx(0.05)


def test_worst_case_over_different_attack_sets_per_seed_is_flagged_and_sorted_after() -> None:
    """5 attacks on seed 0 and 2 on seed 1: the maximum is taken over the 2 on both seeds, the row is flagged
    and sorted after every row whose worst case covers all attacks, whatever its value."""
    attacks = [(f"a{k}", f"A{k}", k) for k in range(5)]
    recs = []
    for k, a in enumerate(attacks):
        for seed in (0, 1):
            recs.append(make_record(("full", "Full", 0), a, seed, {"test_accuracy": 0.9, "attack_acc@1": 0.3}))
            if seed == 0 or k < 2:
                value = 0.9 if k >= 2 else 0.1  # the strong attacks ran on seed 0 only
                recs.append(make_record(("gappy", "Gappy", 1), a, seed, {"test_accuracy": 0.9, "attack_acc@1": value}))
    lb = build(recs)
    wc = lb.worst_case["gappy"]
    assert wc.partial and wc.complete == ("a0", "a1") and lb.cell("gappy", "worst_case")["mean"] == pytest.approx(0.1)
    assert [i.defense for i in ranked(lb)] == ["full", "gappy"]  # 0.1 < 0.3, but only 2/5 attacks
    main = md_tables(lb.to_markdown())[0]
    assert md_row(main, "Gappy")["Worst case: attack_acc@1 (%) ↓"] == "10.0 ± 0.0 (A0; 2/5 attacks on every seed)"


def test_markdown_cells_headers_and_sort(lb) -> None:
    md = lb.to_markdown()
    main, delta = md_tables(md)[:2]
    headers = list(main[0])
    assert headers[1:3] == ["Test acc. (%) ↑", "Worst case: attack_acc@1 (%) ↓"]
    assert headers[3:] == ["GMI [white-box]: attack_acc@1 (%) ↓", "Mirror [black-box]: attack_acc@1 (%) ↓",
                           "BREP-MI [label-only]: attack_acc@1 (%) ↓"]
    # lowest worst case first; the baseline is not pinned; the near-chance row sorts to the top, flagged; the
    # row whose worst case misses an attack (Rounding: GMI failed on seed 1) comes after the complete rows
    assert [r["Defense"] for r in main] == ["Broken ⚠ near chance", "No defense (baseline)", "Rounding"]
    assert [r["Defense"] for r in delta] == ["Broken ⚠ near chance", "Rounding"]
    assert md_row(main, "No defense")["Worst case: attack_acc@1 (%) ↓"] == "75.0 ± 7.1 (GMI)"
    assert md_row(main, "Rounding")["Worst case: attack_acc@1 (%) ↓"] == (
        "52.5 ± 3.5 (Mirror; 2/3 attacks on every seed)")
    assert md_row(delta, "Rounding")["Worst case: attack_acc@1 (pp) ↓"] == "-22.5"
    assert md_row(main, "Rounding")["GMI [white-box]: attack_acc@1 (%) ↓"] == "5.0 (1/2 failed)"
    assert "Rows are sorted by the worst case" in md and "2× chance level" in md
    assert "label-only: the top-1 label only" in md
    assert "0.56 seed standard deviations" in md
    # the table model, the CSV and the LaTeX keep defense_index order
    assert [i.defense for i in lb.defenses] == ["none", "round", "broken"]
    assert [i.defense for i in ranked(lb)] == ["broken", "none", "round"]


def test_latex_headers_and_order(lb) -> None:
    tex = lb.to_latex()
    for token in (r"\multicolumn{1}{c}{Worst case}", r"\multicolumn{1}{c}{GMI [white-box]}",
                  r"\multicolumn{1}{c}{Mirror [black-box]}", r"\multicolumn{1}{c}{BREP-MI [label-only]}",
                  r"52.5 $\pm$ 3.5 (Mirror; 2/3 attacks on every seed)", r"Broken \textbf{(near chance)}"):
        assert token in tex
    assert tex.index("No defense (baseline) &") < tex.index("Rounding &") < tex.index("Broken ")


def test_csv_fields(lb, tmp_path: Path) -> None:
    df = pd.read_csv(lb.to_csv(tmp_path / "lb.csv")).set_index("defense")
    assert list(df.index) == ["none", "round", "broken"]
    cols = list(df.columns)
    stats = ["ci_low", "ci_high", "p_value", "p_adjusted", "significant", "testable", "seeds_needed", "p_identity"]
    assert cols[1:14] == [f"test_accuracy_{k}" for k in ("mean", "std", "n", "delta", "failed", *stats)]
    assert cols[14:31] == [f"worst_case_{k}" for k in ("mean", "std", "n", "delta", "failed", *stats,
                                                          "mean_of_maxima", "attack", "attacks", "covered")]
    assert df.loc["round", "worst_case_mean"] == pytest.approx(0.525, rel=1e-12)
    assert df.loc["round", "worst_case_mean_of_maxima"] == pytest.approx(0.535, rel=1e-12)
    assert df.loc["round", "worst_case_attack"] == "mirror"
    assert df.loc["round", "worst_case_attacks"] == "0:mirror;1:brep"
    assert df.loc["round", "worst_case_covered"] == "0:3/3;1:2/3"
    assert df.loc["none", "gmi/access"] == "white-box" and df.loc["none", "mirror/access"] == "black-box"
    assert df.loc["none", "brep/access"] == "label-only"
    assert df.loc["round", "mirror/queries_per_identity"] == 1500.0


def test_records_csv_access_and_queries(tmp_path: Path) -> None:
    recs = hand_records()
    recs[0].pop("access")  # an older record: white-box
    df = pd.read_csv(write_records_csv(recs, tmp_path / "records.csv"))
    assert {"access", "queries_total", "queries_per_identity"} <= set(df.columns)
    assert df.loc[0, "access"] == "white-box"
    row = df[(df["defense"] == "none") & (df["attack"] == "brep") & (df["seed"] == 1)].iloc[0]
    assert row["access"] == "label-only" and row["queries_per_identity"] == 25000.0
    assert row["queries_total"] == 125000


class _Page(HTMLParser):
    """Row order, cell attributes and the first header row of the leaderboard table."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.cells: dict[tuple[str, str], dict[str, str]] = {}
        self.groups: list[str] = []
        self.heads: dict[str, dict[str, str]] = {}
        self._group: bool = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-defense" in a:
            self.rows.append(a["data-defense"])
        elif tag == "td" and self.rows and "data-value" in a:
            self.cells[(self.rows[-1], a["data-key"])] = a
        elif tag == "th" and "colspan" in a:
            self._group = True
        elif tag == "th" and "data-key" in a:
            self.heads[a["data-key"]] = a

    def handle_data(self, data):
        if self._group:
            self.groups.append(data)
            self._group = False


def test_html_initial_order_headers_and_tooltips(lb) -> None:
    page = _Page()
    page.feed(render_html(lb))
    assert page.rows == ["broken", "none", "round"]  # sorted by worst case, lowest first; partial rows after
    assert page.groups == ["Target", "Worst case", "GMI [white-box]", "Mirror [black-box]", "BREP-MI [label-only]"]
    assert page.heads["worst_case"].get("data-sort") == "asc"
    wc = page.cells[("round", "worst_case")]
    assert float(wc["data-value"]) == pytest.approx(0.525, rel=1e-12)
    assert wc["data-attack"] == "mirror"
    assert wc["title"].startswith(
        "strongest attack's mean: Mirror (over the 2/3 attacks with a value on every seed); mean of per-seed "
        "maxima 53.5 (seed 0: 55.0 by Mirror; seed 1: 52.0 by BREP-MI (2/3 attacks)); ")
    # two seeds: no interval over seeds, and the defense test cannot reach the level
    assert "no interval: too few seeds (2; 3 needed)" in wc["title"]
    assert "not testable with 2 seeds; 4 needed" in wc["title"]
    assert "1,500 queries per identity" in page.cells[("round", "mirror/attack_acc@1")]["title"]
    assert "25,000 queries per identity" in page.cells[("round", "brep/attack_acc@1")]["title"]
    assert "queries" not in page.cells[("round", "gmi/attack_acc@1")]["title"]  # white-box: not shown
    assert '<tr data-defense="broken" data-name="Broken" data-near-chance="true">' in render_html(lb)


def test_records_without_access_are_white_box() -> None:
    recs = hand_records()
    for r in recs:
        r.pop("access")
        r.pop("queries", None)
    lb = build(recs)
    headers = list(md_tables(lb.to_markdown())[0][0])
    assert "Mirror [white-box]: attack_acc@1 (%) ↓" in headers
    assert lb.cell("none", "mirror/attack_acc@1")["queries_per_identity"] != lb.cell(
        "none", "mirror/attack_acc@1")["queries_per_identity"]  # NaN: not counted


def test_seed_where_every_attack_failed_and_defense_without_any() -> None:
    recs = [r for r in hand_records() if r["defense"] != "broken"]
    for r in recs:  # seed 1 of Rounding: every attack fails
        if r["defense"] == "round" and r["seed"] == 1:
            r.update(status="failed", metrics={}, error="boom")
    dead = [make_record(("dead", "Dead", 3), (a, ATTACKS[a][0], ATTACKS[a][1]), s, None, status="failed",
                        error="diverged") for a in ATTACKS for s in (0, 1)]
    lb = build([*recs, *dead])
    wc = lb.worst_case["round"]
    assert wc.values == (0.55,) and wc.failed == (1,)
    cell = lb.cell("round", "worst_case")
    assert cell["n"] == 1 and cell["n_failed"] == 1 and cell["mean"] == pytest.approx(0.55)
    main = md_tables(lb.to_markdown())[0]
    assert md_row(main, "Rounding")["Worst case: attack_acc@1 (%) ↓"] == "55.0 (Mirror; 1/2 failed)"
    assert md_row(main, "Dead")["Worst case: attack_acc@1 (%) ↓"] == "failed"
    assert [r["Defense"] for r in main][-1] == "Dead"  # no worst case: last
    page = _Page()
    page.feed(render_html(lb))
    assert page.rows[-1] == "dead"
    assert page.cells[("round", "worst_case")]["title"].startswith(
        "strongest attack's mean: Mirror; mean of per-seed maxima 55.0 (seed 0: 55.0 by Mirror; seed 1: every "
        "attack failed); no interval: too few seeds (1; 3 needed)")
    assert worst_case([], ["gmi"], "attack_acc@1").attack is None


def test_no_attack_accuracy_no_worst_case_column() -> None:
    recs = [make_record(("none", "No defense", 0), ("a", "A", 0), 0, {"test_accuracy": 0.9, "fid": 30.0}),
            make_record(("x", "X", 1), ("a", "A", 0), 0, {"test_accuracy": 0.8, "fid": 20.0})]
    for r in recs:
        r["directions"] = {"test_accuracy": "higher", "fid": "higher"}
    lb = build(recs)
    assert not any(c.is_worst_case for c in lb.columns) and lb.worst_case == {}
    assert [i.defense for i in ranked(lb)] == ["none", "x"]
    assert "Worst case" not in lb.to_markdown()


def test_figures_choose_a_real_attack(lb) -> None:
    from inversion_bench.leaderboard.report_figures import _choose_attack

    # against the baseline GMI has the highest mean; the worst-case column (higher still) is no attack
    assert _choose_attack(lb, None) == "gmi"
