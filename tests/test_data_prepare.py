"""``bench data prepare`` (issue 26, item 3) on small fabricated downloads: the layout the suites read,
KED-MI's crop and the 64 px size, resuming without rewriting, and one error per missing or extra source
file with exit 2 before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inversion_bench.cli import main
from inversion_bench.data import prepare as prep
from inversion_bench.data.celeba_split import CelebASplit
from inversion_bench.data.prepare_sources import celeba_plan
from inversion_bench.data.published_split import get_split, read_part
from inversion_bench.data.splits import SplitSpec, make_splits

SPLIT = get_split("kedmi-celeba")


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def fake_celeba(src: Path, private: int = 2, public: int = 1) -> dict[str, int]:
    """``src/img_align_celeba/*.jpg`` (178 x 218 PNG data under .jpg names is fine for Pillow) and
    ``src/identity_CelebA.txt`` for the split's first labels: CelebA identity 100 + label (private), 500 +
    label (public). Returns {image name: CelebA identity}."""
    ids = {}
    for part in ("private_train", "private_test", "public"):
        keep, base = (public, 500) if part == "public" else (private, 100)
        for name, label in read_part(SPLIT, part):
            if label < keep:
                ids[name] = base + label
    for i, name in enumerate(sorted(ids)):
        _image(src / "img_align_celeba" / name, prep.CELEBA_SOURCE_SIZE, i)
    (src / "identity_CelebA.txt").write_text("".join(f"{n} {k}\n" for n, k in sorted(ids.items())))
    return ids


def test_celeba_layout_crop_and_size(tmp_path, capsys):
    src, out = tmp_path / "celeba", tmp_path / "out"
    ids = fake_celeba(src)
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out), "--partial"]) == 0
    printed = capsys.readouterr().out
    assert f"celeba: {len(ids)} file(s) written, 0 already there" in printed
    n_train = sum(1 for n, label in read_part(SPLIT, "private_train") if label < 2)
    assert f"kedmi-celeba private_train: {n_train} of {n_train} expected" in printed
    written = sorted(p.name for p in (out / "img_align_celeba_64").iterdir())
    assert written == sorted(Path(n).stem + ".png" for n in ids)
    assert (out / "identity_CelebA.txt").read_bytes() == (src / "identity_CelebA.txt").read_bytes()
    name = sorted(ids)[0]
    with Image.open(src / "img_align_celeba" / name) as im:
        expected = np.asarray(im.convert("RGB").crop((35, 55, 143, 163)).resize((64, 64), Image.Resampling.BILINEAR))
    with Image.open(out / "img_align_celeba_64" / (Path(name).stem + ".png")) as im:
        assert im.size == (64, 64)
        assert np.array_equal(np.asarray(im), expected)  # PNG: lossless, KED-MI's box exactly
    # what the suite reads: the celeba-split dataset on the prepared folder
    plugin = CelebASplit(CelebASplit.Params(root=str(out), private_labels=2, public_labels=1))
    assert plugin.missing() == []
    sp = make_splits(plugin.load(64), SplitSpec(private_identities=2, selection="published"))
    assert len(sp.private_train) == n_train and sp.private_train.images().shape[1:] == (3, 64, 64)


def test_resume_skips_valid_outputs_and_redoes_broken_ones(tmp_path):
    src, out = tmp_path / "celeba", tmp_path / "out"
    ids = fake_celeba(src)
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out), "--partial"]) == 0
    first = sorted((out / "img_align_celeba_64").iterdir())
    broken = first[0]
    broken.write_bytes(broken.read_bytes()[:20])  # an interrupted write by some other tool
    first[1].unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in first[2:]}
    calls = []
    plan_jobs = celeba_plan(src, out, partial=True).jobs
    outcome = prep.run_jobs(plan_jobs, "test", progress=False, write=lambda job: (calls.append(job.dst),
                                                                                   prep.write_atomic(job)))
    assert sorted(calls) == sorted([broken, first[1]])
    assert (outcome.written, outcome.skipped) == (2, len(ids) - 2)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert not list((out / "img_align_celeba_64").glob(".*.part"))


def test_missing_and_extra_source_files_are_named_exit_2_nothing_written(tmp_path, capsys):
    src, out = tmp_path / "celeba", tmp_path / "out"
    ids = fake_celeba(src)
    gone = sorted(ids)[3]
    (src / "img_align_celeba" / gone).unlink()
    _image(src / "img_align_celeba" / "999999.jpg", prep.CELEBA_SOURCE_SIZE, 0)
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out), "--partial"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s), nothing written" in err
    assert f"missing file: {src / 'img_align_celeba' / gone} (listed in identity_CelebA.txt)" in err
    assert f"extra file: {src / 'img_align_celeba' / '999999.jpg'} (not in identity_CelebA.txt)" in err
    assert not out.exists()


def test_full_celeba_is_checked_against_the_split_and_its_identities(tmp_path, capsys):
    src, out = tmp_path / "celeba", tmp_path / "out"
    ids = fake_celeba(src)
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out)]) == 2  # not --partial: all of CelebA
    err = capsys.readouterr().err
    assert f"lists {len(ids)} images, CelebA has 202599" in err and "of the published split (private_train)" in err
    lines = (src / "identity_CelebA.txt").read_text().splitlines()
    first, label = lines[0].split()  # a private image given a public identity
    (src / "identity_CelebA.txt").write_text("\n".join([f"{first} 501", *lines[1:]]) + "\n")
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out), "--partial"]) == 2
    err = capsys.readouterr().err
    assert f"split label private {int(label) - 100} covers CelebA identities [{label}, 501]" in err
    assert not out.exists()


def test_ffhq_thumbnails_become_64px_crops(tmp_path, capsys):
    src, out = tmp_path / "thumbnails128x128", tmp_path / "out"
    for i in (0, 1, 1000):
        _image(src / f"{i // 1000 * 1000:05d}" / f"{i:05d}.png", prep.FFHQ_SOURCE_SIZE, i)
    assert main(["data", "prepare", "ffhq", str(src), "--out", str(out), "--partial", "--no-progress"]) == 0
    assert "ffhq: 3 of 3 expected" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "ffhq64").iterdir()) == ["00000.png", "00001.png", "01000.png"]
    with Image.open(src / "00000" / "00001.png") as im:
        expected = np.asarray(im.convert("RGB").crop((20, 20, 108, 108)).resize((64, 64), Image.Resampling.BILINEAR))
    with Image.open(out / "ffhq64" / "00001.png") as im:
        assert im.size == (64, 64) and np.array_equal(np.asarray(im), expected)
    assert main(["data", "prepare", "ffhq", str(src), "--out", str(out)]) == 2  # the full set needs 70,000
    err = capsys.readouterr().err
    assert "69997 problem(s)" in err and "missing file: 00002.png (FFHQ has 70000 thumbnails)" in err
    (src / "00000" / "notes.txt").write_text("x")
    assert main(["data", "prepare", "ffhq", str(src), "--out", str(out), "--partial"]) == 2
    assert f"extra file: {src / '00000' / 'notes.txt'}" in capsys.readouterr().err


def test_ffhq_wrong_image_size_is_refused_naming_the_file(tmp_path, capsys):
    src, out = tmp_path / "thumbs", tmp_path / "out"
    _image(src / "00000.png", (256, 256), 0)
    assert main(["data", "prepare", "ffhq", str(src), "--out", str(out), "--partial"]) == 2
    assert f"{src / '00000.png'}: 256 x 256 pixels, expected 128 x 128" in capsys.readouterr().err


@pytest.mark.parametrize("partial", [True, False])
def test_facescrub_layout_the_suite_reads(tmp_path, capsys, partial):
    src, out = tmp_path / "facescrub", tmp_path / "out"
    for sub, people in (("actors/faces", ["Aaron_Eckhart", "Adam_Brody"]), ("actresses/faces", ["Alyssa_Milano"])):
        for j, person in enumerate(people):
            for k in range(2):
                _image(src / sub / person / f"{person}_{k}.jpeg", (50, 60), 10 * j + k)
    argv = ["data", "prepare", "facescrub", str(src), "--out", str(out)] + (["--partial"] if partial else [])
    if not partial:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{src / 'actors/faces'}: 2 identity folders, FaceScrub has 265" in err
        return
    assert main(argv) == 0
    assert "actors/faces/Aaron_Eckhart: 2 of 2 expected" in capsys.readouterr().out
    copied = out / "actors" / "faces" / "Adam_Brody" / "Adam_Brody_1.jpeg"
    assert copied.read_bytes() == (src / "actors/faces/Adam_Brody/Adam_Brody_1.jpeg").read_bytes()
    from inversion_bench.data.image_folder import ImageFolder

    listing = ImageFolder(ImageFolder.Params(root=str(out), subdirs=["actors/faces", "actresses/faces"])).listing()
    assert listing == (["Aaron_Eckhart", "Adam_Brody", "Alyssa_Milano"], [2, 2, 2])
    (src / "actresses/faces/Alyssa_Milano/Alyssa_Milano_0.jpeg").unlink()
    (src / "actresses/faces/Alyssa_Milano/Alyssa_Milano_1.jpeg").unlink()
    assert main(argv) == 2
    assert f"missing file: {src / 'actresses/faces/Alyssa_Milano'} has no image" in capsys.readouterr().err


def test_doctor_shows_wrong_celeba_counts_with_the_numbers(tmp_path, write_suite, capsys):
    root = tmp_path / "celeba"
    _image(root / "img_align_celeba" / "000001.jpg", prep.CELEBA_SOURCE_SIZE, 0)
    _image(root / "img_align_celeba" / "000002.jpg", prep.CELEBA_SOURCE_SIZE, 1)
    (root / "identity_CelebA.txt").write_text("000001.jpg 1\n000002.jpg 1\n000003.jpg 2\n")
    from tests.conftest import tiny_suite

    suite = tiny_suite(dataset={"name": "celeba", "resolution": 16, "params": {"root": str(root), "num_identities": 2},
                                "split": {"private_identities": 2, "public_identities": 0}})
    assert main(["doctor", str(write_suite(suite))]) == 2
    out = capsys.readouterr().out
    assert "[WRONG  ] dataset.params.identity_file: CelebA identity file: 3 of 202599 images expected" in out
    assert "[WRONG  ] dataset.params.images: CelebA images: 2 of 3 listed images" in out
    assert "has 2 of the 3 images identity_CelebA.txt lists (WRONG count)" in out


def test_celeba_zip_archive_as_downloaded_and_a_truncated_one(tmp_path, capsys):
    import shutil
    import zipfile

    folder, src = tmp_path / "celeba", tmp_path / "download"
    ids = fake_celeba(folder)
    src.mkdir()
    shutil.copy(folder / "identity_CelebA.txt", src / "identity_CelebA.txt")
    with zipfile.ZipFile(src / "img_align_celeba.zip", "w") as zf:  # the official archive's layout
        for name in sorted(ids):
            zf.write(folder / "img_align_celeba" / name, f"img_align_celeba/{name}")
    out = tmp_path / "out"
    assert main(["data", "prepare", "celeba", str(src), "--out", str(out), "--partial"]) == 0
    assert f"celeba: {len(ids)} file(s) written" in capsys.readouterr().out
    assert main(["data", "prepare", "celeba", str(folder), "--out", str(tmp_path / "ref"), "--partial"]) == 0
    for p in sorted((tmp_path / "ref" / "img_align_celeba_64").iterdir()):
        assert (out / "img_align_celeba_64" / p.name).read_bytes() == p.read_bytes()
    data = (src / "img_align_celeba.zip").read_bytes()
    (src / "img_align_celeba.zip").write_bytes(data[: len(data) // 2])  # an interrupted download
    capsys.readouterr()
    assert main(["data", "prepare", "celeba", str(src), "--out", str(tmp_path / "out2"), "--partial"]) == 2
    err = capsys.readouterr().err
    assert f"{src / 'img_align_celeba.zip'}: not a complete zip archive" in err and "download it again" in err
    assert not (tmp_path / "out2").exists()


def test_doctor_shows_facescrub_identity_counts_without_stopping_a_run(tmp_path, write_suite, capsys):
    src, out = tmp_path / "facescrub", tmp_path / "out"
    for sub, people in (("actors/faces", ["A", "B"]), ("actresses/faces", ["C", "D"])):
        for person in people:
            for k in range(3):
                _image(src / sub / person / f"{person}_{k}.jpg", (20, 24), k)
    assert main(["data", "prepare", "facescrub", str(src), "--out", str(out), "--partial"]) == 0
    from tests.conftest import tiny_suite

    suite = tiny_suite(dataset={"name": "image-folder", "resolution": 16,
                                "params": {"root": str(out), "subdirs": ["actors/faces", "actresses/faces"]},
                                "split": {"private_identities": 2, "public_identities": "rest"}})
    path = write_suite(suite)
    capsys.readouterr()
    assert main(["doctor", str(path)]) == 2
    printed = capsys.readouterr().out
    assert "[ok     ] dataset.params: dataset image-folder" in printed
    assert "[WRONG  ] dataset.params.subdirs (actors/faces): FaceScrub actors/faces: 2 of 265 identities " \
           "expected, 6 images" in printed
    assert "FaceScrub's actresses/faces has 265 (WRONG count)" in printed
    assert main(["validate", str(path)]) == 0  # a count is reported, not a reason to stop a scaled-down run
