"""Helpers of ``bench run``: the dry run's listing, the ``--defenses``/``--attacks`` subset and the short
summary the run ends with."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--dry-run``, ``--defenses``, ``--attacks`` and ``--skip-figure`` of ``bench run``."""
    from inversion_bench.figure_options import add_skip_figure

    add_skip_figure(p)
    p.add_argument("--dry-run", action="store_true", help="show the pairs that would run and the products they "
                   "would reuse from the store or compute, run nothing")
    p.add_argument("--defenses", metavar="ID,ID", help="run only these defense entries (ids; the other entries' "
                   "records are kept and the report reads them all); with --seeds, adds seeds for some entries")
    p.add_argument("--attacks", metavar="ID,ID", help="run only these attack entries (ids), like --defenses")


def selection_of(args: argparse.Namespace, loaded):
    """The ``--defenses``/``--attacks`` subset (None: every entry); unknown ids are a ConfigError (exit 2)."""
    from inversion_bench.selection import selection
    from inversion_bench.suite_schema import entry_id

    return selection(args.defenses, args.attacks, [entry_id(d) for d in loaded.suite.defenses],
                     [entry_id(a) for a in loaded.suite.attacks], f"suite {loaded.suite.name} ({loaded.source})")


def run_summary(summary, run_dir: Path, report) -> list[str]:
    """The end of ``bench run``: pairs done, failed and reused, where the report and the tables are (the
    table itself is in ``leaderboard.md``; ``bench leaderboard RUN_DIR`` prints it)."""
    out = run_dir / "leaderboard"
    lines = [f"pairs: {len(summary.ok)} ran, {len(summary.skipped)} reused (recorded before), "
             f"{len(summary.failed)} failed"]
    html = report.files["html"] if report is not None else out / "index.html"
    if report is not None or html.is_file():
        lines += [f"report: {html}", f"tables: {out / 'leaderboard.md'} (also .csv and .tex; costs.csv, records.csv)"]
    lines.append(f"run folder: {run_dir}  ({len(summary.ok)} ran, {len(summary.skipped)} from cache, "
                 f"{len(summary.failed)} failed)")
    return lines


def dry_run(runner) -> int:
    """``bench run --dry-run``: the pairs to run and the products they would reuse or compute."""
    from inversion_bench.dry_run import dry_run_lines, product_states
    from inversion_bench.jobs import attack_needs_prior, job_graph

    todo, skip = runner.pending()
    jobs = job_graph(runner.plan, todo, attack_needs_prior(runner.ctx.loaded))
    states = product_states(runner.plan, jobs, todo, skip, lambda kind, key: runner.ctx.store.path(kind, key).is_dir())
    for line in dry_run_lines(states, len(todo), len(skip), str(runner.run_dir)):
        print(line)
    print("pairs to run:" if todo else "nothing to run")
    for job in todo:
        print(f"  {job.defense} x {job.attack} seed {job.seed}")
    return 0
