"""Tests of the leaderboard built from hand-made result records."""

from __future__ import annotations

import copy
import math
import random
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inversion_bench.leaderboard import Leaderboard, build, build_from_dirs
from inversion_bench.results import write_record

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


def hand_worst_means(records: list[dict[str, Any]]) -> dict[str, float]:
    """defense -> mean over seeds of the highest attack_acc@1 of any ok attack on that seed."""
    per_seed: dict[tuple[str, int], float] = {}
    for r in records:
        if r["status"] == "ok":
            key = (r["defense"], r["seed"])
            per_seed[key] = max(per_seed.get(key, -1.0), r["metrics"]["attack_acc@1"])
    return {d: float(np.mean([v for (dd, _), v in per_seed.items() if dd == d])) for d in dict.fromkeys(
        d for d, _ in per_seed)}


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


def test_build_from_dirs(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    for r in records:  # split by attack: each run holds one attack
        write_record((run_a if r["attack"] == "gmi" else run_b) / "records", r)
    combined = build_from_dirs([run_a, run_b])
    direct = build(records)
    pd.testing.assert_frame_equal(combined.wide(), direct.wide())
    assert combined.to_markdown().split("\n", 3)[3] == direct.to_markdown().split("\n", 3)[3]

    # the same (defense, attack, seed) from a different suite version: refused, naming both files
    run_c = tmp_path / "run_c"
    other = copy.deepcopy(next(r for r in records if r["attack"] == "gmi" and r["status"] == "ok"))
    other["suite_hash"] = "hash2"
    write_record(run_c / "records", other)
    with pytest.raises(ValueError, match="different results") as exc:
        build_from_dirs([run_a, run_c])
    assert str(run_a) in str(exc.value) and str(run_c) in str(exc.value)


def test_same_config_hash_is_one_result_other_settings_refused(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    """Records of one pair from two suites (different suite_hash) with the same config_hash are one result;
    a genuinely different one is refused, naming both files and the differing setting."""
    ok = [copy.deepcopy(r) for r in records]
    for r in ok:
        r["config_hash"] = f"cfg-{r['defense']}-{r['attack']}-{r['seed']}"
        r["attack_params"] = {"steps": 100}
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for r in ok:
        write_record(run_a / "records", r)
    same = copy.deepcopy(next(r for r in ok if r["attack"] == "gmi" and r["status"] == "ok"))
    same.update(suite_hash="another-suite", suite="other", baseline="mid_reg")
    write_record(run_b / "records", same)
    combined = build_from_dirs([run_a, run_b])
    pd.testing.assert_frame_equal(combined.wide(), build(ok).wide())
    changed = copy.deepcopy(same)
    changed.update(config_hash="cfg-other", attack_params={"steps": 999})
    write_record(run_b / "records", changed)
    with pytest.raises(ValueError, match=r"attack_params\.steps differs") as exc:
        build_from_dirs([run_a, run_b])
    assert str(run_a) in str(exc.value) and str(run_b) in str(exc.value)


def test_baseline_is_chosen_for_the_table(records: list[dict[str, Any]]) -> None:
    """Records naming different baselines are no error; an explicit baseline wins and is in the provenance."""
    mixed = [copy.deepcopy(r) for r in records]
    mixed[0]["baseline"] = "mid_reg"
    lb = build(mixed)
    assert lb.baseline is not None and any("different baselines" in n for n in lb.notes)
    lb = build(records, baseline="mid_reg", baseline_source="--baseline")
    assert lb.baseline == "mid_reg" and "(from --baseline)" in lb.to_markdown()
    assert lb.cell("mid_reg", "test_accuracy")["delta"] != lb.cell("mid_reg", "test_accuracy")["delta"]  # NaN
    with pytest.raises(ValueError, match="--baseline 'nope' is not a defense"):
        build(records, baseline="nope", baseline_source="--baseline")


def test_duplicate_same_version_prefers_ok(records: list[dict[str, Any]]) -> None:
    rerun = make_record(DEFENSES[1], ATTACKS[0], 1, {"test_accuracy": 0.8, "attack_acc@1": 0.5})
    lb = build([*records, rerun])
    assert lb.cell("mid_reg", "gmi/attack_acc@1")["n"] == 3
    assert lb.failures == []


def test_no_records() -> None:
    with pytest.raises(ValueError):
        build([])


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


# --------------------------------------------------------------------------------------------------
# intervals, paired tests, target-scope metrics and the evaluation model (issue 14)

ACC1 = {  # per-identity attack_acc@1 on identities 0..3, seeds 0 and 1
    "none": ([0.9, 0.8, 0.7, 1.0], [0.85, 0.75, 0.95, 0.9]),
    "strong": ([0.1, 0.0, 0.2, 0.1], [0.0, 0.1, 0.1, 0.2]),
    "same": ([0.95, 0.75, 0.75, 0.95], [0.9, 0.7, 1.0, 0.85]),
}
ID_DEFENSES = {"none": ("none", "No defense", 0), "strong": ("strong", "Strong", 1), "same": ("same", "Same", 2)}
ID_DIRECTIONS = {"test_accuracy": "higher", "attack_acc@1": "lower", "attack_acc@5": "lower", "fid": "higher"}


def identity_record(defense: str, seed: int, per1: list[float], settings: dict[str, Any] | None = None,
                    attack: tuple[str, str, int] = ("gmi", "GMI", 0)) -> dict[str, Any]:
    """An ok record whose attack accuracy carries its per-identity values (identities 0..n-1)."""
    per5 = [min(1.0, v + 0.1) for v in per1]
    metrics = {"test_accuracy": 0.9 - 0.1 * ID_DEFENSES[defense][2] + 0.01 * seed,
               "attack_acc@1": float(np.mean(per1)), "attack_acc@5": float(np.mean(per5)), "fid": 40.0 + seed}
    r = make_record(ID_DEFENSES[defense], attack, seed, metrics)
    r["directions"] = dict(ID_DIRECTIONS)
    r["metric_scopes"] = {"test_accuracy": "target", "attack_acc@1": "attack", "attack_acc@5": "attack",
                          "fid": "attack"}
    r["metric_details"] = {"attack_accuracy": {
        "per_identity_acc@1": {str(i): v for i, v in enumerate(per1)},
        "per_identity_acc@5": {str(i): v for i, v in enumerate(per5)},
        "identities_attacked": len(per1), "identities_without_images": 0, "n": 4 * len(per1)}}
    if settings is not None:
        r["report_settings"] = settings
    return r


def identity_records(settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [identity_record(d, s, ACC1[d][s], settings) for d in ACC1 for s in (0, 1)]


class _Page(HTMLParser):
    """The page's cells (data-key -> attributes) and Δ spans, per defense."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, str]] = {}
        self.deltas: dict[tuple[str, str], dict[str, str]] = {}
        self._row = ""
        self._key = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-defense" in a:
            self._row = a["data-defense"]
        elif tag == "td" and "data-value" in a:
            self._key = a["data-key"]
            self.cells[(self._row, self._key)] = a
        elif tag == "span" and "delta" in a.get("class", ""):
            self.deltas[(self._row, self._key)] = a


def scipy_paired_p(a: list[float], b: list[float]) -> float:
    from scipy import stats as sps

    res = sps.permutation_test((np.asarray(a), np.asarray(b)), lambda x, y, axis: np.mean(x - y, axis=axis),
                               vectorized=True, permutation_type="samples", n_resamples=np.inf)
    return float(res.pvalue)


def test_identity_interval_and_paired_test() -> None:
    from inversion_bench.leaderboard.stats import bootstrap_interval, seed_interval

    lb = build(identity_records())
    strong = lb.cell("strong", "gmi/attack_acc@1")
    assert (strong["ci_low"], strong["ci_high"]) == bootstrap_interval(list(ACC1["strong"]), 0.95, 2000)
    assert strong["ci_low"] <= strong["mean"] <= strong["ci_high"]
    assert strong["ci_method"] == "bootstrap over identities and seeds, n = 4 identities × 2 seeds"
    assert strong["n_identities"] == 4
    # 8 (seed, identity) pairs: exact, all differences negative -> p = 2 / 2^8, the same as scipy's
    flat = {d: [v for s in (0, 1) for v in ACC1[d][s]] for d in ACC1}
    assert strong["p_value"] == pytest.approx(2 / 256) == pytest.approx(scipy_paired_p(flat["strong"], flat["none"]))
    assert bool(strong["significant"]) and "exact; 8 (seed, identity) pairs" in strong["test"]
    same = lb.cell("same", "gmi/attack_acc@1")
    assert same["p_value"] == pytest.approx(scipy_paired_p(flat["same"], flat["none"]))
    assert same["p_value"] > 0.05 and not same["significant"]
    base = lb.cell("none", "gmi/attack_acc@1")
    assert math.isnan(base["p_value"]) and not base["significant"] and base["test"] == "baseline"
    # target column, FID (no per-identity values), worst case: intervals over seeds only, no paired test
    for key in ("test_accuracy", "gmi/fid", "worst_case"):
        cell = lb.cell("strong", key)
        assert cell["ci_method"] == "bootstrap over seeds, n = 2 seeds" and cell["n_identities"] == 0, key
        assert (cell["ci_low"], cell["ci_high"]) == seed_interval(list(cell["values"])), key
        assert math.isnan(cell["p_value"]) and not cell["significant"] and "no paired test" in cell["test"], key

    # Markdown: a significant Δ carries "*", the others none; the legend names the test
    md = lb.to_markdown()
    delta = md_tables(md)[1]
    assert md_row(delta, "Strong")["GMI [white-box]: attack_acc@1 (pp) ↓"].endswith("*")
    assert not md_row(delta, "Same")["GMI [white-box]: attack_acc@1 (pp) ↓"].endswith("*")
    assert not md_row(delta, "Strong")["Test acc. (pp) ↑"].endswith("*")
    assert "paired sign-flip permutation test" in md and "p < 0.05" in md and "percentile bootstrap" in md
    # HTML: coloured only when significant, grey otherwise; the tooltip has the interval, n, test and p
    page = _Page()
    from inversion_bench.leaderboard.html import render_html

    page.feed(render_html(lb))
    assert page.deltas[("strong", "gmi/attack_acc@1")]["class"] == "delta good"
    assert page.deltas[("same", "gmi/attack_acc@1")]["class"] == "delta ns"
    assert page.deltas[("strong", "test_accuracy")]["class"] == "delta ns"  # worse, but no paired test
    title = page.cells[("strong", "gmi/attack_acc@1")]["title"]
    lo, hi = 100 * strong["ci_low"], 100 * strong["ci_high"]
    assert f"95% CI [{lo:.1f}, {hi:.1f}] (bootstrap over identities and seeds, n = 4 identities × 2 seeds)" in title
    assert "vs baseline: p = 0.008, paired sign-flip permutation test (exact; 8 (seed, identity) pairs)" in title


def test_csv_carries_intervals_and_p_values(tmp_path: Path) -> None:
    from inversion_bench.leaderboard.report import write_records_csv
    from inversion_bench.leaderboard.stats import bootstrap_interval

    recs = identity_records()
    lb = build(recs)
    df = pd.read_csv(lb.to_csv(tmp_path / "lb.csv")).set_index("defense")
    for k in ("ci_low", "ci_high", "p_value"):
        assert df.loc["strong", f"gmi/attack_acc@1_{k}"] == pytest.approx(lb.cell("strong", "gmi/attack_acc@1")[k])
    assert bool(df.loc["strong", "gmi/attack_acc@1_significant"]) is True
    assert bool(df.loc["same", "gmi/attack_acc@1_significant"]) is False
    assert math.isnan(df.loc["none", "gmi/attack_acc@1_p_value"])
    # records.csv: each record's own interval over its identities for attack_acc@1/@5
    long = pd.read_csv(write_records_csv(recs, tmp_path / "records.csv"))
    row = long[(long["defense"] == "strong") & (long["seed"] == 1) & (long["metric"] == "attack_acc@1")].iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_interval([ACC1["strong"][1]], 0.95, 2000))
    assert row["n_identities"] == 4
    assert long.loc[long["metric"] == "test_accuracy", "ci_low"].isna().all()


def test_intervals_setting_shows_half_widths_and_disagreement_is_noted() -> None:
    settings = {"significance": 0.05, "confidence": 0.9, "bootstrap": 500, "intervals": True}
    recs = identity_records(settings)
    recs.append(identity_record("none", 2, [0.5], settings))  # one identity on one seed of a third attack
    recs[-1]["attack"], recs[-1]["attack_label"], recs[-1]["attack_index"] = "ppa", "PPA", 1
    lb = build(recs)
    assert lb.settings.intervals and lb.settings.confidence == 0.9 and lb.settings.bootstrap == 500
    cell = lb.cell("strong", "gmi/attack_acc@1")
    main = md_tables(lb.to_markdown())[0]
    hw = 100 * (cell["ci_high"] - cell["ci_low"]) / 2
    assert md_row(main, "Strong")["GMI [white-box]: attack_acc@1 (%) ↓"] == f"{100 * cell['mean']:.1f} ± {hw:.1f}"
    single = lb.cell("none", "ppa/attack_acc@1")
    assert math.isnan(single["ci_low"]) and single["ci_method"] == "no interval: one identity on one seed"
    assert md_row(main, "No defense")["PPA [white-box]: attack_acc@1 (%) ↓"] == "50.0 (no CI)"
    assert "half-width of the 90% bootstrap interval" in lb.to_markdown()
    assert f"{100 * cell['mean']:.1f} $\\pm$ {hw:.1f}" in lb.to_latex() and "bootstrap interval" in lb.to_latex()

    recs[0]["report_settings"] = {**settings, "significance": 0.01}
    lb2 = build(recs)
    assert any("disagree on report_settings" in n for n in lb2.notes)
    # old records without report_settings: the defaults, Markdown as before (mean ± std)
    lb3 = build(identity_records())
    assert lb3.settings.intervals is False and lb3.settings.confidence == 0.95
    assert "(no CI)" not in lb3.to_markdown()


def test_old_records_count_identities_without_images_as_zero() -> None:
    from inversion_bench.leaderboard.stats import bootstrap_interval

    recs = [identity_record("none", 0, [0.9, 0.8, 0.7, 1.0]), identity_record("strong", 0, [0.1, 0.0, 0.2, 0.1])]
    block = recs[1]["metric_details"]["attack_accuracy"]
    del block["per_identity_acc@1"]["2"]  # written before missing identities were listed
    block["identities_without_images"] = 1
    lb = build(recs)
    cell = lb.cell("strong", "gmi/attack_acc@1")
    assert (cell["ci_low"], cell["ci_high"]) == bootstrap_interval([[0.1, 0.0, 0.1, 0.0]], 0.95, 2000)
    assert cell["ci_method"] == "bootstrap over identities, n = 4 identities × 1 seed"
    # the identity of unknown id cannot be paired: 3 pairs (exact)
    assert "exact; 3 (seed, identity) pairs" in cell["test"]
    assert cell["p_value"] == pytest.approx(scipy_paired_p([0.1, 0.0, 0.1], [0.9, 0.8, 1.0]))


def test_target_scope_metrics_are_target_columns() -> None:
    recs = []
    for d in ("none", "strong"):
        for s in (0, 1):
            for a in (("gmi", "GMI", 0), ("ppa", "PPA", 1)):
                r = identity_record(d, s, ACC1[d][s], attack=a)
                r["metrics"].update(ece=0.05 + 0.01 * s + (0.1 if d == "strong" else 0.0), evaluator_agreement=0.873)
                r["directions"].update(ece="lower", evaluator_agreement="higher")
                r["metric_scopes"].update(ece="target", evaluator_agreement="attack")
                recs.append(r)
    recs[0].pop("metric_scopes")  # an older record: its scopes come from the others
    lb = build(recs)
    keys = [c.key for c in lb.columns]
    assert keys[:3] == ["test_accuracy", "ece", "worst_case"]
    assert "gmi/ece" not in keys and "gmi/evaluator_agreement" in keys
    ece = lb.cell("strong", "ece")
    assert ece["n"] == 2 and ece["mean"] == pytest.approx(0.155) and ece["ci_method"].startswith("bootstrap over seeds")
    main = md_tables(lb.to_markdown())[0]
    headers = list(main[0])
    assert headers[1:4] == ["Test acc. (%) ↑", "Target: ece ↓", "Worst case: attack_acc@1 (%) ↓"]
    assert "GMI [white-box]: evaluator_agreement (%) ↑" in headers  # a share of images: in percent
    assert md_row(main, "No defense")["GMI [white-box]: evaluator_agreement (%) ↑"] == "87.3 ± 0.0"
    tex = lb.to_latex()
    assert r"\multicolumn{2}{c}{Target}" in tex and r"\cmidrule(lr){2-3}" in tex and r"ece $\downarrow$" in tex


def test_which_metrics_are_accuracies() -> None:
    from inversion_bench.leaderboard.model import Column

    def acc(name: str) -> bool:
        return Column("a", "A", 0, name, None).is_accuracy

    for name in ("attack_acc@1", "attack_acc@5", "second_acc@1", "test_accuracy", "acc", "impostor_acc@1",
                 "evaluator_agreement", "false_acceptance", "knowledge_extraction"):
        assert acc(name), name
    for name in ("ece", "silhouette",
                 "intra_inter_ratio", "grad_cosine", "knn_distance", "fid", "accumulated_loss"):
        assert not acc(name), name


def test_evaluator_audit_display() -> None:
    from inversion_bench.leaderboard.html import render_html

    recs = identity_records()
    md = build(recs).to_markdown()
    assert "Evaluation model: not recorded. Evaluation-model audit: not audited." in md
    for r in recs:
        r["evaluator"] = {"test_accuracy": 0.931, "architecture": "resnet18"}
    md = build(recs).to_markdown()
    assert "Evaluation model: resnet18, test accuracy 93.1%. Evaluation-model audit: not audited." in md
    audit = {"private_other": {"images": 500, "false_acceptance": 0.02, "impostor_acc@1": 0.004},
             "public": {"images": 800, "false_acceptance": 0.015, "impostor_acc@1": None}}
    for r in recs[1:]:
        r["evaluator"] = {"test_accuracy": 0.931, "architecture": "resnet18", "audit": audit,
                          "second": {"architecture": "vit_b16", "test_accuracy": 0.88}}
    lb = build(recs)
    md = lb.to_markdown()
    assert ("Evaluation-model audit: other private identities (500 images): false acceptance 2.0%, impostor Acc@1 "
            "0.4%; public identities (800 images): false acceptance 1.5%, impostor Acc@1 not measured") in md
    assert "Second evaluation model: vit_b16, test accuracy 88.0%" in md
    assert not any("evaluation model" in n for n in lb.notes)  # a record without an audit does not disagree
    page = render_html(lb)
    assert "<dt>evaluation model</dt><dd>resnet18, test accuracy 93.1%</dd>" in page
    assert "<dt>evaluation-model audit</dt><dd>other private identities (500 images): false acceptance 2.0%" in page
    recs[2]["evaluator"] = {**recs[2]["evaluator"], "test_accuracy": 0.5}
    assert any("disagree on the evaluation model's test accuracy" in n for n in build(recs).notes)


def test_per_identity_values_found_in_details() -> None:
    from inversion_bench.leaderboard.uncertainty import identity_values

    rec = identity_record("none", 0, [0.9, 0.8, 0.7, 1.0])
    assert identity_values(rec, "attack_acc@1") == ({"0": 0.9, "1": 0.8, "2": 0.7, "3": 1.0}, 0)
    rec["metric_details"]["knn_distance"] = {"per_identity": {0: 12.0, 1: 30.0}, "n_real": 10}
    rec["metric_details"]["fid_correct"] = {"per_identity": {0: {"n": 3, "n_correct": 1}}}
    assert identity_values(rec, "knn_distance") == ({"0": 12.0, "1": 30.0}, 0)
    assert identity_values(rec, "fid_correct") is None  # counts per identity, not values
    assert identity_values(rec, "fid") is None
    assert identity_values({"metric_details": None}, "attack_acc@1") is None


def test_seed_without_per_identity_values() -> None:
    """A seed whose record lacks per-identity values: the interval is over seeds, the test uses the others."""
    recs = identity_records()
    (old,) = [r for r in recs if r["defense"] == "strong" and r["seed"] == 1]
    del old["metric_details"]
    lb = build(recs)
    cell = lb.cell("strong", "gmi/attack_acc@1")
    assert cell["ci_method"] == "bootstrap over seeds, n = 2 seeds" and cell["n_identities"] == 0
    assert "exact; 4 (seed, identity) pairs" in cell["test"]
    assert cell["p_value"] == pytest.approx(2 / 16)  # 4 negative differences on seed 0
    assert not cell["significant"]
