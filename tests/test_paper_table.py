"""The paper table: ``report.table`` selects the columns of ``leaderboard.tex`` and ``leaderboard.md``
(names checked against the suite, kept in every record), attack columns are grouped by access level, and
the LaTeX caption is short, free of local paths and sets ``--set`` verbatim."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from inversion_bench.cli import main
from inversion_bench.leaderboard import build
from inversion_bench.leaderboard.uncertainty import report_settings
from tests.conftest import tiny_suite
from tests.latex_build import compile_table
from tests.test_leaderboard import md_tables, synthetic_records

TABLE = {"metrics": ["attack_acc@1", "knn_distance"], "attacks": ["plg_mi"], "caption": "short"}
SETUP = {
    "dataset": {"name": "synthetic-faces", "params": {}, "resolution": 16, "split": {}},
    "target": {"architecture": "small-cnn", "params": {"width": 8}, "epochs": 2, "checkpoint": None},
    "evaluation": {"architecture": "small-resnet", "params": {}, "epochs": 3, "checkpoint": None},
    "overrides": ["run.store=/home/alice/secret/store", "run.device=cpu", "attacks.gmi.params.steps=3"],
}


def _records(table: dict | None = None, **extra) -> list[dict]:
    records = copy.deepcopy(synthetic_records())
    for r in records:
        r["setup"] = SETUP
        r["attack_plugin"], r["attack_params"] = r["attack"], {"steps": 3, "lr": 0.1}
        if table is not None:
            r["report_settings"] = {"significance": 0.05, "table": table}
        r.update(extra)
    return records


# ------------------------------------------------------------------------------- suite validation
@pytest.mark.parametrize("table, message", [
    ({"metrics": ["attack_acc1"]},
     "report.table.metrics[0]: 'attack_acc1' is not a metric the suite's metrics report. Did you mean "
     "'attack_acc@1'? Choose from test_accuracy, attack_acc@1, attack_acc@5, knn_distance"),
    ({"attacks": ["mif", "ppa"]},
     "report.table.attacks[1]: 'ppa' is not an attack id of this suite. Choose from mif"),
    ({"metrics": ["fid"]}, "(or add the metric plugin that reports it to metrics:)"),
    ({"attacks": ["mif", "mif"]}, "report.table.attacks: 'mif' is listed more than once; list each name once"),
    ({"caption": "long"}, "report.table.caption:"),
    ({"metrics": []}, "report.table.metrics:"),
    ({"colums": ["x"]}, "report.table.colums: unknown key"),
])
def test_bad_table_settings_name_file_field_and_fix(write_suite, capsys, table, message):
    path = write_suite({**tiny_suite(), "report": {"table": table}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and message in err and "Traceback" not in err


def test_good_table_settings_validate(write_suite, capsys):
    path = write_suite({**tiny_suite(), "report": {"table": {"metrics": ["attack_acc@1", "test_accuracy"],
                                                             "attacks": ["mif"], "caption": "full"}}})
    assert main(["validate", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


# ------------------------------------------------------------------------------- records
def test_old_records_read_default_table_settings_and_agree_with_new_ones():
    notes: list[str] = []
    old = {"significance": 0.05, "confidence": 0.95, "bootstrap": 2000, "intervals": False}
    new = {**old, "table": {"metrics": None, "attacks": None, "caption": "short"}}
    settings = report_settings([{"report_settings": old}, {"report_settings": new}], notes)
    assert settings.table.metrics is None and settings.table.attacks is None and settings.table.caption == "short"
    assert notes == []  # a record from before report.table existed does not disagree with a default one
    chosen = report_settings([{"report_settings": {**old, "table": {**TABLE, "caption": "huge"}}}], notes)
    assert chosen.table.metrics == ("attack_acc@1", "knn_distance") and chosen.table.attacks == ("plg_mi",)
    assert chosen.table.caption == "short" and "unknown caption length ('huge')" in notes[0]


# ------------------------------------------------------------------------------- column selection
def test_selection_applies_to_latex_and_markdown_not_csv(tmp_path):
    lb = build(_records(TABLE))
    tex = lb.to_latex()
    assert r"\multicolumn{2}{c}{PLG-MI [white-box]}" in tex and "GMI [white-box]" not in tex
    assert r"fid $\uparrow$" not in tex and r"attack\_acc@5" not in tex
    assert r"Test acc.\ (\%)" in tex and "Worst case" in tex  # always shown
    main_table = md_tables(lb.to_markdown())[0]
    assert list(main_table[0]) == ["Defense", "Test acc. (%) ↑", "Worst case: attack_acc@1 (%) ↓",
                                   "PLG-MI [white-box]: attack_acc@1 (%) ↓", "PLG-MI [white-box]: knn_distance ↑"]
    note = "This table shows 4 of 10 columns (report.table); every column is in leaderboard.csv"
    assert note in lb.to_markdown() and note in tex
    assert "The worst case covers every attack, shown or not." in tex  # GMI's columns are hidden
    lb.to_csv(tmp_path / "lb.csv")
    header = (tmp_path / "lb.csv").read_text().splitlines()[0]
    assert "gmi/fid_mean" in header and "plg_mi/attack_acc@5_mean" in header
    # the worst case is still the strongest of all attacks, shown or not: the same cells as without a selection
    worst = "Worst case: attack_acc@1 (%) ↓"
    every = md_tables(build(_records()).to_markdown())[0]
    assert [r[worst] for r in main_table] == [r[worst] for r in every] and "(GMI" in " ".join(r[worst] for r in every)


def test_no_selection_keeps_every_column():
    lb = build(_records())
    assert len(md_tables(lb.to_markdown())[0][0]) == 1 + len(lb.columns)
    assert "(report.table)" not in lb.to_markdown() and "(report.table)" not in lb.to_latex()


# ------------------------------------------------------------------------------- access order
def test_combined_tables_group_attacks_by_access_level():
    """Two suites, each listing its attacks from 0: the black-box one of the second suite must not land
    between the white-box ones."""
    records = []
    for r in _records():
        if r["attack"] == "plg_mi":
            records.append({**r, "attack_index": 1})
            records.append({**r, "attack": "mirror", "attack_label": "Mirror", "attack_index": 0,
                            "access": "black-box", "suite": "second"})
            records.append({**r, "attack": "brep", "attack_label": "BREP-MI", "attack_index": 0,
                            "access": "label-only", "suite": "second"})
        else:
            records.append(r)
    lb = build(records)
    order = list(dict.fromkeys(c.attack for c in lb.columns if c.is_attack))
    assert order == ["gmi", "plg_mi", "mirror", "brep"]
    tex = lb.to_latex()
    assert tex.index("GMI [white-box]") < tex.index("PLG-MI [white-box]") < tex.index("Mirror [black-box]") < (
        tex.index("BREP-MI [label-only]"))


# ------------------------------------------------------------------------------- caption
def _caption(tex: str) -> str:
    return tex[tex.index(r"\caption{"):tex.index(r"\label{")]


def test_short_caption_has_no_local_path_and_sets_the_option_verbatim():
    cap = _caption(build(_records()).to_latex(deltas=True))
    assert "/home/alice" not in cap and "run.store" not in cap and "run.device" not in cap
    assert r"Overrides (\texttt{-{}-set}): \texttt{attacks.gmi.params.steps=3}." in cap
    assert "--set" not in cap.replace("-{}-set", "")
    assert "lr=0.1" not in cap and "Every attack's parameters: the report page (index.html)." in cap
    assert len(cap) < 1000


def test_full_caption_lists_attack_parameters_without_local_paths():
    cap = _caption(build(_records({"caption": "full"})).to_latex())
    assert "Attacks: gmi (gmi: steps=3, lr=0.1); plg\\_mi (plg\\_mi: steps=3, lr=0.1)." in cap
    assert "/home/alice" not in cap and r"\texttt{-{}-set}" in cap


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (.ci/run installs it)")
@pytest.mark.parametrize("caption", ["short", "full"])
def test_selected_table_compiles_with_pdflatex(tmp_path: Path, caption: str) -> None:
    proc = compile_table(tmp_path, build(_records({**TABLE, "caption": caption})).to_latex(deltas=True))
    assert proc.returncode == 0, proc.stdout[-3000:]


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    """One run of the tiny suite whose records choose ``attack_acc@1`` for the table, into a store outside its
    run folder (``--store``); the tests below only read it. Returns the folder holding ``runs/tiny``."""
    tmp = tmp_path_factory.mktemp("table-run")
    data = tiny_suite(report={"table": {"metrics": ["attack_acc@1"]}})
    data["run"] = {**data["run"], "output": str(tmp / "runs"), "threads": 1}
    (tmp / "suite.yaml").write_text(yaml.safe_dump(data))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:  # built before the per-test cache folder: a cache of its own
        mp.setenv("INVERSION_BENCH_CACHE", str(tmp / "bench-cache"))
        try:
            assert main(["run", str(tmp / "suite.yaml"), "--store", str(tmp / "shared-store"), "--no-tracking",
                         "--no-figures"]) == 0
        finally:
            torch.set_num_threads(threads)
    return tmp


def test_run_keeps_table_settings_in_records_and_store_path_out_of_the_caption(table_run):
    store = table_run / "shared-store"
    run = table_run / "runs" / "tiny"
    rec = json.loads(next((run / "records").glob("*.json")).read_text())
    assert rec["report_settings"]["table"] == {"metrics": ["attack_acc@1"], "attacks": None, "caption": "short"}
    assert f"run.store={json.dumps(str(store))}" in rec["setup"]["overrides"]
    tex = (run / "leaderboard" / "leaderboard.tex").read_text()
    assert str(table_run) not in tex and r"knn\_distance" not in tex and r"attack\_acc@1" in tex
    assert "knn_distance" in (run / "leaderboard" / "leaderboard.csv").read_text().splitlines()[0]


def test_rerun_with_another_table_setting_applies_it_without_recomputing(tmp_path, one_thread, capsys):
    data = tiny_suite()
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(data))
    run = tmp_path / "runs" / "tiny"
    assert main(["run", str(tmp_path / "suite.yaml"), "--no-tracking", "--no-figures"]) == 0
    assert r"knn\_distance" in (run / "leaderboard" / "leaderboard.tex").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "store").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", str(tmp_path / "suite.yaml"), "--no-tracking", "--no-figures",
                 "--set", "report.table.metrics=[attack_acc@1]"]) == 0
    assert "0 ran, 2 from cache" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (run / "store").rglob("*") if p.is_file()} == stamps
    tex = (run / "leaderboard" / "leaderboard.tex").read_text()
    assert r"knn\_distance" not in tex and r"attack\_acc@1" in tex
    rec = json.loads(next((run / "records").glob("*.json")).read_text())
    assert rec["report_settings"]["table"]["metrics"] == ["attack_acc@1"]


def test_report_options_override_the_records_table(table_run, tmp_path, capsys):
    run = table_run / "runs" / "tiny"
    out = tmp_path / "paper"
    assert main(["leaderboard", str(run), "--output", str(out), "--table-metrics", "knn_distance",
                 "--caption", "full"]) == 0
    tex = (out / "leaderboard.tex").read_text()
    # test accuracy, worst case, then mi-face's knn_distance alone (the records chose attack_acc@1)
    assert (r"Defense & Test acc.\ (\%) $\uparrow$ & attack\_acc@1 (\%) $\downarrow$ & knn\_distance $\uparrow$ \\"
            in tex and r"\multicolumn{1}{c}{mif [white-box]}" in tex)
    assert "Attacks: mif (mi-face: " in tex and "restarts=2" in tex  # the full caption lists the parameters
    capsys.readouterr()
    assert main(["report", str(run), "--no-figures", "--output", str(out), "--table-attacks", "mfi"]) == 2
    err = capsys.readouterr().err
    assert "--table-attacks: 'mfi' is not attack of this table; choose from mif" in err
    assert main(["report", str(run), "--no-figures", "--output", str(out), "--table-metrics", ","]) == 2
    assert "--table-metrics ',': give names separated by commas" in capsys.readouterr().err
