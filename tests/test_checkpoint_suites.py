"""``checkpoint: {path, format}`` in suites (issue 26, item 1): bench validate and bench doctor name a
missing or unfitting file with its source before anything runs (exit 2), and a suite whose target and
evaluation model are published checkpoints runs on them instead of training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from inversion_bench.cli import main
from inversion_bench.config import load_suite
from inversion_bench.plan import make_plan
from inversion_bench.registry import REGISTRIES
from tests.conftest import run_tiny, tiny_suite

CLASSES = 4


def published_file(path: Path, arch: str, fmt: str, classes: int = CLASSES) -> nn.Module:
    """A randomly initialised ``arch`` saved as KED-MI (``{'state_dict': {'module.' + name}}``) or MIBench
    (``{'state_dict', 'config', 'model_name'}``) write it; returns the model."""
    cls = REGISTRIES["architectures"].get(arch)
    torch.manual_seed(1)
    model = cls(cls.Params()).build(classes, 64, {}).eval()
    sd = {("fc_layer." + k[5:]) if k.startswith("head.") else k[5:]: v for k, v in model.state_dict().items()}
    if fmt == "kedmi":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    else:
        torch.save({"state_dict": sd, "config": {"num_classes": classes}, "model_name": cls.mibench_name}, path)
    return model


def suite_64(tmp_path: Path, target_ckpt: dict | None, eval_ckpt: dict | None) -> dict:
    suite = tiny_suite(
        dataset={"name": "synthetic-faces", "params": {"num_identities": 8, "images_per_identity": 4, "seed": 0},
                 "resolution": 64, "split": {"private_identities": CLASSES, "public_identities": "rest",
                                             "test_fraction": 0.5, "seed": 1}},
        target={"architecture": {"name": "vgg16-64"}, "training": {"epochs": 1, "batch_size": 8}},
        evaluation={"architecture": {"name": "facenet112"}, "training": {"epochs": 1, "batch_size": 8},
                    "audit": False, **({"checkpoint": eval_ckpt} if eval_ckpt else {})},
        defenses=[{"id": "published", "name": "label_smoothing", "params": {"alpha": 0.0},
                   **({"checkpoint": target_ckpt} if target_ckpt else {})}],
        attacks=[{"id": "mif", "name": "mi-face", "params": {"steps": 2, "restarts": 1}, "identities": 2}],
        metrics=["test_accuracy", "attack_accuracy"],
    )
    return suite


def test_validate_and_doctor_name_missing_checkpoints(tmp_path, write_suite, capsys):
    path = write_suite(suite_64(tmp_path, {"path": str(tmp_path / "VGG16_88.26.tar"), "format": "kedmi"},
                                {"path": str(tmp_path / "facenet112.pth"), "format": "mibench"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"defenses[0].checkpoint: checkpoint {tmp_path / 'VGG16_88.26.tar'} not found (format kedmi" in err
    assert "SCccc21/Knowledge-Enriched-DMI" in err and f"put the file at {tmp_path / 'VGG16_88.26.tar'}" in err
    assert f"evaluation.checkpoint: checkpoint {tmp_path / 'facenet112.pth'} not found (format mibench" in err
    assert "checkpoints_v2.0" in err
    assert main(["doctor", str(path)]) == 2
    out = capsys.readouterr().out
    assert "[MISSING] defenses[0].checkpoint: vgg16-64 checkpoint (kedmi)" in out
    assert "[MISSING] evaluation.checkpoint: facenet112 checkpoint (mibench)" in out


def test_validate_names_keys_of_an_unfitting_checkpoint(tmp_path, write_suite, capsys):
    ckpt = tmp_path / "facenet112.pth"
    published_file(ckpt, "facenet112", "mibench", classes=1000)  # the published evaluation model: 1000 classes
    path = write_suite(suite_64(tmp_path, None, {"path": str(ckpt), "format": "mibench"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "evaluation.checkpoint: checkpoint" in err and str(ckpt) in err
    assert "head.weight (in the file: fc_layer.weight): file [1000, 512], model [4, 512]" in err
    assert main(["doctor", str(path)]) == 2
    assert "[WRONG  ] evaluation.checkpoint" in capsys.readouterr().out


def test_format_the_architecture_cannot_read(tmp_path, write_suite, capsys):
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"")
    suite = tiny_suite(defenses=[{"id": "hard", "name": "label_smoothing", "checkpoint": {"path": str(ckpt),
                                                                                          "format": "ppa"}}])
    assert main(["validate", str(write_suite(suite))]) == 2
    assert "defenses[0].checkpoint.format: architecture small-cnn reads no ppa checkpoints" in capsys.readouterr().err


def test_target_checkpoint_is_per_defense(write_suite, capsys):
    suite = tiny_suite()
    suite["target"] = {**suite["target"], "checkpoint": "t.pt"}
    assert main(["validate", "--schema-only", str(write_suite(suite))]) == 2
    assert "target.checkpoint: a target is trained or loaded per defense" in capsys.readouterr().err


def test_format_enters_the_key_and_a_plain_path_keeps_it(tmp_path, write_suite):
    ckpt = tmp_path / "t.tar"
    ckpt.write_bytes(b"x")
    plain = make_plan(load_suite(write_suite(suite_64(tmp_path, str(ckpt), None), "a.yaml")))
    native = make_plan(load_suite(write_suite(suite_64(tmp_path, {"path": str(ckpt)}, None), "b.yaml")))
    kedmi = make_plan(load_suite(write_suite(suite_64(tmp_path, {"path": str(ckpt), "format": "kedmi"}, None),
                                             "c.yaml")))
    assert plain.target_keys == native.target_keys != kedmi.target_keys


@pytest.mark.slow
def test_suite_runs_on_published_checkpoints(tmp_path, one_thread):
    target = published_file(tmp_path / "VGG16.tar", "vgg16-64", "kedmi")
    evaluator = published_file(tmp_path / "facenet112.pth", "facenet112", "mibench")
    suite = suite_64(tmp_path, {"path": str(tmp_path / "VGG16.tar"), "format": "kedmi"},
                     {"path": str(tmp_path / "facenet112.pth"), "format": "mibench"})
    run = run_tiny(suite, tmp_path)
    record = json.loads((run / "records" / "published__mif__seed0.json").read_text())
    assert record["status"] == "ok"
    assert record["setup"]["evaluation"]["checkpoint"] == {"path": str(tmp_path / "facenet112.pth"),
                                                           "format": "mibench"}
    store = run / "store"
    for kind, model in (("targets", target), ("evaluators", evaluator)):
        (stored,) = [torch.load(p, weights_only=True) for p in (store / kind).glob("*/data.pt")]
        assert stored["report"]["checkpoint"]["format"] in ("kedmi", "mibench")  # loaded, not trained
        assert all(torch.equal(stored["state_dict"][k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("value", "message"), [
    ({"path": "x.tar", "format": "tensorflow"},
     "defenses[0].checkpoint.format: must be one of 'native', 'kedmi', 'gmi', 'mibench' or 'ppa', got 'tensorflow'"),
    ({"path": "x.tar", "fmt": "kedmi"}, "defenses[0].checkpoint.fmt: unknown key. Did you mean 'format'?"),
    (5, "defenses[0].checkpoint: give a file path or {path: FILE, format: native|kedmi|gmi|mibench|ppa}, got int"),
])
def test_bad_checkpoint_entries_name_field_and_fix(write_suite, capsys, value, message):
    suite = tiny_suite(defenses=[{"id": "hard", "name": "label_smoothing", "checkpoint": value}])
    assert main(["validate", "--schema-only", str(write_suite(suite))]) == 2
    err = capsys.readouterr().err
    assert message in err and ".str:" not in err


def test_a_plain_path_stays_a_string_in_the_resolved_suite(write_suite):
    suite = tiny_suite(defenses=[{"id": "a", "name": "label_smoothing", "checkpoint": "t.pt"},
                                 {"id": "b", "name": "label_smoothing", "checkpoint": {"path": "u.tar",
                                                                                        "format": "kedmi"}}])
    dumped = load_suite(write_suite(suite)).suite.model_dump(mode="json")
    assert [d["checkpoint"] for d in dumped["defenses"]] == ["t.pt", {"path": "u.tar", "format": "kedmi"}]
