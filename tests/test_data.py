"""Datasets: synthetic-faces, image-folder and the private/public splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from inversion_bench.data import TensorFaces
from inversion_bench.data.image_folder import ImageFolder, ImageFolderFaces
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.data.synthetic import SyntheticFaces, render_identity, save_preview
from inversion_bench.errors import ConfigError
from inversion_bench.registry import datasets


def synthetic(resolution: int = 32, **params) -> TensorFaces:
    col = SyntheticFaces(SyntheticFaces.Params(**params)).load(resolution)
    assert isinstance(col, TensorFaces)
    return col


@pytest.fixture(scope="module")
def faces32() -> TensorFaces:
    """20 identities x 30 images at 32 px (shared by the statistical tests)."""
    return synthetic(32, num_identities=20, images_per_identity=30, seed=3)


# --------------------------------------------------------------------------------------------
# synthetic-faces


def test_synthetic_registered():
    assert datasets.get("synthetic-faces") is SyntheticFaces
    assert datasets.get("image-folder") is ImageFolder
    info = datasets.info("synthetic-faces")
    assert info.doc.startswith("Procedurally rendered face-like identities")
    names = {p["name"] for p in info.parameters()}
    assert {"num_identities", "images_per_identity", "seed", "noise", "variation"} <= names
    with pytest.raises(ValidationError):
        SyntheticFaces.Params(num_identities=0)
    with pytest.raises(ValidationError):
        SyntheticFaces.Params(noise=-0.1)
    with pytest.raises(ValidationError):
        SyntheticFaces.Params(colour="red")


@pytest.mark.parametrize("resolution", [16, 32, 64, 50])
def test_synthetic_shapes_and_range(resolution):
    col = synthetic(resolution, num_identities=3, images_per_identity=4, seed=0)
    assert len(col) == 12
    assert col.resolution == resolution
    assert col.images_u8.shape == (12, 3, resolution, resolution)
    assert col.images_u8.dtype == torch.uint8
    assert col.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert col.identity_names == ["id0000", "id0001", "id0002"]
    x = col.get([0, 5, 11])
    assert x.dtype == torch.float32 and x.shape == (3, 3, resolution, resolution)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.std()) > 0.05  # not blank
    img, label = col[5]
    assert img.shape == (3, resolution, resolution) and label == 1


def test_synthetic_deterministic():
    a = synthetic(32, num_identities=3, images_per_identity=5, seed=7)
    b = synthetic(32, num_identities=3, images_per_identity=5, seed=7)
    c = synthetic(32, num_identities=3, images_per_identity=5, seed=8)
    assert torch.equal(a.images_u8, b.images_u8)
    assert not torch.equal(a.images_u8, c.images_u8)
    # Images of one identity, or identities of one dataset, are not copies of each other.
    assert not torch.equal(a.images_u8[0], a.images_u8[1])
    assert not torch.equal(a.images_u8[0], a.images_u8[5])


def test_synthetic_prefix_stable():
    """More identities or images leave the earlier ones bit-identical (whatever the batching)."""
    small = synthetic(32, num_identities=2, images_per_identity=3, seed=1)
    big = synthetic(32, num_identities=4, images_per_identity=23, seed=1)
    for ident in range(2):
        first = big.images_u8[big.targets == ident][:3]
        assert torch.equal(small.images_u8[small.targets == ident], first)
    one_by_one = torch.cat([render_identity(1, 1, [j], 32, chunk=1) for j in range(3)])
    assert torch.equal(one_by_one, small.images_u8[3:6])


def test_synthetic_threads_do_not_change_pixels():
    """Rendering identities one after the other or on parallel threads gives the same pixels."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = synthetic(24, num_identities=5, images_per_identity=3, seed=2)
        torch.set_num_threads(4)
        b = synthetic(24, num_identities=5, images_per_identity=3, seed=2)
        assert torch.get_num_threads() == 4  # restored after rendering
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a.images_u8, b.images_u8)


def test_synthetic_windows_are_exact(monkeypatch):
    """Small features painted on cropped windows give exactly the full-canvas pixels."""
    import inversion_bench.data.synthetic_draw as synth_draw

    # Identities with glasses, beards, earrings and hats, at the strongest per-image variation.
    idents = [3, 4, 5, 18, 21, 23, 38, 53]
    windowed = [render_identity(5, i, 6, 40, variation=2.0, noise=0.0) for i in idents]
    monkeypatch.setattr(synth_draw, "_WINDOWS", False)
    full = [render_identity(5, i, 6, 40, variation=2.0, noise=0.0) for i in idents]
    for a, b in zip(windowed, full, strict=True):
        assert torch.equal(a, b)


def test_synthetic_same_faces_at_every_resolution():
    """Resolution changes the pixel grid only: 64 px images averaged down look like the 32 px ones."""
    lo = render_identity(4, 2, 6, 32, noise=0.0).float()
    hi = render_identity(4, 2, 6, 64, noise=0.0).float()
    down = torch.nn.functional.avg_pool2d(hi, 2)
    assert float((down - lo).abs().mean()) < 4.0  # uint8 levels
    other = render_identity(4, 3, 6, 32, noise=0.0).float()
    assert float((other - lo).abs().mean()) > 15.0


def test_synthetic_identities_differ_more_than_images(faces32):
    """Images of different identities are further apart than images of one identity.

    Background and lighting vary a lot per image, so the margin is clearest on the face region.
    """
    x = faces32.get(range(len(faces32)))
    y = faces32.targets
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(len(y), dtype=torch.bool)

    def within_over_between(f: torch.Tensor) -> float:
        d = torch.cdist(f.reshape(len(f), -1), f.reshape(len(f), -1))
        return float(d[same & off_diag].mean() / d[~same].mean())

    assert within_over_between(x) < 0.97  # measured about 0.93
    assert within_over_between(x[:, :, 6:26, 6:26]) < 0.9  # the face: about 0.83
    # The per-identity mean images are all far apart (measured: at least 2.3).
    f = x.reshape(len(x), -1)
    means = torch.stack([f[y == k].mean(0) for k in range(20)])
    assert float(torch.pdist(means).min()) > 1.0


def _split(y: torch.Tensor, n_ids: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    train, test = [], []
    for k in range(n_ids):
        idx = torch.nonzero(y == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train), torch.cat(test)


def _nearest_mean_accuracy(f: torch.Tensor, y: torch.Tensor, train, test, n_ids: int) -> float:
    f = f.reshape(len(f), -1).double()
    means = torch.stack([f[train][y[train] == k].mean(0) for k in range(n_ids)])
    return float((torch.cdist(f[test], means).argmin(1) == y[test]).double().mean())


def _ridge_accuracy(f: torch.Tensor, y: torch.Tensor, train, test, n_ids: int, lam: float = 30.0) -> float:
    """A linear classifier fitted in closed form (kernel ridge regression on one-hot targets)."""
    f = f.reshape(len(f), -1).double()
    f = f - f[train].mean(0)
    a = f[train]
    targets = torch.nn.functional.one_hot(y[train], n_ids).double()
    dual = torch.linalg.solve(a @ a.T + lam * torch.eye(len(a), dtype=a.dtype), targets)
    scores = f[test] @ (a.T @ dual)
    return float((scores.argmax(1) == y[test]).double().mean())


def test_synthetic_not_solvable_from_one_pixel_or_mean_colour(faces32):
    """Identity is spread over the face: one pixel or the mean colour say little, all pixels a lot."""
    x = faces32.get(range(len(faces32)))
    y = faces32.targets
    train, test = _split(y, 20, 10)
    centre = _nearest_mean_accuracy(x[:, :, 16, 16], y, train, test, 20)
    colour = _nearest_mean_accuracy(x.mean((2, 3)), y, train, test, 20)
    linear = _ridge_accuracy(x, y, train, test, 20)
    # Measured over seeds 0-4: centre pixel 0.09-0.18, mean colour 0.07-0.13, linear 0.67-0.82.
    assert centre < 0.35 and colour < 0.3  # chance: 0.05
    assert linear > 0.5
    assert linear > max(centre, colour) + 0.3


def test_save_preview(tmp_path):
    col = synthetic(32, num_identities=3, images_per_identity=5, seed=0)
    out = save_preview(col, tmp_path / "sub" / "grid.png", identities=8, per_identity=4, upscale=2)
    im = Image.open(out)
    assert im.size == ((4 * 34 + 2) * 2, (3 * 34 + 2) * 2)  # 3 identities only, 2 px padding


# --------------------------------------------------------------------------------------------
# image-folder


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(path, **kw)


def _rgb(h: int, w: int, value: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(value, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def face_tree(tmp_path) -> Path:
    """alice: 3 colour PNGs (landscape), bob: 2 greyscale JPEGs (portrait) + a corrupt file,
    carol: 1 image (dropped by min_images_per_identity=2), dave: RGBA PNG + palette GIF."""
    root = tmp_path / "faces"
    # Wide image: red margins, blue centre square -> the centre crop is all blue.
    wide = _rgb(30, 60, (255, 0, 0))
    wide[:, 15:45] = (0, 0, 255)
    _save(root / "alice" / "a1.png", wide)
    _save(root / "alice" / "a2.PNG", _rgb(40, 50, (10, 200, 10)))
    _save(root / "alice" / "a3.png", _rgb(20, 20, (200, 200, 0)))
    (root / "alice" / "notes.txt").write_text("not an image")
    (root / "alice" / ".hidden.png").write_bytes(b"junk")
    tall = np.full((70, 40), 50, dtype=np.uint8)
    tall[15:55] = 200  # the centre 40x40 is bright
    _save(root / "bob" / "b1.jpg", tall, quality=95)
    _save(root / "bob" / "b2.jpeg", np.full((64, 48), 120, dtype=np.uint8))
    (root / "bob" / "b0_broken.jpg").write_bytes(b"\x00\x01this is not a jpeg" * 10)
    _save(root / "carol" / "c1.png", _rgb(32, 32, (1, 2, 3)))
    rgba = np.zeros((24, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    _save(root / "dave" / "d1.png", rgba)
    _save(root / "dave" / "d2.gif", _rgb(24, 36, (0, 128, 255)), mode="P")
    return root


def folder(root: Path | str, **params) -> ImageFolder:
    return ImageFolder(ImageFolder.Params(root=str(root), **params))


def test_image_folder_loads(face_tree, caplog):
    plugin = folder(face_tree)
    assert plugin.missing() == []
    with caplog.at_level(logging.WARNING):
        col = plugin.load(16)
    assert isinstance(col, ImageFolderFaces)
    assert col.identity_names == ["alice", "bob", "dave"]  # carol has a single image
    assert col.targets.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert [Path(p).name for p in col.paths] == [
        "a1.png",
        "a2.PNG",
        "a3.png",
        "b1.jpg",
        "b2.jpeg",
        "d1.png",
        "d2.gif",
    ]
    assert len(col.skipped) == 1 and col.skipped[0].endswith("b0_broken.jpg")
    assert "b0_broken.jpg" in caplog.text
    x = col.get(range(len(col)))
    assert x.shape == (7, 3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Centre crop of the wide image: blue only (red margins cut away).
    assert float(x[0, 2].min()) > 0.9 and float(x[0, 0].max()) < 0.1
    # Greyscale becomes three equal channels; the tall image's bright centre fills the crop.
    assert torch.allclose(x[3, 0], x[3, 1]) and torch.allclose(x[3, 1], x[3, 2])
    assert float(x[3].mean()) > 0.7
    assert torch.allclose(x[5], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 16, 16))
    img, label = col[6]
    assert img.shape == (3, 16, 16) and label == 2
    # Decoding again (from the cache or not) gives the same pixels.
    assert torch.equal(col.get([4, 0]), x[[4, 0]])


def test_image_folder_lru_and_limits(face_tree):
    full = folder(face_tree).load(8).get(range(7))
    col = folder(face_tree, cache_mb=0).load(8)
    assert torch.equal(col.get([6, 0, 3, 0, 6]), full[[6, 0, 3, 0, 6]])
    assert len(col._cache) == 0
    col.cache_images = 2
    assert torch.equal(col.get([6, 0, 3, 0, 6]), full[[6, 0, 3, 0, 6]])
    assert list(col._cache) == [3, 6]  # least recently used first, at most 2
    top = folder(face_tree, max_identities=2, min_images_per_identity=1).load(8)
    assert top.identity_names == ["alice", "bob"]  # most images: alice 3, then bob and dave (2) by name
    cut = folder(face_tree, max_images_per_identity=1, min_images_per_identity=1).load(8)
    assert cut.targets.tolist() == [0, 1, 2, 3]
    assert cut.identity_names == ["alice", "bob", "carol", "dave"]


def test_image_folder_nested_subdirs(tmp_path):
    root = tmp_path / "facescrub"
    for sub, names in (("actors/faces", ["Brad", "Tom"]), ("actresses/faces", ["Ann", "Meryl"])):
        for k, name in enumerate(names):
            for j in range(2):
                _save(root / sub / name / f"{j}.jpg", _rgb(20, 30, (40 * k, 100, 20 * j)))
    plugin = folder(root, subdirs=["actors/faces", "actresses/faces"])
    assert plugin.missing() == []
    col = plugin.load(12)
    assert col.identity_names == ["Ann", "Brad", "Meryl", "Tom"]
    assert col.get(range(len(col))).shape == (8, 3, 12, 12)
    # Without subdirs the top-level folders hold no images: a clear message, nothing loaded.
    problems = folder(root).missing()
    assert len(problems) == 1 and "found 0 identity folder(s)" in problems[0] and "subdirs" in problems[0]
    bad = folder(root, subdirs=["actors/faces", "actresses/fcaes"]).missing()
    assert bad and "dataset.params.subdirs: 'actresses/fcaes' is not a folder" in bad[0]


def test_image_folder_missing_root(tmp_path):
    root = tmp_path / "x" / "y"
    problems = folder(root).missing()
    hint = "point it at a folder with one sub-folder per identity"
    assert problems == [f"dataset.params.root: folder {root} does not exist; {hint}"]
    with pytest.raises(ConfigError):
        folder(root).load(16)


def test_image_folder_truncated_file_is_replaced(tmp_path, caplog):
    root = tmp_path / "faces"
    for name in ("a", "b"):
        for j in range(2):
            _save(
                root / name / f"{j}.png",
                np.random.default_rng(j).integers(0, 255, (32, 32, 3), dtype=np.uint8),
            )
    data = (root / "b" / "1.png").read_bytes()
    (root / "b" / "1.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    col = folder(root).load(8)
    assert len(col) == 4 and col.skipped == []
    with caplog.at_level(logging.WARNING):
        x = col.get(range(4))
    assert col.decode_failures == [str(root / "b" / "1.png")]
    assert torch.all(x[3] == 128 / 255)
    assert "cannot decode" in caplog.text


def test_image_folder_identity_tracks_files(face_tree):
    a = folder(face_tree).identity()
    _save(face_tree / "bob" / "b3.png", _rgb(8, 8, (0, 0, 0)))
    b = folder(face_tree).identity()
    assert a["root"] == str(face_tree) and a["files_sha1"] != b["files_sha1"]


# --------------------------------------------------------------------------------------------
# make_splits


@pytest.fixture(scope="module")
def tiny_collection() -> TensorFaces:
    """12 identities with 5..10 images each (4 x 4 random pixels)."""
    g = torch.Generator().manual_seed(0)
    counts = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10]
    targets = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(targets), 3, 4, 4), generator=g, dtype=torch.uint8)
    return TensorFaces(images, targets, [f"p{k:02d}" for k in range(12)])


def test_make_splits_disjoint_and_labelled(tiny_collection):
    spec = SplitSpec(private_identities=5, public_identities="rest", test_fraction=0.25, seed=3)
    s = make_splits(tiny_collection, spec)
    assert s.num_classes == 5
    assert len(s.public_names) == 7
    assert set(s.private_names).isdisjoint(s.public_names)
    train, test, pub = (set(x.indices.tolist()) for x in (s.private_train, s.private_test, s.public))
    assert train.isdisjoint(test) and pub.isdisjoint(train | test)
    assert len(train | test | pub) == len(tiny_collection)  # with public="rest" every image is used
    for part in (s.private_train, s.private_test):
        assert set(part.labels.tolist()) == set(range(5))
        # Labels name the identity: label k is private_names[k].
        names = [tiny_collection.identity_names[int(t)] for t in tiny_collection.targets[part.indices]]
        assert names == [s.private_names[k] for k in part.labels.tolist()]
    assert set(s.public.labels.tolist()) == set(range(7))
    pub_names = [tiny_collection.identity_names[int(t)] for t in tiny_collection.targets[s.public.indices]]
    assert pub_names == [s.public_names[k] for k in s.public.labels.tolist()]
    assert s.private_train.images().shape == (len(train), 3, 4, 4)


def test_make_splits_deterministic(tiny_collection):
    spec = SplitSpec(private_identities=4, public_identities=3, seed=11)
    a, b = make_splits(tiny_collection, spec), make_splits(tiny_collection, spec)
    assert a.private_names == b.private_names and a.public_names == b.public_names
    assert torch.equal(a.private_train.indices, b.private_train.indices)
    assert torch.equal(a.private_test.indices, b.private_test.indices)
    others = [make_splits(tiny_collection, spec.model_copy(update={"seed": s})) for s in range(5)]
    assert any(o.private_names != a.private_names for o in others)
    first = make_splits(tiny_collection, SplitSpec(private_identities=3, selection="first"))
    assert first.private_names == ["p00", "p01", "p02"]
    most = make_splits(tiny_collection, SplitSpec(private_identities=2, selection="most_images"))
    assert most.private_names == ["p05", "p11"]


def test_make_splits_errors(tiny_collection):
    with pytest.raises(ConfigError, match="private_identities"):
        make_splits(tiny_collection, SplitSpec(private_identities=13))
    with pytest.raises(ConfigError, match="public_identities"):
        make_splits(tiny_collection, SplitSpec(private_identities=10, public_identities=3))
    all_private = make_splits(tiny_collection, SplitSpec(private_identities="all"))
    assert all_private.num_classes == 12 and len(all_private.public) == 0
