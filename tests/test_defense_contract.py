"""Every registered defense (built-in and entry-point plugins) honours the Defense contract.

With default parameters each defense trains a tiny target through ``configure_model`` and ``fit``,
returns a Classifier with finite logits and features, leaves ``trainer.result`` set, reports
finite numbers, and its stored state dict reloads into a freshly built, configured model with
identical outputs (what the runner does when a target comes from the store).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

from inversion_bench.interfaces import Classifier, Defense, PostprocessedClassifier
from inversion_bench.models import SmallCNN
from inversion_bench.registry import defenses, load_plugins
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe
from tests.conftest import DEFENSE_CLASSES

# the defenses of this project (until they are listed in inversion_bench.registry.BUILTIN_MODULES)
DEFENSE_MODULES = tuple(f"inversion_bench.defenses.{m}"
                        for m in ("label_smoothing", "mid", "bido", "tl_dmi", "dp_sgd", "output"))

NUM_CLASSES = DEFENSE_CLASSES


def _names() -> list[str]:
    load_plugins()
    for mod in DEFENSE_MODULES:
        importlib.import_module(mod)
    return defenses.names()


NAMES = _names()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(defense_splits):
    return defense_splits


def _defense(name: str) -> Defense:
    info = defenses.info(name)
    try:
        params = info.params_model()
    except Exception as exc:  # a third-party plugin without defaults for every parameter
        pytest.skip(f"{name} has required parameters: {exc}")
    return info.obj(params)


def _build(defense: Defense, seed: int) -> Classifier:
    torch.manual_seed(seed)
    model = SmallCNN(SmallCNN.Params(width=8)).build(NUM_CLASSES, 16, {})
    return defense.configure_model(model)


def test_the_project_defenses_are_registered():
    for name in ("label-smoothing", "mid", "bido", "tl-dmi", "dp-sgd", "top-k-logits", "confidence-rounding",
                 "trap-mid", "random-erasing", "online-label-smoothing", "gaussian-noise", "ssd"):
        assert name in NAMES
        assert defenses.info(name).doc  # `bench list` shows the first docstring line
    for old in ("label_smoothing", "tl_dmi", "dp_sgd", "top_k_logits", "confidence_rounding"):  # aliases
        assert defenses.info(old).name == old.replace("_", "-")


@pytest.mark.parametrize("name", NAMES)
def test_defense_trains_and_reloads(name, splits):
    defense = _defense(name)
    model = _build(defense, seed=0)
    assert isinstance(model, Classifier)
    recipe = TrainingRecipe(epochs=1, batch_size=16)
    trainer = Trainer(recipe, splits.private_train, splits.private_test, RunSettings(progress=False), seed=0,
                      desc=f"contract {name}", public=splits.public)
    returned = defense.fit(model, trainer)
    assert returned is model or isinstance(returned, Classifier)
    model = returned if returned is not None else model

    # a usable classifier
    assert trainer.result is not None and 0.0 <= trainer.result.test_accuracy <= 1.0
    model.eval()
    x = splits.private_test.images()
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (len(x), NUM_CLASSES) and torch.isfinite(logits).all()
    assert feats.shape == (len(x), model.feature_dim) and torch.isfinite(feats).all()
    # what the runner does next, after training or a checkpoint and before storing the target
    calibrated = defense.calibrate(model, splits.private_test, RunSettings(progress=False))
    for key, value in {**defense.report(), **calibrated}.items():
        assert isinstance(key, str) and isinstance(value, int | float) and not math.isnan(value), (key, value)
    if defense.has_postprocess:
        with torch.no_grad():
            seen = PostprocessedClassifier(model, defense.postprocess)(x)
        assert seen.shape == logits.shape and torch.isfinite(seen).all()
        attacked = _defense(name)  # what the runner builds for every attack job
        attacked.bind(model)
        with torch.no_grad():
            seen = PostprocessedClassifier(model, attacked.postprocess)(x)
        assert seen.shape == logits.shape and torch.isfinite(seen).all()

    # the stored state dict reloads into a fresh, configured model (new defense instance, other seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fresh = _build(_defense(name), seed=123)
    assert sorted(fresh.state_dict()) == sorted(state)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), logits)
        assert torch.equal(fresh.features(x), feats)
    reloaded = _defense(name)
    reloaded.bind(fresh)  # what calibrate kept travels with the stored state
    if defense.has_postprocess:
        with torch.no_grad():
            assert torch.isfinite(PostprocessedClassifier(fresh, reloaded.postprocess)(x)).all()


def test_defenses_suite_validates():
    from inversion_bench.config import load_suite

    root = Path(__file__).resolve().parent.parent
    loaded = load_suite(root / "suites" / "defenses.yaml")
    s = loaded.suite
    assert s.name == "defenses" and s.baseline_id == "hard"
    names = {defenses.canonical(d.name) for d in s.defenses}
    assert set(NAMES) <= names  # every built-in defense (issue 18's included)
    assert all(d.label for d in s.defenses)
    alphas = sorted(d.params.alpha for d in loaded.defenses.values() if defenses.canonical(d.name) == "label-smoothing")
    assert alphas == [-0.05, 0.0, 0.1]
