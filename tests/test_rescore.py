"""``bench rescore``: a run's stored reconstructions judged by another evaluation model, without rerunning any attack.

End to end on a tiny suite: run A with the suite's evaluation model, run B with the other evaluation model from the
start, then ``bench rescore A --evaluation other.yaml``: its records sit under the other judge's key beside A's,
no attack or target is recomputed, its metrics equal B's, a second rescore writes nothing, and the report shows both
judges and their agreement. Then the refusals (exit 2 before any work) and the agreement arithmetic.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from inversion_bench.cli import main
from inversion_bench.config import load_suite
from inversion_bench.judges import decision_agreement, judge_key, kappa
from inversion_bench.plan import make_plan
from inversion_bench.record_model import judge_key as record_judge_key
from inversion_bench.record_model import load_record
from tests.conftest import run_tiny, tiny_suite

pytestmark = pytest.mark.slow

OTHER = {"architecture": {"name": "small-resnet", "params": {"width": 4}}, "training": {"epochs": 3, "batch_size": 16}}
KEEP = ("metrics", "per_identity", "metric_details", "metric_errors", "config_hash", "keys", "evaluator",
        "num_reconstructions", "target", "attack_info")


def _suite(**evaluation) -> dict:
    data = tiny_suite(seeds=[0, 1], run={"device": "cpu", "progress": False, "workers": 1})
    data["attacks"] = [{"id": "mif", "name": "mi-face", "params": {"steps": 4, "restarts": 2}}]
    if evaluation:
        data["evaluation"] = evaluation
    return data


def _untimed(block):
    """A record block without the wall times of the run that computed it (two runs never share those)."""
    timed = ("seconds", "images_per_second")
    return {k: v for k, v in block.items() if k not in timed} if isinstance(block, dict) else block


def _listing(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (the suite's evaluation model), run B (the other one from the start), then A rescored with the other."""
    root = tmp_path_factory.mktemp("rescore")
    (root / "a").mkdir()
    (root / "b").mkdir()
    a = run_tiny(_suite(), root / "a")
    b = run_tiny(_suite(**OTHER), root / "b")
    other = root / "other.yaml"
    other.write_text(yaml.safe_dump(OTHER))
    before = {"store": _listing(a / "store"), "records": _records(a / "records")}
    code = main(["rescore", str(a), "--evaluation", str(other), "--no-progress"])
    return {"a": a, "b": b, "other": other, "before": before, "code": code, "root": root}


def test_rescore_writes_records_under_the_other_judges_key(runs):
    a, b = runs["a"], runs["b"]
    assert runs["code"] == 0
    key_a = make_plan(load_suite(a / "suite.json")).evaluator_key
    key_b = make_plan(load_suite(b / "suite.json")).evaluator_key
    assert key_a != key_b
    assert sorted(p.name for p in (a / "records" / "judges").iterdir()) == [key_b]
    judged = _records(a / "records" / "judges" / key_b)
    own = _records(a / "records")
    assert sorted(judged) == sorted(own) == sorted(_records(b / "records"))  # the same file names, side by side
    assert own == runs["before"]["records"]  # the run's own records untouched
    for name, rec in judged.items():
        assert judge_key(rec) == record_judge_key(rec) == key_b and judge_key(own[name]) == key_a
        assert rec["judge"] == {"key": key_b, "default": key_a, "evaluation_file": str(runs["other"])}
        assert rec["status"] == "ok" and load_record(rec).schema_version == 2


def test_rescore_reruns_no_attack(runs):
    a = runs["a"]
    before, after = runs["before"]["store"], _listing(a / "store")
    for kind in ("attacks", "targets", "data", "priors"):  # nothing recomputed, nothing added
        assert {k: v for k, v in after.items() if k.startswith(kind + "/")} == \
            {k: v for k, v in before.items() if k.startswith(kind + "/")}, kind
    new = sorted({k.split("/")[1] for k in set(after) - set(before)
                  if k.startswith("evaluators/")})
    assert new == [make_plan(load_suite(runs["b"] / "suite.json")).evaluator_key]  # only the other judge was trained
    judged_dir = next((a / "records" / "judges").iterdir())
    for name, rec in _records(judged_dir).items():
        old = runs["before"]["records"][name]
        assert rec["timings"]["attack_s"] == old["timings"]["attack_s"]  # the stored reconstructions' own time
        assert rec["timings"]["target_s"] == old["timings"]["target_s"]
        assert rec["keys"]["attack"] == old["keys"]["attack"] and rec["keys"]["target"] == old["keys"]["target"]


def test_rescored_metrics_equal_a_run_with_that_evaluation_model_from_the_start(runs):
    a, b = runs["a"], runs["b"]
    judged = _records(next((a / "records" / "judges").iterdir()))
    original = _records(b / "records")
    own = runs["before"]["records"]
    # another judge indeed: features of another model give other distances
    assert all(rec["metrics"]["knn_distance"] != own[name]["metrics"]["knn_distance"] for name, rec in judged.items())
    for name, rec in judged.items():
        want = original[name]
        assert set(rec["metrics"]) == {"test_accuracy", "attack_acc@1", "attack_acc@5", "knn_distance"}
        for field in KEEP:
            assert _untimed(rec[field]) == _untimed(want[field]), (name, field)


def test_agreement_counts_agree_with_both_judges_attack_accuracy(runs):
    """Each judge's acceptance share in the agreement equals its own record's attack accuracy (the metric plugin's
    count, computed apart), and the 2x2 table covers every reconstruction."""
    a = runs["a"]
    own = _records(a / "records")
    for name, rec in _records(next((a / "records" / "judges").iterdir())).items():
        g = rec["judge_agreement"]
        assert g["default"] == judge_key(own[name])
        assert g["n"] == rec["num_reconstructions"] == g["both"] + g["first_only"] + g["second_only"] + g["neither"]
        assert g["first_acc@1"] == pytest.approx(own[name]["metrics"]["attack_acc@1"])
        assert g["second_acc@1"] == pytest.approx(rec["metrics"]["attack_acc@1"])
        assert g["agreement"] == pytest.approx((g["both"] + g["neither"]) / g["n"])


def test_a_second_rescore_with_the_same_file_is_a_no_op(runs, capsys):
    a = runs["a"]
    records, store = _listing(a / "records"), _listing(a / "store")
    report = _listing(a / "leaderboard")
    assert main(["rescore", str(a), "--evaluation", str(runs["other"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 record(s) written, 4 already judged, 0 failed" in out
    assert _listing(a / "records") == records and _listing(a / "store") == store
    assert _listing(a / "leaderboard") == report  # nothing new: the report is not rewritten


def test_the_report_shows_both_judges_and_their_agreement(runs):
    a, b = runs["a"], runs["b"]
    key_a = make_plan(load_suite(a / "suite.json")).evaluator_key
    key_b = make_plan(load_suite(b / "suite.json")).evaluator_key
    own = _records(a / "records")
    judged = _records(a / "records" / "judges" / key_b)
    md = (a / "leaderboard" / "leaderboard.md").read_text()
    section = md[md.index("## Judges"):]
    assert f"{key_a} (the run)" in section and f"{key_b} (rescore)" in section
    import csv

    rows = list(csv.DictReader((a / "leaderboard" / "judges.csv").open()))
    assert len(rows) == 2 * 2  # 2 judges x 2 (defense, attack) pairs
    for defense in ("hard", "negls"):
        names = [f"{defense}__mif__seed{s}.json" for s in (0, 1)]
        mine = {r["judge"]: r for r in rows if r["defense"] == defense}
        acc_a = sum(own[n]["metrics"]["attack_acc@1"] for n in names) / 2
        acc_b = sum(judged[n]["metrics"]["attack_acc@1"] for n in names) / 2
        assert float(mine[key_a]["attack_acc@1"]) == pytest.approx(acc_a)
        assert float(mine[key_b]["attack_acc@1"]) == pytest.approx(acc_b)
        agree = [judged[n]["judge_agreement"] for n in names]
        pooled = sum(g["both"] + g["neither"] for g in agree) / sum(g["n"] for g in agree)
        assert float(mine[key_b]["agreement"]) == pytest.approx(pooled) and mine[key_a]["agreement"] == ""
        row = next(line for line in section.splitlines() if line.startswith(f"| {defense} | mif |"))
        assert row.split(" | ")[2:5] == [f"{100 * acc_a:.1f}", f"{100 * acc_b:.1f}", f"{100 * pooled:.1f}"]
    page = (a / "leaderboard" / "index.html").read_text()
    assert 'id="judges"' in page and key_b in page
    # the leaderboard's own table stays the run's judge
    assert "## Judges" not in md[:md.index("## Judges")] and key_b not in md[:md.index("## Judges")]


def test_a_judge_loaded_from_a_checkpoint(runs, tmp_path, capsys):
    """The evaluation file's checkpoint: (the existing machinery): run B's stored evaluation model as a native
    checkpoint is another judge key (the file enters it) with exactly B's numbers; a missing file is refused."""
    b = runs["b"]
    a = tmp_path / "a"  # a copy of the rescored run: the other tests see one judge
    shutil.copytree(runs["a"], a)
    key_b = make_plan(load_suite(b / "suite.json")).evaluator_key
    weights = b / "store" / "evaluators" / key_b / "data.pt"
    judge = tmp_path / "from-checkpoint.yaml"
    judge.write_text(yaml.safe_dump({"architecture": OTHER["architecture"], "checkpoint": str(weights)}))
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"architecture": OTHER["architecture"], "checkpoint": str(tmp_path / "x.pt")}))
    err = _refused(["rescore", str(a), "--evaluation", str(missing)], capsys)
    assert err.startswith(f"error: {missing}: checkpoint: checkpoint {tmp_path / 'x.pt'} not found"), err
    assert main(["rescore", str(a), "--evaluation", str(judge), "--no-progress"]) == 0
    keys = sorted(p.name for p in (a / "records" / "judges").iterdir())
    assert len(keys) == 2 and key_b in keys
    key_c = next(k for k in keys if k != key_b)
    original = _records(b / "records")
    for name, rec in _records(a / "records" / "judges" / key_c).items():
        assert judge_key(rec) == key_c and rec["setup"]["evaluation"]["checkpoint"] == str(weights)
        assert rec["metrics"] == original[name]["metrics"]
        assert rec["evaluator"]["test_accuracy"] == original[name]["evaluator"]["test_accuracy"]
    section = (a / "leaderboard" / "leaderboard.md").read_text().split("## Judges")[1]
    assert f"{key_c} (rescore)" in section and f"{key_b} (rescore)" in section  # three judges side by side


def _refused(args: list[str], capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("block,field", [
    ({"architecture": {"name": "small-resnet", "params": {"width": 4}}, "trainig": {"epochs": 1}}, "trainig"),
    ({"architecture": {"name": "small-resnett"}}, "architecture.name"),
    ({"architecture": {"name": "small-resnet", "params": {"widht": 4}}}, "architecture.params"),
    ({"architecture": {"name": "small-cnn", "params": {"width": 8}}}, "architecture: must differ from target"),
])
def test_a_bad_evaluation_file_is_refused_naming_file_and_field(runs, tmp_path, capsys, block, field):
    a = runs["a"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(block))
    store = _listing(a / "store")
    err = _refused(["rescore", str(a), "--evaluation", str(bad)], capsys)
    assert err.startswith(f"error: {bad}: {field}"), err
    assert _listing(a / "store") == store


def test_the_runs_own_evaluation_model_and_missing_files_are_refused(runs, tmp_path, capsys):
    a = runs["a"]
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump({"evaluation": tiny_suite()["evaluation"]}))  # also read under evaluation:
    assert "the run's own evaluation model" in _refused(["rescore", str(a), "--evaluation", str(same)], capsys)
    err = _refused(["rescore", str(a), "--evaluation", str(tmp_path / "none.yaml")], capsys)
    assert "none.yaml: no such evaluation file" in err
    err = _refused(["rescore", str(tmp_path), "--evaluation", str(runs["other"])], capsys)
    assert "not a run folder" in err


def test_missing_reconstructions_are_refused_before_any_work(runs, tmp_path, capsys):
    """Rescoring never attacks: without the stored reconstructions it stops (exit 2) and trains nothing."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    shutil.rmtree(copy / "records" / "judges")
    victim = json.loads((copy / "records" / "hard__mif__seed1.json").read_text())["keys"]["attack"]
    shutil.rmtree(copy / "store" / "attacks" / victim)
    other = tmp_path / "other2.yaml"  # another judge: nothing of it is stored
    other.write_text(yaml.safe_dump({**OTHER, "training": {"epochs": 2, "batch_size": 16}}))
    evaluators = sorted(os.listdir(copy / "store" / "evaluators"))
    err = _refused(["rescore", str(copy), "--evaluation", str(other)], capsys)
    assert "hard__mif__seed1: reconstructions" in err and "never reruns an attack" in err
    assert sorted(os.listdir(copy / "store" / "evaluators")) == evaluators
    assert not (copy / "records" / "judges").exists() or not any((copy / "records" / "judges").iterdir())


# ---------------------------------------------------------------------------------------------- arithmetic

def test_decision_agreement_on_a_hand_made_case():
    # labels 0..5; judge 1 accepts images 0,1,2; judge 2 accepts 1,2,3; image 4 both give class 9, 5: 7 vs 8
    labels = [0, 1, 2, 3, 4, 5]
    first = [0, 1, 2, 5, 9, 7]
    second = [3, 1, 2, 3, 9, 8]
    g = decision_agreement(first, second, labels)
    assert (g["n"], g["both"], g["first_only"], g["second_only"], g["neither"]) == (6, 2, 1, 1, 2)
    assert g["agreement"] == pytest.approx(4 / 6) and g["same_top1"] == pytest.approx(3 / 6)
    assert g["first_acc@1"] == pytest.approx(0.5) and g["second_acc@1"] == pytest.approx(0.5)
    # kappa: p_o = 4/6, p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> (2/3 - 1/2) / (1/2) = 1/3
    assert g["kappa"] == pytest.approx(1 / 3)


def test_kappa_edges():
    assert kappa(5, 0, 0, 5) == pytest.approx(1.0)  # perfect agreement
    assert kappa(0, 5, 5, 0) == pytest.approx(-1.0)  # opposite decisions on balanced rates
    assert kappa(0, 0, 0, 7) is None and kappa(0, 0, 0, 0) is None  # one decision everywhere: undefined
    with pytest.raises(ValueError, match="each judge must decide on every reconstruction"):
        decision_agreement([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="no reconstructions"):
        decision_agreement([], [], [])


def test_judge_key_of_old_and_new_records():
    v1 = {"defense": "d", "attack": "a", "seed": 0, "metrics": {"attack_acc@1": 0.5}, "keys": {"evaluator": "e1"}}
    assert record_judge_key(v1) == "e1" and load_record(v1).schema_version == 2
    assert record_judge_key({"defense": "d", "attack": "a", "seed": 0}) is None
    assert record_judge_key({"keys": {"evaluator": "e1"}, "judge": {"key": "e2", "default": "e1"}}) == "e2"


def test_judges_section_from_hand_made_records_of_both_schema_versions(tmp_path):
    """Version-1 records of the run's judge (no schema_version) beside version-2 records of another judge: the
    section's means, pooled agreement and worst cases, computed here by hand."""
    from inversion_bench.judges import judge_records_dir
    from inversion_bench.leaderboard.judges import judges_section, to_markdown
    from inversion_bench.results import load_records, write_json_atomic

    acc = {("e1", "a1"): (0.6, 0.4), ("e1", "a2"): (0.3, 0.3), ("e2", "a1"): (0.2, 0.2), ("e2", "a2"): (0.5, 0.3)}
    agree = {("a1", 0): (10, 1, 5, 1, 3), ("a1", 1): (10, 1, 3, 1, 5), ("a2", 0): (10, 3, 0, 2, 5),
             ("a2", 1): (10, 2, 1, 1, 6)}  # n, both, first_only, second_only, neither
    records = tmp_path / "records"
    for (judge, attack), values in acc.items():
        for seed, v in enumerate(values):
            rec = {"defense": "d", "attack": attack, "seed": seed, "status": "ok", "metrics": {"attack_acc@1": v},
                   "directions": {"attack_acc@1": "lower"}, "keys": {"evaluator": judge},
                   "config_hash": f"{judge}{seed}", "attack_index": int(attack[1]) - 1}
            folder = records
            if judge == "e2":
                n, both, fo, so, ne = agree[(attack, seed)]
                rec.update(schema_version=2, judge={"key": "e2", "default": "e1"},
                           judge_agreement={"default": "e1", "n": n, "both": both, "first_only": fo,
                                            "second_only": so, "neither": ne, "same_top1": 0.5})
                folder = judge_records_dir(records, "e2")
            write_json_atomic(folder / f"d__{attack}__seed{seed}.json", rec)
    notes: list[str] = []
    s = judges_section([tmp_path], load_records(records), notes)
    assert [(j.key, j.default, len(j.records)) for j in s.judges] == [("e1", True, 4), ("e2", False, 4)]
    rows = {r["attack"]: r for r in s.pairs}
    assert rows["a1"]["acc"] == {"e1": pytest.approx(0.5), "e2": pytest.approx(0.2)}
    assert rows["a1"]["agreement"]["e2"]["agreement"] == pytest.approx((1 + 3 + 1 + 5) / 20)
    # pooled a2: both 5, first_only 1, second_only 3, neither 11 of 20: p_o 0.8, p_e 0.3*0.4 + 0.7*0.6 = 0.54
    assert rows["a2"]["agreement"]["e2"]["kappa"] == pytest.approx((0.8 - 0.54) / (1 - 0.54))
    assert s.worst[0]["judges"] == {"e1": (pytest.approx(0.5), "a1"), "e2": (pytest.approx(0.4), "a2")}
    md = to_markdown(s)
    assert "| d | 50.0 (a1) | 40.0 (a2) |" in md and notes == []
