"""Access levels: what each attack gets as its target, and what it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from inversion_bench.cli import main
from inversion_bench.defenses.output import ConfidenceRounding, TopKLogits
from inversion_bench.errors import AccessError
from inversion_bench.interfaces import PostprocessedClassifier
from inversion_bench.oracle import LabelOracle, QueryCounter, ScoreOracle, plain, target_for
from tests.conftest import tiny_suite

CPU = torch.device("cpu")


class Linear(nn.Module):
    """A 3-class classifier on 3x4x4 images with fixed weights."""

    num_classes = 3
    input_size = 4

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 3)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 48, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))

    def features(self, x):
        return x.flatten(1)


@pytest.fixture
def images():
    return torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def test_score_oracle_returns_the_defended_probabilities_and_counts_queries(images):
    model = Linear()
    oracle = ScoreOracle(model, CPU)
    probs = oracle(images)
    assert torch.allclose(plain(probs), torch.softmax(model(images), 1))
    assert not probs.requires_grad
    oracle(images[:2])
    assert oracle.queries == 8 and oracle.num_classes == 3 and oracle.access == "black-box"
    top1 = ScoreOracle(PostprocessedClassifier(model, TopKLogits(TopKLogits.Params(k=1)).postprocess), CPU)
    hard = plain(top1(images))  # top-1 logits: all probability mass on the argmax
    assert torch.equal(hard.argmax(1), model(images).argmax(1)) and torch.allclose(hard.max(1).values,
                                                                                    torch.ones(6))


def test_label_oracle_returns_top1_labels_only(images):
    model = Linear()
    oracle = LabelOracle(model, CPU)
    labels = oracle(images)
    assert labels.dtype == torch.int64 and labels.shape == (6,)
    assert torch.equal(plain(labels), model(images).argmax(1))
    assert oracle.queries == 6


@pytest.mark.parametrize("make", [ScoreOracle, LabelOracle])
def test_oracles_refuse_gradients_parameters_and_changes(make, images):
    oracle = make(Linear(), CPU)
    access = oracle.access
    with pytest.raises(AccessError, match=f"{access} access gives no gradients"):
        oracle(images.clone().requires_grad_())
    for name in ("parameters", "features", "fc", "_model", "state_dict"):
        with pytest.raises(AccessError, match=f"a {access} oracle has no attribute '{name}'"):
            getattr(oracle, name)
    with pytest.raises(AccessError, match="cannot be changed"):
        oracle.num_classes = 5
    out = oracle(images).float()
    derived = (out * 2).sum()  # anything computed from an oracle's output keeps the guard
    with pytest.raises(AccessError, match=f"backward\\(\\) was called on outputs of a {access} oracle"):
        derived.backward()
    assert oracle.queries == 6  # the refused query was not counted


def test_white_box_attacks_get_the_model_with_a_query_counter(images):
    model = Linear()
    target, counter = target_for("white-box", model, CPU)
    assert target is model and isinstance(counter, QueryCounter)
    model(images)
    model(images[:1])
    assert counter.queries == 7
    counter.close()
    model(images)
    assert counter.queries == 7  # hook removed
    with pytest.raises(ValueError, match="unknown access level 'grey-box'"):
        target_for("grey-box", model, CPU)


def test_label_only_sees_the_same_labels_behind_argmax_preserving_defenses(images):
    model = Linear()
    plain_labels = plain(LabelOracle(model, CPU)(images))
    for defense in (TopKLogits(TopKLogits.Params(k=1)), TopKLogits(TopKLogits.Params(k=2)),
                    ConfidenceRounding(ConfidenceRounding.Params(decimals=4))):
        defended = LabelOracle(PostprocessedClassifier(model, defense.postprocess), CPU)
        assert torch.equal(plain(defended(images)), plain_labels)


PLUGIN = '''
import torch
from inversion_bench import Attack, PluginParams, Reconstruction, attacks


def _images(identities, ctx, n=2):
    g = ctx.generator()
    return torch.rand(len(identities) * n, 3, ctx.resolution, ctx.resolution, generator=g), \\
        identities.repeat_interleave(n)


@attacks.register("test-label-search")
class LabelSearch(Attack):
    """Random search that keeps images the oracle labels as the attacked class (label-only)."""

    access = "label-only"

    def run(self, target, identities, prior, ctx):
        images, labels = _images(identities, ctx, n=8)
        hit = target(images) == labels
        return Reconstruction(images=images, labels=labels, info={"hits": int(hit.sum())})


@attacks.register("test-peek-parameters")
class PeekParameters(Attack):
    """A black-box attack that reads the model's parameters (not allowed)."""

    access = "black-box"

    def run(self, target, identities, prior, ctx):
        sum(p.sum() for p in target.parameters())


@attacks.register("test-label-backward")
class LabelBackward(Attack):
    """A label-only attack that tries to backpropagate through its oracle (not allowed)."""

    access = "label-only"

    def run(self, target, identities, prior, ctx):
        images, labels = _images(identities, ctx)
        (target(images).float() - labels).pow(2).sum().backward()
'''


@pytest.mark.slow
def test_access_is_enforced_and_recorded_in_a_run(write_suite, tmp_path: Path, one_thread):
    plugin = tmp_path / "access_attacks.py"
    plugin.write_text(PLUGIN)
    suite = write_suite(tiny_suite(
        defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
        attacks=[{"id": "search", "name": "test-label-search"}, {"id": "peek", "name": "test-peek-parameters"},
                 {"id": "back", "name": "test-label-backward"}, {"id": "mif", "name": "mi-face",
                                                                 "params": {"steps": 2, "restarts": 1}}]))
    assert main(["run", str(suite), "--plugin", str(plugin), "--no-tracking", "--no-figures"]) == 1
    recs = {p.name: json.loads(p.read_text()) for p in (tmp_path / "runs" / "tiny" / "records").glob("*.json")}
    search, peek, back, mif = (recs[f"hard__{a}__seed0.json"] for a in ("search", "peek", "back", "mif"))
    assert search["status"] == "ok" and search["access"] == "label-only"
    assert search["queries"] == {"total": 5 * 8, "per_identity": 8.0}
    assert mif["status"] == "ok" and mif["access"] == "white-box" and mif["queries"]["total"] > 0
    assert peek["status"] == back["status"] == "failed"
    assert peek["error"].startswith("AccessError: attack 'test-peek-parameters' declares black-box access: "
                                    "a black-box oracle has no attribute 'parameters'")
    assert back["error"].startswith("AccessError: attack 'test-label-backward' declares label-only access: "
                                    "backward() was called on outputs of a label-only oracle")
    assert peek["metrics"]["test_accuracy"] == search["metrics"]["test_accuracy"]  # failed rows keep utility


def test_an_attack_must_declare_a_known_access_level():
    from inversion_bench.interfaces import Attack

    with pytest.raises(TypeError, match="access = 'grey-box': must be 'white-box', 'black-box' or 'label-only'"):
        type("Grey", (Attack,), {"access": "grey-box", "run": lambda *a: None})


@pytest.mark.parametrize("suite", ["threat-models.yaml", "defenses.yaml"])
def test_threat_model_suites_cover_every_access_level(suite):
    from inversion_bench.config import load_suite
    from inversion_bench.registry import REGISTRIES

    loaded = load_suite(Path(__file__).resolve().parents[1] / "suites" / suite)
    access = {REGISTRIES["attacks"].get(a.name).access for a in loaded.suite.attacks}
    assert access == {"white-box", "black-box", "label-only"}
    defenses = {REGISTRIES["defenses"].canonical(d.name) for d in loaded.suite.defenses}
    assert {"label-smoothing", "top-k-logits", "confidence-rounding"} <= defenses


def test_a_defended_target_stays_in_eval_mode_through_frozen():
    """Regression: the wrapper behind an output defense started in training mode, so ``frozen``
    (which restores the saved mode recursively) put the target into training mode after the first
    white-box attack, and every later attack saw batch-norm batch statistics."""
    from inversion_bench.attacks.common.optimize import frozen

    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3), nn.BatchNorm1d(3))
    model.num_classes, model.input_size = 3, 4
    model.eval()
    wrapped = PostprocessedClassifier(model, TopKLogits(TopKLogits.Params(k=1)).postprocess)
    assert not wrapped.training
    with frozen(wrapped):
        pass
    assert not model.training and not model[2].training
    before = model[2].running_mean.clone()
    LabelOracle(wrapped, CPU)(torch.rand(8, 3, 4, 4))
    assert torch.equal(model[2].running_mean, before)  # queries never update running statistics
