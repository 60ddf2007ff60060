"""examples/plugin-attack installs as a package; its black-box attack is listed, runs in a suite through the
CLI behind a score oracle (queries counted) and lands on the leaderboard grouped with its access level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_suite
from tests.example_plugins import bench_with, imported_example, install_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plugin-attack"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    return install_example(tmp_path_factory, "plugin-attack")


def _bench(args, site, cwd):
    return bench_with(args, site, cwd, OMP_NUM_THREADS="1")


@pytest.fixture
def example_module():
    """The example's attack module imported in this process (its registration undone afterwards)."""
    from inversion_bench.registry import attacks

    with imported_example(attacks, "plugin-attack", "bench_example_attack"):
        from bench_example_attack import attack
        yield attack


def test_pure_functions(example_module):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    chosen = example_module.select_candidates(probs, torch.tensor([0, 2]), 2)
    assert chosen.tolist() == [[0, 2], [2, 3]]
    images, proposal = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    kept, scores = example_module.hill_climb_step(images, torch.tensor([0.5, 0.5]), proposal, torch.tensor([0.6, 0.4]))
    assert kept[0].eq(1).all() and kept[1].eq(0).all() and scores.tolist() == pytest.approx([0.6, 0.5])


class _Public:
    """Stands in for the attacker's public data (``LabeledImages``): only ``images()`` and ``len``."""

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images

    def __len__(self) -> int:
        return len(self._images)

    def images(self) -> torch.Tensor:
        return self._images


def test_run_sees_only_the_score_oracle_and_never_lowers_the_confidence(example_module):
    from inversion_bench.interfaces import AttackContext
    from inversion_bench.oracle import target_for

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    model.num_classes = 3
    oracle, counter = target_for("black-box", model, torch.device("cpu"))  # what the runner hands a black-box attack
    attack = example_module.PublicSearch(example_module.PublicSearch.Params(candidates=2, steps=6, sigma=0.1))
    ctx = AttackContext(device=torch.device("cpu"), seed=0, batch_size=4, public=_Public(torch.rand(9, 3, 4, 4)))
    rec = attack.run(oracle, torch.tensor([0, 2]), None, ctx)
    rec.check()
    assert rec.images.shape == (4, 3, 4, 4) and rec.labels.tolist() == [0, 0, 2, 2]
    assert counter.queries == 9 + 4 * (1 + 6)  # every image the attack asked about was counted
    confidence = rec.trace["confidence"]
    assert len(confidence) == 7 and all(b >= a for a, b in zip(confidence, confidence[1:], strict=False))
    assert rec.images.min() >= 0 and rec.images.max() <= 1


def test_example_attack_is_listed_runs_and_lands_on_the_leaderboard(installed_example, write_suite, tmp_path):
    out = _bench(["list", "attacks"], installed_example, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "public-search" in out.stdout
    assert "entry point bench.attacks:public-search (bench-example-attack 0.1.0)" in out.stdout
    assert "access: black-box" in out.stdout

    guide = (EXAMPLE.parent.parent / "docs" / "guides" / "attack-plugin.md").read_text(encoding="utf-8")
    (tmp_path / "search.yaml").write_text(guide.split("# search.yaml", 1)[1].split("\n", 1)[1].split("```", 1)[0])
    out = _bench(["validate", "search.yaml"], installed_example, tmp_path)  # the guide's suite, from any folder
    assert out.returncode == 0, out.stdout + out.stderr

    data = tiny_suite(
        defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
        attacks=[{"id": "mif", "name": "mi-face", "params": {"steps": 3, "restarts": 2}},
                 {"id": "search", "name": "public-search", "label": "Public search",
                  "params": {"candidates": 2, "steps": 3}}],
        metrics=["test_accuracy", "attack_accuracy"])
    suite = write_suite(data)
    out = _bench(["run", str(suite), "--no-tracking", "--no-progress", "--no-figures"], installed_example, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "runs" / "tiny" / "records" / "hard__search__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["attack_plugin"] == "public-search" and rec["access"] == "black-box"
    assert rec["attack_params"] == {"candidates": 2, "steps": 3, "sigma": 0.05}
    assert rec["num_reconstructions"] == 5 * 2  # 5 private identities x 2 candidates
    # 60 public images once, then the 10 candidates before and at each of the 3 steps
    assert rec["queries"] == {"total": 60 + 10 * (1 + 3), "per_identity": (60 + 10 * 4) / 5}
    assert 0.0 <= rec["metrics"]["attack_acc@1"] <= 1.0
    md = (tmp_path / "runs" / "tiny" / "leaderboard" / "leaderboard.md").read_text()
    assert "Public search [black-box]: attack_acc@1 (%) ↓" in md
    assert md.index("mif [white-box]") < md.index("Public search [black-box]")
