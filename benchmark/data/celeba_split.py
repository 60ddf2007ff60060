"""CelebA under a published split (the ``celeba-split`` dataset): the GMI / KED-MI 64 px protocol.

The images are the 64 px crops ``bench data prepare celeba`` writes (``<root>/<images>/<stem>.png``
for every ``<stem>.jpg`` of the split; crop and resize: :mod:`inversion_bench.data.prepare`). The
identities and the train/test assignment come from the shipped split
(:mod:`inversion_bench.data.published_split`), never from a random draw: class k of the target is
label k of the split, the label order MIBench, PLG-MI and Trap-MID train with (KED-MI's own lists
are not public).

Identities, in order: the split's private labels (``kedmi_0000`` ... ``kedmi_0999``), then the public
part: the split's other CelebA identities (``public: celeba``; ``kedmi_public_0000`` ...), or every
image of an FFHQ 64 px folder as one identity ``ffhq`` (``public: ffhq``, the FFHQ variant of the
protocol; ``bench data prepare ffhq``), or none. Use it with ``split: {selection: published,
private_identities: 1000, public_identities: rest}``; fewer private identities take the split's
first labels (a scaled-down run).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from inversion_bench.data import DataCheck, DatasetPlugin, FaceCollection, ImageOptions
from inversion_bench.data.image_folder import ImageFolderFaces
from inversion_bench.data.published_split import PARTS, file_problem, get_split, label_counts, read_part, split_path
from inversion_bench.errors import MissingResourceError
from inversion_bench.registry import datasets

CELEBA_WHERE = ("CelebA: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Img/img_align_celeba, "
                "Anno/identity_CelebA.txt), then `bench data prepare celeba SRC --out ROOT`")
FFHQ_WHERE = ("FFHQ: https://github.com/NVlabs/ffhq-dataset (thumbnails128x128), then "
              "`bench data prepare ffhq SRC --out ROOT`")
FFHQ_IMAGES = 70_000


def prepared_name(image: str) -> str:
    """The file name ``bench data prepare`` gives the image ``image`` of a split (PNG, same stem)."""
    return Path(image).stem + ".png"


def _files(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return set()


@datasets.register("celeba-split")
class CelebASplit(DatasetPlugin):
    """CelebA with a published split (images prepared by ``bench data prepare celeba``)."""

    published_split: ClassVar[bool] = True

    class Params(ImageOptions):
        root: str = Field(description="folder written by `bench data prepare celeba` (and `... ffhq`)")
        images: str = Field("img_align_celeba_64", description="the prepared CelebA images, relative to root")
        split: Literal["kedmi-celeba"] = Field("kedmi-celeba", description="published split (shipped, checksummed)")
        public: Literal["celeba", "ffhq", "none"] = Field(
            "celeba", description="public data: the split's other CelebA identities, FFHQ 64 px (one identity) "
            "or none")
        ffhq_images: str = Field("ffhq64", description="FFHQ 64 px folder (public: ffhq), relative to root")
        private_labels: int | None = Field(None, ge=2, description="keep the split's first N private labels "
                                           "only (a scaled-down run); None: all")
        public_labels: int | None = Field(None, ge=0, description="keep the split's first N public labels only; "
                                          "None: all")
        ffhq_count: int = Field(FFHQ_IMAGES, ge=1, description="FFHQ 64 px images bench doctor expects (public: "
                                "ffhq); a different number is reported, not blocking")
        cache_images: int = Field(60_100, ge=0, description="decoded images kept in memory (LRU)")

    def _folder(self, sub: str) -> Path:
        p = Path(sub).expanduser()
        return p if p.is_absolute() else Path(self.params.root).expanduser() / p

    def _parts(self) -> dict[str, list[tuple[str, int]]]:
        split = get_split(self.params.split)
        parts = ("private_train", "private_test") + (("public",) if self.params.public == "celeba" else ())
        out = {}
        for part in parts:
            keep = self.params.public_labels if part == "public" else self.params.private_labels
            pairs = read_part(split, part)
            out[part] = pairs if keep is None else [(n, label) for n, label in pairs if label < keep]
        return out

    def _ffhq_files(self) -> list[str]:
        return sorted(n for n in _files(self._folder(self.params.ffhq_images)) if n.endswith(".png"))

    def _split_checks(self) -> list[DataCheck]:
        split = get_split(self.params.split)
        out = []
        for part in PARTS:
            problem = file_problem(split, part)
            out.append(DataCheck(f"dataset.params.split ({part})", f"split file {split.name}, SHA-256 "
                                 f"{split.file(part).sha256[:12]}..., from {split.source}", split_path(split, part),
                                 not problem, problem))
        return out

    def _image_checks(self) -> list[DataCheck]:
        """The prepared images of every part read: found against the split's numbers."""
        images = self._folder(self.params.images)
        if not images.is_dir():
            return [DataCheck("dataset.params.images", f"CelebA 64 px; {CELEBA_WHERE}", images, False,
                              f"dataset.params.images: folder {images} not found; {CELEBA_WHERE}")]
        present = _files(images)
        out = []
        for part, pairs in self._parts().items():
            absent = [n for n, _ in pairs if prepared_name(n) not in present]
            found = len(pairs) - len(absent)
            out.append(DataCheck("dataset.params.images", f"CelebA 64 px, {part}: {found} of {len(pairs)} images "
                                 f"expected", images, not absent, "" if not absent else
                                 f"dataset.params.images: {images} has {found} of the {len(pairs)} {part} images "
                                 f"of {self.params.split} (WRONG count; e.g. {prepared_name(absent[0])} is missing); "
                                 f"{CELEBA_WHERE}"))
        return out

    def checks(self) -> list[DataCheck]:
        """The split files (checksums), the prepared image folder (images per part against the split's
        numbers) and, for ``public: ffhq``, the FFHQ folder (against FFHQ's 70,000 unless scaled down)."""
        out = self._split_checks()
        if any(not c.ok for c in out):
            return out
        out += self._image_checks()
        if self.params.public == "ffhq":
            ffhq = self._folder(self.params.ffhq_images)
            n = len(self._ffhq_files())
            expected = self.params.ffhq_count
            ok = n == expected
            out.append(DataCheck("dataset.params.ffhq_images", f"FFHQ 64 px: {n} of {expected} images expected",
                                 ffhq, ok, "" if ok else f"dataset.params.ffhq_images: {ffhq} has {n} images, "
                                 f"expected {expected} (WRONG count); {FFHQ_WHERE}", blocking=False))
        return out

    def missing(self) -> list[str]:
        root = Path(self.params.root).expanduser()
        if not root.is_dir():
            return [f"dataset.params.root: folder {root} does not exist; {CELEBA_WHERE}"]
        out = [c.problem for c in self.checks() if not c.ok and c.blocking]
        if self.params.public == "ffhq" and not self._ffhq_files():
            out.append(f"dataset.params.ffhq_images: no .png in {self._folder(self.params.ffhq_images)}; {FFHQ_WHERE}")
        return out

    def listing(self) -> tuple[list[str], list[int]] | None:
        """Identities and image counts from the split files (and the FFHQ folder's listing)."""
        if self.missing():
            return None
        names, counts = self._names_counts()
        return names, counts

    def _names_counts(self) -> tuple[list[str], list[int]]:
        parts = self._parts()
        private = label_counts(parts["private_train"] + parts["private_test"])
        names = [f"kedmi_{k:04d}" for k in range(len(private))]
        counts = list(private)
        if "public" in parts:
            public = label_counts(parts["public"])
            names += [f"kedmi_public_{k:04d}" for k in range(len(public))]
            counts += public
        elif self.params.public == "ffhq":
            names.append("ffhq")
            counts.append(len(self._ffhq_files()))
        return names, counts

    def identity(self) -> dict[str, Any]:
        """Parameters, the split files' SHA-256 and a fingerprint of the image files (name and size each)."""
        ident = self.params.model_dump(mode="json")
        ident.pop("cache_images", None)
        split = get_split(self.params.split)
        ident["split_sha256"] = [f.sha256 for f in split.files]
        digest = hashlib.sha1()
        for path in self._paths_targets()[0]:
            try:
                size = Path(path).stat().st_size
            except OSError:
                size = -1
            digest.update(f"{Path(path).name}\0{size}\n".encode())
        ident["files_sha1"] = digest.hexdigest()
        return ident

    def _paths_targets(self) -> tuple[list[str], list[int], list[bool]]:
        """Image paths, identity indices and test flags, in split file order."""
        images = self._folder(self.params.images)
        parts = self._parts()
        n_private = len(label_counts(parts["private_train"] + parts["private_test"]))
        paths, targets, test = [], [], []
        for part, offset in (("private_train", 0), ("private_test", 0), ("public", n_private)):
            for name, label in parts.get(part, []):
                paths.append(str(images / prepared_name(name)))
                targets.append(offset + label)
                test.append(part == "private_test")
        if self.params.public == "ffhq":
            ffhq = self._folder(self.params.ffhq_images)
            for name in self._ffhq_files():
                paths.append(str(ffhq / name))
                targets.append(n_private)
                test.append(False)
        return paths, targets, test

    def load(self, resolution: int) -> FaceCollection:
        problems = self.missing()
        if problems:
            raise MissingResourceError("; ".join(problems))
        paths, targets, test = self._paths_targets()
        names, _ = self._names_counts()
        faces = ImageFolderFaces(paths, torch.tensor(targets), names, resolution,
                                 cache_images=self.params.cache_images, crop=self.params.crop,
                                 grayscale=self.params.grayscale, name=f"celeba-split {self.params.root}")
        faces.published_test = torch.tensor(test, dtype=torch.bool)
        return faces
