"""Store integrity (checksums, quarantine, recompute), unreadable records, and names that would leave
their folder (issue 15, items 1 and 3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from inversion_bench.errors import ConfigError
from inversion_bench.paths import check_name, inside
from inversion_bench.results import load_records, move_aside, record_filename, write_record
from inversion_bench.store import CHECKSUM_FILE, CorruptProductError, Store
from tests.conftest import tiny_suite


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _quarantined(store: Store, kind: str, key: str) -> list[Path]:
    folder = store.root / "corrupt" / kind
    return sorted(folder.glob(f"{key}.*")) if folder.is_dir() else []


# --- products: checksums and quarantine ---------------------------------------------------------------


def test_every_product_carries_checksums_written_with_it(tmp_path):
    store = Store(tmp_path / "store")
    store.save_torch("targets", "k1", {"w": torch.arange(5)}, meta={"test_accuracy": 0.5})
    with store.writing("priors", "k2") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"abc")
    sums = json.loads((store.path("targets", "k1") / CHECKSUM_FILE).read_text())
    assert set(sums["files"]) == {"data.pt", "meta.json"} and sums["algorithm"] == "sha256"
    assert set(json.loads((store.path("priors", "k2") / CHECKSUM_FILE).read_text())["files"]) == {"sub/weights.bin"}
    assert store.has("targets", "k1") and store.has("priors", "k2")
    assert store.load_torch("targets", "k1")["w"].tolist() == [0, 1, 2, 3, 4]
    assert store.load_meta("targets", "k1") == {"test_accuracy": 0.5}


def test_a_mismatching_product_is_quarantined_with_a_warning_and_absent(tmp_path, caplog):
    store = Store(tmp_path / "store")
    store.save_torch("attacks", "abc", {"x": torch.zeros(1000)})
    _truncate(store.path("attacks", "abc") / "data.pt")
    fresh = Store(store.root)  # another process: nothing verified yet
    with caplog.at_level(logging.WARNING):
        assert not fresh.has("attacks", "abc")
    assert not store.path("attacks", "abc").exists()
    moved = _quarantined(store, "attacks", "abc")
    assert len(moved) == 1 and (moved[0] / "data.pt").is_file()  # kept, never deleted
    msg = caplog.text
    assert "attacks/abc" in msg and "data.pt has 100 bytes" in msg and str(moved[0]) in msg
    assert fresh.load("attacks", "abc", lambda p: 1) is None
    with pytest.raises(CorruptProductError, match="attacks/abc"):
        fresh.load_torch("attacks", "abc")
    fresh.save_torch("attacks", "abc", {"x": torch.ones(3)})  # the caller recomputes it
    assert fresh.has("attacks", "abc")


def test_a_product_without_checksums_loads_and_is_quarantined_only_when_its_load_fails(tmp_path, caplog):
    store = Store(tmp_path / "store")
    for key in ("good", "bad"):
        store.save_torch("targets", key, {"w": torch.arange(1000)}, meta={"test_accuracy": 0.25})
        (store.path("targets", key) / CHECKSUM_FILE).unlink()  # written before checksums existed
    _truncate(store.path("targets", "bad") / "data.pt")
    assert store.load_torch("targets", "good")["w"].shape == (1000,)
    assert store.has("targets", "bad")  # nothing to verify
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptProductError) as err:
        store.load_torch("targets", "bad")
    assert "targets/bad" in str(err.value) and "cannot be read" in str(err.value)
    assert "targets/bad" in caplog.text and len(_quarantined(store, "targets", "bad")) == 1
    assert not store.has("targets", "bad")


def test_a_failing_loader_quarantines_but_errors_of_the_setup_pass_through(tmp_path):
    store = Store(tmp_path / "store")
    store.save_torch("priors", "p", {"w": torch.zeros(2)})

    def setup_error(path: Path):
        raise ConfigError("the pickle changed; restore it")

    with pytest.raises(ConfigError):
        store.load("priors", "p", setup_error)
    assert store.has("priors", "p")  # not the product's fault: kept

    def broken(path: Path):
        raise KeyError("state_dict")

    assert store.load("priors", "p", broken) is None
    assert not store.has("priors", "p") and len(_quarantined(store, "priors", "p")) == 1


def test_an_unreadable_meta_json_is_quarantined(tmp_path):
    store = Store(tmp_path / "store")
    store.save_torch("targets", "m", {"w": torch.zeros(2)}, meta={"test_accuracy": 0.5})
    (store.path("targets", "m") / CHECKSUM_FILE).unlink()
    (store.path("targets", "m") / "meta.json").write_text("[1, 2")
    assert store.load_meta("targets", "m") == {}
    assert not store.has("targets", "m")


# --- names that would leave their folder --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../outside", "a/b", "..", ".", "", "x\x00y", "/etc/passwd", "n" * 300])
def test_names_that_would_leave_their_folder_are_refused(tmp_path, name):
    store = Store(tmp_path / "store")
    with pytest.raises(ValueError) as err:
        store.path("targets", name)
    assert "store key of targets" in str(err.value)
    with pytest.raises(ValueError):
        store.path(name, "key")
    with pytest.raises(ValueError):
        inside(tmp_path, name, "file")
    with pytest.raises(ValueError):
        check_name(name)


def test_a_record_of_a_hostile_id_is_never_written_outside_the_records_folder(tmp_path):
    records = tmp_path / "run" / "records"
    rec = {"defense": "../../outside", "attack": "mif", "seed": 0, "status": "ok"}
    with pytest.raises(ValueError, match=r"record file name of \('\.\./\.\./outside'"):
        write_record(records, rec)
    with pytest.raises(ValueError, match="bytes long"):
        record_filename("d" * 300, "mif", 0)
    with pytest.raises(ValueError, match="NUL"):
        write_record(records, {**rec, "defense": "a\x00b"})
    assert list(tmp_path.rglob("*.json")) == []
    assert inside(tmp_path, "ok.json") == tmp_path / "ok.json"
    assert write_record(records, {**rec, "defense": "hard"}) == records / "hard__mif__seed0.json"


# --- records that cannot be read ----------------------------------------------------------------------


def test_unreadable_records_are_named_and_skipped(tmp_path, caplog):
    records = tmp_path / "records"
    write_record(records, {"defense": "hard", "attack": "mif", "seed": 0, "status": "ok"})
    (records / "half.json").write_text('{"defense": "hard", "att')
    (records / "list.json").write_text("[1, 2, 3]")
    (records / "latin1.json").write_bytes(b'{"defense": "\xe9"}')
    (records / "nokeys.json").write_text('{"status": "ok"}')
    unreadable: list[tuple[Path, str]] = []
    assert [r["defense"] for r in load_records(records, unreadable)] == ["hard"]
    reasons = {p.name: why for p, why in unreadable}
    assert set(reasons) == {"half.json", "list.json", "latin1.json", "nokeys.json"}
    assert "JSONDecodeError" in reasons["half.json"] and "list, not an object" in reasons["list.json"]
    assert "UnicodeDecodeError" in reasons["latin1.json"] and "lacks defense, attack, seed" in reasons["nokeys.json"]
    with caplog.at_level(logging.WARNING):
        assert len(load_records(records)) == 1
    assert "half.json" in caplog.text and "skipped" in caplog.text
    dest = move_aside(records / "half.json")
    assert dest.parent == records / "corrupt" and dest.read_text() == '{"defense": "hard", "att'
    assert move_aside(records / "list.json").parent == records / "corrupt"


# --- the acceptance test: a damaged run folder heals --------------------------------------------------


@pytest.mark.slow
def test_a_rerun_heals_truncated_products_and_unreadable_records(write_suite, tmp_path, caplog, capsys, one_thread):
    from inversion_bench.cli import main

    suite = write_suite(tiny_suite(defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
                                   metrics=["test_accuracy", "attack_accuracy", "knn_distance"]))
    assert main(["run", str(suite), "--no-tracking", "--no-figures"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    rec_path = run_dir / "records" / "hard__mif__seed0.json"
    before = json.loads(rec_path.read_text())
    keys = before["keys"]
    store = Store(run_dir / "store")
    damaged = {"targets": keys["target"], "attacks": keys["attack"], "evaluators": keys["evaluator"]}
    for kind, key in damaged.items():
        _truncate(store.path(kind, key) / "data.pt")
    rec_path.write_text(rec_path.read_text()[:200])  # a half-written record

    # no readable record left: one line naming the file, no traceback
    capsys.readouterr()
    assert main(["leaderboard", str(run_dir)]) == 2
    assert str(rec_path) in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(suite), "--no-tracking", "--no-figures"]) == 0
    for kind, key in damaged.items():
        assert f"{kind}/{key}" in caplog.text
        assert len(_quarantined(store, kind, key)) == 1, kind
        assert store.has(kind, key)
    assert str(rec_path) in caplog.text and "cannot be read" in caplog.text
    assert [p.name.split(".")[0] for p in (run_dir / "records" / "corrupt").iterdir()] == ["hard__mif__seed0"]
    after = json.loads(rec_path.read_text())
    assert after["status"] == "ok"
    assert after["metrics"] == before["metrics"]
    assert after["keys"] == keys

    (run_dir / "records" / "junk.json").write_text('"not an object"')
    assert main(["leaderboard", str(run_dir)]) == 0
    md = (run_dir / "leaderboard" / "leaderboard.md").read_text()
    assert "junk.json" in md and "skipped" in md
