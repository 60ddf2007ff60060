"""``bench data prepare``: the downloaded datasets turned into the layout the suites read.

Each source is checked as a whole before any file is written (:mod:`inversion_bench.data.prepare_sources`:
one error per missing or extra file, naming it; exit 2). Then every output is written atomically
(a hidden ``.part`` file renamed into place), so an interrupted run leaves only complete files, and a
rerun skips every output that is already there and valid (an image of the expected size, a copy of
the expected length). A progress bar is drawn on a terminal only. CelebA's downloaded
``img_align_celeba.zip`` is read in place (:func:`open_archive`); a truncated archive is refused.

The crops are the references' (facts, re-implemented here):

* CelebA, 64 px protocol: KED-MI's ``dataloader.py`` ``ImageFolder.get_processor``
  (SCccc21/Knowledge-Enriched-DMI @ 1ec92f4697233028c74ad90fee75c69691948917): a 108 x 108 crop of the
  178 x 218 aligned image at rows ``(218 - 108) // 2 = 55`` and columns ``(178 - 108) // 2 = 35``, then
  ``Resize((64, 64))`` (bilinear on the PIL image). MIBench's ``preprocess_celeba_fn``
  (ffhibnese/Model-Inversion-Attack-ToolBox @ d9ad48f, ``src/modelinversion/datasets/celeba.py``) takes the
  same 108 px centre crop.
* FFHQ: the same function's FFHQ note: a centre 88 x 88 crop of the 128 px thumbnail (offset
  ``(128 - 88) // 2 = 20``), resized to 64 px.
* CelebA, PPA's 224 px protocol: the HD-CelebA crop of the in-the-wild images by 68 landmarks
  (:mod:`inversion_bench.data.hd_celeba`), written as ``img_align_celeba/<name>.png`` as PPA reads it.
* FaceScrub: the actors'/actresses' face crops are copied byte for byte into
  ``actors/faces/<name>/`` and ``actresses/faces/<name>/`` (what ``suites/facescrub.yaml`` reads; the
  suite resizes them).
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from inversion_bench.data.hd_celeba import HdCrop, align_crop
from inversion_bench.errors import ConfigError

CELEBA_BOX = (35, 55, 143, 163)
"""(left, top, right, bottom) of KED-MI's 108 px crop of an aligned 178 x 218 CelebA image."""
CELEBA_SOURCE_SIZE = (178, 218)
FFHQ_BOX = (20, 20, 108, 108)
"""KED-MI's FFHQ crop: the centre 88 x 88 of a 128 x 128 thumbnail."""
FFHQ_SOURCE_SIZE = (128, 128)
OUTPUT_SIZE = 64
MAX_LISTED = 20  # errors listed one by one, then counted


@dataclass(frozen=True)
class Job:
    """One output file: ``src`` cropped to ``box`` and resized to 64 px (PNG), aligned by ``hd`` (PPA's
    HD-CelebA crop, PNG), or copied (both None)."""

    src: Path
    dst: Path
    box: tuple[int, int, int, int] | None = None
    source_size: tuple[int, int] | None = None  # the size ``box`` is defined on
    member: str | None = None  # ``src`` is a zip archive and this its member (CelebA's img_align_celeba.zip)
    hd: HdCrop | None = None

    @property
    def output_size(self) -> int | None:
        """The side of the square image written (None: a copy)."""
        return self.hd.size if self.hd else OUTPUT_SIZE if self.box else None

    @property
    def name(self) -> str:
        """The source as the messages name it (``archive.zip:member`` for a member)."""
        return f"{self.src}:{self.member}" if self.member else str(self.src)


@dataclass
class Outcome:
    """What a preparation did: files written, skipped (already valid) and failed (with why)."""

    written: int = 0
    skipped: int = 0
    failed: list[str] | None = None


def input_error(errors: Sequence[str], what: str, consequence: str = "nothing written") -> ConfigError:
    """One ConfigError listing ``errors`` (the first :data:`MAX_LISTED`, then how many more)."""
    shown = list(errors[:MAX_LISTED])
    if len(errors) > MAX_LISTED:
        shown.append(f"... and {len(errors) - MAX_LISTED} more")
    return ConfigError(f"{what}: {len(errors)} problem(s), {consequence}:\n  " + "\n  ".join(shown))


def open_archive(path: Path) -> zipfile.ZipFile:
    """``path`` opened once per version of the file (its central directory read once for all its members).

    Raises:
        ConfigError: the archive is truncated or not a zip file.
    """
    st = path.stat()
    return _open_archive(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _open_archive(path: Path, mtime_ns: int, size: int) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{path}: not a complete zip archive ({exc}); the download is truncated or damaged: "
                          "download it again") from None


def crop_resize(job: Job) -> Image.Image:
    """``job``'s source as RGB, cropped to ``job.box`` and resized to 64 x 64 (bilinear, as torchvision's
    ``Resize`` on a PIL image).

    Raises:
        ValueError: the image is not ``job.source_size`` (the crop is defined on that size only).
        OSError: Pillow cannot read the file (or the archive member is damaged).
    """
    size = job.source_size or CELEBA_SOURCE_SIZE
    try:
        raw = open_archive(job.src).read(job.member) if job.member else job.src.read_bytes()
    except (zipfile.BadZipFile, EOFError) as exc:  # a member whose data or CRC is damaged
        raise OSError(f"damaged archive member ({exc})") from None
    with Image.open(io.BytesIO(raw)) as im:
        if im.size != size:
            raise ValueError(f"{job.name}: {im.size[0]} x {im.size[1]} pixels, expected {size[0]} x {size[1]}; "
                             "give the original files")
        return im.convert("RGB").crop(job.box).resize((OUTPUT_SIZE, OUTPUT_SIZE), Image.Resampling.BILINEAR)


def hd_crop(job: Job) -> Image.Image:
    """``job``'s in-the-wild source aligned and cropped by its landmarks (:func:`hd_celeba.align_crop`).

    Raises:
        ValueError: the landmarks place the crop far outside the image.
        OSError: Pillow cannot read the file (e.g. a truncated JPEG).
    """
    assert job.hd is not None
    with Image.open(job.src) as im:
        im.load()  # a truncated file fails here, naming no pixel of it
        return align_crop(im, job.hd)


def is_valid(job: Job) -> bool:
    """Whether ``job.dst`` is already a complete output: a readable 64 x 64 image, or a copy as long as
    its source."""
    if not job.dst.is_file():
        return False
    size = job.output_size
    if size is None:
        return job.dst.stat().st_size == job.src.stat().st_size
    try:
        with Image.open(job.dst) as im:
            im.verify()
            return im.size == (size, size)
    except Exception:  # Pillow raises many types for a truncated or foreign file
        return False


def write_atomic(job: Job) -> None:
    """Writes ``job.dst`` through a hidden ``.part`` file renamed into place."""
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.dst.with_name(f".{job.dst.name}.part")
    try:
        if job.hd is not None:
            hd_crop(job).save(tmp, format="PNG")
        elif job.box is None:
            shutil.copyfile(job.src, tmp)
        else:
            crop_resize(job).save(tmp, format="PNG")
        os.replace(tmp, job.dst)
    finally:
        tmp.unlink(missing_ok=True)


def run_jobs(jobs: Sequence[Job], label: str, progress: bool | None = None,
             write: Callable[[Job], None] = write_atomic) -> Outcome:
    """Runs ``jobs``, skipping valid outputs; a failing source is recorded, the others go on.

    Args:
        jobs: the outputs to produce.
        label: the progress bar's label.
        progress: draw a bar (None: only when stderr is a terminal).
        write: writes one output (tests replace it to count calls).
    """
    out = Outcome(failed=[])
    show = sys.stderr.isatty() if progress is None else progress
    for job in tqdm(jobs, desc=label, unit="file", disable=not show):
        if is_valid(job):
            out.skipped += 1
            continue
        try:
            write(job)
            out.written += 1
        except (OSError, ValueError) as exc:
            out.failed.append(f"{job.name}: {exc}" if job.name not in str(exc) else str(exc))
    return out
