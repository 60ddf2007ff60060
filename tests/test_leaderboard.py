"""Tests of the leaderboard built from hand-made result records."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inversion_bench.leaderboard import Leaderboard, build

DIRECTIONS = {
    "test_accuracy": "higher",
    "attack_acc@1": "lower",
    "attack_acc@5": "lower",
    "knn_distance": "higher",
    "fid": "higher",
}
# ids deliberately not in alphabetical order of defense_index
DEFENSES = [("none", "No defense", 0), ("mid_reg", "MID reg", 1), ("broken", "Broken_100%", 2)]
ATTACKS = [("gmi", "GMI", 0), ("plg_mi", "PLG-MI", 1)]
SEEDS = [0, 1, 2]
FAILED = ("mid_reg", "gmi", 1)
TEST_ACC = {"none": [0.90, 0.92, 0.91], "mid_reg": [0.85, 0.80, 0.83], "broken": [0.12, 0.15, 0.11]}


def make_record(
    defense: tuple[str, str, int],
    attack: tuple[str, str, int],
    seed: int,
    metrics: dict[str, Any] | None,
    status: str = "ok",
    error: str | None = None,
    suite_hash: str = "hash1",
) -> dict[str, Any]:
    """A record as written by the runner (only the fields the leaderboard reads)."""
    return {
        "schema": 1,
        "suite": "smoke_suite",
        "suite_hash": suite_hash,
        "defense": defense[0],
        "defense_label": defense[1],
        "defense_index": defense[2],
        "attack": attack[0],
        "attack_label": attack[1],
        "attack_index": attack[2],
        "seed": seed,
        "baseline": "none",
        "status": status,
        "error": error,
        "metrics": metrics or {},
        "directions": dict(DIRECTIONS) if status == "ok" else {},
        "num_classes": 10,
        "code_version": "abc123",
        "device": "cpu",
        "created": f"2024-05-0{seed + 1}T12:00:00",
    }


def synthetic_records() -> list[dict[str, Any]]:
    """3 defenses x 2 attacks x 3 seeds, with one failed pair (mid_reg x gmi, seed 1)."""
    rng = random.Random(1234)
    records = []
    for d in DEFENSES:
        for a in ATTACKS:
            for s in SEEDS:
                if (d[0], a[0], s) == FAILED:
                    records.append(
                        make_record(d, a, s, None, status="failed", error="CUDA out of memory\nTraceback ...")
                    )
                    continue
                metrics = {
                    "test_accuracy": TEST_ACC[d[0]][s],
                    "attack_acc@1": rng.uniform(0.0, 0.8),
                    "attack_acc@5": rng.uniform(0.5, 1.0),
                    "knn_distance": rng.uniform(50.0, 200.0),
                    "fid": rng.uniform(10.0, 90.0),
                }
                records.append(make_record(d, a, s, metrics))
    rng.shuffle(records)  # order must come from the indices, not from the input
    return records


def values(records: list[dict[str, Any]], defense: str, attack: str, metric: str) -> list[float]:
    """The raw values of one cell from ok records."""
    return [
        r["metrics"][metric]
        for r in sorted(records, key=lambda r: r["seed"])
        if r["defense"] == defense and r["attack"] == attack and r["status"] == "ok"
    ]


def md_tables(md: str) -> list[list[dict[str, str]]]:
    """The pipe tables of a Markdown text, each as a list of {header: cell} rows."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    out = []
    for lines in tables:
        split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
        headers = split[0]
        out.append([dict(zip(headers, row, strict=True)) for row in split[2:]])
    return out


def md_row(table: list[dict[str, str]], label: str) -> dict[str, str]:
    """The row of a Markdown table whose Defense cell starts with ``label`` (rows are sorted by worst case)."""
    (row,) = [r for r in table if r["Defense"] == label or r["Defense"].startswith(label + " ")]
    return row


def hand_worst_means(records: list[dict[str, Any]]) -> dict[str, tuple[bool, float]]:
    """defense -> (covers only some attacks, the strongest attack's mean): the highest mean attack_acc@1 over
    seeds of the attacks with an ok record on every seed of the defense (the row order's key)."""
    out: dict[str, tuple[bool, float]] = {}
    for d in dict.fromkeys(r["defense"] for r in records):
        recs = [r for r in records if r["defense"] == d]
        seeds = {r["seed"] for r in recs}
        attacks = list(dict.fromkeys(r["attack"] for r in records))
        ok = {a: [r["metrics"]["attack_acc@1"] for r in recs if r["attack"] == a and r["status"] == "ok"]
              for a in attacks}
        complete = [a for a in attacks if len(ok[a]) == len(seeds)]
        out[d] = (len(complete) < len(attacks), max(float(np.mean(ok[a])) for a in complete))
    return out


@pytest.fixture()
def records() -> list[dict[str, Any]]:
    return synthetic_records()


@pytest.fixture()
def lb(records: list[dict[str, Any]]) -> Leaderboard:
    return build(records)


def test_cell_mean_std_match_numpy(lb: Leaderboard, records: list[dict[str, Any]]) -> None:
    for d, _, _ in DEFENSES:
        for a, _, _ in ATTACKS:
            for m in ("attack_acc@1", "attack_acc@5", "knn_distance", "fid"):
                vals = values(records, d, a, m)
                cell = lb.cell(d, f"{a}/{m}")
                assert cell["n"] == len(vals)
                assert cell["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
                assert cell["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
        t = lb.cell(d, "test_accuracy")
        assert t["n"] == 3
        assert t["mean"] == pytest.approx(np.mean(TEST_ACC[d]))
        assert t["std"] == pytest.approx(np.std(TEST_ACC[d], ddof=1))

    # the formatted cell shows the same numbers (percent, one decimal)
    vals = values(records, "none", "gmi", "attack_acc@1")
    expected = f"{np.mean(vals) * 100:.1f} ± {np.std(vals, ddof=1) * 100:.1f}"
    main = md_tables(lb.to_markdown())[0]
    assert md_row(main, "No defense")["GMI [white-box]: attack_acc@1 (%) ↓"] == expected
    kd = values(records, "none", "plg_mi", "knn_distance")
    assert md_row(main, "No defense")["PLG-MI [white-box]: knn_distance ↑"] == (
        f"{np.mean(kd):.1f} ± {np.std(kd, ddof=1):.1f}")


def test_delta_is_difference_of_means(lb: Leaderboard, records: list[dict[str, Any]]) -> None:
    for d in ("mid_reg", "broken"):
        for a, _, _ in ATTACKS:
            for m in ("attack_acc@1", "knn_distance"):
                expected = np.mean(values(records, d, a, m)) - np.mean(values(records, "none", a, m))
                assert lb.cell(d, f"{a}/{m}")["delta"] == pytest.approx(expected, rel=1e-12)
        assert lb.cell(d, "test_accuracy")["delta"] == pytest.approx(
            np.mean(TEST_ACC[d]) - np.mean(TEST_ACC["none"])
        )
    assert math.isnan(lb.cell("none", "gmi/attack_acc@1")["delta"])

    md = lb.to_markdown()
    assert "## Δ vs No defense" in md
    delta = md_tables(md)[1]
    worst = hand_worst_means(records)  # the Δ table follows the main table's order (by worst case)
    assert [r["Defense"].split(" ⚠")[0] for r in delta] == [
        {"mid_reg": "MID reg", "broken": "Broken_100%"}[d] for d in sorted(("mid_reg", "broken"), key=worst.get)]
    d = np.mean(values(records, "broken", "plg_mi", "attack_acc@1")) - np.mean(
        values(records, "none", "plg_mi", "attack_acc@1")
    )
    assert md_row(delta, "Broken_100%")["PLG-MI [white-box]: attack_acc@1 (pp) ↓"] == f"{d * 100:+.1f}"


def test_arrows_follow_directions(lb: Leaderboard) -> None:
    headers = list(md_tables(lb.to_markdown())[0][0].keys())
    assert headers[1] == "Test acc. (%) ↑"
    assert headers[2] == "Worst case: attack_acc@1 (%) ↓"
    for a_label in ("GMI [white-box]", "PLG-MI [white-box]"):
        assert f"{a_label}: attack_acc@1 (%) ↓" in headers
        assert f"{a_label}: attack_acc@5 (%) ↓" in headers
        assert f"{a_label}: knn_distance ↑" in headers
        assert f"{a_label}: fid ↑" in headers
    # fixed metric order: acc@1, acc@5, then the rest sorted; attacks by attack_index
    assert headers[3:7] == [
        "GMI [white-box]: attack_acc@1 (%) ↓",
        "GMI [white-box]: attack_acc@5 (%) ↓",
        "GMI [white-box]: fid ↑",
        "GMI [white-box]: knn_distance ↑",
    ]
    assert headers[7].startswith("PLG-MI")
    assert "↑ higher is better for the defender" in lb.to_markdown()


def test_rows_follow_defense_index(lb: Leaderboard, records: list[dict[str, Any]]) -> None:
    """The table model, the CSV and the LaTeX keep defense_index order; Markdown sorts by worst case."""
    assert [d.defense for d in lb.defenses] == ["none", "mid_reg", "broken"]
    main = md_tables(lb.to_markdown())[0]
    labels = {"none": "No defense (baseline)", "mid_reg": "MID reg", "broken": "Broken_100% ⚠ near chance"}
    worst = hand_worst_means(records)
    assert [r["Defense"] for r in main] == [labels[d] for d in sorted(labels, key=worst.get)]
    tex = lb.to_latex()
    assert tex.index("No defense (baseline) &") < tex.index("MID reg &") < tex.index(r"Broken\_100\%")
    assert list(lb.wide()["defense"]) == ["none", "mid_reg", "broken"]
    assert list(dict.fromkeys(lb.data["defense"])) == ["none", "mid_reg", "broken"]


def test_failed_pair_shown_and_listed(lb: Leaderboard, records: list[dict[str, Any]]) -> None:
    cell = lb.cell("mid_reg", "gmi/attack_acc@1")
    assert cell["n"] == 2 and cell["n_failed"] == 1
    md = lb.to_markdown()
    main = md_tables(md)[0]
    vals = values(records, "mid_reg", "gmi", "attack_acc@1")
    assert md_row(main, "MID reg")["GMI [white-box]: attack_acc@1 (%) ↓"] == (
        f"{np.mean(vals) * 100:.1f} ± {np.std(vals, ddof=1) * 100:.1f} (1/3 failed)"
    )
    tail = md[md.index("## Failures") :]
    assert md.rstrip().endswith("seed 1: CUDA out of memory")
    assert "MID reg (`mid_reg`) × GMI (`gmi`), seed 1: CUDA out of memory" in tail
    assert "Traceback" not in tail
    assert [(f.defense, f.attack, f.seed) for f in lb.failures] == [FAILED]

    # every seed of a pair failed: the cell says "failed", never a number
    recs = [r for r in records if not (r["defense"] == "mid_reg" and r["attack"] == "gmi")]
    for s in SEEDS:
        recs.append(make_record(DEFENSES[1], ATTACKS[0], s, None, status="failed", error="boom"))
    main = md_tables(build(recs).to_markdown())[0]
    row = md_row(main, "MID reg")
    assert all(row[h] == "failed" for h in row if h.startswith("GMI"))
    assert row["Test acc. (%) ↑"] == f"{np.mean(TEST_ACC['mid_reg']) * 100:.1f} ± 2.5"


def test_missing_test_accuracy_is_failed() -> None:
    recs = synthetic_records()
    extra = ("dead", "Dead defense", 3)
    for a in ATTACKS:
        for s in SEEDS:
            recs.append(make_record(extra, a, s, None, status="failed", error="training diverged"))
    lb = build(recs)
    main = md_tables(lb.to_markdown())[0]
    assert main[3]["Defense"] == "Dead defense"
    assert set(list(main[3].values())[1:]) == {"failed"}
    wide = lb.wide().set_index("defense")
    assert math.isnan(wide.loc["dead", "test_accuracy_mean"])
    assert wide.loc["dead", "test_accuracy_failed"] == 3


def test_near_chance_flag(lb: Leaderboard) -> None:
    flags = {d.defense: d.near_chance for d in lb.defenses}
    assert flags == {"none": False, "mid_reg": False, "broken": True}
    md = lb.to_markdown()
    assert "Broken_100% ⚠ near chance" in md
    assert "2× chance level" in md
    assert "near chance" in lb.to_latex()


def test_none_metric_is_na_not_zero() -> None:
    recs = synthetic_records()
    for r in recs:
        if r["defense"] == "none" and r["attack"] == "plg_mi":
            r["metrics"]["fid"] = None  # every seed: "n/a"
            if r["seed"] == 0:
                r["metrics"]["knn_distance"] = float("nan")  # one seed: left out of the mean
    lb = build(recs)
    main = md_tables(lb.to_markdown())[0]
    assert md_row(main, "No defense")["PLG-MI [white-box]: fid ↑"] == "n/a†"
    kd = [
        r["metrics"]["knn_distance"]
        for r in sorted(recs, key=lambda r: r["seed"])
        if r["defense"] == "none" and r["attack"] == "plg_mi" and r["seed"] != 0
    ]
    cell = lb.cell("none", "plg_mi/knn_distance")
    assert cell["n"] == 2 and cell["n_missing"] == 1
    assert cell["mean"] == pytest.approx(np.mean(kd))
    assert md_row(main, "No defense")["PLG-MI [white-box]: knn_distance ↑"].endswith("(1/3 n/a†)")
    md = lb.to_markdown()
    assert "† n/a" in md and "No defense × PLG-MI: fid, seeds 0, 1, 2" in md
    assert math.isnan(lb.cell("none", "plg_mi/fid")["mean"])
    assert math.isnan(lb.cell("mid_reg", "plg_mi/fid")["delta"])


def test_single_seed_shows_mean_only() -> None:
    recs = [r for r in synthetic_records() if r["seed"] == 0]
    lb = build(recs)
    main = md_tables(lb.to_markdown())[0]
    assert "±" not in md_row(main, "No defense")["Test acc. (%) ↑"]
    assert md_row(main, "No defense")["Test acc. (%) ↑"] == "90.0"
    assert lb.cell("none", "test_accuracy")["n"] == 1


def test_csv_round_trip(lb: Leaderboard, records: list[dict[str, Any]], tmp_path: Path) -> None:
    path = lb.to_csv(tmp_path / "lb.csv")
    df = pd.read_csv(path)
    assert list(df.columns[:7]) == [
        "defense",
        "defense_label",
        "test_accuracy_mean",
        "test_accuracy_std",
        "test_accuracy_n",
        "test_accuracy_delta",
        "test_accuracy_failed",
    ]
    df = df.set_index("defense")
    for d, _, _ in DEFENSES:
        assert df.loc[d, "test_accuracy_mean"] == pytest.approx(np.mean(TEST_ACC[d]), rel=1e-12)
        for a, _, _ in ATTACKS:
            for m in ("attack_acc@1", "knn_distance"):
                vals = values(records, d, a, m)
                assert df.loc[d, f"{a}/{m}_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
                assert df.loc[d, f"{a}/{m}_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
                assert df.loc[d, f"{a}/{m}_n"] == len(vals)
    assert df.loc["mid_reg", "gmi/attack_acc@1_failed"] == 1
    assert df.loc["mid_reg", "gmi/knn_distance_delta"] == pytest.approx(
        lb.cell("mid_reg", "gmi/knn_distance")["delta"], rel=1e-12
    )
    assert math.isnan(df.loc["none", "gmi/knn_distance_delta"])
    # a cell with a single value: the CSV holds the stored value exactly
    single = build([r for r in records if r["seed"] == 2])
    df1 = pd.read_csv(single.to_csv(tmp_path / "one.csv")).set_index("defense")
    (rec,) = [r for r in records if (r["defense"], r["attack"], r["seed"]) == ("none", "gmi", 2)]
    assert df1.loc["none", "gmi/knn_distance_mean"] == rec["metrics"]["knn_distance"]
    assert df1.loc["none", "gmi/attack_acc@1_mean"] == rec["metrics"]["attack_acc@1"]


def test_latex(lb: Leaderboard) -> None:
    tex = lb.to_latex()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{4}{c}{GMI [white-box]}", r"$\pm$"):
        assert token in tex
    assert r"attack\_acc@1 (\%) $\downarrow$" in tex
    assert r"knn\_distance $\uparrow$" in tex
    assert r"Broken\_100\%" in tex
    assert r"smoke\_suite" in tex
    assert "attack_acc" not in tex.replace(r"attack\_acc", "")
    assert "⚠" not in tex and "±" not in tex


def test_write_creates_files(lb: Leaderboard, tmp_path: Path) -> None:
    paths = lb.write(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.tex"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md.startswith("# Leaderboard: smoke_suite")


def test_data_frame_layout(lb: Leaderboard) -> None:
    # one row per (defense, column): 3 defenses x (test accuracy + worst case + 2 attacks x 4 metrics)
    assert len(lb.data) == 3 * 10
    assert {"defense", "column", "mean", "std", "n", "n_failed", "delta"} <= set(lb.data.columns)


def test_dp_epsilon_column_in_every_format(tmp_path: Path) -> None:
    """A DP defense's (epsilon, delta) from the record's target block shows in md, tex and csv."""
    recs = []
    for seed, eps in ((0, 7.5), (1, 8.25)):
        for d_i, d in enumerate(("hard", "dp")):
            r = make_record((d, d, d_i), ("a", "A", 0), seed, {"test_accuracy": 0.9, "attack_acc@1": 0.5})
            r["baseline"] = "hard"
            r["target"] = {"test_accuracy": 0.9}
            if d == "dp":
                r["target"].update(epsilon=eps, delta=1e-5, noise_multiplier=1.1)
            recs.append(r)
    lb = build(recs)
    info = {i.defense: i for i in lb.defenses}
    assert info["dp"].epsilon == 8.25 and info["dp"].delta == 1e-5  # the weaker guarantee of the two seeds
    assert info["hard"].epsilon is None
    md = lb.to_markdown()
    main = md_tables(md)[0]
    by_label = {row["Defense"].split(" ")[0]: row for row in main}
    assert by_label["dp"]["ε (DP)"] == "8.25 (δ=1e-05)"
    assert by_label["hard"]["ε (DP)"] == "—"
    assert r"$\varepsilon$ (DP)" in lb.to_latex() and "8.25 ($\\delta$=1e-05)" in lb.to_latex()
    csv = pd.read_csv(lb.to_csv(tmp_path / "lb.csv")).set_index("defense")
    assert csv.loc["dp", "epsilon"] == 8.25 and math.isnan(csv.loc["hard", "epsilon"])


def test_no_epsilon_column_without_guarantees(lb: Leaderboard) -> None:
    assert "ε (DP)" not in lb.to_markdown()
    assert "varepsilon" not in lb.to_latex()
