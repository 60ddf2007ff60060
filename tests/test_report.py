"""`bench report`: every output format agrees with the records, figures exist, combining is guarded,
and the HTML page sorts in a real (headless Chromium) browser."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from inversion_bench.cli import main
from inversion_bench.leaderboard.figures import best_per_identity, mean_series
from inversion_bench.leaderboard.report import ReportError, build_report, check_combinable, first_difference
from inversion_bench.results import load_records
from tests.browser import NEEDS_CHROMIUM, chromium, headless_chromium
from tests.conftest import run_tiny, tiny_suite

FIGURES = ("privacy_utility", "qualitative", "embedding", "gradient_stability")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run: 3 defenses x 1 attack x 2 seeds (report written by `bench run`)."""
    tmp = tmp_path_factory.mktemp("report")
    data = tiny_suite(seeds=[0, 1])
    data["defenses"].append({"id": "ls", "name": "label_smoothing", "params": {"alpha": 0.1}, "label": "LS 0.1"})
    data["target"]["training"] = {"epochs": 8, "batch_size": 16, "lr": 0.003}  # distinct, non-trivial models
    return run_tiny(data, tmp)


def expected_cells(records: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """(defense, column) -> (mean, sample std) computed directly from the records with numpy."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r["status"] != "ok":
            continue
        for m, v in r["metrics"].items():
            if m == "test_accuracy":
                key = (r["defense"], "test_accuracy")
                if r["attack_index"] != 0:
                    continue
            else:
                key = (r["defense"], f"{r['attack']}/{m}")
            out.setdefault(key, []).append(float(v))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan) for k, v in out.items()}


class CellParser(HTMLParser):
    """Collects the leaderboard table's rows: defense id and each cell's data-key -> data-value
    (and the per-seed tooltips in ``titles``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, dict[str, str]]] = []
        self.titles: dict[tuple[str, str], str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-defense" in a:
            self.rows.append((a["data-defense"], {}))
        elif tag == "td" and self.rows and "data-value" in a:
            self.rows[-1][1][a["data-key"]] = a["data-value"]
            self.titles[(self.rows[-1][0], a["data-key"])] = a.get("title", "")


def test_report_files_after_run(run_dir: Path) -> None:
    out = run_dir / "leaderboard"
    for name in ("index.html", "leaderboard.md", "leaderboard.csv", "leaderboard.tex"):
        assert (out / name).is_file(), name
    for fig in FIGURES:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
    for name in ("privacy_utility", "embedding", "gradient_stability"):
        assert not pd.read_csv(out / "figures" / f"{name}.csv").empty, name
    page = (out / "index.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # no network
    assert page.count("data:image/png;base64,") == len(FIGURES)
    for field in ("suite hash", "code version", "device", "created", "seeds"):
        assert f"<dt>{field}</dt>" in page


def test_every_format_agrees_with_records(run_dir: Path) -> None:
    records = load_records(run_dir / "records")
    expected = expected_cells(records)
    out = run_dir / "leaderboard"

    csv = pd.read_csv(out / "leaderboard.csv").set_index("defense")
    for (d, col), (mean, std) in expected.items():
        assert csv.loc[d, f"{col}_mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
        if not math.isnan(std):
            assert csv.loc[d, f"{col}_std"] == pytest.approx(std, rel=1e-9, abs=1e-12)

    parser = CellParser()
    parser.feed((out / "index.html").read_text())
    html_cells = {(d, k): float(v) for d, cells in parser.rows for k, v in cells.items() if v}
    assert {d for d, _ in parser.rows} == {r["defense"] for r in records}
    for key, (mean, _) in expected.items():
        assert html_cells[key] == pytest.approx(mean, rel=1e-12, abs=1e-12), key
    for r in records:  # each seed's own number is in the cell's tooltip (accuracies in %)
        v = r["metrics"]["attack_acc@1"]
        assert f"seed {r['seed']}: {100 * v:.1f}" in parser.titles[(r["defense"], "mif/attack_acc@1")]
        # one attack: the worst case of each seed is its number, reached by MI-Face
        assert f"seed {r['seed']}: {100 * v:.1f} by " in parser.titles[(r["defense"], "worst_case")]
    for d in {r["defense"] for r in records}:
        assert html_cells[(d, "worst_case")] == pytest.approx(expected[(d, "mif/attack_acc@1")][0], rel=1e-12)
        assert csv.loc[d, "worst_case_mean"] == pytest.approx(expected[(d, "mif/attack_acc@1")][0], rel=1e-12)
    # the page starts sorted by the worst case, lowest first
    order = [d for d, _ in parser.rows]
    assert order == sorted(order, key=lambda d: html_cells[(d, "worst_case")])

    long = pd.read_csv(out / "records.csv")
    assert set(long["access"]) == {"white-box"} and {"queries_total", "queries_per_identity"} <= set(long.columns)
    for (d, col), (mean, _) in expected.items():
        metric = col.split("/")[-1]
        sel = long[(long["defense"] == d) & (long["metric"] == metric)]
        if col != "test_accuracy":
            sel = sel[sel["attack"] == col.split("/")[0]]
        else:
            sel = sel.drop_duplicates("seed")
        assert sel["value"].mean() == pytest.approx(mean, rel=1e-12, abs=1e-12), (d, col)

    md = (out / "leaderboard.md").read_text()
    tex = (out / "leaderboard.tex").read_text()
    for (d, col), (mean, std) in expected.items():
        acc = col == "test_accuracy" or "attack_acc" in col
        if acc:  # accuracies in % with one decimal, the same text in Markdown, LaTeX and HTML
            text = f"{100 * mean:.1f} ± {100 * std:.1f}"
            assert text in md, (d, col, text)
            assert text.replace(" ± ", r" $\pm$ ") in tex, (d, col)


def _copy_with_evaluator(run_dir: Path, dest: Path, evaluator_key: str) -> Path:
    """A copy of a run folder's records and suite whose records name another evaluation model."""
    (dest / "records").mkdir(parents=True)
    shutil.copy(run_dir / "suite.json", dest / "suite.json")
    for p in (run_dir / "records").glob("*.json"):
        rec = json.loads(p.read_text())
        rec["keys"]["evaluator"] = evaluator_key
        (dest / "records" / p.name).write_text(json.dumps(rec))
    return dest


def test_same_settings_but_another_evaluation_model_is_refused(run_dir: Path, tmp_path: Path) -> None:
    other = _copy_with_evaluator(run_dir, tmp_path / "other", "0123456789abcdef")
    with pytest.raises(ReportError, match="same evaluation settings gave different evaluation models"):
        check_combinable([run_dir, other])


def test_combining_different_evaluation_models_is_refused(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = _copy_with_evaluator(run_dir, tmp_path / "other", "0123456789abcdef")
    suite = json.loads((run_dir / "suite.json").read_text())
    suite["suite"]["evaluation"]["architecture"]["params"]["width"] = 32
    (other / "suite.json").write_text(json.dumps(suite))
    with pytest.raises(ReportError, match=r"evaluation\.architecture\.params\.width differs \(8 vs 32\)"):
        check_combinable([run_dir, other])
    assert main(["report", str(run_dir), str(other), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "evaluation.architecture.params.width differs" in err and str(other) in err
    assert not (tmp_path / "out").exists()


def test_combining_same_setup_merges_rows(run_dir: Path, tmp_path: Path) -> None:
    """A second run folder with the same dataset/evaluation but another defense adds a row."""
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("store", "leaderboard"))
    for p in (other / "records").glob("*.json"):
        rec = json.loads(p.read_text())
        if rec["defense"] != "ls":
            p.unlink()
            continue
        rec.update(defense="ls2", defense_label="LS copy", defense_index=3)
        p.unlink()
        (other / "records" / p.name.replace("ls__", "ls2__")).write_text(json.dumps(rec))
    rep = build_report([run_dir, other], tmp_path / "combined", figures=False)
    assert [i.defense for i in rep.board.defenses] == ["hard", "negls", "ls", "ls2"]
    assert (tmp_path / "combined" / "index.html").is_file()


def test_first_difference() -> None:
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == ("a.b[1]", 2, 3)
    assert first_difference({"a": 1}, {"a": 1}) is None
    assert first_difference({"a": 1}, {"b": 1})[0] == "a"


def test_best_per_identity_and_mean_series() -> None:
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert best_per_identity(scores, labels, [1, 0, 2]) == [3, 1, None]
    got = mean_series([[None, 0.5, 1.0], [None, 0.7]])
    assert math.isnan(got[0]) and got[1] == pytest.approx(0.6) and got[2] == pytest.approx(1.0)


def test_missing_store_leaves_figures_out_with_reason(run_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("store", "leaderboard"))
    rep = build_report([bare])
    names = [f["name"] for f in rep.figures]
    assert names == ["privacy_utility"]  # drawn from the records alone
    assert any("qualitative" in n and "not in" in n for n in rep.notes)
    assert "figure embedding not drawn" in (bare / "leaderboard" / "index.html").read_text()


def test_figures_use_the_seeds_the_last_run_planned(run_dir: Path, tmp_path: Path) -> None:
    """`bench run --seeds 1` into a folder that holds seeds 0 and 1 writes suite.json with seed 1 only: the
    embedding is drawn from seed 1's targets, and a seed-0 target is refused with the reason, not as a key
    change."""
    from inversion_bench.leaderboard.runs import RunView

    folder = tmp_path / "resumed"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("leaderboard"))
    suite_json = folder / "suite.json"
    data = json.loads(suite_json.read_text())
    data["suite"]["seeds"] = [1]
    suite_json.write_text(json.dumps(data))
    rep = build_report([folder])
    assert "embedding" in [f["name"] for f in rep.figures], rep.notes
    panels = pd.read_csv(folder / "leaderboard" / "figures" / "embedding.csv")["defense"].unique()
    assert len(panels) == 3 and all(p.endswith("(seed 1)") for p in panels)
    view = RunView(folder)
    seed0 = next(r for r in load_records(folder / "records") if r["seed"] == 0 and r["status"] == "ok")
    assert not view.has_target(seed0)
    with pytest.raises(ReportError, match=r"planned seeds \[1\] only"):
        view.target(seed0)


@pytest.mark.skipif(chromium() is None, reason=NEEDS_CHROMIUM)
def test_html_sorts_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    By = pytest.importorskip("selenium.webdriver.common.by").By  # noqa: N806 (selenium's class)

    with headless_chromium(1400, 1000) as driver:
        driver.get((run_dir / "leaderboard" / "index.html").resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
        records = load_records(run_dir / "records")
        assert len(rows) == len({r["defense"] for r in records}) == 3

        key = "mif/knn_distance"
        header = driver.find_element(By.CSS_SELECTOR, f'#leaderboard th[data-key="{key}"]')

        def column() -> list[float]:
            cells = driver.find_elements(By.CSS_SELECTOR, f'#leaderboard tbody td[data-key="{key}"]')
            return [float(c.get_attribute("data-value")) for c in cells]

        def defenses() -> list[str]:
            return [r.get_attribute("data-defense") for r in
                    driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")]

        assert len(set(column())) == 3  # distinct values: the order is determined
        worst = [float(c.get_attribute("data-value")) for c in
                 driver.find_elements(By.CSS_SELECTOR, '#leaderboard tbody td[data-key="worst_case"]')]
        assert worst == sorted(worst)  # the initial order: by worst case, lowest first
        before = defenses()
        header.click()
        assert column() == sorted(column(), reverse=True)
        first = defenses()
        header.click()
        assert column() == sorted(column())
        assert defenses() == list(reversed(first))
        assert sorted(before) == sorted(first)
        driver.find_element(By.CSS_SELECTOR, '#leaderboard th[data-key="name"]').click()
        names = [r.get_attribute("data-name") for r in driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")]
        assert names == sorted(names, key=str.casefold)
        shot = tmp_path / "leaderboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        shutil.copy(shot, run_dir / "leaderboard" / "screenshot.png")


def test_leaderboard_keeps_the_figures(run_dir: Path, tmp_path: Path, capsys) -> None:
    """`bench leaderboard` into a folder `bench report` drew figures into still embeds them."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("store"))
    page = copy / "leaderboard" / "index.html"
    assert "data:image/png;base64" in page.read_text()
    assert (copy / "leaderboard" / "figures" / "figures.json").is_file()
    assert main(["leaderboard", str(copy)]) == 0
    assert "data:image/png;base64" in page.read_text()
    # a folder with figures but no list of them (older version): index.html is kept, the new page elsewhere
    (copy / "leaderboard" / "figures" / "figures.json").unlink()
    before = page.read_text()
    assert main(["leaderboard", str(copy)]) == 0
    assert page.read_text() == before and (copy / "leaderboard" / "index-tables.html").is_file()
    assert "index-tables.html" in capsys.readouterr().err


def test_mistyped_grid_attack_lists_the_attacks(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(run_dir), "--no-figures", "--output", str(tmp_path / "o"), "--grid-attack", "mfi"]) == 2
    err = capsys.readouterr().err
    assert "mfi" in err and "mif" in err


def _seeded_copy(run_dir: Path, dest: Path, seeds: int, settings: dict | None = None) -> Path:
    """A copy of the 2-seed run (records and suite.json) grown to ``seeds`` seeds by copying each record of seed
    ``s % 2`` to seed ``s``, with LS's attack accuracy set to 0 on every seed (a clear effect); ``settings``
    replaces every record's report_settings."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("store", "leaderboard", "mlflow*", "mlartifacts"))
    for p in sorted((dest / "records").glob("*.json")):
        rec = json.loads(p.read_text())
        if rec["defense"] == "ls":
            rec["metrics"]["attack_acc@1"] = 0.0
            per = rec["per_identity"]["attack_acc@1"]["values"]
            rec["per_identity"]["attack_acc@1"]["values"] = dict.fromkeys(per, 0.0)
        if settings is not None:
            rec["report_settings"] = settings
        p.write_text(json.dumps(rec))
        for s in range(2, seeds):
            if rec["seed"] == s % 2:
                (dest / "records" / p.name.replace(f"seed{rec['seed']}", f"seed{s}")).write_text(
                    json.dumps({**rec, "seed": s}))
    return dest


def test_report_marks_only_with_enough_seeds_adjusted_as_configured(run_dir: Path, tmp_path: Path) -> None:
    """`bench report` on 2 seeds: no mark, and every format says the Δs are not testable and how many seeds
    they need; with enough seeds the marks come back, adjusted with the records' report.correction."""
    from inversion_bench.leaderboard.significance import adjust

    out = tmp_path / "two"
    assert main(["report", str(run_dir), "--no-figures", "--output", str(out)]) == 0
    note = "Δ marks: not testable with 2 seeds per defense; 4 needed at 0.05."
    md = (out / "leaderboard.md").read_text()
    assert note in md and note in (out / "index.html").read_text() and "4 needed at 0.05" in (
        out / "leaderboard.tex").read_text()
    rows = [line for line in md[md.index("## Δ vs"):md.index("## Legend")].splitlines() if line.startswith("| ")]
    assert rows and not any(cell.strip().endswith("*") for line in rows for cell in line.split("|"))
    # Holm must reach 0.05 / 10 (2 defenses x 5 columns): 7 seeds per defense (smallest p 2 / 3432)
    for correction, seeds in (("bh", 5), ("holm", 7)):
        settings = {"significance": 0.05, "confidence": 0.95, "bootstrap": 2000, "intervals": False,
                    "correction": correction, "seed_test": "two-sample"}
        grown = _seeded_copy(run_dir, tmp_path / f"seeds-{correction}", seeds, settings)
        out = tmp_path / f"seeds-{correction}-report"
        assert main(["report", str(grown), "--no-figures", "--output", str(out)]) == 0
        df = pd.read_csv(out / "leaderboard.csv").set_index("defense")
        key = "mif/attack_acc@1"
        assert bool(df.loc["ls", f"{key}_testable"]) and df.loc["ls", f"{key}_p_value"] < 0.01
        testable = [(d, c) for d in df.index for c in df.columns
                    if c.endswith("_testable") and str(df.loc[d, c]) == "True"]
        p = [float(df.loc[d, c.replace("_testable", "_p_value")]) for d, c in testable]
        adjusted = [float(df.loc[d, c.replace("_testable", "_p_adjusted")]) for d, c in testable]
        assert adjusted == pytest.approx(list(adjust(p, correction)))
        md = (out / "leaderboard.md").read_text()
        name = {"bh": "Benjamini–Hochberg (false discovery rate)", "holm": "Holm (family-wise error rate)"}[correction]
        assert f"{name} adjusted p-values" in md and "Δ marks" not in md
        significant = bool(df.loc["ls", f"{key}_significant"])
        assert significant == (float(df.loc["ls", f"{key}_p_adjusted"]) < 0.05)
        row = next(line for line in md[md.index("## Δ vs"):].splitlines() if line.startswith("| LS 0.1"))
        assert row.count("*") >= int(significant)


def test_the_embedding_comes_from_the_tsne_cache_and_figures_can_be_skipped(run_dir: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    from inversion_bench.leaderboard import figures

    assert len(list((run_dir / "cache" / "tsne").glob("*.npy"))) == 3  # one per defense, by `bench run`'s report

    def no_tsne(*args, **kwargs):
        raise AssertionError("t-SNE recomputed although its inputs are cached")

    monkeypatch.setattr(figures, "tsne_2d", no_tsne)
    report = build_report([run_dir], tmp_path / "again")
    assert "embedding" in [f["name"] for f in report.figures] and not report.notes
    assert (tmp_path / "again" / "figures" / "embedding.csv").read_bytes() == (
        run_dir / "leaderboard" / "figures" / "embedding.csv").read_bytes()
    skipped = build_report([run_dir], tmp_path / "skip", skip_figures=["tsne", "qualitative"])
    assert [f["name"] for f in skipped.figures] == ["privacy_utility", "gradient_stability"]
