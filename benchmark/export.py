"""``bench export``: a run folder's reconstructions as PNG files for human or external labelling.

The evaluation model's top-1 verdict (attack accuracy) accepts many reconstructions that do not show
the attacked identity (Ho et al., arXiv 2505.03519; see :mod:`inversion_bench.products.audit`). The
export lets people (or another face recogniser) judge them instead::

    DIR/<defense>/<attack>/seed<s>/<identity>/<i>.png   every reconstruction of every ok record
    DIR/references/<identity>/<i>.png                   K private training images per identity (once)
    DIR/labels.csv                                      one row per reconstruction (LABEL_COLUMNS)

``identity`` is the private class index (the target's and the evaluation model's label);
``evaluator_prediction`` is the evaluation model's top-1 class, computed exactly as for
``attack_acc@1``; ``evaluator_accepts`` is 1 when it equals the identity; ``human_label`` is left
empty for the labeller. Nothing is trained: the evaluation model and the reconstructions are read
from the run folder's store.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inversion_bench.errors import ConfigError
from inversion_bench.leaderboard.runs import ReportError, RunView
from inversion_bench.metrics.accuracy import model_logits
from inversion_bench.preflight import folder_problem
from inversion_bench.products.audit import top1
from inversion_bench.products.data import splits
from inversion_bench.results import load_records
from inversion_bench.suite_schema import check_id

LABEL_COLUMNS = ("defense", "attack", "seed", "identity", "file", "reference_folder", "evaluator_prediction",
                 "evaluator_accepts", "human_label")
DEFAULT_REFERENCES = 5


@dataclass
class ExportSummary:
    """What an export wrote."""

    out_dir: Path
    labels: Path
    pairs: int
    images: int
    identities: int
    references: int


def save_png(image: torch.Tensor, path: Path) -> None:
    """One [3, H, W] image in [0, 1] as a PNG file (its folder is created)."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(image.float().clamp(0, 1), path)


def ok_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ok records of ``run_dir``; ConfigError (one line) when there is no such folder or none."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; give a folder written by `bench run`")
    records_dir = run_dir / "records"
    records = load_records(records_dir) if records_dir.is_dir() else []
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise ConfigError(f"{run_dir}: no ok records in {records_dir} ({len(records)} record(s) in all); "
                          "run the suite with `bench run` first, or give another run folder")
    for r in ok:
        try:
            check_id(str(r["defense"]))
            check_id(str(r["attack"]))
        except ValueError as exc:  # ids name the export's folders
            raise ConfigError(f"{r.get('_path')}: defense/attack: {exc}") from None
    return ok


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuses a file, a path under a file, a read-only place, and a non-empty folder unless ``force``
    (files of the same names are then replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a new folder")
    problem = folder_problem(out_dir, "--out")
    if problem:
        raise ConfigError(problem)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"--out {out_dir}: the folder exists and is not empty; give a new folder, or add --force "
                          "to write into it (files of the same names are replaced, others kept)")


def _export_pair(view: RunView, model: torch.nn.Module, record: dict[str, Any], out_dir: Path,
                 references: int) -> list[dict[str, Any]]:
    """Writes one record's reconstructions; returns their rows of ``labels.csv``."""
    rec = view.reconstruction(record)
    batch = view.suite.run.eval_batch_size
    pred = top1(model_logits(model, rec.images, view.ctx.device, batch)).tolist()
    folder = Path(str(record["defense"]), str(record["attack"]), f"seed{int(record['seed'])}")
    counts: dict[int, int] = defaultdict(int)
    rows = []
    for image, label, p in zip(rec.images, rec.labels.tolist(), pred, strict=True):
        i = counts[label]
        counts[label] += 1
        rel = folder / str(label) / f"{i}.png"
        save_png(image, out_dir / rel)
        rows.append({"defense": record["defense"], "attack": record["attack"], "seed": int(record["seed"]),
                     "identity": int(label), "file": rel.as_posix(),
                     "reference_folder": f"references/{label}" if references > 0 else "",
                     "evaluator_prediction": int(p), "evaluator_accepts": int(p == label), "human_label": ""})
    return rows


def _write_references(view: RunView, identities: set[int], out_dir: Path, k: int) -> int:
    """K private training images of each identity under ``references/<identity>/``; returns how many."""
    train = splits(view.ctx).private_train
    n = 0
    for c in sorted(identities):
        pos = torch.nonzero(train.labels == c).flatten()[:k]
        for i, image in enumerate(train.images(pos) if pos.numel() else []):
            save_png(image, out_dir / "references" / str(c) / f"{i}.png")
            n += 1
    return n


def export_run(run_dir: Path, out_dir: Path, references: int = DEFAULT_REFERENCES,
               force: bool = False) -> ExportSummary:
    """Exports every ok record of ``run_dir`` into ``out_dir`` (see the module docstring).

    Raises ConfigError (one line naming the folder or option and the fix) on bad input: no such run
    folder, no ok records, products missing from its store, a non-empty ``out_dir`` without ``force``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if references < 0:
        raise ConfigError(f"--references: must be 0 or more, got {references}")
    records = ok_records(run_dir)
    check_out_dir(out_dir, force)
    try:
        view = RunView(run_dir)
        for r in records:  # every product is there before anything is written
            key = (r.get("keys") or {}).get("attack")
            if not key or not view.ctx.store.has("attacks", key):
                raise ReportError(f"{r.get('_path')}: its reconstructions ({key}) are not in {view.ctx.store.root}; "
                                  "re-run the suite (bench run) to recompute them")
        model = view.evaluator()
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for r in records:
        rows.extend(_export_pair(view, model, r, out_dir, references))
    identities = {int(row["identity"]) for row in rows}
    n_refs = _write_references(view, identities, out_dir, references) if references > 0 else 0
    labels = out_dir / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LABEL_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return ExportSummary(out_dir, labels, len(records), len(rows), len(identities), n_refs)
