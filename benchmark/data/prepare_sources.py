"""What ``bench data prepare`` reads from each download, checked before any work.

Every check collects one error per missing or extra file, naming it, so a user sees the whole list
at once; :func:`prepare` raises them together (exit 2) before a file is written. ``partial`` accepts
a subset of a dataset (a scaled-down run): missing files are then not errors, extra ones still are.

Expected numbers: CelebA's identity file lists 202,599 images (Liu et al., ICCV 2015) and every image
of the published split must be among them, each split label one CelebA identity; for PPA's HD crop
every image of the 1,000 identities with the most images (PPA's ``CelebA1000``) must be in ``img_celeba/``
with a line of 68 landmarks in the cropper's ``landmark.txt``; FFHQ has 70,000
images ``00000.png`` ... ``69999.png`` (NVlabs/ffhq-dataset); FaceScrub has 265 actors and 265
actresses (Ng and Winkler, ICIP 2014), the 530 identities of ``suites/facescrub.yaml``.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inversion_bench.data.celeba import ppa_ranking, read_identity_file
from inversion_bench.data.celeba_split import FFHQ_IMAGES, prepared_name
from inversion_bench.data.folder_counts import KNOWN_IDENTITIES
from inversion_bench.data.hd_celeba import LANDMARKS, HdCrop, parse_landmark_line, parse_template
from inversion_bench.data.image_folder import DEFAULT_EXTENSIONS
from inversion_bench.data.prepare import (
    CELEBA_BOX,
    CELEBA_SOURCE_SIZE,
    FFHQ_BOX,
    FFHQ_SOURCE_SIZE,
    Job,
    input_error,
    open_archive,
    run_jobs,
)
from inversion_bench.data.published_split import PARTS, get_split, read_part
from inversion_bench.errors import ConfigError

CELEBA_IMAGES = 202_599
FACESCRUB_IDENTITIES = KNOWN_IDENTITIES
CELEBA_OUT, FFHQ_OUT = "img_align_celeba_64", "ffhq64"
HD_OUT = "img_align_celeba"  # PPA's loader reads its HD crops from this folder, as <name>.png
PPA_IDENTITIES = 1000  # PPA's CelebA1000: the 1,000 identities with the most images
HD_WHERE = ("HD-CelebA-Cropper's annotations.zip (https://github.com/LynnHo/HD-CelebA-Cropper, README 'Dataset'; "
            "unzip it into SRC)")
WILD_WHERE = ("CelebA's in-the-wild img_celeba.7z (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'In-The-Wild "
              "Images'), unpacked into SRC with `7z x img_celeba.7z.001`")


@dataclass
class Plan:
    """The outputs of one preparation, the input errors found and the numbers to check afterwards."""

    jobs: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expected: dict[str, tuple[list[Path], int]] = field(default_factory=dict)  # label: (outputs, expected count)
    copies: list[tuple[Path, Path]] = field(default_factory=list)  # small files copied as they are


def _first(src: Path, *candidates: str) -> Path:
    return next((src / c for c in candidates if (src / c).exists()), src / candidates[0])


def _celeba_images(src: Path) -> tuple[Path, dict[str, str | None]]:
    """Where CelebA's aligned images are (the folder, else ``img_align_celeba.zip``) and their names, each
    with its archive member (None in a folder).

    Raises:
        ConfigError: neither is there, or the archive is truncated.
    """
    folder = _first(src, "img_align_celeba", "Img/img_align_celeba")
    if folder.is_dir():
        return folder, {p.name: None for p in folder.iterdir() if p.is_file()}
    archive = _first(src, "img_align_celeba.zip", "Img/img_align_celeba.zip")
    if not archive.is_file():
        hint = ("; img_celeba/ is there: for PPA's HD-CelebA crop give --crop ppa-hd"
                if _first(src, "img_celeba", "Img/img_celeba").is_dir() else "")
        raise ConfigError(f"missing folder: {folder} (CelebA's img_align_celeba, or img_align_celeba.zip, from "
                          f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html){hint}")
    members = [m for m in open_archive(archive).namelist() if not m.endswith("/")]
    return archive, {Path(m).name: m for m in members if not Path(m).name.startswith(".")}


def celeba_plan(src: Path, out: Path, split_name: str = "kedmi-celeba", partial: bool = False,
                all_images: bool = False) -> Plan:
    """CelebA: ``img_align_celeba/`` (or ``img_align_celeba.zip``) and ``identity_CelebA.txt`` (flat or the
    official ``Img/``, ``Anno/``)."""
    plan = Plan()
    ident = _first(src, "identity_CelebA.txt", "Anno/identity_CelebA.txt")
    if not ident.is_file():
        plan.errors.append(f"missing file: {ident} (CelebA's identity_CelebA.txt, from "
                           "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)")
    try:
        images, present = _celeba_images(src)
        pairs = read_identity_file(ident) if not plan.errors else []
    except ConfigError as exc:
        plan.errors.append(str(exc))
    if plan.errors:
        return plan
    listed = dict(pairs)
    plan.errors += [f"missing file: {images / n} (listed in {ident.name})" for n in sorted(set(listed) - set(present))]
    plan.errors += [f"extra file: {images / n} (not in {ident.name}); remove it or use the complete identity file"
                    for n in sorted(set(present) - set(listed))]
    if not partial and len(listed) != CELEBA_IMAGES:
        plan.errors.append(f"{ident}: lists {len(listed)} images, CelebA has {CELEBA_IMAGES}; use the complete "
                           "identity file (or --partial for a subset)")
    split = get_split(split_name)
    parts = {part: read_part(split, part) for part in PARTS}
    plan.errors += _split_identities(parts, listed, ident, partial)
    wanted = set(listed) if all_images else {n for pairs_ in parts.values() for n, _ in pairs_ if n in listed}
    plan.jobs = [Job(images if present[n] else images / n, out / CELEBA_OUT / prepared_name(n), CELEBA_BOX,
                     CELEBA_SOURCE_SIZE, present[n]) for n in sorted(wanted & set(present))]
    for part, pairs_ in parts.items():
        names = [n for n, _ in pairs_ if partial is False or n in listed]
        plan.expected[f"{split_name} {part}"] = ([out / CELEBA_OUT / prepared_name(n) for n in names], len(names))
    plan.copies.append((ident, out / "identity_CelebA.txt"))
    return plan


@dataclass(frozen=True)
class Annotation:
    """One of HD-CelebA-Cropper's annotation files: unzipped in SRC, or a member of its ``annotations.zip``."""

    label: str  # how messages name it
    path: Path
    member: str | None = None

    def lines(self) -> Iterator[str]:
        """The file's lines.

        Raises:
            ConfigError: the archive member is damaged (a truncated download).
        """
        if self.member is None:
            with self.path.open(encoding="utf-8", errors="replace") as fh:
                yield from fh
            return
        try:
            with open_archive(self.path).open(self.member) as raw:
                yield from io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ConfigError(f"{self.label}: damaged archive member ({exc}); download {self.path.name} "
                              "again") from None


def _annotation(src: Path, name: str) -> Annotation | None:
    """``src/name``, else the member of that name in ``src/annotations.zip`` (None: neither).

    Raises:
        ConfigError: ``annotations.zip`` is truncated or not a zip archive.
    """
    if (src / name).is_file():
        return Annotation(str(src / name), src / name)
    archive = src / "annotations.zip"
    if archive.is_file():
        member = next((m for m in open_archive(archive).namelist() if Path(m).name == name), None)
        if member is not None:
            return Annotation(f"{archive}:{member}", archive, member)
    return None


def _read_landmarks(source: Annotation, wanted: set[str]) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """The 68 landmarks of the ``wanted`` images from HD-CelebA-Cropper's ``landmark.txt``; errors name the
    line (a truncated file ends in a short line) and every name listed twice."""
    found: dict[str, tuple[float, ...]] = {}
    errors: list[str] = []
    for i, line in enumerate(source.lines(), 1):
        if not line.strip():
            continue
        name = line.split(maxsplit=1)[0]
        try:  # every line's length is checked (a truncated file); only the wanted lines are converted
            values = parse_landmark_line(line, LANDMARKS)[1] if name in wanted else ()
            if name not in wanted and len(line.split()) != 2 * LANDMARKS + 1:
                parse_landmark_line(line, LANDMARKS)  # raises with the count
        except ValueError as exc:
            errors.append(f"{source.label} line {i}: {exc}; the file is truncated or not the cropper's "
                          f"landmark.txt: unzip {HD_WHERE.split(' (')[0]} again")
            continue
        if name in found:
            errors.append(f"{source.label} line {i}: {name} listed twice")
        if name in wanted:
            found[name] = values
    return found, errors


def celeba_hd_plan(src: Path, out: Path, partial: bool = False, all_images: bool = False,
                   identities: int = PPA_IDENTITIES) -> Plan:
    """CelebA for PPA's 224 px protocol: ``img_celeba/`` (in the wild), ``identity_CelebA.txt`` (flat or
    ``Anno/``), ``landmark.txt`` and ``standard_landmark_68pts.txt`` (HD-CelebA-Cropper's annotations) ->
    ``out/img_align_celeba/<name>.png`` (224 x 224) for the images of the ``identities`` identities with the
    most images (every listed image with ``all_images``), and ``out/identity_CelebA.txt``."""
    plan = Plan()
    ident = _first(src, "identity_CelebA.txt", "Anno/identity_CelebA.txt")
    wild = _first(src, "img_celeba", "Img/img_celeba")
    if not ident.is_file():
        plan.errors.append(f"missing file: {ident} (CelebA's identity_CelebA.txt, from "
                           "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)")
    if not wild.is_dir():
        hint = " (img_celeba.7z is there: unpack it)" if any(src.glob("img_celeba.7z*")) else ""
        plan.errors.append(f"missing folder: {wild}{hint} ({WILD_WHERE})")
    try:
        marks, template_file = _annotation(src, "landmark.txt"), _annotation(src, "standard_landmark_68pts.txt")
    except ConfigError as exc:  # a truncated annotations.zip
        plan.errors.append(str(exc))
        return plan
    for name, f in (("landmark.txt", marks), ("standard_landmark_68pts.txt", template_file)):
        if f is None:
            plan.errors.append(f"missing file: {src / name} (nor in {src / 'annotations.zip'}; {HD_WHERE})")
    if plan.errors or marks is None or template_file is None:
        return plan
    pairs = read_identity_file(ident)
    listed = dict(pairs)
    if not partial and len(listed) != CELEBA_IMAGES:
        plan.errors.append(f"{ident}: lists {len(listed)} images, CelebA has {CELEBA_IMAGES}; use the complete "
                           "identity file (or --partial for a subset)")
    keep = set(ppa_ranking(pairs, identities))  # PPA's CelebA1000 ranking (ties in file order), as order: ppa reads
    wanted = set(listed) if all_images else {n for n, k in pairs if k in keep}
    present = {p.name for p in wild.iterdir() if p.is_file() and not p.name.startswith(".")}
    plan.errors += [f"extra file: {wild / n} (not in {ident.name}); remove it or use the complete identity file"
                    for n in sorted(present - set(listed))]
    if not partial:
        plan.errors += [f"missing file: {wild / n} (listed in {ident.name}; {WILD_WHERE})"
                        for n in sorted(wanted - present)]
    try:
        template = parse_template("".join(template_file.lines()), LANDMARKS)
        landmarks, errors = _read_landmarks(marks, wanted)
    except ValueError as exc:
        plan.errors.append(f"{template_file.label}: {exc}; unzip {HD_WHERE.split(' (')[0]} again")
        return plan
    except ConfigError as exc:
        plan.errors.append(str(exc))
        return plan
    plan.errors += errors
    todo = sorted(wanted & present)
    plan.errors += [f"missing landmarks: {n} has no line in {marks.label} ({HD_WHERE})"
                    for n in todo if n not in landmarks]
    if plan.errors:
        return plan
    plan.jobs = [Job(wild / n, out / HD_OUT / f"{Path(n).stem}.png", hd=HdCrop(landmarks[n], template))
                 for n in todo]
    names = sorted(wanted & present) if partial else sorted(wanted)
    label = "all images" if all_images else f"the {len(keep)} identities with the most images"
    plan.expected[f"celeba HD crop, {label}"] = ([out / HD_OUT / f"{Path(n).stem}.png" for n in names], len(names))
    plan.copies.append((ident, out / "identity_CelebA.txt"))
    return plan


def _split_identities(parts: dict[str, list[tuple[str, int]]], listed: dict[str, int], ident: Path,
                      partial: bool) -> list[str]:
    """Errors: split images absent from the identity file (unless ``partial``), a split label covering
    several CelebA identities, a CelebA identity both private and public."""
    errors = []
    ids: dict[tuple[str, int], set[int]] = defaultdict(set)
    for part, pairs in parts.items():
        kind = "public" if part == "public" else "private"
        for name, label in pairs:
            if name in listed:
                ids[(kind, label)].add(listed[name])
            elif not partial:
                errors.append(f"missing file: {name} of the published split ({part}) is not in {ident}")
    errors += [f"{ident}: split label {kind} {label} covers CelebA identities {sorted(v)[:4]}; this is not the "
               "CelebA the split was made on" for (kind, label), v in sorted(ids.items()) if len(v) > 1]
    private = set().union(*[v for (kind, _), v in ids.items() if kind == "private"] or [set()])
    public = set().union(*[v for (kind, _), v in ids.items() if kind == "public"] or [set()])
    if private & public:
        errors.append(f"{ident}: CelebA identities {sorted(private & public)[:5]} are both private and public "
                      "in the split; this is not the CelebA the split was made on")
    return errors


def ffhq_plan(src: Path, out: Path, partial: bool = False) -> Plan:
    """FFHQ: ``thumbnails128x128/`` (its ``00000/``... sub-folders, or the images directly)."""
    plan = Plan()
    if not src.is_dir():
        plan.errors.append(f"missing folder: {src} (FFHQ's thumbnails128x128, from "
                           "https://github.com/NVlabs/ffhq-dataset)")
        return plan
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    good = [p for p in files if re.fullmatch(r"\d{5}\.png", p.name) and int(p.stem) < FFHQ_IMAGES]
    plan.errors += [f"extra file: {p} (FFHQ's thumbnails are 00000.png ... 69999.png); remove it"
                    for p in sorted(set(files) - set(good))]
    dup = [n for n, k in Counter(p.name for p in good).items() if k > 1]
    plan.errors += [f"extra file: {n} appears {Counter(p.name for p in good)[n]} times under {src}" for n in dup]
    names = {p.name for p in good}
    if not partial:
        plan.errors += [f"missing file: {i:05d}.png (FFHQ has {FFHQ_IMAGES} thumbnails) under {src}"
                        for i in range(FFHQ_IMAGES) if f"{i:05d}.png" not in names]
    plan.jobs = [Job(p, out / FFHQ_OUT / p.name, FFHQ_BOX, FFHQ_SOURCE_SIZE) for p in good]
    plan.expected["ffhq"] = ([j.dst for j in plan.jobs], len(plan.jobs) if partial else FFHQ_IMAGES)
    return plan


def facescrub_plan(src: Path, out: Path, partial: bool = False) -> Plan:
    """FaceScrub: ``actors/faces/<name>/`` and ``actresses/faces/<name>/`` face crops."""
    plan = Plan()
    for sub, expected in FACESCRUB_IDENTITIES.items():
        folder = src / sub
        if not folder.is_dir():
            plan.errors.append(f"missing folder: {folder} (FaceScrub's {sub} face crops)")
            continue
        people = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        plan.errors += [f"extra file: {p} (only identity folders belong in {folder})" for p in people if p.is_file()]
        people = [p for p in people if p.is_dir()]
        if not partial and len(people) != expected:
            plan.errors.append(f"{folder}: {len(people)} identity folders, FaceScrub has {expected} (or --partial)")
        for person in people:
            files = sorted(p for p in person.iterdir() if not p.name.startswith("."))
            bad = [p for p in files if not p.is_file() or p.suffix.lower() not in DEFAULT_EXTENSIONS]
            plan.errors += [f"extra file: {p} (not an image file)" for p in bad]
            images = [p for p in files if p not in bad]
            if not images:
                plan.errors.append(f"missing file: {person} has no image")
            dsts = [out / sub / person.name / p.name for p in images]
            plan.jobs += [Job(p, d) for p, d in zip(images, dsts, strict=True)]
            plan.expected[f"{sub}/{person.name}"] = (dsts, len(images))
    return plan


def prepare(kind: str, src: Path, out: Path, *, partial: bool = False, all_images: bool = False,
            split: str = "kedmi-celeba", progress: bool | None = None, crop: str = "kedmi64") -> list[str]:
    """Checks the source, writes the outputs (skipping valid ones), checks the counts; returns summary lines.

    Raises:
        ConfigError: an input problem (before any file is written), a source file that cannot be read or
            an output count that differs from the expected one.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder")
    if kind == "celeba" and crop == "ppa-hd":
        plan = celeba_hd_plan(src, out, partial, all_images)
    elif kind == "celeba" and crop == "kedmi64":
        plan = celeba_plan(src, out, split, partial, all_images)
    elif kind == "celeba":
        raise ConfigError(f"bench data prepare celeba: unknown --crop {crop!r}; use kedmi64 (the 64 px protocol) "
                          "or ppa-hd (PPA's 224 px HD-CelebA crop)")
    elif kind == "ffhq":
        plan = ffhq_plan(src, out, partial)
    elif kind == "facescrub":
        plan = facescrub_plan(src, out, partial)
    else:
        raise ConfigError(f"bench data prepare: unknown dataset {kind!r}; use celeba, facescrub or ffhq")
    if plan.errors:
        raise input_error(plan.errors, f"bench data prepare {kind} {src}")
    for a, b in plan.copies:
        b.parent.mkdir(parents=True, exist_ok=True)
        if not b.is_file() or b.read_bytes() != a.read_bytes():
            tmp = b.with_name(f".{b.name}.part")
            tmp.write_bytes(a.read_bytes())
            tmp.replace(b)
    done = run_jobs(plan.jobs, f"{kind} -> {out}", progress)
    if done.failed:
        raise input_error(done.failed, f"bench data prepare {kind}: {done.written} written, {done.skipped} already "
                          "there; unreadable sources", "their outputs not written (the others are kept)")
    return [f"{kind}: {done.written} file(s) written, {done.skipped} already there, in {out}",
            *count_lines(plan.expected)]


def count_lines(expected: dict[str, tuple[list[Path], int]]) -> list[str]:
    """``<label>: found of expected`` per entry (wrong ones marked WRONG); ConfigError if any is wrong."""
    lines, wrong = [], []
    for label, (paths, n) in expected.items():
        found = sum(p.is_file() for p in paths)
        line = f"{label}: {found} of {n} expected"
        (wrong if found != n else lines).append(line if found == n else f"WRONG {line}")
    if wrong:
        raise input_error(wrong, "bench data prepare: output counts", "outputs missing")
    return lines if len(lines) <= 12 else [*lines[:10], f"... {len(lines) - 10} more, all as expected"]

