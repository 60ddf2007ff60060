"""``bench report``: everything a paper or a project page needs, from one or more run folders.

:func:`build_report` writes into one folder (default ``<first run>/leaderboard``):

* ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.tex`` (see :mod:`inversion_bench.leaderboard.render`),
* ``index.html``: a self-contained sortable page with the figures inline (:mod:`inversion_bench.leaderboard.html`),
* ``judges.csv`` and a "Judges" section when ``bench rescore`` scored a run with another evaluation model
  (:mod:`inversion_bench.leaderboard.judges`),
* ``figures/*.png`` and ``*.svg`` (:mod:`inversion_bench.leaderboard.figures`): the qualitative grid, privacy vs
  utility, the t-SNE embedding of each defense's penultimate features, the gradient stability of the
  attacks and, for 2-D suites, the toy example's decision regions.

Numbers come from the records alone; figures also read the products the records point to (targets,
evaluation model, reconstructions) from each run's store and never train anything. A figure that
cannot be drawn (e.g. the store was deleted) is left out with its reason in ``notes``, shown on the
page and printed by the CLI.

Several run folders are combined only when they share dataset (including its split) and evaluation
model: the attack accuracy of two runs is only comparable when the same evaluation model scored them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inversion_bench.leaderboard.baseline import choose_baseline
from inversion_bench.leaderboard.build import Leaderboard, build, unreadable_notes
from inversion_bench.leaderboard.costs import costs_html, write_costs
from inversion_bench.leaderboard.judges import append_judges
from inversion_bench.leaderboard.model import DEFAULT_ACCESS
from inversion_bench.leaderboard.page_files import page_path, save_figure_list
from inversion_bench.leaderboard.paper_table import with_table
from inversion_bench.leaderboard.published import load_published
from inversion_bench.leaderboard.published_render import append_published
from inversion_bench.leaderboard.records import first_difference
from inversion_bench.leaderboard.runs import ReportError, read_suite_json
from inversion_bench.leaderboard.stats import bootstrap_interval
from inversion_bench.leaderboard.uncertainty import identity_values, report_settings
from inversion_bench.record_model import upgrade

if TYPE_CHECKING:
    from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)

COMBINE_FIELDS = ("dataset", "evaluation")
"""Suite fields that must be equal in every combined run folder (``dataset`` includes ``split``)."""


def _product_keys(records: Sequence[dict[str, Any]]) -> dict[str, set[str]]:
    """The data and evaluation-model store keys named by a run folder's records."""
    keys: dict[str, set[str]] = {"data": set(), "evaluator": set()}
    for rec in records:
        for name in keys:
            value = (rec.get("keys") or {}).get(name)
            if value:
                keys[name].add(str(value))
    return keys


def check_combinable(run_dirs: Sequence[Path],
                     records: Mapping[Path, Sequence[dict[str, Any]]] | None = None) -> None:
    """Refuses run folders that differ in dataset, split or evaluation model.

    The products decide: two runs are comparable when their records name the same data and
    evaluation-model store keys (content hashes of everything that determines them). Where they
    differ, the message names the first differing suite field (``dataset...``/``evaluation...``), or
    says that the same settings produced different products (another code or plugin version).

    Args:
        run_dirs: the run folders.
        records: each folder's records when already loaded (read from ``records/`` otherwise).

    Raises:
        ReportError: naming both folders, the differing field and both values.
    """
    if len(run_dirs) < 2:
        return
    from inversion_bench.results import load_records

    def keys_of(run_dir: Path) -> dict[str, set[str]]:
        recs = records[run_dir] if records is not None else load_records(Path(run_dir) / "records")
        return _product_keys(recs)

    first = read_suite_json(run_dirs[0])["suite"]
    first_keys = keys_of(run_dirs[0])
    for other_dir in run_dirs[1:]:
        other = read_suite_json(other_dir)["suite"]
        other_keys = keys_of(other_dir)
        for name in COMBINE_FIELDS:
            key = "data" if name == "dataset" else "evaluator"
            if first_keys[key] and first_keys[key] == other_keys[key]:
                continue  # the very same products: settings that do not change them may differ
            diff = first_difference(first.get(name), other.get(name), name)
            if diff is not None:
                where, x, y = diff
                raise ReportError(
                    f"cannot combine {run_dirs[0]} and {other_dir}: {where} differs ({x!r} vs {y!r}); "
                    "runs are only comparable with the same dataset, split and evaluation model. "
                    "Report them separately, or re-run one suite with the other's settings."
                )
            if first_keys[key] and other_keys[key]:
                raise ReportError(
                    f"cannot combine {run_dirs[0]} and {other_dir}: the same {name} settings gave different "
                    f"{'data' if key == 'data' else 'evaluation models'} ({sorted(first_keys[key])} vs "
                    f"{sorted(other_keys[key])}; another code or plugin version). Re-run one of them."
                )


def check_grid_attack(records: Sequence[dict[str, Any]], grid_attack: str | None) -> None:
    """Raises ``ReportError`` listing the attacks when ``grid_attack`` is not an attack of the records."""
    attacks = list(dict.fromkeys(str(r.get("attack")) for r in records))
    if grid_attack is not None and grid_attack not in attacks:
        raise ReportError(f"--grid-attack {grid_attack!r} is not an attack of these records; attacks: "
                          f"{', '.join(attacks)}")


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    out_dir: Path
    board: Leaderboard
    files: dict[str, Path] = field(default_factory=dict)
    figures: list[dict[str, Any]] = field(default_factory=list)  # {name, title, caption, png, svg}
    notes: list[str] = field(default_factory=list)
    sections_markdown: list[str] = field(default_factory=list)  # appended to leaderboard.md (``--published``)


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, figures: bool = True,
                 grid_attack: str | None = None, grid_identities: int = 8, tsne_identities: int = 20,
                 tsne_images_per_identity: int = 30, contexts: Sequence[RunContext] = (),
                 baseline: str | None = None, table: dict[str, Any] | None = None,
                 published: str | None = None, skip_figures: Sequence[str] = ()) -> Report:
    """Writes the tables, figures and ``index.html`` of one or more run folders.

    Args:
        run_dirs: run folders written by ``bench run`` (records/ and suite.json inside).
        out_dir: destination (default ``<first run>/leaderboard``).
        figures: draw the figures (needs the runs' stores); tables and the page are always written.
        grid_attack: attack id of the qualitative grid (default: the attack with the highest mean
            attack accuracy against the baseline, i.e. the most revealing one).
        grid_identities: identities (columns) in the qualitative grid.
        tsne_identities: identities shown in the embedding figure.
        tsne_images_per_identity: training images per identity in the embedding figure.
        contexts: ``RunContext`` objects of runs that just ran some of ``run_dirs`` (their data and models in
            memory are reused by the figures).
        baseline: the table's baseline defense (``--baseline``); default: the one the first run folder's
            ``suite.json`` names (:mod:`inversion_bench.leaderboard.baseline`).
        table: the paper table's settings in place of the records' ``report.table`` (``--table-metrics``,
            ``--table-attacks``, ``--caption``; :func:`~inversion_bench.leaderboard.paper_table.with_table`).
        published: protocol whose published numbers go beside the run's rows (``--published``; refused if unknown).
        skip_figures: figures not to draw (``--skip-figure``; :mod:`inversion_bench.figure_options`).

    A record file that cannot be read is skipped with a note naming it (page, ``leaderboard.md``, log).

    Raises:
        ReportError: a folder is not a run folder, has no (readable) records, folders cannot be combined, or
            ``grid_attack`` is not one of the attacks.

    Without ``figures``, the page keeps the figures an earlier report drew into ``out_dir``
    (:mod:`inversion_bench.leaderboard.page_files`); it never replaces a page with figures by one without.

    After a report whose every figure was drawn, ``out_dir/report.key`` holds the hash of its inputs
    (:mod:`inversion_bench.leaderboard.report_key`); ``bench run`` skips an unchanged report.
    """
    from inversion_bench.leaderboard import report_key as rk
    from inversion_bench.leaderboard.html import render_html
    from inversion_bench.results import load_records

    reference = load_published(published) if published else None  # PublishedError before any work
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not (d / "records").is_dir():
            raise ReportError(f"{d}: not a run folder (no records/ inside); give the folder `bench run` wrote")
    fig_options = {"grid_attack": grid_attack, "grid_identities": grid_identities, "tsne_identities": tsne_identities,
                   "tsne_images_per_identity": tsne_images_per_identity}
    key = rk.report_key(dirs, out_dir, figures=figures, baseline=baseline, table=table, published=published,
                        skip_figures=sorted(skip_figures), **fig_options)  # before reading the records
    unreadable: list[tuple[Path, str]] = []
    per_dir = {d: load_records(d / "records", unreadable) for d in dirs}
    check_combinable(dirs, per_dir)
    records = [r for d in dirs for r in per_dir[d]]
    notes = unreadable_notes(unreadable)  # each a warning too; the table skips those files
    if not records:
        raise ReportError(f"no records in {', '.join(str(d) for d in dirs)}" + "".join(f"; {n}" for n in notes))
    board = with_table(build(records, *choose_baseline(dirs, baseline)), table)
    board.notes.extend(notes)
    out = Path(out_dir) if out_dir else dirs[0] / "leaderboard"
    rk.forget(out)
    report = Report(out_dir=out, board=board)
    report.files.update(board.write(out))
    sections = append_published(report.files["markdown"], reference, board, records, report.sections_markdown)
    sections += append_judges(dirs, records, out, report.files, report.sections_markdown, report.notes)
    costs = _record_tables(report, records)  # records.csv, costs.csv; the page's cost section
    check_grid_attack(records, grid_attack)
    notes_before = len(report.notes)
    if figures:
        from inversion_bench.leaderboard.report_figures import draw_all

        draw_all(report, dirs, records, contexts=contexts, skip=skip_figures, **fig_options)
        save_figure_list(out, report.figures)
    all_drawn = len(report.notes) == notes_before  # a figure left out is tried again by the next `bench run`
    page = page_path(out, figures, report.figures, report.notes)
    page.write_text(render_html(board, report.figures, report.notes, base=out, extra=[*sections, costs]),
                    encoding="utf-8")
    report.files["html"] = page
    if all_drawn:
        rk.save(out, key, [*report.files.values(), *(f[k] for f in report.figures for k in ("png", "svg"))])
    return report


def _record_tables(report: Report, records: Sequence[dict[str, Any]]) -> str:
    """Writes ``records.csv`` and ``costs.csv`` into the report's folder; returns the page's cost section."""
    report.files["records_csv"] = write_records_csv(records, report.out_dir / "records.csv")
    report.files["costs_csv"] = write_costs(records, report.out_dir / "costs.csv")
    return costs_html(records)


RECORD_COLUMNS = ("suite", "suite_hash", "defense", "defense_label", "attack", "attack_label", "access",
                  "queries_total", "queries_per_identity", "seed", "status", "metric", "value", "direction", "error",
                  "code_version", "created", "ci_low", "ci_high", "n_identities")


def _record_interval(rec: dict[str, Any], metric: str) -> dict[str, Any]:
    """``ci_low, ci_high, n_identities`` of one record's metric from its per-identity values (empty without)."""
    per = identity_values(upgrade(rec), metric) if rec.get("status") == "ok" else None
    if per is None:
        return {}
    known, unknown = per
    values = [*known.values(), *([0.0] * unknown)]
    settings = report_settings([rec], [])
    low, high = bootstrap_interval(values, settings.confidence, settings.bootstrap)
    return {"ci_low": low, "ci_high": high, "n_identities": len(values)}


def write_records_csv(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every record's every metric as one long CSV row (the per-seed numbers behind each cell).

    A failed record without metrics still gets one row (metric empty) carrying its error. ``access``
    is the attack's access level (``white-box`` for records without one); ``queries_total`` and
    ``queries_per_identity`` are the record's query counts (images the black-box or label-only oracle
    was asked about; forward passes of the target for white-box attacks), empty when not counted.
    ``ci_low``/``ci_high`` are the record's own percentile bootstrap interval (over its identities, at the
    record's ``report_settings.confidence``) of a metric with per-identity values (its plugin declares
    ``per_identity``), ``n_identities`` the identities it resamples; empty for other metrics. A text cell
    that a spreadsheet would read as a formula gets a leading ``'`` (``escape.csv_text``).
    """
    import pandas as pd

    rows = []
    for r in records:
        base = {k: r.get(k) for k in ("suite", "suite_hash", "defense", "defense_label", "attack", "attack_label",
                                      "seed", "status", "code_version", "created")}
        queries = r.get("queries") or {}
        base.update(access=r.get("access") or DEFAULT_ACCESS, queries_total=queries.get("total"),
                    queries_per_identity=queries.get("per_identity"))
        base["error"] = (str(r.get("error") or "").splitlines() or [""])[0]
        metrics = r.get("metrics") or {}
        if not metrics:
            rows.append({**base, "metric": "", "value": None, "direction": ""})
        for m, v in metrics.items():
            rows.append({**base, "metric": m, "value": v, "direction": (r.get("directions") or {}).get(m, ""),
                         **_record_interval(r, m)})
    path.parent.mkdir(parents=True, exist_ok=True)
    from inversion_bench.leaderboard.escape import write_csv

    return write_csv(pd.DataFrame(rows, columns=list(RECORD_COLUMNS)), path)
