"""The Inception (FID) and FaceNet extractors from local weights files: end to end with randomly
initialised networks saved to a temp file, a wrong file, a missing file (the message names the file,
its download address and where to put it) and the torch hub cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.interfaces import Reconstruction
from inversion_bench.metrics.file_extractors import (
    FACENET_FILE,
    FACENET_URL,
    FID_INCEPTION_FILE,
    FID_INCEPTION_URL,
    fid_inception_architecture,
)
from inversion_bench.store import file_sha256
from tests.test_metrics import (  # noqa: F401  (_one_thread: the same single-threaded autouse fixture)
    _one_thread,
    brute_knn,
    face_images,
    make_ctx,
    make_private,
    metric,
    nuclear_norm_fid,
    private_rec,
)


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from facenet_pytorch import InceptionResnetV1

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    inception = folder / "random_fid_inception.pth"
    torch.save(fid_inception_architecture().state_dict(), inception)
    facenet = folder / "random_facenet.pt"
    # like the released file: the state dict also holds a classifier (logits.*)
    torch.save(InceptionResnetV1(pretrained=None, classify=True, num_classes=16).state_dict(), facenet)
    return {"fid_inception": inception, "facenet": facenet}


def test_inception_and_facenet_end_to_end(tmp_path: Path, weights_files: dict[str, Path]) -> None:
    private = make_private(num_classes=2, per_class=3)
    ctx = make_ctx(tmp_path, private, weights=weights_files)
    rec_imgs, rec_labels = face_images(2, 2, seed=9)
    rec = Reconstruction(images=rec_imgs.float() / 255, labels=rec_labels)

    fid = metric("fid", extractor="inception")
    assert fid.required_weights().keys() == {"fid_inception"} or fid.required_weights() == {}
    out = fid.compute(rec, ctx)
    ext = fid.extractor(ctx)
    sha = file_sha256(weights_files["fid_inception"])
    assert ext.key == f"inception-v1-{sha}"
    assert out.details["weights_sha256"] == sha and out.details["n_real"] == 6
    real = ctx.features.of_split(ext, private).double().numpy()  # cached by the metric
    with torch.no_grad():  # pytorch-fid's module on [0, 1] images: pool3 features
        fake = ext.module(rec.images)[0].flatten(1).double().numpy()
        check = ext.module(private.images([0, 5]))[0].flatten(1).double().numpy()
    assert real.shape == (6, 2048) and ext.calls == 2
    np.testing.assert_allclose(real[[0, 5]], check, rtol=1e-4, atol=1e-5)
    assert out["fid"] == pytest.approx(nuclear_norm_fid(real, fake), rel=1e-6, abs=1e-6)

    fn = metric("facenet_distance")
    out = fn.compute(rec, ctx)
    fext = fn.extractor(ctx)
    assert out.details["weights_sha256"] == file_sha256(weights_files["facenet"])
    with torch.no_grad():
        x_real = nn.functional.interpolate(private.images(), size=(160, 160), mode="bilinear")
        x_fake = nn.functional.interpolate(rec.images, size=(160, 160), mode="bilinear")
        e_real = fext.module((x_real * 255 - 127.5) / 128).double().numpy()
        e_fake = fext.module((x_fake * 255 - 127.5) / 128).double().numpy()
    assert e_real.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(e_real, axis=1), 1.0, atol=1e-5)
    want = brute_knn(e_fake, rec.labels.numpy(), e_real, private.labels.numpy()).mean()
    assert out["facenet_distance"] == pytest.approx(want, abs=1e-5)
    same = fn.compute(private_rec(private, [0, 1]), ctx)["facenet_distance"]
    assert same == pytest.approx(0.0, abs=1e-9)

    # PRDC in FaceNet space reuses the cached private embeddings (one store entry per extractor)
    pr = metric("prdc", extractor="facenet", k=1)
    res = pr.compute(rec, ctx)
    assert set(res.values) == {"precision", "recall", "density", "coverage"}
    assert pr.extractor(ctx).calls == 1
    assert len([p for p in (tmp_path / "store" / "features").iterdir() if not p.name.startswith(".")]) == 2


def test_wrong_weights_file_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    ctx = make_ctx(tmp_path, make_private(2, 3), weights={"facenet": bogus, "fid_inception": bogus})
    rec = private_rec(ctx.private_train, [0, 1])
    with pytest.raises(ConfigError, match="not FaceNet"):
        metric("facenet_distance").compute(rec, ctx)
    with pytest.raises(ConfigError, match="not FID Inception"):
        metric("fid", extractor="inception").compute(rec, ctx)


def test_missing_weights_name_file_url_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    ctx = make_ctx(tmp_path, make_private(2, 3))
    rec = private_rec(ctx.private_train, [0, 1])
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"

    fid = metric("fid", extractor="inception")
    assert set(fid.required_weights()) == {"fid_inception"}
    assert FID_INCEPTION_URL in fid.required_weights()["fid_inception"]
    with pytest.raises(MissingResourceError) as err:
        fid.compute(rec, ctx)
    msg = str(err.value)
    assert FID_INCEPTION_FILE in msg and FID_INCEPTION_URL in msg and str(hub / FID_INCEPTION_FILE) in msg
    assert fid.missing({}) == [msg]

    fn = metric("facenet_distance", weights="my_facenet")
    assert set(fn.required_weights()) == {"my_facenet"}
    with pytest.raises(MissingResourceError) as err:
        fn.compute(rec, ctx)
    msg = str(err.value)
    assert FACENET_FILE in msg and FACENET_URL in msg and "my_facenet" in msg
    assert str(tmp_path / "torch_home" / "checkpoints" / FACENET_FILE) in msg

    # a configured path that does not exist is reported as such
    absent = tmp_path / "nowhere" / "facenet.pt"
    ctx.weights["facenet"] = absent
    with pytest.raises(MissingResourceError) as err:
        metric("facenet_distance").compute(rec, ctx)
    assert str(absent) in str(err.value) and FACENET_URL in str(err.value)
    assert metric("prdc", extractor="facenet").missing(ctx.weights)


def test_weights_found_in_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    weights_files: dict[str, Path]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / FID_INCEPTION_FILE).symlink_to(weights_files["fid_inception"])
    fid = metric("fid", extractor="inception")
    assert fid.required_weights() == {}
    assert fid.missing({}) == []
    assert fid.plugin.locate({}) == hub / FID_INCEPTION_FILE
