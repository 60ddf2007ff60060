"""End to end: a tiny suite with a second evaluation model (record's evaluator block, evaluator_agreement,
MLflow), then `bench export` of its run folder (PNGs, references, labels.csv) and its input errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from inversion_bench.cli import main
from inversion_bench.export import LABEL_COLUMNS
from tests.conftest import tiny_suite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: 1 defense x 1 attack x 1 seed, with a second evaluation model."""
    import yaml

    root = tmp_path_factory.mktemp("export")
    data = tiny_suite()
    data["defenses"] = data["defenses"][:1]
    second = {"architecture": {"name": "small-cnn", "params": {"width": 4}},
              "training": {"epochs": 1, "batch_size": 16}}
    data["evaluation"] = {**data["evaluation"], "second": second}
    data["metrics"] = ["test_accuracy", "attack_accuracy", "evaluator_agreement"]
    data["run"] = {**data["run"], "output": str(root / "runs")}
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(suite), "--no-figures", "--no-progress"]) == 0
    return root / "runs" / "tiny"


def test_record_has_the_audit_and_the_second_evaluator(run_dir):
    rec = json.loads((run_dir / "records" / "hard__mif__seed0.json").read_text())
    ev = rec["evaluator"]
    assert ev["architecture"] == "small-resnet" and 0 <= ev["test_accuracy"] <= 1
    assert ev["second"]["architecture"] == "small-cnn" and 0 <= ev["second"]["test_accuracy"] <= 1
    assert ev["audit"]["private_other"]["images"] == 15  # 5 identities x 3 test images
    public = ev["audit"]["public"]
    assert {k: public[k] for k in ("images", "false_acceptance", "impostor_acc@1")} == {
        "images": 60, "false_acceptance": 1.0, "impostor_acc@1": pytest.approx(1 / 5)}
    assert 1 / 5 <= public["impostor_acc@1_max"] <= 1.0
    assert 0 <= ev["audit"]["private_other"]["false_acceptance"] <= 1
    m = rec["metrics"]
    assert 0 <= m["evaluator_agreement"] <= min(m["attack_acc@1"], m["second_acc@1"]) + 1e-9
    assert rec["directions"]["evaluator_agreement"] == "lower" and not rec["metric_errors"]
    assert len(list((run_dir / "store" / "audits").iterdir())) == 1
    assert len(list((run_dir / "store" / "evaluators").iterdir())) == 2

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    for name in ("evaluator_test_accuracy", "evaluator_far_private", "evaluator_far_public",
                 "evaluator_impostor_acc1_private", "evaluator_impostor_acc1_public",
                 "second_evaluator_test_accuracy", "evaluator_agreement"):
        assert f"metrics.{name}" in runs.columns, name


def test_export_writes_pngs_references_and_labels(run_dir, tmp_path, capsys):
    out = tmp_path / "labelling"
    assert main(["export", str(run_dir), "--out", str(out), "--references", "2"]) == 0
    rows = list(csv.DictReader((out / "labels.csv").open()))
    rec = json.loads((run_dir / "records" / "hard__mif__seed0.json").read_text())
    assert list(rows[0]) == list(LABEL_COLUMNS)
    assert len(rows) == rec["num_reconstructions"] == 10  # 5 identities x 2 restarts
    for row in rows:
        assert (row["defense"], row["attack"], row["seed"]) == ("hard", "mif", "0")
        assert (out / row["file"]).is_file() and row["file"].startswith(f"hard/mif/seed0/{row['identity']}/")
        assert row["reference_folder"] == f"references/{row['identity']}"
        assert len(list((out / row["reference_folder"]).glob("*.png"))) == 2
        assert row["evaluator_accepts"] == str(int(row["evaluator_prediction"] == row["identity"]))
        assert row["human_label"] == ""
    accepted = sum(int(r["evaluator_accepts"]) for r in rows) / len(rows)
    assert accepted == pytest.approx(rec["metrics"]["attack_acc@1"])  # the same verdicts as attack_acc@1
    capsys.readouterr()

    # never over an existing non-empty folder, unless --force
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(out), "--force", "--references", "0"]) == 0
    assert {r["reference_folder"] for r in csv.DictReader((out / "labels.csv").open())} == {""}


def test_export_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty" / "records").mkdir(parents=True)
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no ok records" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--references", "-1"]) == 2
    assert not Path(tmp_path / "o").exists()
