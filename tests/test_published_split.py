"""The shipped KED-MI CelebA split (issue 26, item 2): its checksum is checked when read, the
``celeba-split`` dataset keeps its train/test images (``selection: published``) on a tiny CelebA-like
folder, and ``bench validate`` / ``bench doctor`` list the split files and the image counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inversion_bench.cli import main
from inversion_bench.data import published_split as ps
from inversion_bench.data.celeba_split import CelebASplit, prepared_name
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.errors import ConfigError, MissingResourceError
from tests.conftest import run_tiny, tiny_suite

SPLIT = ps.get_split("kedmi-celeba")
PRIVATE, PUBLIC = 3, 2  # the split's first labels, as a scaled-down run takes them


def _parts() -> dict[str, list[tuple[str, int]]]:
    return {part: ps.read_part(SPLIT, part) for part in ps.PARTS}


def fabricate(root: Path, private: int = PRIVATE, public: int = PUBLIC, size: int = 8) -> dict[str, list[str]]:
    """Writes ``root/img_align_celeba_64/<stem>.png`` for the split's first ``private`` private labels and
    first ``public`` public labels (one colour per label); returns the names written per part."""
    folder = root / "img_align_celeba_64"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    for part, pairs in _parts().items():
        keep = public if part == "public" else private
        written[part] = []
        for name, label in pairs:
            if label < keep:
                value = (label * 60 + (100 if part == "public" else 0)) % 256
                Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(folder / prepared_name(name))
                written[part].append(name)
    return written


def test_shipped_files_match_their_published_checksums_and_numbers():
    parts = _parts()
    assert [len(parts[p]) for p in ps.PARTS] == [27018, 3009, 30000]
    assert len(ps.label_counts(parts["private_train"])) == 1000
    assert len(ps.label_counts(parts["public"])) == 6453
    names = {p: {n for n, _ in parts[p]} for p in ps.PARTS}
    assert not names["private_train"] & names["private_test"] and not names["public"] & names["private_train"]
    assert all(ps.file_problem(SPLIT, p) == "" for p in ps.PARTS)


def test_an_edited_split_file_is_refused_naming_file_and_checksum(tmp_path):
    copy = tmp_path / "private_test.txt"
    text = ps.split_path(SPLIT, "private_test").read_text().splitlines()
    copy.write_text("\n".join(text[:-1]) + "\n")  # one line dropped
    with pytest.raises(MissingResourceError) as err:
        ps.read_part(SPLIT, "private_test", copy)
    msg = str(err.value)
    assert str(copy) in msg and SPLIT.file("private_test").sha256 in msg and "reinstall" in msg


def test_fixed_split_keeps_the_published_train_and_test_images(tmp_path):
    written = fabricate(tmp_path)
    plugin = CelebASplit(CelebASplit.Params(root=str(tmp_path), private_labels=PRIVATE, public_labels=PUBLIC))
    assert plugin.missing() == []
    names, counts = plugin.listing()
    assert names == ["kedmi_0000", "kedmi_0001", "kedmi_0002", "kedmi_public_0000", "kedmi_public_0001"]
    collection = plugin.load(8)
    sp = make_splits(collection, SplitSpec(private_identities=PRIVATE, public_identities="rest",
                                           selection="published", seed=7))
    assert sp.private_names == names[:PRIVATE] and sp.public_names == names[PRIVATE:]

    def stems(part):
        return sorted(Path(collection.paths[i]).stem for i in part.indices.tolist())

    assert stems(sp.private_train) == sorted(Path(n).stem for n in written["private_train"])
    assert stems(sp.private_test) == sorted(Path(n).stem for n in written["private_test"])
    assert stems(sp.public) == sorted(Path(n).stem for n in written["public"])
    # class k is label k of the split
    train_pairs = dict(_parts()["private_train"])
    for i, label in zip(sp.private_train.indices.tolist(), sp.private_train.labels.tolist(), strict=True):
        assert train_pairs[Path(collection.paths[i]).stem + ".jpg"] == label
    images = sp.private_train.images()
    assert images.dtype.is_floating_point and images.shape[1:] == (3, 8, 8) and 0 <= images.min() <= images.max() <= 1
    # another seed, same split (nothing random in it)
    again = make_splits(collection, SplitSpec(private_identities=PRIVATE, selection="published", seed=99))
    assert again.private_test.indices.tolist() == sp.private_test.indices.tolist()


def test_published_selection_on_a_dataset_without_a_split_is_refused():
    import torch

    from inversion_bench.data import TensorFaces

    faces = TensorFaces(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), ["a", "b"])
    with pytest.raises(ConfigError, match="selection: 'published' needs a dataset"):
        make_splits(faces, SplitSpec(private_identities=2, selection="published"))


def test_missing_images_are_named_with_the_count(tmp_path):
    written = fabricate(tmp_path)
    gone = written["private_test"][0]
    (tmp_path / "img_align_celeba_64" / prepared_name(gone)).unlink()
    plugin = CelebASplit(CelebASplit.Params(root=str(tmp_path), private_labels=PRIVATE, public_labels=PUBLIC))
    problems = plugin.missing()
    n = len(written["private_test"])
    assert len(problems) == 1 and f"has {n - 1} of the {n} private_test images" in problems[0]
    assert prepared_name(gone) in problems[0] and "bench data prepare celeba" in problems[0]


def _scaled_suite(root: Path) -> dict:
    return tiny_suite(
        dataset={"name": "celeba-split", "resolution": 16,
                 "params": {"root": str(root), "private_labels": PRIVATE, "public_labels": PUBLIC},
                 "split": {"private_identities": PRIVATE, "public_identities": "rest", "selection": "published"}},
        attacks=[{"id": "mif", "name": "mi-face", "params": {"steps": 2, "restarts": 1}, "identities": 2}],
        defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}],
        metrics=["test_accuracy", "attack_accuracy"],
    )


def test_doctor_lists_split_files_and_wrong_counts(tmp_path, write_suite, capsys):
    written = fabricate(tmp_path)
    path = write_suite(_scaled_suite(tmp_path))
    assert main(["doctor", str(path)]) == 0
    out = capsys.readouterr().out
    for part in ps.PARTS:
        assert f"[ok     ] dataset.params.split ({part}): split file kedmi-celeba, SHA-256 " \
               f"{SPLIT.file(part).sha256[:12]}" in out
    n = len(written["private_train"])
    assert f"[ok     ] dataset.params.images: CelebA 64 px, private_train: {n} of {n} images expected" in out
    (tmp_path / "img_align_celeba_64" / prepared_name(written["private_train"][0])).unlink()
    assert main(["doctor", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"[WRONG  ] dataset.params.images: CelebA 64 px, private_train: {n - 1} of {n} images expected" in out


def test_validate_names_a_missing_folder_and_the_published_selection_elsewhere(tmp_path, write_suite, capsys):
    path = write_suite(_scaled_suite(tmp_path / "nowhere"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"dataset.params.images: folder {tmp_path / 'nowhere' / 'img_align_celeba_64'} not found" in err
    assert "bench data prepare celeba" in err
    bad = tiny_suite()
    bad["dataset"]["split"] = {**bad["dataset"]["split"], "selection": "published"}
    assert main(["validate", str(write_suite(bad, "bad.yaml"))]) == 2
    assert "'published' needs a dataset that ships its published split" in capsys.readouterr().err


@pytest.mark.slow
def test_scaled_down_suite_runs_end_to_end(tmp_path, one_thread):
    fabricate(tmp_path, size=16)
    run_dir = run_tiny(_scaled_suite(tmp_path), tmp_path)
    record = json.loads((run_dir / "records" / "hard__mif__seed0.json").read_text())
    assert record["status"] == "ok"
    assert record["setup"]["sizes"]["private_identities"] == PRIVATE



def test_shipped_suites_without_data_list_every_missing_item(tmp_path, monkeypatch, capsys):
    root = Path(__file__).resolve().parent.parent / "suites"
    monkeypatch.chdir(tmp_path)
    for name in ("celeba64", "celeba64-ffhq", "celeba64-ir152", "celeba64-facenet64"):
        assert main(["validate", "--schema-only", str(root / f"{name}.yaml")]) == 0
    assert main(["doctor", str(root / "celeba64.yaml")]) == 2
    out = capsys.readouterr().out
    assert out.count("[ok     ] dataset.params.split (") == 3
    assert "[MISSING] dataset.params.images" in out and "bench data prepare celeba" in out
    for missing in ("FaceNet_95.88.tar", "VGG16_88.26.tar", "vgg16_bn-6c64b313.pth", "SCccc21/Knowledge-Enriched-DMI"):
        assert missing in out, missing
    assert main(["validate", str(root / "celeba64.yaml")]) == 2
    err = capsys.readouterr().err
    assert "img_align_celeba_64 not found" in err and "FaceNet_95.88.tar not found" in err


def test_ffhq_public_variant_and_its_count(tmp_path, write_suite, capsys):
    fabricate(tmp_path, public=0)
    ffhq = tmp_path / "ffhq64"
    ffhq.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(ffhq / f"{i:05d}.png")
    params = {"root": str(tmp_path), "private_labels": PRIVATE, "public": "ffhq", "ffhq_count": 3}
    plugin = CelebASplit(CelebASplit.Params(**params))
    assert plugin.missing() == []
    names, counts = plugin.listing()
    assert names[-1] == "ffhq" and counts[-1] == 3 and len(names) == PRIVATE + 1
    sp = make_splits(plugin.load(8), SplitSpec(private_identities=PRIVATE, selection="published"))
    assert sp.public_names == ["ffhq"] and len(sp.public) == 3
    assert float(sp.public.images().min()) == pytest.approx(200 / 255)
    suite = _scaled_suite(tmp_path)
    suite["dataset"]["params"] = {**params, "ffhq_count": 70000}
    assert main(["doctor", str(write_suite(suite))]) == 2
    out = capsys.readouterr().out
    assert "[WRONG  ] dataset.params.ffhq_images: FFHQ 64 px: 3 of 70000 images expected" in out
    assert "expected 70000 (WRONG count)" in out and "bench data prepare ffhq" in out
    assert main(["validate", str(write_suite(suite))]) == 0  # reported, not blocking: a subset of FFHQ runs
