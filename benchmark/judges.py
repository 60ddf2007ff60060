"""Judges of a run: the evaluation models that scored its stored reconstructions, and where their records live.

A run's records (``records/*.json``) are scored by the suite's evaluation model, the **default judge**.
``bench rescore RUN --evaluation FILE.yaml`` (:mod:`inversion_bench.rescore`) scores the same stored
reconstructions with another evaluation model and writes its records to ``records/judges/<judge key>/``,
with the same file names: the judge key (the evaluation model's store key,
:func:`~inversion_bench.record_model.judge_key`) is part of a record's identity (defense, attack, seed,
judge), so the records of two judges sit side by side and the default judge's files, names and store keys
stay as they were. Everything that reads ``records/*.json`` (tables, ``bench run``'s resume, the MLflow
mirror, ``bench export``) keeps reading the default judge only.

:func:`decision_agreement` compares two judges' top-1 decisions on the same reconstructions. Only the
standard library is imported here (the report reads these records without torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inversion_bench.paths import check_name, inside
from inversion_bench.record_model import judge_key
from inversion_bench.results import load_records

__all__ = ["JUDGES_DIR", "decision_agreement", "judge_key", "judge_records", "judge_records_dir", "kappa"]

JUDGES_DIR = "judges"
"""Records of judges other than the suite's evaluation model: ``records/judges/<judge key>/``."""


def judge_records_dir(records_dir: Path, key: str) -> Path:
    """``records_dir/judges/<key>``: where the records of the judge ``key`` are written (checked to stay inside)."""
    return inside(Path(records_dir) / JUDGES_DIR, check_name(key, "judge key"), "judge records folder")


def judge_records(run_dir: Path, unreadable: list[tuple[Path, str]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The records of every other judge of the run folder ``run_dir``: judge key -> its records (sorted like
    :func:`~inversion_bench.results.load_records`); empty when ``bench rescore`` never ran on it."""
    root = Path(run_dir) / "records" / JUDGES_DIR
    if not root.is_dir():
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        recs = load_records(folder, unreadable)
        if recs:
            out[folder.name] = recs
    return out


def kappa(both: int, first_only: int, second_only: int, neither: int) -> float | None:
    """Cohen's kappa of two judges' accept/reject decisions from their 2x2 table (None when the chance
    agreement is 1: both judges made one and the same decision on every image, so kappa is undefined).

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the agreement of two
    independent judges with the same acceptance rates (Cohen, Educational and Psychological Measurement 1960).
    """
    n = both + first_only + second_only + neither
    if n == 0:
        return None
    p_o = (both + neither) / n
    first, second = (both + first_only) / n, (both + second_only) / n
    p_e = first * second + (1 - first) * (1 - second)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def decision_agreement(first: Sequence[int], second: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """How two judges' top-1 decisions on the same reconstructions agree.

    Args:
        first: the default judge's top-1 class of each reconstruction.
        second: the other judge's top-1 class of each reconstruction (same order).
        labels: the attacked identity of each reconstruction.

    Returns:
        ``n`` (reconstructions), ``both``/``first_only``/``second_only``/``neither`` (accepted as the attacked
        identity by both, only one, none), ``agreement`` (the share with the same accept/reject decision),
        ``same_top1`` (the share with the same top-1 class), ``kappa`` (:func:`kappa`) and the two judges'
        acceptance shares ``first_acc@1`` and ``second_acc@1`` over these images.

    Raises:
        ValueError: the three sequences differ in length, or are empty.
    """
    if not len(first) == len(second) == len(labels):
        raise ValueError(f"decision_agreement: {len(first)}, {len(second)} and {len(labels)} decisions/labels; "
                         "each judge must decide on every reconstruction")
    n = len(labels)
    if n == 0:
        raise ValueError("decision_agreement: no reconstructions to compare")
    a = [int(p) == int(y) for p, y in zip(first, labels, strict=True)]
    b = [int(p) == int(y) for p, y in zip(second, labels, strict=True)]
    both = sum(x and y for x, y in zip(a, b, strict=True))
    first_only = sum(x and not y for x, y in zip(a, b, strict=True))
    second_only = sum(y and not x for x, y in zip(a, b, strict=True))
    neither = n - both - first_only - second_only
    return {"n": n, "both": both, "first_only": first_only, "second_only": second_only, "neither": neither,
            "agreement": (both + neither) / n,
            "same_top1": sum(int(p) == int(q) for p, q in zip(first, second, strict=True)) / n,
            "kappa": kappa(both, first_only, second_only, neither),
            "first_acc@1": (both + first_only) / n, "second_acc@1": (both + second_only) / n}
