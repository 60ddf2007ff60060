"""Wall time of the ``bench`` commands an operator types most (issue 19).

Times, each in a fresh process (``python -m inversion_bench.cli``, so interpreter start and imports
count), ``--repeats`` times, and prints the median, min and max:

* ``bench --help``
* ``bench list``
* ``bench validate suites/quickstart.yaml``
* a no-op ``bench run suites/quickstart.yaml --output DIR`` (every pair recorded, report up to date):
  the fast path (nothing changed since the last clean run: :mod:`inversion_bench.fastpath`) and the
  full check (``--recheck``: every record, the report key and the MLflow mirror)

The no-op run needs a finished quickstart run under ``DIR`` (``DIR/quickstart/records``); without one
the script says how to make it. One untimed no-op run first brings the report up to date (a folder
written by an older version has no ``report.key``). Other processes on the machine slow every
command alike: compare figures taken on the same, otherwise idle, machine.

Usage::

    bench run suites/quickstart.yaml --output /tmp/lat-runs --set run.threads=1   # once
    python benchmarks/cli_latency.py --output /tmp/lat-runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "suites/quickstart.yaml"
UP_TO_DATE = ("nothing changed; the report is up to date", "nothing changed since the run of")


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "inversion_bench.cli", *args]


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


def finished_run(output: Path) -> str | None:
    """Why ``output`` holds no finished quickstart run (``None`` when it does)."""
    run_dir = output / "quickstart"
    if not (run_dir / "suite.json").is_file() or not any((run_dir / "records").glob("*.json")):
        return (f"{output} holds no finished quickstart run ({run_dir}/records is empty or missing); make one "
                f"with:\n  bench run {SUITE} --output {output} --set run.threads=1")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="folder of run folders holding a finished "
                        "quickstart run (its run.output)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (median shown)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="overrides of the no-op run, as the run was made (default: run.threads=1)")
    args = parser.parse_args(argv)
    output = args.output.expanduser().absolute()
    problem = finished_run(output)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    sets = [x for s in (args.set if args.set is not None else ["run.threads=1"]) for x in ("--set", s)]
    noop = bench("run", SUITE, "--output", str(output), "--no-progress", *sets)
    warm, proc = timed(noop)  # brings the report up to date; also warms the file cache
    summary = [line for line in proc.stdout.splitlines() if line.startswith("run folder:")]
    if not summary or "(0 ran," not in summary[0]:
        print(f"note: the untimed run ran pairs ({summary[0] if summary else proc.stdout[-300:]}); the folder "
              "was not finished", file=sys.stderr)
    commands = {
        "bench --help": bench("--help"),
        "bench list": bench("list"),
        f"bench validate {SUITE}": bench("validate", SUITE),
        "bench run (no-op, fast path)": noop,
        "bench run (no-op, --recheck)": [*noop, "--recheck"],
    }
    print(f"{os.cpu_count()} CPU(s); {args.repeats} run(s) each; untimed first no-op run {warm:.2f} s")
    print(f"{'command':<38} {'median':>8} {'min':>8} {'max':>8}")
    for name, cmd in commands.items():
        times = []
        for _ in range(args.repeats):
            elapsed, proc = timed(cmd)
            times.append(elapsed)
            if cmd[3:5] == noop[3:5] and not any(text in proc.stdout for text in UP_TO_DATE):
                print(f"note: the no-op run rebuilt the report ({cmd[3:]})", file=sys.stderr)
        print(f"{name:<38} {statistics.median(times):>7.2f}s {min(times):>7.2f}s {max(times):>7.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
