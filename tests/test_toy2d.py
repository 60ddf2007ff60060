"""The 2-D toy of Struppek et al. (ICLR 2024, Fig. 1): dataset, mlp, MI-Face trajectories, figure, suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from inversion_bench.attacks.mi_face import MIFace
from inversion_bench.cli import main
from inversion_bench.data.toy2d import PAD_VALUE, Toy2D, decode_points, encode_points
from inversion_bench.interfaces import AttackContext, Reconstruction
from inversion_bench.leaderboard.toy2d import draw_toy2d, toy2d_inputs
from inversion_bench.models import build_classifier

ROOT = Path(__file__).resolve().parent.parent


def _collection(resolution: int = 1, **params):
    return Toy2D(Toy2D.Params(**params)).load(resolution)


def test_dataset_shape_range_and_determinism():
    c = _collection(num_classes=3, public_classes=2, points_per_class=20, seed=3)
    assert len(c) == 100 and c.identity_names[:3] == ["class0", "class1", "class2"]
    assert torch.equal(torch.bincount(c.targets), torch.full((5,), 20))
    x = c.get(torch.arange(len(c)))
    assert x.shape == (100, 3, 1, 1) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and torch.all(x[:, 2] == PAD_VALUE)
    assert torch.equal(_collection(num_classes=3, public_classes=2, points_per_class=20, seed=3).points, c.points)
    assert not torch.equal(_collection(num_classes=3, public_classes=2, points_per_class=20, seed=4).points, c.points)
    # a larger resolution renders the same point in every pixel
    big = _collection(8, num_classes=3, public_classes=2, points_per_class=20, seed=3).get([0, 1])
    assert big.shape == (2, 3, 8, 8) and torch.allclose(decode_points(big), c.points[:2])


def test_encode_decode_round_trip():
    pts = torch.rand(7, 2)
    assert torch.allclose(decode_points(encode_points(pts, 4)), pts)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        encode_points(torch.rand(3, 3))


def test_mlp_forward_and_features_shapes():
    torch.manual_seed(0)
    m = build_classifier("mlp", {"width": 16, "depth": 3, "in_channels": 2, "input_size": 1}, 4, 8, {})
    x = torch.rand(5, 3, 8, 8, requires_grad=True)
    assert m(x).shape == (5, 4) and m.features(x).shape == (5, 16)
    m(x).sum().backward()
    assert x.grad[:, 2].abs().max() == 0  # the padding channel is not read
    assert build_classifier("mlp", {}, 3, 4, {})(torch.rand(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="mlp expects"):
        m(torch.rand(2, 1, 8, 8))


def test_mi_face_records_trajectory():
    torch.manual_seed(0)
    target = build_classifier("mlp", {"width": 8, "in_channels": 2, "input_size": 1}, 3, 8, {})
    attack = MIFace(MIFace.Params(steps=5, lr=1.0, restarts=2, record_trajectory=True))
    rec = attack.run(target, torch.tensor([0, 2]), None, AttackContext(torch.device("cpu"), seed=0, batch_size=3,
                                                                      progress=False, resolution=8))
    traj = rec.extras["trajectory"]
    assert traj.shape == (6, 4, 3, 8, 8)
    assert torch.all(traj[0, 0] == 0.5)  # the first restart starts at the neutral grey point
    assert torch.equal(traj[-1], rec.images)
    assert "trajectory" not in rec.trace
    rec.check()
    xy = toy2d_inputs(traj)
    assert xy.shape == (6, 4, 2) and torch.allclose(xy[-1], decode_points(rec.images))
    plain = MIFace(MIFace.Params(steps=2, restarts=1)).run(target, torch.tensor([1]), None,
                                                            AttackContext(torch.device("cpu"), seed=0,
                                                                          progress=False, resolution=8))
    assert plain.extras == {}


def test_reconstruction_extras_round_trip(tmp_path):
    rec = Reconstruction(images=torch.rand(2, 3, 4, 4), labels=torch.tensor([0, 1]),
                         extras={"trajectory": torch.rand(3, 2, 3, 4, 4)})
    torch.save(rec.to_state(), tmp_path / "data.pt")
    back = Reconstruction.from_state(torch.load(tmp_path / "data.pt", weights_only=True))
    assert torch.equal(back.extras["trajectory"], rec.extras["trajectory"])
    old = {k: v for k, v in rec.to_state().items() if k != "extras"}  # products stored before extras existed
    assert Reconstruction.from_state(old).extras == {}
    assert Reconstruction(images=rec.images, labels=rec.labels).extras == {}


def test_draw_toy2d_writes_png_and_svg(tmp_path):
    torch.manual_seed(0)
    c = _collection(points_per_class=10, public_classes=0)
    model = build_classifier("mlp", {"width": 8, "in_channels": 2, "input_size": 1}, 3, 1, {})
    traj = torch.linspace(0.2, 0.8, 6).view(6, 1, 1).expand(6, 2, 2)
    panels = [("Hard labels", model, traj, torch.tensor([0, 1])), ("No attack", model, None, None)]
    out = draw_toy2d(panels, c.points, c.targets, tmp_path / "fig" / "toy2d", grid_size=32)
    assert [p.name for p in out] == ["toy2d.png", "toy2d.svg"]
    assert all(p.stat().st_size > 1000 for p in out)
    assert out[0].read_bytes()[:4] == b"\x89PNG" and b"<svg" in out[1].read_bytes()[:2000]


def test_toy2d_suite_runs(tmp_path, one_thread):
    """``bench run suites/toy2d.yaml`` with fewer epochs and steps: every record ok, trajectory stored."""
    suite = yaml.safe_load((ROOT / "suites" / "toy2d.yaml").read_text())
    suite["dataset"]["params"]["points_per_class"] = 40
    for part in ("target", "evaluation"):
        suite[part]["training"]["epochs"] = 10
    suite["attacks"][0]["params"].update(steps=20, restarts=2)
    suite["run"].update(output=str(tmp_path / "runs"), progress=False)
    path = tmp_path / "toy2d.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True))
    assert main(["run", str(path), "--no-tracking"]) == 0
    run = tmp_path / "runs" / "toy2d"
    records = [json.loads(p.read_text()) for p in (run / "records").glob("*.json")]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    for r in records:  # the attack's path is stored with the reconstructions, start included
        state = torch.load(run / "store" / "attacks" / r["keys"]["attack"] / "data.pt", weights_only=True)
        assert toy2d_inputs(state["extras"]["trajectory"]).shape == (21, 6, 2)
    # `bench run` ends with the report, which draws the decision regions and paths of every defense
    figures = run / "leaderboard" / "figures"
    assert (figures / "toy2d.png").stat().st_size > 1000 and (figures / "toy2d.svg").is_file()
    assert "Toy example" in (run / "leaderboard" / "index.html").read_text()
