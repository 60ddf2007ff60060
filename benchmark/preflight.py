"""Checks that come before any work: can every folder a command writes be written, is the device there,
does the tracking server answer.

``bench run`` writes the run folder, the product store (``--store``/``run.store``, by default inside
the run folder) and the MLflow store (the run folder's SQLite file, ``--tracking-uri`` or
``run.tracking_uri``); ``bench export`` writes ``--out``. Each is checked once, at the start, by
:func:`folder_problem` (the path and its nearest existing ancestor only; nothing is written), so a
file where a folder belongs or a read-only folder is one line naming the option, exit 2, before any
training, instead of a failed record per pair. A tracking server (``http(s)://``) is probed once with a
short timeout (:func:`inversion_bench.tracking.server_problem`): a server that is down is refused in
seconds, not after MLflow's minutes of retries.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from inversion_bench.errors import ConfigError


def folder_problem(path: Path, what: str = "run folder") -> str | None:
    """Why ``path`` cannot be (created and) written as a folder, or None when it can.

    Looks at the path and its nearest existing ancestor only; writes nothing.

    Args:
        path: the folder to write (it may not exist yet).
        what: how the message names it (``run folder``, ``store``, ``--out``, ...).
    """
    path = Path(path).expanduser()
    probe = path.absolute()
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            return f"{what} {path}: {probe} is a broken symbolic link"
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{what} {path}: {probe} is a file, not a folder; give a folder path (or move the file away)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{what} {path}: {probe} is read-only for this user; give a writable folder"
    return None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])  # sqlite:////abs or sqlite:///relative


def tracking_problem(uri: str | None, run_dir: Path) -> str | None:
    """Why the MLflow store of a run cannot be written or reached, or None.

    Args:
        uri: ``--tracking-uri``/``run.tracking_uri``; None for the run folder's SQLite file (checked
            with the run folder, and opened by :func:`inversion_bench.tracking.open_tracker`).
        run_dir: the run folder.
    """
    from inversion_bench.tracking import is_server_uri, server_problem

    if uri is None:
        return None
    if is_server_uri(uri):
        return server_problem(uri)
    db = _sqlite_path(uri)
    folder = db.parent if db is not None else (Path(uri.removeprefix("file://").removeprefix("file:"))
                                                if uri.startswith("file:") else None)
    if folder is None:
        return None  # another scheme: open_tracker names it if MLflow cannot open it
    problem = folder_problem(folder, "MLflow store folder")
    if problem is None and db is not None and db.exists() and (db.is_dir() or not os.access(db, os.R_OK | os.W_OK)):
        what = "a folder, not a database file" if db.is_dir() else "read-only for this user"
        problem = f"MLflow store {db}: {what}"
    return f"{problem} (set by --tracking-uri / run.tracking_uri {uri}); or run with --no-tracking" if problem else None


def check_tracking_option(args: argparse.Namespace) -> None:
    """``--tracking-uri`` of ``bench run``, checked (a server probed) before the suite and its plugins are
    even loaded, so that a server that is down is refused within a second; :func:`check_run` checks a
    ``run.tracking_uri`` of the suite instead.

    Raises:
        ConfigError: the store cannot be written or the server does not answer.
    """
    if args.tracking_uri and not (args.no_tracking or args.dry_run):
        problem = tracking_problem(args.tracking_uri, Path(args.run_dir or "."))
        if problem:
            raise ConfigError(problem)


def check_run(args: argparse.Namespace, loaded: Any, run_dir: Path) -> None:
    """Input errors of ``bench run`` that are cheap to find, in one place: the run folder, the store and
    the MLflow store of ``run.tracking_uri`` can be written, its server answers, the device exists.

    Raises:
        ConfigError: one line naming the option (or suite field) and the fix; nothing was written.
    """
    from inversion_bench.run_context import check_device, store_root

    if args.run_dir and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", args.run_dir):
        raise ConfigError(f"--run-dir {args.run_dir}: must be a local path (like run.output); remote storage URLs "
                          "are not supported: mount the storage at the same path on every node and give that path")
    if args.dry_run:
        return
    problem = folder_problem(run_dir)
    if problem:
        where = "--run-dir" if args.run_dir else "--output (run.output)"
        raise ConfigError(f"{problem} (set by {where})")
    run = loaded.suite.run
    if run.store is not None:
        problem = folder_problem(store_root(loaded, run_dir), "store")
        if problem:
            raise ConfigError(f"{problem} (set by {'--store' if args.store else 'run.store'}); nothing was run")
    if run.tracking and not args.no_tracking and not args.tracking_uri:  # --tracking-uri: check_tracking_option
        problem = tracking_problem(run.tracking_uri, run_dir)
        if problem:
            raise ConfigError(problem)
    if run.executor == "local":  # a Ray driver need not have the GPUs of its tasks
        check_device(run.device)
