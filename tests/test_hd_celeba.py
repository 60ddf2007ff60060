"""PPA's HD-CelebA crop in ``bench data prepare celeba --crop ppa-hd`` (issue 26, item 3): the cropper's
geometry checked against an independent computation, the layout suites/celeba.yaml reads produced from a
generated download in the real layout (``img_celeba/``, ``identity_CelebA.txt``, the cropper's
``landmark.txt`` and ``standard_landmark_68pts.txt``), resuming, truncated inputs refused with a message,
and the doctor's report of the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inversion_bench.cli import main
from inversion_bench.data.celeba import CelebA
from inversion_bench.data.hd_celeba import HdCrop, align_crop, similarity_fit
from inversion_bench.data.prepare_sources import celeba_hd_plan


def _rotation(angle: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, t[0]], [s, c, t[1]]])


def _template() -> np.ndarray:
    """68 normalised points (the real template's kind of values: a face within about +-0.4)."""
    return np.random.default_rng(7).uniform(-0.35, 0.35, (68, 2))


def test_similarity_fit_recovers_a_similarity_and_is_least_squares():
    src = np.random.default_rng(0).uniform(0, 200, (68, 2))
    m = _rotation(0.3, 1.7, (12.0, -4.0))
    dst = src @ m[:, :2].T + m[:, 2]
    assert np.allclose(similarity_fit(src, dst), m)
    noisy = dst + np.random.default_rng(1).normal(0, 2, dst.shape)
    fit = similarity_fit(src, noisy)
    residual = ((src @ fit[:, :2].T + fit[:, 2] - noisy) ** 2).sum()
    for delta in np.eye(4) * 1e-3:  # no nearby similarity fits better
        a, b = fit[0, 0] + delta[0], fit[1, 0] + delta[1]
        other = np.array([[a, -b, fit[0, 2] + delta[2]], [b, a, fit[1, 2] + delta[3]]])
        assert ((src @ other[:, :2].T + other[:, 2] - noisy) ** 2).sum() > residual


def test_crop_geometry_is_the_croppers():
    """On a ramp image (red = x / 2, green = y / 2; bicubic reproduces a linear ramp), output pixel (x, y) holds
    the source position the cropper's transform gives: template * 224 * 0.65 + 112 (after move_h 0.25) mapped
    onto the landmarks by a similarity."""
    yy, xx = np.mgrid[0:400, 0:400]
    ramp = np.stack([xx / 2, yy / 2, np.zeros_like(xx)], -1).round().astype(np.uint8)
    template = _template()
    face = _rotation(-0.2, 0.5, (200.0, 190.0))  # output -> source, the crop inside the image
    trg = (template + [0.0, 0.25]) * 224 * 0.65 + 112
    landmarks = trg @ face[:, :2].T + face[:, 2]
    out = np.asarray(align_crop(Image.fromarray(ramp), HdCrop(tuple(landmarks.ravel()), tuple(template.ravel()))))
    assert out.shape == (224, 224, 3)
    for x, y in [(0, 0), (223, 0), (100, 57), (223, 223), (12, 200)]:
        sx, sy = face @ [x, y, 1]
        assert abs(int(out[y, x, 0]) - sx / 2) <= 1.0 and abs(int(out[y, x, 1]) - sy / 2) <= 1.0, (x, y)


def _landmark_line(name: str, points: np.ndarray) -> str:
    return name + "".join(f" {v:.1f}" for v in points.ravel()) + "\n"


def fake_download(src: Path, counts: dict[int, int]) -> dict[str, int]:
    """CelebA's in-the-wild layout with tiny images: ``img_celeba/<n>.jpg`` of varied sizes,
    ``identity_CelebA.txt``, and the cropper's ``landmark.txt`` (68 points each, placing the face inside its
    image) and ``standard_landmark_68pts.txt``. ``counts``: images per CelebA identity."""
    rng = np.random.default_rng(3)
    (src / "img_celeba").mkdir(parents=True)
    template = _template()
    (src / "standard_landmark_68pts.txt").write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in template))
    ids, lines, k = {}, [], 1
    for ident, n in counts.items():
        for _ in range(n):
            name = f"{k:06d}.jpg"
            w, h = int(rng.integers(40, 70)), int(rng.integers(50, 80))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / "img_celeba" / name)
            face = _rotation(rng.uniform(-0.3, 0.3), min(w, h) / 300, (w / 2, h / 2))
            trg = (template + [0.0, 0.25]) * 224 * 0.65 + 112
            lines.append(_landmark_line(name, trg @ face[:, :2].T + face[:, 2]))
            ids[name] = ident
            k += 1
    (src / "landmark.txt").write_text("".join(lines))
    (src / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in ids.items()))
    return ids


def test_ppa_hd_crop_gives_the_layout_suites_celeba_reads(tmp_path, capsys, write_suite):
    src, out = tmp_path / "celeba", tmp_path / "data" / "celeba"
    ids = fake_download(src, {5: 3, 9: 2, 2: 1})
    argv = ["data", "prepare", "celeba", str(src), "--crop", "ppa-hd", "--out", str(out), "--no-progress"]
    assert main(argv) == 2  # the full CelebA needs 202,599 images
    assert f"lists {len(ids)} images, CelebA has 202599" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--partial"]) == 0
    printed = capsys.readouterr().out
    assert f"celeba: {len(ids)} file(s) written, 0 already there" in printed
    assert "celeba HD crop, the 3 identities with the most images: 6 of 6 expected" in printed
    written = sorted(p.name for p in (out / "img_align_celeba").iterdir())
    assert written == [f"{Path(n).stem}.png" for n in sorted(ids)]
    assert (out / "identity_CelebA.txt").read_bytes() == (src / "identity_CelebA.txt").read_bytes()
    name = sorted(ids)[0]
    landmarks = (src / "landmark.txt").read_text().splitlines()[0].split()[1:]
    template = (src / "standard_landmark_68pts.txt").read_text().split()
    with Image.open(src / "img_celeba" / name) as im:
        expected = np.asarray(align_crop(im, HdCrop(tuple(map(float, landmarks)), tuple(map(float, template)))))
    with Image.open(out / "img_align_celeba" / f"{Path(name).stem}.png") as im:
        assert im.size == (224, 224) and im.format == "PNG" and np.array_equal(np.asarray(im), expected)
    # resuming: nothing is rewritten
    assert main([*argv, "--partial"]) == 0
    assert f"celeba: 0 file(s) written, {len(ids)} already there" in capsys.readouterr().out
    # what suites/celeba.yaml reads: its own dataset section, on this folder and with 2 of its 1,000 identities
    import yaml

    from inversion_bench.data.splits import SplitSpec, make_splits

    dataset = yaml.safe_load((Path(__file__).resolve().parent.parent / "suites" / "celeba.yaml").read_text())["dataset"]
    params = {**dataset["params"], "root": str(out), "num_identities": 2}
    assert params["expect_crop"] == "ppa-hd" and params["order"] == "ppa" and params["images"] == "img_align_celeba"
    plugin = CelebA(CelebA.Params(**params))
    faces = plugin.load(32)
    assert len(faces) == 5 and faces.get(list(range(5))).shape == (5, 3, 32, 32)  # identities 5, 9: 3 + 2 images
    assert faces.identity_names == ["celeba_5", "celeba_9"]  # PPA's class order: most images first
    sp = make_splits(faces, SplitSpec(**dataset["split"]))
    assert len(sp.private_train) + len(sp.private_test) == 5 and len(sp.private_train) == int(0.9 * 5)
    from tests.conftest import tiny_suite

    suite = tiny_suite(dataset={"name": "celeba", "resolution": 16, "params": params,
                                "split": dataset["split"]})
    assert main(["doctor", str(write_suite(suite))]) == 2  # a 6-image identity file is a WRONG count
    printed = capsys.readouterr().out
    assert "[ok     ] dataset.params.images: CelebA images: 6 of 6 listed images" in printed
    assert "[ok     ] dataset.params.expect_crop: PPA HD-CelebA crop (224 x 224 PNG, e.g. 000001.png)" in printed


def test_only_the_identities_with_the_most_images_are_cropped(tmp_path):
    src = tmp_path / "celeba"
    ids = fake_download(src, {5: 3, 9: 2, 2: 1})
    plan = celeba_hd_plan(src, tmp_path / "out", partial=True, identities=2)
    assert not plan.errors
    assert sorted(j.src.name for j in plan.jobs) == sorted(n for n, i in ids.items() if i in (5, 9))
    assert [n for _, n in plan.expected.values()] == [5]


def test_truncated_and_missing_inputs_are_refused_with_a_message(tmp_path, capsys):
    src, out = tmp_path / "celeba", tmp_path / "out"
    ids = fake_download(src, {5: 3, 9: 2})
    argv = ["data", "prepare", "celeba", str(src), "--crop", "ppa-hd", "--out", str(out), "--partial"]
    text = (src / "landmark.txt").read_text()
    (src / "landmark.txt").write_text(text[: len(text) - 300])  # an interrupted unzip: the last line is cut
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{src / 'landmark.txt'} line 5: " in err and "numbers after the name, expected 136 (68 landmarks)" in err
    assert "the file is truncated" in err
    assert f"missing landmarks: {sorted(ids)[-1]} has no line in {src / 'landmark.txt'}" in err
    assert not out.exists()
    (src / "landmark.txt").write_text(text)
    jpg = src / "img_celeba" / sorted(ids)[1]
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # a truncated image
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 problem(s), their outputs not written (the others are kept)" in err and str(jpg) in err
    assert "truncated" in err
    jpg.write_bytes(data)
    (src / "standard_landmark_68pts.txt").unlink()
    (src / "img_celeba").rename(src / "elsewhere")
    (src / "img_celeba.7z.001").write_bytes(b"7z")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"missing folder: {src / 'img_celeba'} (img_celeba.7z is there: unpack it)" in err
    assert f"missing file: {src / 'standard_landmark_68pts.txt'} (nor in {src / 'annotations.zip'}; " \
           "HD-CelebA-Cropper's annotations.zip" in err


def test_annotations_zip_is_read_in_place_and_a_truncated_one_is_refused(tmp_path, capsys):
    import zipfile

    src = tmp_path / "celeba"
    ids = fake_download(src, {5: 2, 9: 1})
    argv = ["data", "prepare", "celeba", str(src), "--crop", "ppa-hd", "--partial", "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "ref")]) == 0
    with zipfile.ZipFile(src / "annotations.zip", "w", zipfile.ZIP_DEFLATED) as zf:  # as downloaded, not unzipped
        for name in ("landmark.txt", "standard_landmark_68pts.txt"):
            zf.write(src / name, name)
            (src / name).unlink()
    assert main([*argv, str(tmp_path / "out")]) == 0
    assert f"celeba: {len(ids)} file(s) written" in capsys.readouterr().out
    for p in sorted((tmp_path / "ref" / "img_align_celeba").iterdir()):
        assert (tmp_path / "out" / "img_align_celeba" / p.name).read_bytes() == p.read_bytes()
    data = (src / "annotations.zip").read_bytes()
    (src / "annotations.zip").write_bytes(data[: len(data) // 2])  # an interrupted download
    assert main([*argv, str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert f"{src / 'annotations.zip'}: not a complete zip archive" in err and "download it again" in err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("kind", ["aligned", "missing"])
def test_doctor_reports_images_that_are_not_the_hd_crop(tmp_path, write_suite, capsys, kind):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    if kind == "aligned":
        for n in ("000001.jpg", "000002.jpg"):
            Image.new("RGB", (178, 218)).save(root / "img_align_celeba" / n)
    (root / "identity_CelebA.txt").write_text("000001.jpg 1\n000002.jpg 2\n")
    from tests.conftest import tiny_suite

    params = {"root": str(root), "num_identities": 2, "expect_crop": "ppa-hd"}
    suite = tiny_suite(dataset={"name": "celeba", "resolution": 16, "params": params,
                                "split": {"private_identities": 2, "public_identities": 0}})
    assert main(["doctor", str(write_suite(suite))]) == 2
    out = capsys.readouterr().out
    if kind == "aligned":
        assert (f"{root / 'img_align_celeba' / '000001.jpg'} is a 178 x 218 JPEG, PPA's HD-CelebA crop is a 224 x "
                "224 PNG (WRONG crop") in out
    else:
        assert f"dataset.params.expect_crop: no image in {root / 'img_align_celeba'}" in out
    assert "bench data prepare celeba SRC --crop ppa-hd --out ROOT" in out


def test_ppa_class_order_ties_by_first_appearance():
    from inversion_bench.data.celeba import most_frequent, ppa_ranking

    # identity 9 and 3 have 2 images each; 9 appears first in the file, 3 has the smaller id
    pairs = [("000001.jpg", 7), ("000002.jpg", 9), ("000003.jpg", 7), ("000004.jpg", 3), ("000005.jpg", 9),
             ("000006.jpg", 3), ("000007.jpg", 7), ("000008.jpg", 4)]
    assert ppa_ranking(pairs, 3) == [7, 9, 3]
    assert ppa_ranking(list(reversed(pairs)), 3) == [7, 9, 3]  # positions are taken in name order
    assert most_frequent(pairs, 3) == [7, 3, 9]  # the 'id' order's tie rule differs


def test_ppa_order_gives_ppas_classes_and_its_train_test_split(tmp_path):
    """The class order and the 90/10 split of PPA's CelebA1000 (datasets/celeba.py), recomputed here the way its
    code does it: np.random.seed(42) and np.random.shuffle of the kept images' positions."""
    from inversion_bench.data.splits import SplitSpec, make_splits

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    idents = [int(v) for v in rng.choice([11, 12, 13, 14, 15], size=40, p=[0.1, 0.3, 0.25, 0.2, 0.15])]
    pairs = [(f"{i + 1:06d}.jpg", k) for i, k in enumerate(idents)]
    for name, _ in pairs:
        Image.new("RGB", (8, 8), (len(name), 0, 0)).save(root / "img_align_celeba" / f"{Path(name).stem}.png")
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {k}\n" for n, k in pairs))
    plugin = CelebA(CelebA.Params(root=str(root), num_identities=4, order="ppa"))
    # PPA's code, step by step
    targets = np.array(idents)
    counts = {}
    for t in targets.tolist():
        counts[t] = counts.get(t, 0) + 1
    ranked = [k for k, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)][:4]
    indices = np.where(np.isin(targets, ranked))[0]
    state = np.random.get_state()
    np.random.seed(42)
    np.random.shuffle(indices)
    np.random.set_state(state)
    train_pos = set(indices[: int(0.9 * len(indices))].tolist())
    names, _ = plugin.listing()
    assert names == [f"celeba_{k}" for k in ranked]
    faces = plugin.load(8)
    kept = [i for i, k in enumerate(idents) if k in ranked]
    assert faces.targets.tolist() == [ranked.index(idents[i]) for i in kept]
    assert faces.published_test.tolist() == [i not in train_pos for i in kept]
    sp = make_splits(faces, SplitSpec(private_identities="all", public_identities=0, selection="published"))
    assert len(sp.private_train) == int(0.9 * len(kept)) and len(sp.private_test) == len(kept) - len(sp.private_train)
    test_per_class = np.bincount(sp.private_test.labels.numpy(), minlength=4)
    assert (test_per_class == 0).any()  # PPA's draw over all images leaves an identity without a test image: allowed
    assert CelebA(CelebA.Params(root=str(root))).published_split is False
