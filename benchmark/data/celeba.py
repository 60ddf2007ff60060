"""CelebA identities (Liu et al., ICCV 2015) as used by model inversion papers.

Plug & Play Attacks (Struppek et al., ICML 2022) and the label smoothing paper (ICLR 2024) train
their CelebA targets on the 1,000 identities with the most images. The dataset is read from the
official identity file (``identity_CelebA.txt``: ``<file name> <identity id>`` per line) and an
image folder (the aligned ``img_align_celeba`` or a cropped copy with the same file names). As PPA's
loader does (LukasStruppek/Plug-and-Play-Attacks @ 3087a4f, ``datasets/celeba.py``), an image listed as
``<name>.jpg`` is read from ``<name>.png`` when only that exists: PPA's HD-CelebA crops
(``bench data prepare celeba SRC --crop ppa-hd``, :mod:`inversion_bench.data.hd_celeba`) are PNG files.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from inversion_bench.data import DataCheck, DatasetPlugin, FaceCollection, ImageOptions
from inversion_bench.data.image_folder import ImageFolderFaces
from inversion_bench.data.published_split import read_name_label_lines
from inversion_bench.errors import MissingResourceError
from inversion_bench.registry import datasets

CELEBA_IMAGES = 202_599  # images of CelebA (Liu et al., ICCV 2015), the lines of identity_CelebA.txt
WHERE = ("CelebA is at https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
         "(Anno/identity_CelebA.txt, Img/img_align_celeba)")
HD_SIZE = 224  # PPA's HD-CelebA crop (inversion_bench.data.hd_celeba.PPA_SIZE)
HD_WHERE = ("PPA's HD-CelebA crop: `bench data prepare celeba SRC --crop ppa-hd --out ROOT` from CelebA's in-the-wild "
            "img_celeba and HD-CelebA-Cropper's landmarks (docs/protocols.md)")


def image_file(images: Path, name: str, present: set[str] | None = None) -> Path:
    """Where the image listed as ``name`` is: ``images/name``, else ``images/<stem>.png`` when only that exists
    (PPA's HD crops); ``present``: the folder's file names, when already listed."""
    alt = f"{Path(name).stem}.png"
    if present is not None:
        return images / (alt if name not in present and alt in present else name)
    p = images / name
    return p if p.is_file() or not (images / alt).is_file() else images / alt


def read_identity_file(path: Path) -> list[tuple[str, int]]:
    """(file name, identity id) pairs of ``identity_CelebA.txt``."""
    return read_name_label_lines(path, "'<file name> <identity id>'")


def most_frequent(pairs: list[tuple[str, int]], n: int) -> list[int]:
    """The ``n`` identity ids with the most images (ties broken by the smaller id)."""
    counts = Counter(ident for _, ident in pairs)
    return [ident for ident, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


PPA_SPLIT_SEED = 42  # CelebA1000's split_seed default, which PPA's training and attack code keep
PPA_TRAIN_FRACTION = 0.9


def ppa_ranking(pairs: list[tuple[str, int]], n: int) -> list[int]:
    """PPA's ``CelebA1000`` classes: the ``n`` identities with the most images, most first, ties in order of first
    appearance in the file (a stable sort of a ``Counter`` over the images in name order); class k is the k-th.

    Source: LukasStruppek/Plug-and-Play-Attacks @ 3087a4f098a389ff3c144b5a17db9aad408e425a, datasets/celeba.py
    lines 29-34 (ranking) and 49-52 (class k = the k-th of the ranking).
    """
    counts = Counter(ident for _, ident in sorted(pairs))
    return [ident for ident, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:n]]


def ppa_test_positions(pairs: list[tuple[str, int]], keep: list[int], seed: int = PPA_SPLIT_SEED) -> set[int]:
    """Positions (in name order) of PPA's test images: the kept identities' image positions, shuffled by NumPy's
    legacy generator seeded with ``seed``, the last 10 % (datasets/celeba.py lines 36-43 of the same commit)."""
    idents = np.array([ident for _, ident in sorted(pairs)])
    indices = np.where(np.isin(idents, np.array(keep)))[0]
    np.random.RandomState(seed).shuffle(indices)  # the same stream as np.random.seed(seed); np.random.shuffle
    return set(indices[int(PPA_TRAIN_FRACTION * len(indices)):].tolist())


@datasets.register("celeba")
class CelebA(DatasetPlugin):
    """CelebA: the identities with the most images, from the identity file and an image folder."""

    class Params(ImageOptions):  # crop and grayscale: see inversion_bench.data.ImageOptions
        root: str = Field(description="CelebA folder")
        identity_file: str = Field("identity_CelebA.txt", description="identity file, relative to root")
        images: str = Field("img_align_celeba", description="image folder (aligned or cropped), relative to root")
        num_identities: int = Field(1000, ge=2, description="keep the identities with the most images")
        cache_images: int = Field(20_000, ge=0, description="decoded images kept in memory (LRU)")
        order: Literal["id", "ppa"] = Field(
            "id", description="'id': classes in identity-id order, the split from dataset.split; 'ppa': PPA's "
            "CelebA1000 (classes by image count, most first; `selection: published` keeps its 90/10 train/test "
            "split of seed 42), the class order of PPA's released CelebA targets")
        expect_crop: Literal["any", "ppa-hd"] = Field(  # a check, not content: left out of dumps and keys
            "any", exclude=True, description="'ppa-hd': `bench doctor` checks that the images are PPA's 224 x 224 "
            "HD-CelebA crop (the PPA protocol) and reports other images as WRONG; reading is the same either way")

        @model_serializer(mode="wrap")
        def _drop_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
            """ImageOptions' defaults and ``order: id`` left out: keys from before the options stay valid."""
            data = handler(self)
            for field, default in (("crop", "center"), ("grayscale", False), ("order", "id")):
                if data.get(field) == default:
                    data.pop(field)
            return data

    @property
    def published_split(self) -> bool:  # type: ignore[override]
        """PPA's order carries PPA's train/test assignment (``selection: published``)."""
        return self.params.order == "ppa"

    def _classes(self, pairs: list[tuple[str, int]]) -> list[int]:
        """The kept identity ids in class order."""
        n = self.params.num_identities
        return ppa_ranking(pairs, n) if self.params.order == "ppa" else sorted(most_frequent(pairs, n))

    def _paths(self) -> tuple[Path, Path, Path]:
        root = Path(self.params.root).expanduser()
        return root, root / self.params.identity_file, root / self.params.images

    def _where(self) -> str:
        """Where the files come from: CelebA's aligned images, or PPA's HD crop when the suite expects it."""
        return f"{HD_WHERE}; {WHERE}" if self.params.expect_crop == "ppa-hd" else WHERE

    def missing(self) -> list[str]:
        root, ident, images = self._paths()
        if not root.is_dir():
            return [f"dataset.params.root: folder {root} does not exist; {self._where()}"]
        out = []
        if not ident.is_file():
            out.append(f"dataset.params.identity_file: {ident} not found; {self._where()}")
        if not images.is_dir():
            out.append(f"dataset.params.images: folder {images} not found; {self._where()}")
        return out

    def checks(self) -> list[DataCheck]:
        """The identity file (its entries against CelebA's 202,599) and the image folder (the entries found); the
        counts are reported, not blocking (a scaled-down copy lists fewer; a missing image stops the load)."""
        root, ident, images = self._paths()
        if not ident.is_file():
            return [DataCheck("dataset.params.identity_file", f"CelebA identity file; {self._where()}", ident, False,
                              f"dataset.params.identity_file: {ident} not found; {self._where()}")]
        pairs = read_identity_file(ident)
        ok = len(pairs) == CELEBA_IMAGES
        out = [DataCheck("dataset.params.identity_file", f"CelebA identity file: {len(pairs)} of {CELEBA_IMAGES} "
                         "images expected", ident, ok, "" if ok else f"dataset.params.identity_file: {ident} lists "
                         f"{len(pairs)} images, CelebA has {CELEBA_IMAGES} (WRONG count); {self._where()}",
                         blocking=False)]
        if not images.is_dir():
            return [*out, DataCheck("dataset.params.images", f"CelebA images; {self._where()}", images, False,
                                    f"dataset.params.images: folder {images} not found; {self._where()}")]
        present = {e.name for e in os.scandir(images)}
        files = [image_file(images, name, present) for name, _ in pairs]
        found = sum(f.name in present for f in files)
        ok = found == len(pairs)
        out.append(DataCheck("dataset.params.images", f"CelebA images: {found} of {len(pairs)} listed images",
                             images, ok, "" if ok else f"dataset.params.images: {images} has {found} of the "
                             f"{len(pairs)} images {ident.name} lists (WRONG count); {self._where()}", blocking=False))
        if self.params.expect_crop == "ppa-hd":
            out.append(self._hd_check(images, [f for f in files if f.name in present]))
        return out

    def _hd_check(self, images: Path, files: list[Path]) -> DataCheck:
        """Whether the images are PPA's HD crop: the first image present is a 224 x 224 PNG."""
        field = "dataset.params.expect_crop"
        if not files:
            return DataCheck(field, HD_WHERE, images, False, f"{field}: no image in {images}; {HD_WHERE}")
        from PIL import Image

        try:
            with Image.open(files[0]) as im:
                size, fmt = im.size, im.format
        except OSError as exc:
            return DataCheck(field, HD_WHERE, files[0], False, f"{field}: {files[0]} is unreadable ({exc}); {HD_WHERE}")
        ok = size == (HD_SIZE, HD_SIZE) and fmt == "PNG"
        what = f"PPA HD-CelebA crop ({size[0]} x {size[1]} {fmt}, e.g. {files[0].name}); {HD_WHERE}"
        return DataCheck(field, what, images, ok, "" if ok else f"{field}: {files[0]} is a {size[0]} x {size[1]} "
                         f"{fmt}, PPA's HD-CelebA crop is a {HD_SIZE} x {HD_SIZE} PNG (WRONG crop: these are not the "
                         f"protocol's images); {HD_WHERE}", blocking=False)

    def identity(self) -> dict[str, Any]:
        """Parameters, the identity file's SHA-1 and a fingerprint of the image files the kept
        identities use (file name and size each, -1 for a missing file), so a replaced image folder
        gives new cache keys."""
        ident = self.params.model_dump(mode="json")
        ident.pop("cache_images", None)
        _, ident_file, images = self._paths()
        if ident_file.is_file():
            ident["identity_file_sha1"] = hashlib.sha1(ident_file.read_bytes()).hexdigest()
            pairs = read_identity_file(ident_file)
            keep = set(self._classes(pairs))
            digest = hashlib.sha1()
            for fname, person in sorted(pairs):
                if person in keep:
                    try:
                        size = image_file(images, fname).stat().st_size
                    except OSError:
                        size = -1
                    digest.update(f"{person}\0{fname}\0{size}\n".encode())
            ident["files_sha1"] = digest.hexdigest()
        return ident

    def listing(self) -> tuple[list[str], list[int]] | None:
        """From the identity file (the images' presence is checked when loading)."""
        if self.missing():
            return None
        pairs = read_identity_file(self._paths()[1])
        counts = Counter(ident for _, ident in pairs)
        keep = self._classes(pairs)
        return [f"celeba_{ident}" for ident in keep], [counts[ident] for ident in keep]

    def load(self, resolution: int) -> FaceCollection:
        problems = self.missing()
        if problems:
            raise MissingResourceError("; ".join(problems))
        _, ident_file, images = self._paths()
        pairs = read_identity_file(ident_file)
        keep = self._classes(pairs)
        index = {ident: k for k, ident in enumerate(keep)}
        test_at = ppa_test_positions(pairs, keep) if self.params.order == "ppa" else set()
        paths, targets, test, missing = [], [], [], 0
        for pos, (fname, ident) in enumerate(sorted(pairs)):
            if ident in index:
                p = image_file(images, fname)
                if not p.is_file():
                    missing += 1
                    continue
                paths.append(str(p))
                targets.append(index[ident])
                test.append(pos in test_at)
        if missing:
            raise MissingResourceError(f"dataset.params.images: {missing} image(s) listed in {ident_file} are not in "
                                       f"{images}; use the complete image folder")
        names = [f"celeba_{ident}" for ident in keep]
        faces = ImageFolderFaces(paths, torch.tensor(targets), names, resolution,
                                 cache_images=self.params.cache_images, crop=self.params.crop,
                                 grayscale=self.params.grayscale, name=f"celeba {self.params.root}")
        if self.params.order == "ppa":
            faces.published_test = torch.tensor(test, dtype=torch.bool)
            faces.published_test_by_image = True  # PPA draws over all images: some identities get no test image
        return faces
