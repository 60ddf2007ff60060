"""Face images on disk, one sub-folder per identity (the ``image-folder`` dataset).

Layout: ``root/<identity>/<image files>`` or, with ``subdirs``, ``root/<subdir>/<identity>/...``
for every listed sub-path (FaceScrub: ``subdirs: [actors/faces, actresses/faces]``). The images
lie directly in the identity folders. Any format Pillow reads works; images are converted
to RGB (or luminance in 3 equal channels, ``grayscale``); a non-square image is centre-cropped
(``crop: center``, the default) or padded with black (``crop: pad``) to a square, then resized to the
resolution. The first non-square image found is logged, once per collection.

Loading is lazy: :meth:`ImageFolder.load` lists the files (and, by default, reads every file's
header to skip the ones Pillow cannot open); pixels are decoded on first use and kept in an LRU
cache of uint8 tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import Field
from torch import Tensor

from inversion_bench.data import Crop, DataCheck, DatasetPlugin, FaceCollection, ImageOptions
from inversion_bench.data.folder_counts import folder_checks
from inversion_bench.data.image_convert import to_rgb as _to_rgb
from inversion_bench.errors import MissingResourceError
from inversion_bench.registry import datasets

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pnm",
)

# What Pillow raises for files it cannot read (DecompressionBombError: absurdly large images).
_DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Warnings about unreadable files are logged individually up to this many, then summarised.
_MAX_FILE_WARNINGS = 10


def decode_image(path: str | Path, resolution: int, crop: Crop = "center", grayscale: bool = False,
                 size: list[int] | None = None) -> np.ndarray:
    """Decodes one image as uint8 [3, R, R]: RGB (luminance in 3 equal channels with ``grayscale``),
    made square (``crop="center"``: the centre square of side min(w, h); ``"pad"``: black borders to
    max(w, h)), resized to R. The size before that is appended to ``size`` ([w, h]) when given.

    Raises:
        OSError: Pillow cannot read the file (also for truncated or corrupt data).
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (resolution, resolution))  # fast DCT downscaling, never below R
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        if grayscale:
            im = im.convert("L").convert("RGB")
        w, h = im.size
        if crop == "pad" and w != h:
            side = max(w, h)
            square = Image.new("RGB", (side, side))  # black
            square.paste(im, ((side - w) // 2, (side - h) // 2))
            im, box = square, None
        else:
            left, top, side = (w - min(w, h)) / 2.0, (h - min(w, h)) / 2.0, min(w, h)
            box = (left, top, left + side, top + side)
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.uint8)
    if size is not None:
        size[:] = [w, h]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageFolderFaces(FaceCollection):
    """Images listed by path; decoded on demand into an LRU cache of uint8 [3, R, R] tensors.

    Files that fail to decode here (after passing the header check) are replaced by a mid-grey
    image, logged and counted in :attr:`decode_failures`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Tensor,
        identity_names: list[str],
        resolution: int,
        *,
        cache_images: int = 20_000,
        workers: int | None = None,
        skipped: Sequence[str] = (),
        crop: Crop = "center",
        grayscale: bool = False,
        name: str = "image-folder",
    ) -> None:
        self.paths = list(paths)
        self.targets = targets.long()
        self.identity_names = list(identity_names)
        self.resolution = int(resolution)
        self.cache_images = int(cache_images)
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        self.skipped = list(skipped)  # unreadable files left out at load time
        self.decode_failures: list[str] = []
        self.crop: Crop = crop
        self.grayscale = bool(grayscale)
        self.name = name  # names the dataset in the log line about non-square images
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._non_square_logged = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> Tensor:
        try:
            size: list[int] = []
            arr = decode_image(self.paths[i], self.resolution, self.crop, self.grayscale, size)
        except _DECODE_ERRORS as exc:
            if self.paths[i] not in self.decode_failures:
                self.decode_failures.append(self.paths[i])
                log.warning("cannot decode %s (%s); using a grey image instead", self.paths[i], exc)
            return torch.full((3, self.resolution, self.resolution), 128, dtype=torch.uint8)
        with self._lock:  # logged once per collection
            first = size[0] != size[1] and not self._non_square_logged
            self._non_square_logged |= first
        if first:
            log.info("%s: non-square images (first: %s, %dx%d) are %s to a square (crop: %s)", self.name,
                     self.paths[i], *size, "centre-cropped" if self.crop == "center" else "padded", self.crop)
        return torch.from_numpy(arr)

    def get_u8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Images ``indices`` as uint8 [n, 3, R, R]."""
        n = len(self)
        idx = [i + n if i < 0 else i for i in torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()]
        if not idx:
            return torch.empty(0, 3, self.resolution, self.resolution, dtype=torch.uint8)
        found: dict[int, Tensor] = {}
        for i in idx:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                found[i] = hit
        todo = sorted(set(idx) - found.keys())
        if len(todo) > 16 and self.workers > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # Pillow releases the GIL while decoding
                decoded = list(pool.map(self._decode, todo))
        else:
            decoded = [self._decode(i) for i in todo]
        for i, t in zip(todo, decoded, strict=True):
            found[i] = t
            if self.cache_images > 0:
                self._cache[i] = t
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return torch.stack([found[i] for i in idx])

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        return self.get_u8(indices).float().div_(255.0)


def natural_key(name: str) -> list[Any]:
    """Sorts names naturally: ``s2`` before ``s10`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    names = [
        e.name
        for e in entries
        if not e.name.startswith(".") and e.name.lower().endswith(extensions) and e.is_file()
    ]
    return [folder / name for name in sorted(names)]


@datasets.register("image-folder")
class ImageFolder(DatasetPlugin):
    """Face images on disk, one sub-folder per identity (any format Pillow reads).

    ``root/<identity>/*.jpg`` by default; ``subdirs`` lists sub-paths of ``root`` that hold
    identity folders, e.g. FaceScrub's ``[actors/faces, actresses/faces]``. Identities are sorted
    by name, files by path, so the collection is deterministic.
    """

    version = "1"

    class Params(ImageOptions):
        root: str = Field(description="folder with one sub-folder per identity (or the subdirs below)")
        subdirs: list[str] | None = Field(
            None,
            description="sub-paths of root that hold identity folders (e.g. [actors/faces, "
            "actresses/faces]); None: identity folders lie directly under root",
        )
        extensions: list[str] = Field(
            default_factory=lambda: list(DEFAULT_EXTENSIONS),
            min_length=1,
            description="file name endings to read (case-insensitive)",
        )
        min_images_per_identity: int = Field(
            2, ge=1, description="identities with fewer readable images are dropped"
        )
        max_images_per_identity: int | None = Field(
            None, ge=1, description="keep at most this many images per identity (the first by file name)"
        )
        max_identities: int | None = Field(
            None,
            ge=2,
            description="keep the identities with the most images (ties by name), at most this many",
        )
        check_files: bool = Field(
            True, description="open every file's header at load time and skip those Pillow cannot read"
        )
        cache_mb: int = Field(1024, ge=0, description="memory (MiB) for decoded images kept in an LRU cache")

    def _params(self) -> ImageFolder.Params:
        prm = self.params
        assert isinstance(prm, ImageFolder.Params)
        return prm

    def _bases(self) -> list[tuple[str, Path]]:
        prm = self._params()
        root = Path(prm.root).expanduser()
        if prm.subdirs is None:
            return [("", root)]
        return [(sub.strip("/"), root / sub) for sub in prm.subdirs]

    def _extensions(self) -> tuple[str, ...]:
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in self._params().extensions)

    def _identity_folders(self) -> list[tuple[str, Path]]:
        """(name, folder) of every identity folder, sorted by name.

        A name found under more than one of ``subdirs`` is qualified as ``<subdir>/<name>``.
        """
        found: list[tuple[str, str, Path]] = []
        for sub, base in self._bases():
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    found.append((entry.name, sub, entry))
        counts: dict[str, int] = {}
        for name, _, _ in found:
            counts[name] = counts.get(name, 0) + 1
        named = [
            (f"{sub}/{name}" if counts[name] > 1 and sub else name, folder) for name, sub, folder in found
        ]
        return sorted(named, key=lambda item: (natural_key(item[0]), item))

    def checks(self) -> list[DataCheck]:
        """The layout (:meth:`missing`), then identities and images per sub-path against the numbers of the
        dataset they are known to be (FaceScrub's; :mod:`inversion_bench.data.folder_counts`)."""
        return folder_checks(self.missing(), Path(self._params().root).expanduser(), self._bases(),
                             self._extensions())

    def missing(self) -> list[str]:
        """Problems with the folder layout (no image is decoded)."""
        prm = self._params()
        root = Path(prm.root).expanduser()
        hint = "point it at a folder with one sub-folder per identity"
        if not root.exists():
            return [f"dataset.params.root: folder {root} does not exist; {hint}"]
        if not root.is_dir():
            return [f"dataset.params.root: {root} is not a folder; {hint}"]
        problems = []
        for sub, base in self._bases():
            if sub and not base.is_dir():
                problems.append(
                    f"dataset.params.subdirs: {sub!r} is not a folder under {root}; list sub-paths of root "
                    "that contain identity folders"
                )
        if problems:
            return problems
        exts = self._extensions()
        usable = sum(
            1
            for _, folder in self._identity_folders()
            if len(_list_files(folder, exts)) >= prm.min_images_per_identity
        )
        if usable < 2:
            where = f"{root}" if prm.subdirs is None else f"{root} (subdirs {prm.subdirs})"
            return [
                f"dataset.params.root: found {usable} identity folder(s) with at least "
                f"{prm.min_images_per_identity} image(s) ({', '.join(exts)}) in {where}; "
                f"need at least 2. {hint[0].upper() + hint[1:]}, or set dataset.params.subdirs"
            ]
        return []

    def identity(self) -> dict[str, Any]:
        """Parameters plus a fingerprint of the file list (names and sizes), so edits invalidate caches."""
        ident = self._params().model_dump(mode="json")
        ident.pop("cache_mb", None)  # changes memory use, not the data
        digest = hashlib.sha1()
        exts = self._extensions()
        for name, folder in self._identity_folders():
            for f in _list_files(folder, exts):
                try:
                    size = f.stat().st_size
                except OSError:
                    size = -1
                digest.update(f"{name}\0{f.name}\0{size}\n".encode())
        ident["files_sha1"] = digest.hexdigest()
        names = [name for name, _ in self._identity_folders()]
        if names != sorted(names):  # natural order (s2 before s10) differs from the name order of older versions
            ident["order"] = "natural"
        return ident

    def listing(self) -> tuple[list[str], list[int]] | None:
        """Identity folders and file counts as :meth:`load` keeps them (before unreadable files are skipped)."""
        if self.missing():
            return None
        prm = self._params()
        cap = prm.max_images_per_identity
        per_identity = [(name, min(n, cap) if cap else n) for name, folder in self._identity_folders()
                        if (n := len(_list_files(folder, self._extensions()))) >= prm.min_images_per_identity]
        if prm.max_identities is not None and len(per_identity) > prm.max_identities:
            ranked = sorted(per_identity, key=lambda item: (-item[1], item[0]))[: prm.max_identities]
            per_identity = sorted(ranked, key=lambda item: natural_key(item[0]))
        return [name for name, _ in per_identity], [n for _, n in per_identity]

    def load(self, resolution: int) -> FaceCollection:
        """Lists the identities and files; pixels are decoded lazily by the returned collection."""
        prm = self._params()
        problems = self.missing()
        if problems:
            raise MissingResourceError("; ".join(problems))
        exts = self._extensions()
        skipped: list[str] = []
        per_identity: list[tuple[str, list[str]]] = []
        for name, folder in self._identity_folders():
            files = []
            for f in _list_files(folder, exts):
                if prm.max_images_per_identity is not None and len(files) >= prm.max_images_per_identity:
                    break
                if prm.check_files:
                    try:
                        with Image.open(f) as im:
                            im.size  # noqa: B018  (the header is parsed by open)
                    except _DECODE_ERRORS as exc:
                        skipped.append(str(f))
                        if len(skipped) <= _MAX_FILE_WARNINGS:
                            log.warning("skipping %s: Pillow cannot read it (%s)", f, exc)
                        continue
                files.append(str(f))
            if len(files) >= prm.min_images_per_identity:
                per_identity.append((name, files))
        if len(skipped) > _MAX_FILE_WARNINGS:
            log.warning("skipped %d unreadable files in total under %s", len(skipped), prm.root)
        if prm.max_identities is not None and len(per_identity) > prm.max_identities:
            ranked = sorted(per_identity, key=lambda item: (-len(item[1]), item[0]))[: prm.max_identities]
            per_identity = sorted(ranked, key=lambda item: (natural_key(item[0]), item))
        paths = [f for _, files in per_identity for f in files]
        targets = torch.tensor(
            [k for k, (_, files) in enumerate(per_identity) for _ in files], dtype=torch.long
        )
        names = [name for name, _ in per_identity]
        if len(names) < 2:
            raise MissingResourceError(
                f"dataset.params.root: only {len(names)} identity folder(s) under {prm.root} have "
                f"{prm.min_images_per_identity} or more readable images; need at least 2"
            )
        log.info(
            "image-folder %s: %d identities, %d images, %d unreadable files skipped",
            prm.root, len(names), len(paths), len(skipped),
        )  # fmt: skip
        cache_images = (prm.cache_mb << 20) // (3 * resolution * resolution)
        return ImageFolderFaces(paths, targets, names, resolution, cache_images=cache_images, skipped=skipped,
                                crop=prm.crop, grayscale=prm.grayscale, name=f"image-folder {prm.root}")
