"""Published numbers (``bench report --published``): every shipped number is cited, a row without a citation
is refused naming the row, the reference rows appear beside the run's rows in Markdown and HTML with the
setup differences, never in the statistics, and an unknown protocol exits 2 with the known ones."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from inversion_bench.cli import main
from inversion_bench.leaderboard import build
from inversion_bench.leaderboard.published import (
    PublishedError,
    PublishedFile,
    known_protocols,
    load_published,
    parse_published,
    uncited_numbers,
)
from inversion_bench.leaderboard.published_render import published_section, run_setup, setup_differences
from tests.test_leaderboard import TEST_ACC, md_tables, synthetic_records

DATA = Path(__file__).resolve().parents[1] / "leaderboard" / "published"
SETUP = {"dataset": {"name": "synthetic-faces", "params": {}, "resolution": 16, "split": {}},
         "sizes": {"private_identities": 10},
         "target": {"architecture": "small-cnn", "params": {}},
         "evaluation": {"architecture": "small-resnet", "params": {}}}
PLUGINS = {"none": ("label-smoothing", {"alpha": 0.0}), "mid_reg": ("mid", {"beta": 0.003}),
           "broken": ("bido", {"lambda_x": 0.1, "lambda_y": 1.0})}


def _records() -> list[dict]:
    records = copy.deepcopy(synthetic_records())
    for r in records:
        r["setup"] = SETUP
        r["attack_plugin"], r["attack_params"] = {"gmi": "gmi", "plg_mi": "plg-mi"}[r["attack"]], {}
        r["defense_plugin"], r["defense_params"] = PLUGINS[r["defense"]]
    return records


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder with the synthetic leaderboard records (3 defenses x 2 attacks x 3 seeds)."""
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    for i, r in enumerate(_records()):
        (run / "records" / f"r{i:02d}.json").write_text(json.dumps(r))
    return run


# ------------------------------------------------------------------------------- the shipped files
def test_every_shipped_number_carries_a_citation_that_contains_it() -> None:
    assert "celeba64" in known_protocols()
    for protocol in known_protocols():
        raw = yaml.safe_load((DATA / f"{protocol}.yaml").read_text())
        assert raw["rows"], protocol
        for row in raw["rows"]:  # the raw file, independently of the model's validation
            assert row.get("citation", {}).get("quote"), (protocol, row.get("id"))
            assert all(v is not None for v in row["metrics"].values()), (protocol, row["id"])
        pub = load_published(protocol)
        assert pub.protocol == protocol
        for row in pub.rows:
            cite = row.citation
            assert (cite.repository and cite.commit and cite.file and cite.line) or (
                cite.paper and cite.table and cite.page), (protocol, row.id)
            assert uncited_numbers(row) == [], (protocol, row.id, cite.quote)


def test_shipped_rows_name_this_packages_plugins_and_architectures() -> None:
    from inversion_bench.registry import REGISTRIES, load_plugins

    load_plugins()
    for protocol in known_protocols():
        pub = load_published(protocol)
        assert pub.setup.evaluation is None or pub.setup.evaluation in REGISTRIES["architectures"].names()
        for row in pub.rows:
            assert row.defense in REGISTRIES["defenses"].names(), (protocol, row.id)
            fields = REGISTRIES["defenses"].get(row.defense).Params.model_fields
            assert set(row.defense_params) <= set(fields), (protocol, row.id, sorted(fields))
            assert row.attack is None or row.attack in REGISTRIES["attacks"].names(), (protocol, row.id)
            assert row.target in REGISTRIES["architectures"].names(), (protocol, row.id)


def test_a_row_without_a_citation_is_a_load_error_naming_the_row() -> None:
    data = yaml.safe_load((DATA / "celeba64.yaml").read_text())
    del data["rows"][2]["citation"]
    with pytest.raises(PublishedError) as err:
        parse_published(data, "published/celeba64.yaml")
    assert str(err.value) == f"published/celeba64.yaml: row 2 (id {data['rows'][2]['id']!r}), citation: Field required"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("line"), "a citation names a paper with its table and page (paper, table, page) or a "
                              "repository with commit, file and line"),
    (lambda c: c.update(quote=""), "citation.quote: String should have at least 1 character"),
    (lambda c: c.update(commit="main"), "citation.commit: String should match pattern"),
])
def test_an_incomplete_citation_is_refused(change, message) -> None:
    data = yaml.safe_load((DATA / "celeba64.yaml").read_text())
    change(data["rows"][0]["citation"])
    with pytest.raises(PublishedError, match="row 0 \\(id 'kedmi-vgg16'\\)") as err:
        parse_published(data, "x.yaml")
    assert message in str(err.value)


def test_a_number_missing_from_its_quote_is_found() -> None:
    pub = load_published("celeba64")
    row = pub.rows[0].model_copy(update={"metrics": {"test_accuracy": 88.27}})
    assert uncited_numbers(row) == ["test_accuracy"]
    assert uncited_numbers(pub.rows[0]) == []


def test_unknown_metric_and_attackless_attack_metric_are_refused() -> None:
    data = yaml.safe_load((DATA / "celeba64.yaml").read_text())
    data["rows"][0]["metrics"] = {"attack_acc@1": 50.0}
    with pytest.raises(PublishedError, match="a row without an attack reports only test_accuracy"):
        parse_published(data, "x.yaml")
    data["rows"][0]["metrics"] = {"top1": 50.0}
    with pytest.raises(PublishedError, match=r"unknown metric\(s\) \['top1'\]"):
        parse_published(data, "x.yaml")


# ------------------------------------------------------------------------------- the report
class PublishedRows(HTMLParser):
    """The page's published rows (id -> citation tooltip) and its leaderboard rows (``data-defense``)."""

    def __init__(self) -> None:
        super().__init__()
        self.published: dict[str, str] = {}
        self.defense_rows: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "published":
            self.published[a["data-published"]] = a.get("title", "")
        elif tag == "tr" and "data-defense" in a:
            self.defense_rows.append(a["data-defense"])


def test_report_shows_published_rows_beside_the_run_with_setup_differences(run_dir, tmp_path, capsys) -> None:
    plain = tmp_path / "plain"
    assert main(["report", str(run_dir), "--no-figures", "--output", str(plain)]) == 0
    assert main(["report", str(run_dir), "--no-figures", "--published", "celeba64"]) == 0
    out = run_dir / "leaderboard"
    assert "## Published numbers: celeba64" in capsys.readouterr().out
    md = (out / "leaderboard.md").read_text()
    pub = load_published("celeba64")
    table = next(t for t in md_tables(md) if t and "Setup differences" in t[0])
    ours = [r for r in table if r["Row"] == "this run (3 seeds)"]
    assert [r["Defense"] for r in ours] == ["No defense", "MID reg", "Broken_100%"]
    for r, defense in zip(ours, ("none", "mid_reg", "broken"), strict=True):
        assert r["test_accuracy"] == f"{100 * sum(TEST_ACC[defense]) / 3:.2f}"
    published = [r for r in table if r["Row"].startswith("published [")]
    assert [r["Defense"] for r in published] == [row.label for row in pub.rows]
    first = published[0]
    assert first["test_accuracy"] == "88.26" and first["Target"] == "vgg16-64"
    for phrase in ("published: 1 seed; this run: 3", "target architecture differs: published vgg16-64; this run "
                   "small-cnn", "resolution differs: published 64; this run 16", "number of identities differs: "
                   "published 1000; this run 10", "dataset differs: published celeba-split (kedmi-celeba); this run "
                   "synthetic-faces"):
        assert phrase in first["Setup differences"], phrase
    by_label = {r["Defense"]: r["Setup differences"] for r in published}
    assert "defense settings" not in by_label["MID β=0.003 (Defend_MI)"]  # the run's mid_reg has beta 0.003
    assert "defense settings differ: published beta=0.01; this run mid_reg: beta=0.003" in by_label[
        "MID β=0.01 (Defend_MI)"]
    assert "[1] SCccc21/Knowledge-Enriched-DMI @ 1ec92f4, k+1_gan.py line 82:" in md
    # the statistics are the run's alone: the leaderboard table and CSV are those of a report without the flag
    assert (out / "leaderboard.csv").read_text() == (plain / "leaderboard.csv").read_text()
    assert md.startswith((plain / "leaderboard.md").read_text())
    page = PublishedRows()
    page.feed((out / "index.html").read_text())
    assert list(page.published) == [row.id for row in pub.rows]
    assert page.published["kedmi-vgg16"].startswith("SCccc21/Knowledge-Enriched-DMI @ 1ec92f4, k+1_gan.py line 82")
    assert sorted(page.defense_rows) == ["broken", "mid_reg", "none"]
    html = (out / "index.html").read_text()
    assert "<li>published: 1 seed; this run: 3</li>" in html
    assert 'href="https://github.com/SCccc21/Knowledge-Enriched-DMI/blob/1ec92f4697233028c74ad90fee75c69691948917/' \
           'k+1_gan.py#L82"' in html


def test_leaderboard_takes_the_flag_too(run_dir, tmp_path) -> None:
    out = tmp_path / "lb"
    assert main(["leaderboard", str(run_dir), "--output", str(out), "--published", "celeba64"]) == 0
    assert "## Published numbers: celeba64" in (out / "leaderboard.md").read_text()
    assert 'class="published"' in (out / "index.html").read_text()


@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_unknown_protocol_exits_2_naming_the_known_ones(run_dir, tmp_path, capsys, command) -> None:
    out = tmp_path / "never"
    assert main([command, str(run_dir), "--output", str(out), "--published", "celeba65"]) == 2
    err = capsys.readouterr().err
    assert "--published 'celeba65': no published numbers for this protocol; known protocols: " \
           + ", ".join(known_protocols()) in err
    assert not out.exists()  # refused before any work


# ------------------------------------------------------------------------------- attack rows, left out
def _with_attack_rows() -> PublishedFile:
    """The shipped file plus two attack rows (test-only: GMI, which the run has, and KED-MI, which it has not)."""
    data = yaml.safe_load((DATA / "celeba64.yaml").read_text())
    cite = {"paper": "A test paper", "table": "1", "page": 3, "quote": "41.5 | 70.25 | 1300.5"}
    base = {"defense": "label-smoothing", "defense_params": {"alpha": 0.0}, "target": "vgg16-64", "seeds": 5,
            "citation": cite}
    data["rows"] = [
        {**base, "id": "gmi-row", "label": "GMI test row", "attack": "gmi",
         "metrics": {"attack_acc@1": 41.5, "attack_acc@5": 70.25, "fid": 1300.5}},
        {**base, "id": "kedmi-row", "label": "KED-MI test row", "attack": "ked-mi", "metrics": {"attack_acc@1": 41.5}},
    ]
    return parse_published(data, "test")


def test_attack_rows_fill_the_matching_attack_columns_and_the_rest_is_listed() -> None:
    records = _records()
    for r in records:
        r["metrics"].pop("fid", None)  # a run without FID: the row's FID is left out, with a sentence
        r["directions"].pop("fid", None)
        r["evaluator"] = {"test_accuracy": 0.97}
    board = build(records)
    section = published_section(_with_attack_rows(), board, records)
    assert section.shown == ["gmi-row"]
    assert "kedmi-row (KED-MI test row): its attack_acc@1 under ked-mi is not in this run's table" in section.left_out
    assert "gmi-row: fid (not in this run's table)" in section.left_out
    table = next(t for t in md_tables(section.markdown) if t and "Setup differences" in t[0])
    row = next(r for r in table if r["Row"] == "published [1]")
    assert row["GMI attack_acc@1"] == "41.50" and row["GMI attack_acc@5"] == "70.25"
    assert "PLG-MI attack_acc@1" not in row  # no published number for PLG-MI: no column
    assert "published: 5 seeds; this run: 3" in row["Setup differences"]
    assert "evaluation model differs: published facenet112; this run small-resnet" in row["Setup differences"]
    assert "evaluation model test accuracy: published 95.88 %; this run 97.00 %" in row["Setup differences"]
    mine = next(r for r in table if r["Defense"] == "No defense" and r["Row"].startswith("this run"))
    gmi = [r["metrics"]["attack_acc@1"] for r in records if r["defense"] == "none" and r["attack"] == "gmi"
           and r["status"] == "ok"]
    assert mine["GMI attack_acc@1"] == f"{100 * sum(gmi) / len(gmi):.2f}"
    assert re.search(r"Left out \(2\): ", section.markdown)


def test_setup_differences_say_what_is_not_stated() -> None:
    pub = _with_attack_rows()
    records = _records()
    run = run_setup(build(records), records)
    row = pub.rows[0].model_copy(update={"seeds": None, "target": "small-cnn"})
    diffs = setup_differences(row, pub, run)
    assert diffs[0] == "published: seeds not stated; this run: 3"
    assert not any(d.startswith("target architecture") for d in diffs)
    other = pub.rows[0].model_copy(update={"defense": "trap-mid", "defense_params": {"alpha": 0.02}})
    assert setup_differences(other, pub, run)[-1] == "defense trap-mid (alpha=0.02) is not in this run"
