"""Leaderboard tests of intervals, paired tests, target-scope metrics and the evaluation model's audit
(issue 14), on hand-made records with per-identity values."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inversion_bench.leaderboard import build
from tests.test_leaderboard import make_record, md_row, md_tables

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


def test_identity_interval_identity_level_test_and_two_seeds_not_testable() -> None:
    from inversion_bench.leaderboard.stats import crossed_interval

    lb = build(identity_records())
    strong = lb.cell("strong", "gmi/attack_acc@1")
    low, high, nu = crossed_interval(np.array(ACC1["strong"]), 0.95, 2000)
    assert low < 0 and (strong["ci_low"], strong["ci_high"]) == (0.0, min(high, 1.0))  # a share: clipped to [0, 1]
    assert strong["ci_low"] <= strong["mean"] <= strong["ci_high"]
    assert strong["ci_method"] == (f"crossed bootstrap over seeds and identities, t (ν = {nu:.1f}), "
                                   "n = 4 identities × 2 seeds")
    assert strong["n_identities"] == 4
    # identity level: 8 (seed, identity) pairs, exact, all differences negative -> p = 2 / 2^8, as scipy's; no mark
    flat = {d: [v for s in (0, 1) for v in ACC1[d][s]] for d in ACC1}
    assert strong["p_identity"] == pytest.approx(2 / 256) == pytest.approx(scipy_paired_p(flat["strong"], flat["none"]))
    assert "exact; 8 pairs, 8 non-zero" in strong["test_identity"]
    assert "not a test of the defense" in strong["test_identity"]
    same = lb.cell("same", "gmi/attack_acc@1")
    assert same["p_identity"] == pytest.approx(scipy_paired_p(flat["same"], flat["none"]))
    # the defense test over seeds: 2 vs 2 seeds cannot reach 0.05 (smallest p 2 / C(4, 2)): not testable, no mark
    for d in ("strong", "same"):
        for key in ("test_accuracy", "worst_case", "gmi/attack_acc@1", "gmi/fid"):
            cell = lb.cell(d, key)
            assert not cell["testable"] and not cell["significant"] and cell["seeds_needed"] == 4, (d, key)
            assert cell["test"].startswith("not testable with 2 seeds; 4 needed (two-sample permutation test over "
                                           "seeds (exact; 2 vs 2 seeds))"), cell["test"]
            assert math.isnan(cell["p_adjusted"])
    assert strong["p_value"] == pytest.approx(1 / 3)  # the two most extreme of the 6 splits
    base = lb.cell("none", "gmi/attack_acc@1")
    assert math.isnan(base["p_value"]) and not base["significant"] and base["test"] == "baseline"
    # target column, FID, worst case (no per-identity values) with 2 seeds: too few seeds for an interval
    for key in ("test_accuracy", "gmi/fid", "worst_case"):
        cell = lb.cell("strong", key)
        assert cell["ci_method"] == "no interval: too few seeds (2; 3 needed)" and cell["n_identities"] == 0, key
        assert math.isnan(cell["ci_low"]) and math.isnan(cell["ci_high"])

    # Markdown: no mark, and the table says why; the legend names the test and the unit
    md = lb.to_markdown()
    delta = md_tables(md)[1]
    assert not any(v.endswith("*") for row in delta for v in row.values())
    assert "Δ marks: not testable with 2 seeds per defense; 4 needed at 0.05." in md
    assert "The unit is the trained model" in md and "crossed bootstrap" in md
    # HTML: grey; the tooltip has the interval, n, the test and why it is not testable
    page = _Page()
    from inversion_bench.leaderboard.html import render_html

    html = render_html(lb)
    page.feed(html)
    assert page.deltas[("strong", "gmi/attack_acc@1")]["class"] == "delta ns"
    assert "not testable with 2 seeds; 4 needed" in page.deltas[("strong", "gmi/attack_acc@1")]["title"]
    title = page.cells[("strong", "gmi/attack_acc@1")]["title"]
    lo, hi = 100 * strong["ci_low"], 100 * strong["ci_high"]
    assert f"95% CI [{lo:.1f}, {hi:.1f}] (crossed bootstrap over seeds and identities" in title
    assert "vs baseline: p = 0.333, not testable with 2 seeds; 4 needed" in title
    assert "Δ marks: not testable with 2 seeds per defense; 4 needed at 0.05." in html
    assert "4 needed at 0.05" in lb.to_latex()


def test_csv_carries_intervals_and_p_values(tmp_path: Path) -> None:
    from inversion_bench.leaderboard.report import write_records_csv
    from inversion_bench.leaderboard.stats import bootstrap_interval

    recs = identity_records()
    lb = build(recs)
    df = pd.read_csv(lb.to_csv(tmp_path / "lb.csv")).set_index("defense")
    for k in ("ci_low", "ci_high", "p_value", "p_identity", "seeds_needed"):
        assert df.loc["strong", f"gmi/attack_acc@1_{k}"] == pytest.approx(lb.cell("strong", "gmi/attack_acc@1")[k])
    assert bool(df.loc["strong", "gmi/attack_acc@1_testable"]) is False
    assert bool(df.loc["strong", "gmi/attack_acc@1_significant"]) is False
    assert df.loc["strong", "worst_case_mean_of_maxima"] == pytest.approx(float(np.mean(ACC1["strong"], axis=1).mean()))
    assert math.isnan(df.loc["none", "gmi/attack_acc@1_p_value"])
    # records.csv: each record's own interval over its identities for attack_acc@1/@5
    long = pd.read_csv(write_records_csv(recs, tmp_path / "records.csv"))
    row = long[(long["defense"] == "strong") & (long["seed"] == 1) & (long["metric"] == "attack_acc@1")].iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_interval(ACC1["strong"][1], 0.95, 2000))
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
    assert "half-width of the 90% interval" in lb.to_markdown()
    assert f"{100 * cell['mean']:.1f} $\\pm$ {hw:.1f}" in lb.to_latex() and "crossed bootstrap" in lb.to_latex()

    recs[0]["report_settings"] = {**settings, "significance": 0.01}
    lb2 = build(recs)
    assert any("disagree on report_settings" in n for n in lb2.notes)
    # old records without report_settings: the defaults, Markdown as before (mean ± std)
    lb3 = build(identity_records())
    assert lb3.settings.intervals is False and lb3.settings.confidence == 0.95
    assert "(no CI)" not in lb3.to_markdown()


def test_old_records_count_identities_without_images_as_zero() -> None:
    from inversion_bench.leaderboard.stats import crossed_interval

    recs = [identity_record("none", 0, [0.9, 0.8, 0.7, 1.0]), identity_record("strong", 0, [0.1, 0.0, 0.2, 0.1])]
    block = recs[1]["metric_details"]["attack_accuracy"]
    del block["per_identity_acc@1"]["2"]  # written before missing identities were listed
    block["identities_without_images"] = 1
    lb = build(recs)
    cell = lb.cell("strong", "gmi/attack_acc@1")
    low, high, nu = crossed_interval(np.array([[0.1, 0.0, 0.1, 0.0]]), 0.95, 2000)
    assert (cell["ci_low"], cell["ci_high"]) == (max(low, 0.0), high) and nu == 3.0
    assert cell["ci_method"] == ("bootstrap over the identities of one trained model, t (ν = 3.0), n = 4 identities; "
                                 "seed-to-seed variation not included")
    # the identity of unknown id cannot be paired: 3 pairs (exact)
    assert "exact; 3 pairs, 3 non-zero" in cell["test_identity"]
    assert cell["p_identity"] == pytest.approx(scipy_paired_p([0.1, 0.0, 0.1], [0.9, 0.8, 1.0]))
    assert cell["test"].startswith("not testable with 1 seed; 4 needed")


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
    assert ece["n"] == 2 and ece["mean"] == pytest.approx(0.155) and ece["ci_method"].startswith("no interval: too few")
    main = md_tables(lb.to_markdown())[0]
    headers = list(main[0])
    assert headers[1:4] == ["Test acc. (%) ↑", "Target: ece ↓", "Worst case: attack_acc@1 (%) ↓"]
    assert "GMI [white-box]: evaluator_agreement (%) ↑" in headers  # a share of images: in percent
    assert md_row(main, "No defense")["GMI [white-box]: evaluator_agreement (%) ↑"] == "87.3 ± 0.0"
    tex = lb.to_latex()
    assert r"\multicolumn{2}{c}{Target}" in tex and r"\cmidrule(lr){2-3}" in tex and r"ece $\downarrow$" in tex


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


def test_seed_without_per_identity_values() -> None:
    """A seed whose record lacks per-identity values: no crossed interval (t over seeds, too few here); the
    identity-level test uses the other seed."""
    recs = identity_records()
    (old,) = [r for r in recs if r["defense"] == "strong" and r["seed"] == 1]
    del old["metric_details"]
    lb = build(recs)
    cell = lb.cell("strong", "gmi/attack_acc@1")
    assert cell["ci_method"] == "no interval: too few seeds (2; 3 needed)" and cell["n_identities"] == 0
    assert "exact; 4 pairs, 4 non-zero" in cell["test_identity"]
    assert cell["p_identity"] == pytest.approx(2 / 16)  # 4 negative differences on seed 0
    assert not cell["significant"]
