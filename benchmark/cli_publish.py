"""``bench publish`` (entries, ``--check``, ``--external``) and ``bench site``: the command line of
:mod:`inversion_bench.publish`, :mod:`inversion_bench.publish_check` and :mod:`inversion_bench.leaderboard.site`.

Exit codes: 0 done (or every entry checked holds); 1 ``--check`` found an entry that does not match its
artifacts (each problem printed, naming the file); 2 bad input (no such run or entry, an invalid entry, options
that do not fit together), before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inversion_bench.errors import ConfigError


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def cmd_publish(args: argparse.Namespace) -> int:
    modes = [m for m, on in (("RUN", args.run), ("--check", args.check), ("--external", args.external)) if on]
    if len(modes) != 1:
        raise ConfigError("bench publish: give exactly one of RUN (with --protocol and --out), --check ENTRY, or "
                          f"--external RUN --into DIR (got {', '.join(modes) or 'none'})")
    if args.check:
        return _check(args.check)
    if args.external:
        if not args.into:
            raise ConfigError("bench publish --external RUN: give --into DIR, the folder of the entries it evaluates")
        from inversion_bench.publish import add_external

        for r in add_external(Path(args.external), Path(args.into), by=args.by, judge=args.judge):
            change = ("worst case unchanged" if r.after == r.before
                      else f"worst case {_percent(r.before)} -> {_percent(r.after)}")
            print(f"{r.path}: {len(r.added)} external evaluation(s) added ({', '.join(r.added) or 'none'}); {change}")
            for reason in r.skipped:
                print(f"  not added: {reason}")
        return 0
    if not args.protocol or not args.out:
        raise ConfigError("bench publish RUN: give --protocol NAME (the protocol the run follows) and --out DIR")
    from inversion_bench.publish import publish, read_entry

    result = publish(Path(args.run), args.protocol, Path(args.out), by=args.by, judge=args.judge)
    for reason in result.skipped:
        print(f"not published: {reason}")
    for path in result.paths:
        e = read_entry(path)
        wc = e.worst_case
        setter = f"set by {wc.evaluation}" if wc.evaluation else "no attack covers every seed"
        print(f"{path}: {e.defense.label}: test accuracy {_percent(e.utility.mean)}, worst case "
              f"{_percent(wc.mean)} ({setter}), {len(e.artifacts.records)} record(s), "
              f"{len(e.artifacts.reconstructions)} reconstruction(s) hashed")
    return 0


def _check(paths: list[str]) -> int:
    from inversion_bench.publish_check import check_entry

    bad = 0
    for p in paths:
        report = check_entry(Path(p))
        if report.ok:
            print(f"{p}: OK ({report.records} record(s), {report.files} file(s) verified; numbers recomputed)")
            continue
        bad += 1
        print(f"{p}: FAILED", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
    return 1 if bad else 0


def cmd_site(args: argparse.Namespace) -> int:
    from inversion_bench.leaderboard.site import build_site
    from inversion_bench.publish import PublishError, read_entries

    entries = read_entries(Path(args.entries))
    try:
        site = build_site(entries, Path(args.out))
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    for page in site.protocol_pages:
        print(f"protocol page: {page}")
    print(f"{len(site.entry_pages)} entry page(s); open {site.index}")
    return 0


def add_publish_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``bench publish`` and ``bench site``."""
    p = sub.add_parser("publish", help="a run's defenses as leaderboard entries (JSON); --check verifies one; "
                       "--external adds another run's attacks to published entries",
                       description="bench publish RUN --protocol NAME --out DIR | bench publish --check ENTRY... | "
                       "bench publish --external RUN --into DIR")
    p.add_argument("run", nargs="?", metavar="RUN", help="a run folder written by `bench run`")
    p.add_argument("--protocol", metavar="NAME", help="the protocol the run follows (entries of different "
                   "protocols, data, judges or target setups never share a table)")
    p.add_argument("--out", metavar="DIR", help="folder the entries are written to (one JSON per defense)")
    p.add_argument("--judge", metavar="KEY", help="publish (or add) the run's records of another judge, "
                   "records/judges/KEY/ (`bench rescore`), instead of the suite's evaluation model's")
    p.add_argument("--by", metavar="NAME", help="who publishes or submits (shown on the site)")
    p.add_argument("--check", nargs="+", metavar="ENTRY", help="verify entries against the records and stored "
                   "reconstructions they name (exit 1 when one does not match)")
    p.add_argument("--external", metavar="RUN", help="a run folder whose attacks on published targets are added "
                   "to the entries of --into as external evaluations (they can only raise the worst case)")
    p.add_argument("--into", metavar="DIR", help="with --external: the folder of entries")
    p.set_defaults(func=cmd_publish)

    q = sub.add_parser("site", help="a static leaderboard site (one page per protocol, one per entry) from entries")
    q.add_argument("entries", metavar="ENTRIES", help="folder of entries (searched recursively)")
    q.add_argument("--out", required=True, metavar="DIR", help="folder the site is written to")
    q.set_defaults(func=cmd_site)
