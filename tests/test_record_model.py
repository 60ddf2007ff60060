"""The typed, versioned record (benchmark/record_model.py): the upgrader from version 1, validation, and the
record writer (benchmark/results.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from inversion_bench.record_model import (
    DEFAULT_WORST_CASE_METRIC,
    SCHEMA_VERSION,
    Record,
    load_record,
    upgrade,
    v1_identity_values,
)
from inversion_bench.results import read_record, write_record

V1_FIXTURE = Path(__file__).parent / "fixtures" / "records" / "v1_quickstart_record.json"
"""A record written before schema_version 2 (quickstart, hard labels x MI-Face, seed 0), its per-identity
blocks trimmed to four identities of five attacked (one counted only in identities_without_images)."""


def v1() -> dict:
    return json.loads(V1_FIXTURE.read_text(encoding="utf-8"))


def test_v1_fixture_upgrades_to_the_current_version() -> None:
    raw = v1()
    assert raw["schema"] == 1 and "schema_version" not in raw
    rec = upgrade(raw)
    assert raw == v1()  # the input is not changed
    assert rec["schema_version"] == SCHEMA_VERSION == 2 and "schema" not in rec
    assert rec["worst_case_metric"] == DEFAULT_WORST_CASE_METRIC == "attack_acc@1"
    info = rec["metric_info"]
    assert list(info)[:2] == ["attack_acc@1", "attack_acc@5"]  # the order v1 tables showed
    assert {m: (i["unit"], i["better"], i["scope"], i["per_identity"]) for m, i in info.items()} == {
        "attack_acc@1": ("share", "lower", "attack", True),
        "attack_acc@5": ("share", "lower", "attack", True),
        "fid": ("score", "higher", "attack", False),
        "knn_distance": ("score", "higher", "attack", True),
        "test_accuracy": ("share", "higher", "target", False),
    }
    assert info["attack_acc@1"]["label"] == "attack accuracy" and info["attack_acc@1"]["plugin"] == "attack_accuracy"
    per = rec["per_identity"]
    # five attacked, four listed, one without images
    assert per["attack_acc@1"] == {"values": {"0": 0.0, "1": 0.75, "2": 0.25, "3": 1.0}, "unknown": 1}
    assert per["knn_distance"]["values"]["3"] == pytest.approx(44.284228695373315)
    assert per["knn_distance"]["unknown"] == 0
    assert "fid" not in per  # counts per identity are not values
    # every other key is kept as it was
    assert {k: v for k, v in rec.items() if k in raw} == {k: v for k, v in raw.items() if k != "schema"}
    model = load_record(raw)
    assert isinstance(model, Record) and model.seed == 0 and model.attack == "mi-face"
    assert model.metric_info["knn_distance"].per_identity and model.per_identity["attack_acc@1"].unknown == 1


def test_upgrade_of_a_current_record_changes_nothing() -> None:
    rec = load_record(v1()).model_dump(exclude_unset=True)
    assert upgrade(rec) == rec
    assert load_record(rec).model_dump(exclude_unset=True) == rec


def test_unknown_or_malformed_versions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"schema_version 3 is not one this version of inversion-bench reads "
                                         r"\(it reads 1 and 2\); upgrade inversion-bench"):
        upgrade({**v1(), "schema_version": 3})
    bad = upgrade(v1())
    bad["metric_info"] = {"attack_acc@1": {"better": "lower", "unit": "percent", "plugin": "attack_accuracy"}}
    with pytest.raises(ValueError, match="unit"):
        load_record(bad)


@pytest.mark.parametrize("name, share", [
    *[(n, True) for n in ("attack_acc@1", "attack_acc@5", "second_acc@1", "test_accuracy", "acc", "impostor_acc@1",
                          "evaluator_agreement", "false_acceptance", "knowledge_extraction")],
    *[(n, False) for n in ("ece", "silhouette", "intra_inter_ratio", "grad_cosine", "knn_distance", "fid",
                           "accumulated_loss")],
])
def test_v1_units_follow_the_rule_tables_used_before_declarations(name: str, share: bool) -> None:
    rec = upgrade({"defense": "d", "attack": "a", "seed": 0, "metrics": {name: 0.5}, "directions": {name: "lower"}})
    assert (rec["metric_info"][name]["unit"] == "share") is share


def test_v1_per_identity_values_are_found_where_version_1_kept_them() -> None:
    rec = v1()
    rec["metric_details"]["fid_correct"] = {"per_identity": {0: {"n": 3, "n_correct": 1}}}
    rec["metric_details"]["second"] = {"per_identity_second_acc@1": {0: 0.5, 1: None}}
    assert v1_identity_values(rec, "knn_distance").values == {
        "0": pytest.approx(86.51446917297241), "1": pytest.approx(55.0297791318839),
        "2": pytest.approx(87.21143709514342), "3": pytest.approx(44.284228695373315)}
    assert v1_identity_values(rec, "fid_correct") is None  # counts per identity, not values
    assert v1_identity_values(rec, "second_acc@1") is None  # not one number per identity
    assert v1_identity_values(rec, "fid") is None
    assert v1_identity_values({"metric_details": None}, "attack_acc@1") is None


def test_write_record_writes_the_current_version(tmp_path: Path) -> None:
    path = write_record(tmp_path, v1())
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == 2 and "schema" not in on_disk
    assert on_disk["per_identity"]["attack_acc@1"] == {"values": {"0": 0.0, "1": 0.75, "2": 0.25, "3": 1.0},
                                                       "unknown": 1}
    assert on_disk["metric_info"]["attack_acc@1"] == {"better": "lower", "unit": "share", "per_identity": True,
                                                      "label": "attack accuracy", "plugin": "attack_accuracy",
                                                      "scope": "attack"}
    assert read_record(path) == on_disk
    broken = copy.deepcopy(on_disk)
    broken["per_identity"]["attack_acc@1"]["values"]["0"] = "high"
    with pytest.raises(ValueError, match="per_identity"):
        write_record(tmp_path, broken)
