"""The ``bench`` command line.

Exit codes: 0 success; 1 some pairs failed (recorded as failed); 2 invalid input (nothing ran); 130 or 143
stopped by SIGINT (Ctrl-C) or SIGTERM (finished work kept, the lock released; the same command resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from inversion_bench.builtin_suites import DEFAULT_SUITE, default_suite
from inversion_bench.cli_data import add_data_parser
from inversion_bench.cli_publish import add_publish_parsers
from inversion_bench.cli_run import add_run_options, dry_run, run_summary, selection_of
from inversion_bench.errors import ConfigError
from inversion_bench.figure_options import add_skip_figure
from inversion_bench.table_options import add_table_options, table_options

log = logging.getLogger("inversion_bench")



def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set or [])
    if getattr(args, "seeds", None):
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds}: give integers separated by commas, e.g. --seeds 0,1,2") from None
        out.append(f"seeds={seeds}")
    if getattr(args, "device", None):
        out.append(f"run.device={args.device}")
    if getattr(args, "output", None):
        out.append(f"run.output={args.output}")
    if getattr(args, "store", None):  # absolute, so that suite.json names the same store from any folder
        out.append(f"run.store={json.dumps(str(Path(args.store).expanduser().absolute()))}")
    if getattr(args, "executor", None):
        out.append(f"run.executor={args.executor}")
    if getattr(args, "workers", None) is not None:
        out.append(f"run.workers={args.workers}")
    if getattr(args, "address", None):
        out.append(f"run.ray.address={json.dumps(args.address)}")  # JSON string: YAML would read 1:30 as a number
    return out


def _load(args: argparse.Namespace):
    from inversion_bench.config import load_suite
    from inversion_bench.registry import load_plugin_file, load_plugins

    load_plugins()
    for f in args.plugin or []:
        load_plugin_file(f)
    return load_suite(args.suite or default_suite(), _overrides(args))


def cmd_validate(args: argparse.Namespace) -> int:
    from inversion_bench.plan import describe, make_plan
    from inversion_bench.resources import missing_resources, split_problems

    loaded = _load(args)
    if not args.schema_only:
        problems = missing_resources(loaded) or split_problems(loaded)
        if problems:
            raise ConfigError("\n".join(problems))
    for line in describe(loaded, make_plan(loaded)):
        print(line)
    print(f"{loaded.source}: OK")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Lists every dataset folder, checkpoint and weights file the suite needs, and their state."""
    from inversion_bench.resources import check_resources, split_problems

    loaded = _load(args)
    resources = check_resources(loaded)
    bad = 0
    for problem in split_problems(loaded) if all(r.ok for r in resources) else []:
        print(f"[ERROR  ] dataset.split: {problem}")
        bad += 1
    for r in resources:
        mark = "ok     " if r.ok else "WRONG  " if r.path is not None and r.path.exists() else "MISSING"
        where = f" {r.path}" if r.path else ""
        print(f"[{mark}] {r.field}: {r.what}{where}")
        if not r.ok:
            bad += 1
            print(f"          {r.problem}")
    if not resources:
        print("the suite needs no files on disk")
    print(f"{loaded.source}: {sum(r.ok for r in resources)} of {len(resources)} resource(s) present")
    return 2 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    from inversion_bench import fastpath

    # nothing changed since the last clean run: answer without torch or MLflow
    stamp = fastpath.unchanged(args, args.suite or default_suite())
    if stamp is not None:
        print(f"nothing changed since the run of {stamp['written']} (suite, code, inputs and run folder as they "
              f"were; --recheck checks anyway)\n{stamp['summary']}")
        return 0
    fastpath.forget(args)
    from inversion_bench.preflight import check_tracking_option

    check_tracking_option(args)  # a --tracking-uri server that is down: refused before torch and the plugins load
    return _full_run(args)


def _full_run(args: argparse.Namespace) -> int:
    from inversion_bench.executors import make_executor
    from inversion_bench.preflight import check_run
    from inversion_bench.resources import missing_resources
    from inversion_bench.run_context import run_dir_of
    from inversion_bench.runner import Runner

    loaded = _load(args)
    problems = missing_resources(loaded)
    if problems:
        raise ConfigError("\n".join(problems))
    subset = selection_of(args, loaded)  # --defenses/--attacks: unknown ids refused (exit 2) before any work
    check_run(args, loaded, run_dir_of(loaded, args.run_dir))  # folders, store, MLflow, device: before any work
    executor = None if args.dry_run else make_executor(loaded.suite.run)  # exits 2 here when Ray is missing
    runner = Runner(loaded, run_dir=Path(args.run_dir) if args.run_dir else None,
                    tracking_uri=args.tracking_uri, progress=False if args.no_progress else None, selection=subset)
    try:
        if executor is not None and executor.starts_ahead and runner.pending()[0]:
            executor.start(runner.ctx)  # worker processes load torch and the data while this one prepares the run
        return _run_and_report(args, loaded, runner, executor)
    finally:
        if executor is not None:
            executor.close()  # workers started for a run that stopped before its jobs (e.g. a locked folder)


def _run_and_report(args: argparse.Namespace, loaded, runner, executor) -> int:
    from inversion_bench.plan import describe

    for line in describe(loaded, runner.plan):
        log.info(line)
    if args.dry_run:
        return dry_run(runner)
    with runner.lock():  # exits 2 when another run holds the folder; held until the report is written
        tracker = None
        if loaded.suite.run.tracking and not args.no_tracking:
            from inversion_bench.tracking import open_tracker

            tracker = open_tracker(runner.tracking_uri, runner.run_dir, loaded.suite.name)
        summary = runner.run(tracker, executor=executor)
        report = _report_if_changed(runner, figures=not args.no_figures, skip=args.skip_figure or [])
    for line in run_summary(summary, runner.run_dir, report):
        print(line)
    if tracker is not None and tracker.broken is None:
        print(f"MLflow: mlflow ui --backend-store-uri {tracker.uri}")
    elif tracker is not None:
        print(f"MLflow: not mirrored ({tracker.broken}); the next `bench run` mirrors the records", file=sys.stderr)
    if summary.failed:
        print(f"{len(summary.failed)} pair(s) failed: {', '.join(summary.failed)} (see the records)", file=sys.stderr)
    elif summary.exit_code == 0 and (tracker is None or tracker.broken is None):
        from inversion_bench.fastpath import stamp_run

        stamp_run(args, loaded, runner.run_dir, tracker, len(summary.ok) + len(summary.skipped))
    return summary.exit_code


def _report_if_changed(runner, figures: bool, skip: list[str]):
    """The run folder's report, rebuilt only when its inputs changed (``leaderboard/report.key``); ``None``
    (with a message) when it is up to date."""
    from inversion_bench.leaderboard.report_key import report_key, up_to_date

    out = runner.run_dir / "leaderboard"
    if up_to_date(out, report_key([runner.run_dir], out, figures=figures, skip_figures=sorted(skip))):
        print(f"nothing changed; the report is up to date ({out / 'index.html'})")
        return None
    return _write_report([runner.run_dir], out, figures=figures, contexts=[runner.ctx], skip_figures=skip)


def _write_report(run_dirs: list[Path], out_dir: Path | None, figures: bool = True, **kwargs):
    from inversion_bench.leaderboard.report import build_report

    try:
        report = build_report(run_dirs, out_dir, figures=figures, **kwargs)
    except ValueError as exc:  # ReportError and leaderboard errors name the folder and field
        raise ConfigError(str(exc)) from None
    return report  # figures left out were logged with their reason where they failed


BASELINE_HELP = ("defense id the differences are taken against (default: the baseline of the first "
                 "RUN_DIR's suite.json); the baseline is a property of the table, nothing is recomputed")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Tables and index.html from the records only (fast: no figures, no stored models read)."""
    report = _write_report([Path(d) for d in args.run_dirs], Path(args.output) if args.output else None,
                           figures=False, baseline=args.baseline, table=table_options(args), published=args.published)
    print(report.board.to_markdown())
    for section in report.sections_markdown:
        print(section)
    print(f"\nwritten to {report.out_dir} (page: {report.files['html']})")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Tables, figures and index.html of one or more run folders (combined when comparable)."""
    report = _write_report([Path(d) for d in args.run_dirs], Path(args.output) if args.output else None,
                           figures=not args.no_figures, grid_attack=args.grid_attack,
                           grid_identities=args.grid_identities, baseline=args.baseline, table=table_options(args),
                           skip_figures=args.skip_figure or [], published=args.published)
    print(report.board.to_markdown())
    for section in report.sections_markdown:
        print(section)
    print(f"\nwritten to {report.out_dir}:")
    for name, path in sorted(report.files.items()):
        print(f"  {name:<9} {path}")
    for fig in report.figures:
        print(f"  figure    {fig['png']} (+ .svg)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A run folder's reconstructions as PNGs, reference images and labels.csv for human labelling."""
    from inversion_bench.export import export_run
    from inversion_bench.registry import load_plugin_file, load_plugins

    load_plugins()
    for f in args.plugin or []:
        load_plugin_file(f)
    summary = export_run(Path(args.run_dir), Path(args.out), references=args.references, force=args.force)
    print(f"{summary.images} reconstruction(s) of {summary.pairs} pair(s), {summary.identities} identities, "
          f"{summary.references} reference image(s) written to {summary.out_dir}")
    print(f"labels: {summary.labels} (fill in human_label)")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    """A run folder's stored reconstructions scored by another evaluation model (no attack rerun)."""
    from inversion_bench.registry import load_plugin_file, load_plugins
    from inversion_bench.rescore import rescore_run

    load_plugins()
    for f in args.plugin or []:
        load_plugin_file(f)
    run_dir = Path(args.run_dir)
    s = rescore_run(run_dir, Path(args.evaluation), progress=not args.no_progress)
    print(f"judge {s.judge} (the run's own: {s.default_judge}): {len(s.written)} record(s) written, "
          f"{len(s.unchanged)} already judged, {len(s.failed)} failed, in {s.records_dir}")
    if s.not_recorded:
        print(f"not judged ({len(s.not_recorded)}, no ok record of the run's present configuration; `bench run` "
              f"first): {', '.join(n[:-5] for n in s.not_recorded)}", file=sys.stderr)
    if s.written or s.failed or not (run_dir / "leaderboard" / "index.html").is_file():
        report = _write_report([run_dir], None, figures=False)
        for section in report.sections_markdown:
            print(section)
        print(f"report with every judge: {report.files['html']} (judges.csv beside it)")
    return 1 if s.failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from inversion_bench.registry import REGISTRIES, load_plugin_file, load_plugins

    load_plugins()
    for f in args.plugin or []:
        load_plugin_file(f)
    kinds = list(REGISTRIES)
    if args.kind and args.kind not in REGISTRIES:
        singular = {k.rstrip("s"): k for k in REGISTRIES}
        if args.kind in singular:
            args.kind = singular[args.kind]
        else:
            # `bench list NAME`: find the plugin in any registry
            hits = [(k, r.info(args.kind)) for k, r in REGISTRIES.items() if args.kind in r]
            if not hits:
                raise ConfigError(f"unknown kind or plugin {args.kind!r}; kinds: {', '.join(kinds)}")
            for _, info in hits:
                _print_plugin(info)
            return 0
    if args.kind and args.name:
        _print_plugin(REGISTRIES[args.kind].info(args.name))
        return 0
    for kind in [args.kind] if args.kind else kinds:
        print(f"{kind}:")
        for info in REGISTRIES[kind]:
            params = ", ".join(f"{p['name']}={p['default']!r}" for p in info.parameters())
            print(f"  {info.name:<20} {info.doc}")
            access = f"; access: {_access(info.obj)}" if kind == "attacks" else ""
            aliases = f"; aliases: {', '.join(info.aliases)}" if info.aliases else ""
            print(f"  {'':<20} origin: {info.origin}; version {info.version} ({info.provenance}){access}{aliases}")
            if params:
                print(f"  {'':<20} params: {params}")
    return 0


def _access(attack) -> str:
    """An attack's access level, and whether it fits a GAN of its own with the target's knowledge."""
    return attack.access + (", trains its own GAN" if getattr(attack, "trains_generator", False) else "")


def _print_plugin(info) -> None:
    access = f"; access: {_access(info.obj)}" if info.kind == "attack" else ""
    aliases = f"; aliases: {', '.join(info.aliases)}" if info.aliases else ""
    where = f"version {info.version}, {info.provenance}; origin: {info.origin}{access}{aliases}"
    print(f"{info.kind} {info.name}  ({where})")
    print(f"  {info.doc}")
    for p in info.parameters():
        bounds = f"  [{p['constraints']}]" if p.get("constraints") else ""
        print(f"  - {p['name']}: {p['type']} = {p['default']!r}{bounds}  {p['doc']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Inversion Bench: privacy defenses vs model inversion")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, suite: bool = True) -> None:
        p.add_argument("--plugin", action="append", metavar="FILE.py", help="load plugins from a Python file")
        if suite:
            p.add_argument("suite", nargs="?", help=f"suite YAML file, or a run folder's suite.json to rerun it "
                           f"(default {DEFAULT_SUITE})")
            p.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a suite field, e.g. --set run.device=cpu (repeatable)")
            p.add_argument("--seeds", help="comma-separated seeds, overrides the suite's seeds")
            p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
            p.add_argument("--output", help="folder of run folders (run.output)")

    p = sub.add_parser("run", help="train, attack and score every (defense, attack, seed) pair")
    common(p)
    p.add_argument("--run-dir", help="run folder (default <output>/<suite name>)")
    p.add_argument("--store", metavar="PATH", help="product store shared by run folders (run.store; default "
                   "<run folder>/store): evaluation model, prior and identical targets computed once")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite file in the run folder)")
    p.add_argument("--no-tracking", action="store_true", help="do not mirror records to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_options(p)
    p.add_argument("--executor", choices=["local", "ray"],
                   help="local: every job in this process (default); ray: every job a Ray task (run.executor)")
    p.add_argument("--workers", type=int, metavar="N", help="jobs at once, in worker processes (run.workers)")
    p.add_argument("--address", help="Ray cluster: auto, host:port, ray://host:port or local (run.ray.address; "
                   "default: the running one, else a new local one)")
    p.add_argument("--no-figures", action="store_true", help="write the report without figures")
    p.add_argument("--recheck", action="store_true", help="check every pair, the report and the MLflow mirror even "
                   "when nothing changed since the last clean run of this command (no fast path)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a suite without running anything")
    common(p)
    p.add_argument("--schema-only", action="store_true",
                   help="structure, types and plugin names only; do not look for files on disk")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("doctor", help="list the data folders and weights files a suite needs and whether they exist")
    common(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("list", help="list plugins (KIND: defenses, attacks, metrics, ...; NAME: one plugin)")
    common(p, suite=False)
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("leaderboard", help="rebuild the tables and index.html from run folders' records")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", help="where to write (default RUN_DIR/leaderboard)")
    p.add_argument("--baseline", metavar="ID", help=BASELINE_HELP)
    add_table_options(p)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("report", help="tables, figures and index.html of one or more run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders; several are combined if they share dataset, split and evaluation model")
    p.add_argument("--output", help="where to write (default: the first RUN_DIR/leaderboard)")
    p.add_argument("--no-figures", action="store_true", help="tables and page only")
    add_skip_figure(p)
    p.add_argument("--grid-attack", help="attack id of the qualitative grid (default: the most revealing attack)")
    p.add_argument("--grid-identities", type=int, default=8, help="identities in the qualitative grid")
    p.add_argument("--baseline", metavar="ID", help=BASELINE_HELP)
    add_table_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a run folder's reconstructions as PNGs with reference images and a "
                       "labels.csv, for human or external labelling")
    common(p, suite=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `bench run`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must be new or empty)")
    p.add_argument("--references", type=int, default=5, metavar="K",
                   help="private training images per identity written under DIR/references (default 5)")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR (same-named files replaced)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rescore", help="score a run folder's stored reconstructions with another evaluation model "
                       "(no attack rerun); its records go to RUN_DIR/records/judges/<judge key>/")
    common(p, suite=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `bench run`")
    p.add_argument("--evaluation", required=True, metavar="FILE.yaml",
                   help="the other evaluation model: a suite's evaluation: block (architecture, training, checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_rescore)
    add_data_parser(sub)
    add_publish_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "opacus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from inversion_bench.signals import Interrupted, stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM unwinds like Ctrl-C: the lock is released, finished work kept
            return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"stopped by {exc}: finished records and stored products are kept and the run folder's lock is "
              "released; run the same command again to resume", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
