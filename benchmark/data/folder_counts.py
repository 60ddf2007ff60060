"""``bench doctor``'s view of an identity-folder dataset: its layout, then identities and images found
per sub-path against the numbers of the dataset it is known to be.

Known: FaceScrub (Ng and Winkler, ICIP 2014) has 265 actors and 265 actresses, the 530 identities of
Plug & Play Attacks' and the label smoothing paper's FaceScrub protocol (``suites/facescrub.yaml``,
``subdirs: [actors/faces, actresses/faces]``). A count that differs is shown as WRONG with both
numbers; it does not stop a run (a scaled-down copy of a protocol uses fewer identities).
"""

from __future__ import annotations

import os
from pathlib import Path

from inversion_bench.data import DataCheck

KNOWN_IDENTITIES = {"actors/faces": 265, "actresses/faces": 265}
"""Identity folders per sub-path of the datasets whose numbers are known (FaceScrub)."""


def _count(base: Path, extensions: tuple[str, ...]) -> tuple[int, int]:
    """(identity folders, image files in them) under ``base``."""
    people = images = 0
    for entry in os.scandir(base):
        if entry.is_dir() and not entry.name.startswith("."):
            people += 1
            images += sum(1 for f in os.scandir(entry.path) if f.is_file() and f.name.lower().endswith(extensions))
    return people, images


def folder_checks(problems: list[str], root: Path, bases: list[tuple[str, Path]],
                  extensions: tuple[str, ...]) -> list[DataCheck]:
    """The layout check (``problems`` from the dataset's ``missing()``: blocking) and, for each sub-path
    whose numbers are known, the identities found against them (not blocking)."""
    out = [DataCheck("dataset.params", "dataset image-folder", root, not problems, "; ".join(problems))]
    if problems:
        return out
    for sub, base in bases:
        expected = KNOWN_IDENTITIES.get(sub)
        if expected is None or not base.is_dir():
            continue
        people, images = _count(base, extensions)
        ok = people == expected
        out.append(DataCheck(f"dataset.params.subdirs ({sub})", f"FaceScrub {sub}: {people} of {expected} identities "
                             f"expected, {images} images", base, ok, "" if ok else f"dataset.params.subdirs: {base} "
                             f"has {people} identity folders, FaceScrub's {sub} has {expected} (WRONG count); "
                             "`bench data prepare facescrub SRC --out ROOT` checks a download", blocking=False))
    return out
