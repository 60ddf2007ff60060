"""The no-op fast path of ``bench run``: a rerun with nothing to do answers without importing torch.

After a run in which every pair is recorded ok, the report is written or up to date and every record
is mirrored, ``bench run`` writes a *stamp* of everything that run depended on:

- the request: working directory, the command line's options, the Python executable and the
  environment variables a run reads (``MLFLOW_*``, ``INVERSION_BENCH_*``, ``CUDA_VISIBLE_DEVICES``);
- the suite file, its ``include:`` chain and ``--plugin`` files (their contents, hashed);
- the code: size and modification time of every module file the run had loaded (this package, the
  plugins, torch and the rest) and the plugin entry points installed;
- the inputs named by the suite: every file or folder a suite value or plugin parameter points to
  (datasets, checkpoints, weights), folders listed recursively with their files' sizes;
- the run folder: names, sizes and modification times of the records, ``suite.json``, the report's
  files and the MLflow SQLite store in the folder.

The stamp also names what it covers: the suite file and the run folder with its record files. A stamp
that does not (empty, forged, or written by an older version) or that names another suite, or a run
folder it does not list, is ignored. The next ``bench run`` with the same request compares the stamp with
the present (standard library
and YAML only: well under a second). Equal means the full path would find every pair recorded, the
report up to date and nothing to mirror, so it says so and exits 0 without starting it. Anything
different, a missing or unreadable stamp, or ``--recheck`` takes the full path, which checks
everything itself. Runs that track to a remote MLflow server, and suites whose input folders hold
more than :data:`MAX_LISTED` files, write no stamp. Stamps live in the user's cache folder
(``$INVERSION_BENCH_CACHE``, else ``$XDG_CACHE_HOME/inversion-bench``, else
``~/.cache/inversion-bench``) under ``runs/<hash of the request>.json``; a cache that cannot be
written only turns the fast path off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

STAMP_VERSION = 2  # 2: the stamp names the suite and the run folder's records it covers
MAX_LISTED = 300_000  # files listed under the suite's input folders before the fast path gives up
_ENV_PREFIXES = ("MLFLOW_", "INVERSION_BENCH_", "CUDA_VISIBLE_DEVICES")
_GROUPS_PREFIX = "bench."  # entry-point groups of plugins (bench.defenses, ...)


def cache_dir() -> Path:
    if os.environ.get("INVERSION_BENCH_CACHE"):
        return Path(os.environ["INVERSION_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inversion-bench"


def request(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies a ``bench run`` command: options, working directory, interpreter, environment.

    Taken once, before the run (a run sets environment variables of its own, e.g. MLflow's), and kept
    on ``args`` so that the stamp written after the run is found by the next identical command."""
    if "_fastpath_request" in vars(args):
        return vars(args)["_fastpath_request"]
    options = {k: v for k, v in sorted(vars(args).items())
               if k not in ("func", "recheck", "verbose") and not k.startswith("_")}
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)}
    req = {"options": json.loads(json.dumps(options, default=str)), "cwd": os.getcwd(),
           "python": sys.executable, "env": env}
    args._fastpath_request = req
    return req


def stamp_file(args: argparse.Namespace) -> Path:
    digest = hashlib.sha256(json.dumps(request(args), sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "runs" / f"{digest}.json"


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _listing(folder: Path, budget: list[int]) -> list[list[Any]] | None:
    """``[relative path, size, mtime]`` of every file under ``folder`` (None past the budget)."""
    out: list[list[Any]] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                stack.append(Path(e.path))
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return None
            st = _stat(Path(e.path))
            out.append([os.path.relpath(e.path, folder), *(st or [-1, -1])])
    return out


def _entry_points() -> list[str]:
    import importlib.metadata

    return sorted({f"{ep.group}:{ep.name}={ep.value}" for dist in importlib.metadata.distributions()
                   for ep in dist.entry_points if ep.group.startswith(_GROUPS_PREFIX)})


def _state(watch: dict[str, Any]) -> dict[str, Any] | None:
    """The present state of what ``watch`` names (the same shape a stamp stores); None when a watched
    folder has too many files to list."""
    budget = [MAX_LISTED]
    folders = {}
    for f in watch["folders"]:
        listed = _listing(Path(f), budget)
        if listed is None:
            return None
        folders[f] = listed
    return {"contents": {f: _digest(Path(f)) for f in watch["contents"]},
            "stats": {f: _stat(Path(f)) for f in watch["stats"]},
            "folders": folders, "entry_points": _entry_points()}


def _module_files() -> list[str]:
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if isinstance(f, str) and os.path.isfile(f):
            files.add(os.path.abspath(f))
    return sorted(files)


def _suite_paths(values: Iterable[Any]) -> Iterator[Path]:
    """Existing files and folders named by string values (nested in dicts and lists)."""
    for v in values:
        if isinstance(v, dict):
            yield from _suite_paths(v.values())
        elif isinstance(v, list | tuple):
            yield from _suite_paths(v)
        elif isinstance(v, str | Path) and str(v) and len(str(v)) < 4096 and "\n" not in str(v):
            p = Path(v).expanduser()
            try:
                if p.exists():
                    yield p.resolve()
            except OSError:
                continue


def suite_files(source: str | Path, plugin_files: Iterable[str] | None = None) -> list[Path]:
    """The suite file, the files of its ``include:`` chain and the ``--plugin`` files."""
    import yaml

    out, todo = [], [Path(source)]
    while todo:
        path = todo.pop()
        if path.resolve() in out:
            continue
        out.append(path.resolve())
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix != ".json" else None
        except (OSError, ValueError, yaml.YAMLError):
            continue
        inc = data.get("include") if isinstance(data, dict) else None
        for name in [inc] if isinstance(inc, str) else (inc if isinstance(inc, list) else []):
            if isinstance(name, str):
                todo.append(Path(name) if Path(name).is_absolute() else path.parent / name)
    return out + [Path(f).resolve() for f in plugin_files or []]


def write_stamp(args: argparse.Namespace, *, suite: Path, suite_files: Iterable[Path], run_dir: Path,
                inputs: Iterable[Any], summary: str) -> Path | None:
    """Writes the stamp of a finished run of the suite file ``suite`` (see the module doc); returns its path,
    None when this run cannot have one (too many input files, or the cache cannot be written)."""
    run = run_dir.resolve()  # listed itself; its parents (run.output) hold other runs' folders
    paths = sorted({p for p in _suite_paths(inputs) if not (p == run or run in p.parents or p in run.parents)})
    watch = {
        "contents": sorted({str(Path(p).resolve()) for p in suite_files}),
        "stats": _module_files() + [str(p) for p in paths if p.is_file()],
        "folders": [str(run_dir.resolve())] + [str(p) for p in paths if p.is_dir()],
    }
    state = _state(watch)
    if state is None:
        return None
    covers = {"suite": str(Path(suite).resolve()), "run_dir": str(run),
              "records": sorted(p.name for p in (run / "records").glob("*.json"))}
    stamp = {"version": STAMP_VERSION, "request": request(args), "covers": covers, "watch": watch, "state": state,
             "summary": summary, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = stamp_file(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def unchanged(args: argparse.Namespace, suite: str | Path | None = None) -> dict[str, Any] | None:
    """The stamp of the last run of this request when nothing it depended on changed since, else None.

    Args:
        args: the ``bench run`` command line.
        suite: the suite file it runs (default ``args.suite``; without either, no stamp is trusted).
    """
    if getattr(args, "recheck", False) or getattr(args, "dry_run", False):
        return None
    try:
        stamp = json.loads(stamp_file(args).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("version") != STAMP_VERSION or stamp.get("request") != request(args):
        return None
    try:
        if not _covers(stamp, suite or args.suite):
            return None
        now = _state(stamp["watch"])
    except (KeyError, TypeError, AttributeError, ValueError, OSError):
        return None
    return stamp if now is not None and now == stamp.get("state") else None


def _covers(stamp: dict[str, Any], suite_file: str | Path | None) -> bool:
    """Whether ``stamp`` watches what its answer is about: the suite file of this request (its content) and
    a run folder whose listing holds the records the stamp names (at least one). An empty, forged or
    foreign stamp (another suite, a run folder it does not list) is not."""
    if not suite_file:
        return False
    covers, watch, state = stamp["covers"], stamp["watch"], stamp["state"]
    suite = str(Path(suite_file).resolve())
    run_dir, records = covers["run_dir"], covers["records"]
    listed = {entry[0] for entry in state["folders"].get(run_dir) or []}
    return (covers["suite"] == suite and suite in watch["contents"] and state["contents"].get(suite) is not None
            and run_dir in watch["folders"] and isinstance(records, list) and bool(records)
            and all(os.path.join("records", str(name)) in listed for name in records))


def forget(args: argparse.Namespace) -> None:
    """Removes this request's stamp (a run that did not end cleanly must not be skipped next time)."""
    try:
        stamp_file(args).unlink()
    except OSError:
        pass


def stamp_run(args: argparse.Namespace, loaded: Any, run_dir: Path, tracker: Any, pairs: int) -> Path | None:
    """Writes the stamp of a clean ``bench run`` of the suite ``loaded`` (a ``LoadedSuite``) into
    ``run_dir`` with ``pairs`` recorded pairs; nothing when it tracks to a remote server."""
    uri = tracker.uri if tracker is not None else None
    if uri is not None and not uri.startswith(("sqlite:///", "file:")):
        return None
    tracking = [uri.split("sqlite:///", 1)[-1].removeprefix("file:")] if uri else []
    params = [p.model_dump(mode="json") for p in (loaded.dataset_params, loaded.prior_params, *loaded.defense_params,
                                                  *loaded.attack_params, *loaded.metric_params)
              if hasattr(p, "model_dump")]
    inputs = [loaded.raw, params, {k: str(v) for k, v in loaded.weights().items()}, tracking, args.plugin or []]
    summary = (f"pairs: 0 ran, {pairs} reused (recorded before), 0 failed\n"
               f"report: {run_dir / 'leaderboard' / 'index.html'}\n"
               f"tables: {run_dir / 'leaderboard' / 'leaderboard.md'} (also .csv and .tex; costs.csv, records.csv)\n"
               f"run folder: {run_dir}  (0 ran, {pairs} from cache, 0 failed)")
    return write_stamp(args, suite=Path(loaded.source), suite_files=suite_files(loaded.source, args.plugin),
                       run_dir=run_dir, inputs=inputs, summary=summary)
