"""Published checkpoints (issue 26, item 1): the 64 px protocol's architectures and PPA's ResNet-152 /
Inception-v3 load the files of KED-MI, GMI, MIBench and PPA in their wrappers, every key and shape checked.

The manifests in tests/fixtures/checkpoint_manifests/ list the key names and shapes of the reference
models (state_dict() of the reference classes at the commits they name, 1000 classes); a file built
with exactly those names and shapes, saved in the publisher's wrapper, must load and give the outputs
of the same weights loaded directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from inversion_bench.checkpoints import CheckpointError, CheckpointRef, load_into, unwrap
from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.registry import REGISTRIES

MANIFESTS = Path(__file__).parent / "fixtures" / "checkpoint_manifests"
# this package's name prefix -> the publisher's, written out here independently of the loader's rules
TO_KEDMI = (("head.", "fc_layer."), ("body.", ""))
TO_PPA = (("head.", "model.fc."), ("body.net.", "model."))


def build(arch: str, classes: int = 1000, **params) -> nn.Module:
    cls = REGISTRIES["architectures"].get(arch)
    torch.manual_seed(0)
    model = cls(cls.Params(**params)).build(classes, 64, {})
    for m in model.modules():  # batch-norm statistics that matter for the comparison
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def published(model: nn.Module, rules: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        ours, theirs = next(r for r in rules if key.startswith(r[0]))
        out[theirs + key[len(ours):]] = value.clone()
    return out


def manifest(arch: str) -> dict[str, list[int]]:
    doc = json.loads((MANIFESTS / f"{arch}.json").read_text())
    assert doc["sources"] and all(s["commit"] for s in doc["sources"])
    return {name: shape for name, shape in doc["keys"]}


def load(arch: str, path: Path, fmt: str, classes: int = 1000, **params) -> nn.Module:
    cls = REGISTRIES["architectures"].get(arch)
    model = cls(cls.Params(**params)).build(classes, 64, {})
    load_into(model, path, fmt, arch, cls.checkpoint_prefixes, cls.mibench_name)
    return model.eval()


WRAPPERS = {
    "kedmi": lambda sd, arch: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    "gmi": lambda sd, arch: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    "mibench": lambda sd, arch: {"state_dict": sd, "config": {"num_classes": 1000},
                                 "model_name": REGISTRIES["architectures"].get(arch).mibench_name},
}


@pytest.mark.parametrize(("arch", "fmt", "size"), [
    ("vgg16-64", "kedmi", 64), ("ir152-64", "mibench", 64), ("facenet64", "kedmi", 64),
    ("facenet112", "gmi", 112), ("facenet112", "mibench", 112), ("vgg16-64", "mibench", 64)])
def test_published_layout_loads_with_identical_outputs(tmp_path, arch, fmt, size, one_thread):
    direct = build(arch)
    sd = published(direct, TO_KEDMI)
    assert {k: list(v.shape) for k, v in sd.items()} == manifest(arch)  # the reference's names and shapes
    path = tmp_path / f"{arch}.tar"
    torch.save(WRAPPERS[fmt](sd, arch), path)
    loaded = load(arch, path, fmt)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), direct(x))
        assert torch.equal(loaded.features(x), direct.features(x))


@pytest.mark.parametrize("arch", ["resnet152", "inception_v3"])
def test_ppa_layout_loads_with_identical_outputs(tmp_path, arch, one_thread):
    direct = build(arch, normalize="ppa")
    sd = published(direct, TO_PPA)
    assert {k: list(v.shape) for k, v in sd.items()} == manifest(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save({"epoch": 100, "model_state_dict": {"_orig_mod." + k: v for k, v in sd.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    loaded = load(arch, path, "ppa", normalize="ppa")
    x = torch.rand(1, 3, 64, 64)  # resized to the network's 224 / 299 px by the classifier
    with torch.no_grad():
        assert torch.equal(loaded(x), direct(x))
    assert torch.allclose(loaded.mean, torch.full((1, 3, 1, 1), 0.5))  # PPA's Normalize(0.5, 0.5)


def test_wrong_shape_missing_and_unexpected_keys_are_named(tmp_path):
    sd = published(build("facenet64", classes=5), TO_KEDMI)
    sd["output_layer.3.weight"] = torch.zeros(512, 100)
    del sd["feature.body.2.res_layer.1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.tar"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as info:
        load("facenet64", path, "kedmi", classes=5)
    msg = str(info.value)
    assert str(path) in msg and "format kedmi" in msg and "facenet64" in msg
    assert "1 missing key(s) (body.feature.body.2.res_layer.1.weight)" in msg
    assert "1 unexpected key(s) in the file (extra.weight)" in msg
    assert "body.output_layer.3.weight (in the file: output_layer.3.weight): file [512, 100], model [512, 8192]" in msg


def test_class_count_mismatch_says_why(tmp_path):
    path = tmp_path / "t.tar"
    torch.save({"state_dict": published(build("vgg16-64", classes=1000), TO_KEDMI)}, path)
    with pytest.raises(CheckpointError, match=r"file \[1000, 2048\], model \[4, 2048\].*classifies 1000 "
                       r"identities, the model 4 \(dataset.split.private_identities\)"):
        load("vgg16-64", path, "kedmi", classes=4)


def test_missing_batch_norm_counters_are_tolerated(tmp_path):
    direct = build("facenet64", classes=3)
    sd = {k: v for k, v in published(direct, TO_KEDMI).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.tar"
    torch.save({"state_dict": sd}, path)  # PyTorch < 0.4.1 saved no counters
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load("facenet64", path, "kedmi", classes=3)(x), direct(x))


def test_mibench_model_name_is_checked(tmp_path):
    sd = published(build("facenet64", classes=3), TO_KEDMI)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": sd, "config": {}, "model_name": "ir152_64"}, path)
    with pytest.raises(CheckpointError, match="MIBench's 'ir152_64', not 'facenet64'"):
        load("facenet64", path, "mibench", classes=3)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt cannot be read"):
        load("facenet64", tmp_path / "junk.pt", "kedmi", classes=3)
    with pytest.raises(MissingResourceError, match="nothere.pt not found"):
        load("facenet64", tmp_path / "nothere.pt", "kedmi", classes=3)
    with pytest.raises(CheckpointError, match="no state dict found"):
        unwrap({"epoch": 3, "optimizer": {"lr": 1.0}}, tmp_path / "x.pt")


def test_format_unknown_to_the_architecture(tmp_path):
    cls = REGISTRIES["architectures"].get("small-cnn")
    model = cls(cls.Params(width=4)).build(3, 16, {})
    path = tmp_path / "s.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="small-cnn has no layout for format kedmi"):
        load_into(model, path, "kedmi", "small-cnn", cls.checkpoint_prefixes)
    load_into(model, path, "native", "small-cnn", cls.checkpoint_prefixes)  # its own files load


def test_checkpoint_ref_validates_the_format():
    assert CheckpointRef(path="a.tar").format == "native"
    with pytest.raises(ValueError, match="format"):
        CheckpointRef(path="a.tar", format="tensorflow")


def test_face_evolve_backbone_starts_the_ir_models(tmp_path):
    from inversion_bench.published_models import IRBackbone

    torch.manual_seed(3)
    evolve = IRBackbone(152, output_side=7)  # face.evoLVe's file also holds the 112 px output_layer
    path = tmp_path / "Backbone_IR_152.pth"
    torch.save(evolve.state_dict(), path)
    cls = REGISTRIES["architectures"].get("ir152-64")
    model = cls(cls.Params(backbone=str(path))).build(3, 64, {})
    own = model.body.feature.state_dict()
    assert all(torch.equal(own[k], v) for k, v in evolve.state_dict().items() if not k.startswith("output_layer"))
    assert cls(cls.Params(backbone="ir152")).required_weights() == {
        "ir152": "face.evoLVe IR-152 backbone (Backbone_IR_152_Epoch_112_Batch_2547328_Time_2019-07-13-02-59_"
                 "checkpoint.pth; MIBench checkpoints_v2.0, classifier/backbones/)"}
    torch.save(IRBackbone(50).state_dict(), tmp_path / "ir50.pth")
    with pytest.raises(ConfigError, match=r"ir50.pth is not a face.evoLVe IR-152 backbone: \d+ missing"):
        build("ir152-64", classes=3, backbone=str(tmp_path / "ir50.pth"))
    with pytest.raises(MissingResourceError, match="nothere.pth"):
        build("facenet64", classes=3, backbone=str(tmp_path / "nothere.pth"))


def test_vgg_starts_from_imagenet_vgg16_bn(tmp_path):
    import torchvision

    torch.manual_seed(4)
    imagenet = torchvision.models.vgg16_bn(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "vgg16_bn.pth")
    cls = REGISTRIES["architectures"].get("vgg16-64")
    model = cls(cls.Params(pretrained=str(tmp_path / "vgg16_bn.pth"))).build(3, 64, {})
    assert torch.equal(model.body.feature[0].weight, imagenet.features[0].weight)
    torch.save(torchvision.models.vgg11_bn(weights=None).state_dict(), tmp_path / "vgg11.pth")
    with pytest.raises(ConfigError, match="vgg11.pth is not torchvision's vgg16_bn"):
        cls(cls.Params(pretrained=str(tmp_path / "vgg11.pth"))).build(3, 64, {})
