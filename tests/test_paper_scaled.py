"""A scaled copy of suites/facescrub.yaml runs end to end on CPU.

Same architectures as the paper setup (a ResNet-152 target at 224 px, Inception-v3 evaluation at
299 px, randomly initialised), a handful of synthetic identities at 224 px, a tiny generator with
the StyleGAN2-ADA interface pickled to a temp file and loaded through the real adapter, PPA, and all
four metrics (attack accuracy, KNN distance, FaceNet distance, FID with the FID Inception network,
the last two from randomly initialised weights files). One or two steps per stage.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml

from inversion_bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from facenet_pytorch import InceptionResnetV1

    from inversion_bench.metrics.file_extractors import fid_inception_architecture

    sys.path.insert(0, str(TESTS))
    import tiny_stylegan

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(fid_inception_architecture().state_dict(), d / "pt_inception.pth")
    torch.save(InceptionResnetV1(pretrained=None, classify=True, num_classes=8).state_dict(), d / "facenet.pt")
    with open(d / "ffhq_tiny.pkl", "wb") as fh:
        pickle.dump(tiny_stylegan.make_pickle_dict(resolution=64), fh)
    return d


def scaled_suite(weights: Path, out: Path) -> dict:
    return {
        "include": str(ROOT / "suites" / "facescrub.yaml"),
        "name": "facescrub-scaled",
        "dataset": {"name": "synthetic-faces", "params": {"num_identities": 4, "images_per_identity": 5, "seed": 0},
                    "resolution": 224,
                    "split": {"private_identities": "all", "public_identities": 0, "test_fraction": 0.2, "seed": 42}},
        "target": {"architecture": {"params": {"pretrained": None}},
                   "training": {"epochs": 1, "batch_size": 8, "workers": 0}},
        "evaluation": {"architecture": {"params": {"pretrained": None}},
                       "training": {"epochs": 1, "batch_size": 8, "workers": 0}},
        # one target: a second ResNet-152 (negative smoothing, the same architecture, attack and metrics; its
        # criterion is tested at small scale in test_label_smoothing) cost 40 % of the test's CPU time
        "defenses": [{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
        "attacks": [{"id": "ppa", "name": "ppa", "label": "PPA", "params": {
            "search_space_size": 8, "num_candidates": 2, "num_steps": 2, "center_crop": 50, "resize": 224,
            "samples_per_target": 2, "iterations": 2}}],
        "prior": {"params": {"pickle": "stylegan2_ffhq", "code_dir": "stylegan2_code"}},
        "weights": {"stylegan2_ffhq": str(weights / "ffhq_tiny.pkl"), "stylegan2_code": str(TESTS),
                    "facenet": str(weights / "facenet.pt"), "fid_inception": str(weights / "pt_inception.pth")},
        "seeds": [0],  # facescrub.yaml runs 5
        "run": {"device": "cpu", "amp": False, "channels_last": False, "progress": False, "output": str(out),
                "attack_batch_size": 8, "eval_batch_size": 8},
    }


def test_facescrub_suites_validate_schema_only(capsys):
    for name in ("facescrub", "celeba"):
        assert main(["validate", "--schema-only", str(ROOT / "suites" / f"{name}.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_doctor_and_run_stop_with_the_missing_list(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = ROOT / "suites" / "facescrub.yaml"
    assert main(["doctor", str(suite)]) == 2
    out = capsys.readouterr().out
    for expected in ("[MISSING] dataset.params", "data/facescrub", "resnet152-394f9c45.pth", "ffhq.pkl",
                     "20180402-114759-vggface2.pt", "pt_inception-2015-12-05-6726825d.pth",
                     "https://download.pytorch.org/models/resnet152-394f9c45.pth"):
        assert expected in out, expected
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "data/facescrub" in err and "ffhq.pkl" in err
    assert not (tmp_path / "runs").exists()  # stopped before any work


def test_scaled_facescrub_runs_end_to_end(weights, tmp_path, capsys):
    suite = tmp_path / "facescrub-scaled.yaml"
    suite.write_text(yaml.safe_dump(scaled_suite(weights, tmp_path / "runs")))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    assert main(["run", str(suite), "--no-tracking"]) == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "facescrub-scaled" / "records").glob("*.json")]
    assert len(records) == 1
    for r in records:
        assert r["status"] == "ok", r.get("traceback")
        assert set(r["metrics"]) >= {"test_accuracy", "attack_acc@1", "attack_acc@5", "knn_distance",
                                     "facenet_distance", "fid"}
        assert r["num_reconstructions"] == 4 * 2
        assert r["evaluator"]["architecture"] == "inception_v3"
