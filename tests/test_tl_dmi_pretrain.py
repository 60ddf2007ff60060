"""TL-DMI with ``pretrain: none`` (the 64 px protocol's configurations: the architecture's ImageNet or face.evoLVe
weights are the public stage): no public pretraining, no public split needed, the frozen layers keep the starting
weights exactly and only the named modules are trained; the parameter stays out of the dumps at its default."""

from __future__ import annotations

import copy

import pytest
import torch

from inversion_bench.defenses.tl_dmi import TLDMI
from inversion_bench.models import SmallCNN
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretrain_none_fine_tunes_the_named_modules_from_the_starting_weights(defense_splits):
    torch.manual_seed(0)
    n = int(defense_splits.private_train.labels.max()) + 1
    model = SmallCNN(SmallCNN.Params(width=8)).build(n, 16, {})
    start = copy.deepcopy(model.state_dict())
    t = Trainer(TrainingRecipe(epochs=1, batch_size=16), defense_splits.private_train, defense_splits.private_test,
                RunSettings(progress=False), seed=0)  # no public split: none is needed
    calls = []
    orig = t.fit
    t.fit = lambda m, criterion, **kw: (calls.append(m), orig(m, criterion, **kw))[1]
    d = TLDMI(TLDMI.Params(pretrain="none", trainable=["body.6", "head"]))
    d.fit(model, t)
    assert len(calls) == 1  # the private fine-tuning only
    after = model.state_dict()
    tuned = ("body.6.", "head.")
    assert all(torch.equal(start[k], after[k]) for k in after if not k.startswith(tuned))
    assert any(not torch.equal(start[k], after[k]) for k in after if k.startswith(tuned) and "weight" in k)
    assert "public_accuracy" not in d.report() and 0.0 < d.report()["trainable_fraction"] < 1.0


def test_pretrain_is_left_out_of_the_dump_at_its_default():
    assert "pretrain" not in TLDMI.Params().model_dump(mode="json")
    assert TLDMI.Params(pretrain="none").model_dump(mode="json")["pretrain"] == "none"


@pytest.mark.parametrize("suite", ["celeba64", "celeba64-ffhq", "celeba64-ir152", "celeba64-facenet64"])
def test_the_64px_suites_name_modules_their_targets_have(suite):
    """TL-DMI's `trainable` lists in the celeba64 suites (the reference's freeze_layers translated to module names)
    resolve on the suite's target architecture, and leave the early layers frozen."""
    from pathlib import Path

    from inversion_bench.config import load_suite
    from inversion_bench.defenses.tl_dmi import trainable_prefixes
    from inversion_bench.registry import REGISTRIES

    loaded = load_suite(Path(__file__).resolve().parent.parent / "suites" / f"{suite}.yaml")
    entry = next(d for d in loaded.suite.defenses if d.name == "tl-dmi")
    params = TLDMI.Params(**entry.params)
    assert params.pretrain == "none"
    arch = REGISTRIES["architectures"].get(loaded.suite.target.architecture.name)
    model = arch(arch.Params()).build(10, 64, {})  # no pretrained weights needed for the module names
    names = trainable_prefixes(model, params.finetune_stages, params.trainable)
    frozen = [n for n, _ in model.named_parameters() if not any(n.startswith(p + ".") for p in names)]
    assert frozen and all(n.startswith("body.feature.") for n in frozen)
