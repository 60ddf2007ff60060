"""Published splits: fixed lists of image names and identity labels, shipped as package data.

A published protocol fixes which images train the target, which test it and which the attacker may
use; a random split of the same dataset gives other numbers. The lists are facts copied verbatim
from the publisher's repository and checked against their SHA-256 every time they are read, so an
edited or truncated file is refused instead of silently giving another protocol.

``kedmi-celeba``: the 64 px CelebA protocol of GMI (Zhang et al., CVPR 2020) and KED-MI (Chen et
al., ICCV 2021), the setting of MID, BiDO, TL-DMI, LOMMA, PLG-MI and Trap-MID. KED-MI's code
(SCccc21/Knowledge-Enriched-DMI @ 1ec92f4697233028c74ad90fee75c69691948917, ``config/classify.json``)
reads ``./data/trainset.txt`` / ``./data/testset.txt`` (``<image> <label>`` per line, 1,000 labels)
but does not ship them. The files here are MIBench's (ffhibnese/Model-Inversion-Attack-ToolBox @
d9ad48f997aa204e28696b87ce49a25384fcf794, ``src/modelinversion/datasets/split_files/``);
``private_train.txt`` and ``private_test.txt`` are byte-identical (same git blob) to PLG-MI's
``data_files/celeba_trainset.txt`` and ``celeba_testset.txt`` (LetheSec/PLG-MI-Attack @
3cf8735198d88f3d24c077c6035da541b721de7b), which follows KED-MI's split, and the names of
``public.txt`` are exactly PLG-MI's ``data_files/celeba_ganset.txt`` (the GAN's public CelebA
images). Trap-MID ships PLG-MI's three files again (``data/celeba_trainset.txt``, ``celeba_testset.txt``,
``celeba_ganset.txt``: the same git blobs; ntuaislab/Trap-MID @ 3d59377536a5638a9cb5542ab0fb3fdf35b43461).
1,000 private identities with 27-31 training and 3-4 test images each (27,018 / 3,009);
30,000 public images of 6,453 other identities, disjoint from the private images.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from inversion_bench.errors import MissingResourceError

PARTS = ("private_train", "private_test", "public")


@dataclass(frozen=True)
class SplitFile:
    """One shipped list: its part of the split, file name, SHA-256 and number of lines."""

    part: str
    file: str
    sha256: str
    lines: int


@dataclass(frozen=True)
class PublishedSplit:
    """A published split: where it comes from and its files."""

    name: str
    description: str
    source: str  # repository @ commit : folder
    files: tuple[SplitFile, ...]
    also: str = ""  # other repositories that ship the same lists

    def file(self, part: str) -> SplitFile:
        """The file of ``part`` (one of :data:`PARTS`)."""
        return next(f for f in self.files if f.part == part)


SPLITS: dict[str, PublishedSplit] = {
    "kedmi-celeba": PublishedSplit(
        name="kedmi-celeba",
        description="GMI / KED-MI 64 px CelebA: 1,000 private identities (27,018 train / 3,009 test images), "
                    "30,000 public images of 6,453 other identities",
        source="ffhibnese/Model-Inversion-Attack-ToolBox @ d9ad48f997aa204e28696b87ce49a25384fcf794 : "
               "src/modelinversion/datasets/split_files/",
        also="LetheSec/PLG-MI-Attack @ 3cf8735198d88f3d24c077c6035da541b721de7b : data_files/celeba_trainset.txt, "
             "celeba_testset.txt (identical), celeba_ganset.txt (the public names)",
        files=(
            SplitFile("private_train", "private_train.txt",
                      "fd758026dab640c7217797f12e713436b23278087ffd2a70e88a7255259eabf7", 27018),
            SplitFile("private_test", "private_test.txt",
                      "b67ef7f4770fa3606817392f01ae185f1534c38243987928ab881464cb09c434", 3009),
            SplitFile("public", "public.txt",
                      "c85dbe534ea75d278e9b5fd2bcaa8c58449b750426c5549e9b76adbe815098b5", 30000),
        ),
    ),
}


def get_split(name: str) -> PublishedSplit:
    """The published split ``name``; ``MissingResourceError`` naming the known ones otherwise."""
    if name not in SPLITS:
        raise MissingResourceError(f"dataset.params.split: no published split {name!r}; use one of {sorted(SPLITS)}")
    return SPLITS[name]


def split_path(split: PublishedSplit, part: str) -> Path:
    """Where the installed package keeps the file of ``part``."""
    return Path(str(files("inversion_bench.data") / "published" / split.name / split.file(part).file))


def file_problem(split: PublishedSplit, part: str, path: Path | None = None) -> str:
    """Why the file of ``part`` (at ``path``, default the shipped one) is unusable; '' when its SHA-256 matches."""
    sf = split.file(part)
    path = path or split_path(split, part)
    if not path.is_file():
        return (f"split file {path} is missing ({split.name}, from {split.source}{sf.file}); reinstall "
                "inversion-bench")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sf.sha256:
        return (f"split file {path}: SHA-256 {digest} differs from the published {sf.sha256} "
                f"({split.source}{sf.file}); the file was changed: reinstall inversion-bench")
    return ""


def read_part(split: PublishedSplit, part: str, path: Path | None = None) -> list[tuple[str, int]]:
    """(image name, label) pairs of ``part``, in file order, after the checksum check.

    Raises:
        MissingResourceError: the file is missing, its checksum differs or a line is malformed.
    """
    path = path or split_path(split, part)
    problem = file_problem(split, part, path)
    if problem:
        raise MissingResourceError(f"dataset.params.split: {problem}")
    return read_name_label_lines(path, "'<image> <label>'")


def read_name_label_lines(path: Path, columns: str) -> list[tuple[str, int]]:
    """(name, integer label) of every non-blank line ``<name> <label>`` of a text file, in file order.

    Args:
        path: the file (a split list, CelebA's ``identity_CelebA.txt``).
        columns: how the error message names the two columns.

    Raises:
        MissingResourceError: a line is not a name and a non-negative integer, naming the file and line.
    """
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise MissingResourceError(f"{path}:{lineno}: expected {columns}, got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out


def label_counts(pairs: list[tuple[str, int]]) -> list[int]:
    """Images per label 0..K-1 of ``pairs``; ``MissingResourceError`` when the labels are not 0..K-1."""
    counts = Counter(label for _, label in pairs)
    k = max(counts) + 1 if counts else 0
    gaps = [i for i in range(k) if i not in counts]
    if gaps:
        raise MissingResourceError(f"split labels are not 0..{k - 1}: {gaps[:5]} have no image")
    return [counts[i] for i in range(k)]
