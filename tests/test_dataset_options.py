"""Dataset options (crop of non-square images, grayscale), MI-Face's channels and training in steps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from inversion_bench.attacks.mi_face import MIFace
from inversion_bench.config import load_suite
from inversion_bench.data import ImageOptions, LabeledImages, TensorFaces, is_grayscale
from inversion_bench.data.celeba import CelebA
from inversion_bench.data.image_folder import ImageFolder, ImageFolderFaces, decode_image
from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import AttackContext
from inversion_bench.training import RunSettings, Trainer, TrainingRecipe, cross_entropy, lr_at_step
from tests.conftest import tiny_suite

# --------------------------------------------------------------------------------------------
# crop and grayscale


def _wide(path: Path, w: int = 40, h: int = 20, colour=(200, 30, 30)) -> Path:
    Image.new("RGB", (w, h), colour).save(path)
    return path


def _folder(root: Path, sizes: list[tuple[int, int]], identities: int = 2) -> Path:
    for ident in "abcd"[:identities]:
        (root / ident).mkdir(parents=True)
        for k, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), (200, 30 + 10 * k, 30)).save(root / ident / f"{k}.png")
    return root


def test_defaults_leave_the_dump_unchanged():
    assert ImageOptions().model_dump(mode="json") == {}
    prm = ImageFolder.Params(root="/x")
    assert "crop" not in prm.model_dump(mode="json") and "grayscale" not in prm.model_dump(mode="json")
    assert ImageFolder.Params(root="/x", crop="pad", grayscale=True).model_dump(mode="json")["crop"] == "pad"
    assert "crop" not in CelebA.Params(root="/x").model_dump(mode="json")
    assert CelebA.Params(root="/x", grayscale=True).model_dump(mode="json")["grayscale"] is True
    with pytest.raises(ValidationError):
        ImageFolder.Params(root="/x", crop="stretch")


def test_center_crop_and_pad(tmp_path):
    path = _wide(tmp_path / "wide.png")
    size: list[int] = []
    center = decode_image(path, 16, "center", size=size)
    assert size == [40, 20] and center.shape == (3, 16, 16)
    assert center.min() >= 25  # all red: nothing added
    pad = decode_image(path, 16, "pad")
    assert pad.shape == (3, 16, 16)
    assert pad[:, :2].max() <= 5 and pad[:, -2:].max() <= 5  # black bands above and below
    assert abs(int(pad[0, 8, 8]) - 200) <= 3  # the image in the middle
    assert (decode_image(path, 16) == center).all()  # the default is today's centre crop


def test_grayscale_has_three_equal_channels(tmp_path):
    arr = decode_image(_wide(tmp_path / "wide.png"), 16, grayscale=True)
    assert arr.shape == (3, 16, 16)
    assert (arr[0] == arr[1]).all() and (arr[1] == arr[2]).all()
    assert 60 < int(arr[0, 8, 8]) < 120  # luminance of (200, 30, 30), not the red channel


def test_image_folder_options_and_log_once(tmp_path, caplog):
    root = _folder(tmp_path / "faces", [(40, 20), (20, 40), (24, 24)])
    col = ImageFolder(ImageFolder.Params(root=str(root), crop="pad", grayscale=True)).load(16)
    assert isinstance(col, ImageFolderFaces) and col.grayscale and col.crop == "pad"
    with caplog.at_level(logging.INFO, logger="inversion_bench.data.image_folder"):
        images = col.get(range(len(col)))
        col.get(range(len(col)))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    notes = [r.getMessage() for r in caplog.records if "non-square" in r.getMessage()]
    assert len(notes) == 1 and "padded" in notes[0] and "crop: pad" in notes[0]
    sub = LabeledImages(col, torch.arange(2), torch.zeros(2), "x")
    assert is_grayscale(sub) and is_grayscale(col)
    default = ImageFolder(ImageFolder.Params(root=str(root))).load(16)
    assert not default.grayscale and default.crop == "center" and not is_grayscale(None)


def test_square_images_log_nothing(tmp_path, caplog):
    root = _folder(tmp_path / "faces", [(24, 24), (24, 24)])
    col = ImageFolder(ImageFolder.Params(root=str(root))).load(16)
    with caplog.at_level(logging.INFO, logger="inversion_bench.data.image_folder"):
        col.get(range(len(col)))
    assert not [r for r in caplog.records if "non-square" in r.getMessage()]


def test_options_change_the_data_key(write_suite, tmp_path):
    from inversion_bench.plan import make_plan

    root = _folder(tmp_path / "faces", [(24, 24)] * 4, identities=4)
    keys = []
    for extra in ({}, {"crop": "pad"}, {"grayscale": True}):
        suite = tiny_suite(dataset={"name": "image-folder", "params": {"root": str(root), **extra},
                                    "resolution": 16, "split": {"private_identities": 2, "public_identities": 2,
                                                                 "test_fraction": 0.25, "seed": 1}})
        keys.append(make_plan(load_suite(write_suite(suite))).data_key)
    assert len(set(keys)) == 3


# --------------------------------------------------------------------------------------------
# MI-Face channels


def _gray_public(n: int = 4, res: int = 8) -> LabeledImages:
    col = TensorFaces(torch.full((n, 3, res, res), 100, dtype=torch.uint8), torch.arange(n), [str(i) for i in range(n)])
    col.grayscale = True
    return LabeledImages(col, torch.arange(n), torch.arange(n), "public")


def _attack(channels, public: LabeledImages | None) -> torch.Tensor:
    torch.manual_seed(0)
    target = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    attack = MIFace(MIFace.Params(steps=3, restarts=2, lr=0.5, start_noise=0.2, channels=channels))
    ctx = AttackContext(device=torch.device("cpu"), seed=0, resolution=8, public=public, progress=False)
    return attack.run(target, torch.tensor([0, 2]), None, ctx).images


def test_mi_face_channels():
    assert "channels" not in MIFace.Params().model_dump(mode="json")
    assert MIFace.Params(channels=1).model_dump(mode="json")["channels"] == 1
    gray = _attack("auto", _gray_public())
    assert gray.shape == (4, 3, 8, 8)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert torch.equal(gray, _attack(1, None))
    rgb = _attack("auto", None)
    assert torch.equal(rgb, _attack(3, _gray_public()))
    assert not torch.equal(rgb[:, 0], rgb[:, 1])


# --------------------------------------------------------------------------------------------
# training length in steps


def test_recipe_steps_or_epochs():
    assert TrainingRecipe().model_dump(mode="json")["epochs"] == 30
    assert "steps" not in TrainingRecipe().model_dump(mode="json")
    r = TrainingRecipe(steps=100, milestones=[0.5])
    dumped = r.model_dump(mode="json")
    assert dumped["steps"] == 100 and "epochs" not in dumped and r.epochs is None
    assert TrainingRecipe.model_validate(dumped) == r
    assert lr_at_step(r, 49) == pytest.approx(1e-3) and lr_at_step(r, 50) == pytest.approx(1e-4)
    with pytest.raises(ValidationError, match=r"steps \(10\) and epochs \(3\) are both given"):
        TrainingRecipe(epochs=3, steps=10)
    with pytest.raises(ValidationError):
        TrainingRecipe(steps=0)


def test_suite_with_steps_and_with_both(write_suite):
    suite = tiny_suite()
    suite["target"] = {**suite["target"], "training": {"steps": 7, "batch_size": 16}}
    loaded = load_suite(write_suite(suite))
    assert loaded.suite.target.training.steps == 7
    suite["target"]["training"] = {"steps": 7, "epochs": 2}
    with pytest.raises(ConfigError, match=r"target\.training: steps \(7\) and epochs \(2\) are both given"):
        load_suite(write_suite(suite))


def _data(n: int = 20) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    col = TensorFaces(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 2,
                      ["a", "b"])
    return LabeledImages(col, torch.arange(n), torch.arange(n) % 2, "train")


def test_trainer_runs_exactly_the_steps_with_milestones():
    recipe = TrainingRecipe(steps=7, batch_size=8, lr=0.01, milestones=[0.5], augmentation={"color_jitter": None})
    data = _data()  # 3 batches per epoch: 7 steps are 2 epochs and one batch
    lrs: list[float] = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    trainer = Trainer(recipe, data, data, RunSettings(progress=False), seed=0)
    result = trainer.fit(model, cross_entropy, step_hook=lambda m, opt: lrs.append(opt.param_groups[0]["lr"]))
    assert len(lrs) == 7
    assert lrs[:4] == [pytest.approx(0.01)] * 4 and lrs[4:] == [pytest.approx(0.001)] * 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_trainer_in_epochs_unchanged():
    recipe = TrainingRecipe(epochs=2, batch_size=8, milestones=[0.5], augmentation={"color_jitter": None})
    steps: list[float] = []
    trainer = Trainer(recipe, _data(), _data(), RunSettings(progress=False), seed=0)
    result = trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), cross_entropy,
                         step_hook=lambda m, opt: steps.append(opt.param_groups[0]["lr"]))
    assert len(steps) == 6 and steps[:3] == [pytest.approx(1e-3)] * 3 and steps[3:] == [pytest.approx(1e-4)] * 3
    assert len(result.history) == 2
