"""CelebA identities (Liu et al., ICCV 2015) as used by model inversion papers.

Plug & Play Attacks (Struppek et al., ICML 2022) and the label smoothing paper (ICLR 2024) train
their CelebA targets on the 1,000 identities with the most images. The dataset is read from the
official identity file (``identity_CelebA.txt``: ``<file name> <identity id>`` per line) and an
image folder (the aligned ``img_align_celeba`` or a cropped copy with the same file names).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from inversion_bench.data import DataCheck, DatasetPlugin, FaceCollection, ImageOptions
from inversion_bench.data.image_folder import ImageFolderFaces
from inversion_bench.data.published_split import read_name_label_lines
from inversion_bench.errors import MissingResourceError
from inversion_bench.registry import datasets

CELEBA_IMAGES = 202_599  # images of CelebA (Liu et al., ICCV 2015), the lines of identity_CelebA.txt
WHERE = ("CelebA is at https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
         "(Anno/identity_CelebA.txt, Img/img_align_celeba)")


def read_identity_file(path: Path) -> list[tuple[str, int]]:
    """(file name, identity id) pairs of ``identity_CelebA.txt``."""
    return read_name_label_lines(path, "'<file name> <identity id>'")


def most_frequent(pairs: list[tuple[str, int]], n: int) -> list[int]:
    """The ``n`` identity ids with the most images (ties broken by the smaller id)."""
    counts = Counter(ident for _, ident in pairs)
    return [ident for ident, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


@datasets.register("celeba")
class CelebA(DatasetPlugin):
    """CelebA: the identities with the most images, from the identity file and an image folder."""

    class Params(ImageOptions):  # crop and grayscale: see inversion_bench.data.ImageOptions
        root: str = Field(description="CelebA folder")
        identity_file: str = Field("identity_CelebA.txt", description="identity file, relative to root")
        images: str = Field("img_align_celeba", description="image folder (aligned or cropped), relative to root")
        num_identities: int = Field(1000, ge=2, description="keep the identities with the most images")
        cache_images: int = Field(20_000, ge=0, description="decoded images kept in memory (LRU)")

    def _paths(self) -> tuple[Path, Path, Path]:
        root = Path(self.params.root).expanduser()
        return root, root / self.params.identity_file, root / self.params.images

    def missing(self) -> list[str]:
        root, ident, images = self._paths()
        if not root.is_dir():
            return [f"dataset.params.root: folder {root} does not exist; {WHERE}"]
        out = []
        if not ident.is_file():
            out.append(f"dataset.params.identity_file: {ident} not found; {WHERE}")
        if not images.is_dir():
            out.append(f"dataset.params.images: folder {images} not found; {WHERE}")
        return out

    def checks(self) -> list[DataCheck]:
        """The identity file (its entries against CelebA's 202,599) and the image folder (the entries found); the
        counts are reported, not blocking (a scaled-down copy lists fewer; a missing image stops the load)."""
        root, ident, images = self._paths()
        if not ident.is_file():
            return [DataCheck("dataset.params.identity_file", f"CelebA identity file; {WHERE}", ident, False,
                              f"dataset.params.identity_file: {ident} not found; {WHERE}")]
        pairs = read_identity_file(ident)
        ok = len(pairs) == CELEBA_IMAGES
        out = [DataCheck("dataset.params.identity_file", f"CelebA identity file: {len(pairs)} of {CELEBA_IMAGES} "
                         "images expected", ident, ok, "" if ok else f"dataset.params.identity_file: {ident} lists "
                         f"{len(pairs)} images, CelebA has {CELEBA_IMAGES} (WRONG count); {WHERE}", blocking=False)]
        if not images.is_dir():
            return [*out, DataCheck("dataset.params.images", f"CelebA images; {WHERE}", images, False,
                                    f"dataset.params.images: folder {images} not found; {WHERE}")]
        present = {e.name for e in os.scandir(images)}
        found = sum(name in present for name, _ in pairs)
        ok = found == len(pairs)
        return [*out, DataCheck("dataset.params.images", f"CelebA images: {found} of {len(pairs)} listed images",
                                images, ok, "" if ok else f"dataset.params.images: {images} has {found} of the "
                                f"{len(pairs)} images {ident.name} lists (WRONG count); {WHERE}", blocking=False)]

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
            keep = set(most_frequent(pairs, self.params.num_identities))
            digest = hashlib.sha1()
            for fname, person in sorted(pairs):
                if person in keep:
                    try:
                        size = (images / fname).stat().st_size
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
        keep = sorted(most_frequent(pairs, self.params.num_identities))
        return [f"celeba_{ident}" for ident in keep], [counts[ident] for ident in keep]

    def load(self, resolution: int) -> FaceCollection:
        problems = self.missing()
        if problems:
            raise MissingResourceError("; ".join(problems))
        _, ident_file, images = self._paths()
        pairs = read_identity_file(ident_file)
        keep = most_frequent(pairs, self.params.num_identities)
        index = {ident: k for k, ident in enumerate(sorted(keep))}
        paths, targets, missing = [], [], 0
        for fname, ident in sorted(pairs):
            if ident in index:
                p = images / fname
                if not p.is_file():
                    missing += 1
                    continue
                paths.append(str(p))
                targets.append(index[ident])
        if missing:
            raise MissingResourceError(f"dataset.params.images: {missing} image(s) listed in {ident_file} are not in "
                                       f"{images}; use the complete image folder")
        names = [f"celeba_{ident}" for ident in sorted(keep)]
        return ImageFolderFaces(paths, torch.tensor(targets), names, resolution,
                                cache_images=self.params.cache_images, crop=self.params.crop,
                                grayscale=self.params.grayscale, name=f"celeba {self.params.root}")
