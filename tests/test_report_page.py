"""The report page leads with the answer (leaderboard/headline.py, leaderboard/html.py): the privacy–utility
figure and the headline table first, the full table, costs, audit and figures next, provenance and setup
in a closed ``<details>`` block; in Chromium at 1,280 px the headline table of a quickstart-shaped run
needs no horizontal scroll."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from inversion_bench.leaderboard.build import build
from inversion_bench.leaderboard.cells import cell_rows
from inversion_bench.leaderboard.headline import (
    headline_columns,
    headline_metric,
    headline_table,
    nice_ticks,
    place_labels,
    tradeoff_points,
    tradeoff_svg,
)
from inversion_bench.leaderboard.html import render_html
from tests.browser import NEEDS_CHROMIUM, chromium, headless_chromium

DEFENSES = [("hard", "Hard labels", 0.97), ("ls", "LS α=0.1", 0.945), ("negls", "Negative LS α=-0.05", 0.965)]
ATTACKS = [("mi-face", "MI-Face"), ("ppa-select", "PPA (selection only)"), ("ppa", "PPA"), ("gmi", "GMI")]
IDENTITIES = 20


def quickstart_records(seeds=(0,)) -> list[dict]:
    """Records shaped like suites/quickstart.yaml's: 3 defenses x 4 white-box attacks, its metrics, 20 identities
    with per-identity attack accuracies and kNN distances."""
    rng = random.Random(7)
    out = []
    for di, (d, d_label, acc) in enumerate(DEFENSES):
        for ai, (a, a_label) in enumerate(ATTACKS):
            for seed in seeds:
                hits1 = {str(i): float(rng.random() < 0.3 + 0.15 * ai) for i in range(IDENTITIES)}
                hits5 = {i: max(v, float(rng.random() < 0.5)) for i, v in hits1.items()}
                knn = {str(i): rng.uniform(20, 80) for i in range(IDENTITIES)}
                metrics = {"test_accuracy": acc - 0.004 * seed, "attack_acc@1": sum(hits1.values()) / IDENTITIES,
                           "attack_acc@5": sum(hits5.values()) / IDENTITIES,
                           "knn_distance": sum(knn.values()) / IDENTITIES, "fid": rng.uniform(40, 70)}
                out.append({
                    "schema": 1, "suite": "quickstart", "suite_hash": "qs", "config_hash": f"{d}{a}{seed}",
                    "defense": d, "defense_label": d_label, "defense_index": di, "attack": a, "attack_label": a_label,
                    "attack_index": ai, "seed": seed, "baseline": "hard", "status": "ok", "error": None,
                    "access": "white-box", "queries": {"total": 8000, "per_identity": 400.0}, "num_classes": 20,
                    "metrics": metrics, "directions": {"test_accuracy": "higher", "attack_acc@1": "lower",
                                                       "attack_acc@5": "lower", "knn_distance": "higher",
                                                       "fid": "higher"},
                    "metric_scopes": {m: "target" if m == "test_accuracy" else "attack" for m in metrics},
                    "metric_details": {"attack_accuracy": {"per_identity_acc@1": hits1, "per_identity_acc@5": hits5},
                                       "knn_distance": {"per_identity": knn}},
                    "code_version": "abc123", "device": "cpu", "created": f"2026-12-07T0{seed}:00:00",
                })
    return out


def test_tradeoff_points_are_the_table_means_with_intervals_and_the_baseline_marked():
    lb = build(quickstart_records())
    cells = cell_rows(lb)
    points = {p.defense: p for p in tradeoff_points(lb)}
    assert set(points) == {"hard", "ls", "negls"}
    assert [p.defense for p in tradeoff_points(lb) if p.baseline] == ["hard"]
    for d, p in points.items():
        assert p.x == pytest.approx(cells[(d, "test_accuracy")]["mean"])
        assert p.y == pytest.approx(cells[(d, "worst_case")]["mean"])
        attack = lb.worst_case[d].attack  # one seed: the worst case's interval is its attack's
        cell = cells[(d, f"{attack}/attack_acc@1")]
        assert p.y_interval == pytest.approx((cell["ci_low"], cell["ci_high"]))
        assert p.x_interval is None  # one seed: no interval of the test accuracy
    five = {p.defense: p for p in tradeoff_points(build(quickstart_records(seeds=range(5))))}
    assert all(p.x_interval is not None and p.x_interval[0] < p.x < p.x_interval[1] for p in five.values())


def test_nice_ticks_and_label_placement():
    assert nice_ticks(93.2, 97.9) == [93, 94, 95, 96, 97, 98]  # steps of 1, 2 or 5 x 10^k, about 5 of them
    assert nice_ticks(0.0, 47.0) == [0, 10, 20, 30, 40, 50]
    assert nice_ticks(12.0, 12.0) == [11.4, 11.6, 11.8, 12.0, 12.2, 12.4, 12.6]  # one value: a range around it
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(float("nan"), 1.0)
    anchors = [(100.0, 100.0, 120.0), (104.0, 104.0, 120.0), (108.0, 96.0, 80.0)]  # three crowded points
    spots = place_labels(anchors, (0.0, 0.0, 400.0, 300.0))
    rects = [((x if a == "start" else x - w), y - 14, (x if a == "start" else x - w) + w, y)
             for (x, y, a), (_, _, w) in zip(spots, anchors, strict=True)]
    assert all(0 <= r[0] and r[2] <= 400 and 0 <= r[1] and r[3] <= 300 for r in rects)
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
               for i, a in enumerate(rects) for b in rects[i + 1:])  # no two labels overlap


def test_headline_table_shows_test_accuracy_worst_case_and_one_metric_per_attack():
    lb = build(quickstart_records())
    assert headline_metric(lb) == "attack_acc@1" and headline_metric(lb, "knn_distance") == "knn_distance"
    assert headline_metric(lb, "no_such_metric") == "attack_acc@1"  # the worst case's metric
    cols = headline_columns(lb, "attack_acc@1")
    assert [c.key for c in cols] == ["test_accuracy", "worst_case", *(f"{a}/attack_acc@1" for a, _ in ATTACKS)]
    table = headline_table(lb)
    assert re.findall(r"<th[^>]*>([^<]+)", table)[:3] == ["Defense", "Test acc. (%) ↑", "Worst case (%) ↓"]
    assert all(f">{label}<span" in table for _, label in ATTACKS)
    cells = cell_rows(lb)
    rows = dict(re.findall(r'<tr[^>]*data-row="([^"]+)">(.*?)</tr>', table))
    for d, _, _ in DEFENSES:
        for c in cols:
            value = re.search(rf'data-col="{re.escape(c.key)}" data-mean="([^"]*)">([^<]+)', rows[d])
            assert float(value.group(1)) == pytest.approx(cells[(d, c.key)]["mean"])
            assert value.group(2) == f"{100 * cells[(d, c.key)]['mean']:.1f}"
    assert "Δ" in rows["ls"] and "Δ" not in rows["hard"]  # differences to the baseline, not on its own row
    assert "near chance" not in table
    weak = quickstart_records()
    for r in weak:
        if r["defense"] == "ls":
            r["metrics"]["test_accuracy"] = 0.08  # 20 classes: at most twice the chance level of 5 %
    assert headline_table(build(weak)).count("near chance") == 1


def test_the_page_leads_with_the_answer_and_folds_provenance():
    lb = build(quickstart_records())
    page = render_html(lb, extra=['<h2 id="cost">Cost</h2>'])
    order = [page.index(x) for x in ('<svg id="tradeoff"', 'id="headline"', 'id="leaderboard"', 'id="cost"',
                                      'id="audit"' if 'id="audit"' in page else 'id="cost"', "<h2>Failures</h2>",
                                      '<details id="provenance">')]
    assert order == sorted(order)
    details = page[page.index('<details id="provenance">'):page.index("</details>")]
    assert "<dt>suite hash</dt>" in details and "<dt>code version</dt>" in details
    assert page.count("<dt>suite hash</dt>") == 1  # only inside the collapsed block
    assert tradeoff_svg(lb).count('class="point') == 3 and tradeoff_svg(lb).count('class="point baseline"') == 1


@pytest.mark.skipif(chromium() is None, reason=NEEDS_CHROMIUM)
@pytest.mark.parametrize("seeds", [(0,), tuple(range(5))])
def test_headline_fits_a_1280_px_screen_in_chromium(tmp_path: Path, seeds) -> None:
    page = tmp_path / "index.html"
    page.write_text(render_html(build(quickstart_records(seeds))), encoding="utf-8")
    with headless_chromium(1280, 900) as driver:
        driver.get(page.resolve().as_uri())
        scroll, client = driver.execute_script(
            "const e=document.querySelector('#headline-scroll'); return [e.scrollWidth, e.clientWidth];")
        assert 0 < scroll <= client, f"the headline table scrolls sideways: {scroll} > {client} px"
        tops = driver.execute_script(
            "return ['#tradeoff', '#headline', '#leaderboard'].map(s => document.querySelector(s)"
            ".getBoundingClientRect().top);")
        assert tops == sorted(tops) and tops[0] < 900  # the figure is on the first screen, then the tables
        assert not driver.execute_script("return document.querySelector('#provenance').open;")
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
