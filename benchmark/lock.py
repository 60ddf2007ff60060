"""The run folder's lock (whether a folder can be written at all is :mod:`inversion_bench.preflight`'s check).

One ``bench run`` at a time writes a run folder: :class:`RunLock` creates ``<run_dir>/.lock``
atomically (``O_CREAT | O_EXCL``) holding the process's pid, host, start time and command, and removes
it when the run ends, also on an exception or Ctrl-C. A second run on the same folder stops at once
with :class:`RunLockedError` (exit 2) naming the process that holds it. A lock left behind by a
process that no longer exists on this host (killed with SIGKILL, a crashed node) is stale: it is taken
over with a warning. A lock of another host cannot be checked and is respected; its message says
which file to delete if that process is gone.

Only the driver takes the lock (the runner does); Ray workers write into the folder on its behalf.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inversion_bench.config_messages import shorten
from inversion_bench.errors import ConfigError
from inversion_bench.preflight import folder_problem

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# a lock file that stays empty or unreadable this long is treated as left by a crash mid-write
_UNREADABLE_STALE_S = 10.0


class RunLockedError(ConfigError):
    """The run folder is in use by another ``bench run`` (exit 2)."""


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _pid_max() -> int:
    """The largest pid this host hands out (Linux: ``/proc/sys/kernel/pid_max``; else 2**22, Linux's cap)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text().strip())
    except (OSError, ValueError):
        return 2**22


def pid_alive(pid: Any) -> bool | None:
    """Whether a process with this pid exists on this host; None when ``pid`` cannot be a process id
    here (not an integer, not positive, above the host's largest pid), so its liveness is unknown."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= _pid_max():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OSError, OverflowError):
        return None
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None when it is missing, empty or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (its lock file is unreadable)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('start', '?')}"
            f" ({info.get('command', '?')})")


class RunLock:
    """``<run_dir>/.lock``, held while a run writes the folder. A context manager; re-entrant within
    this object (``with lock: ... with lock: ...`` takes it once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.depth = 0
        self._created: list[Path] = []  # folders this lock created (removed again if left empty)

    @property
    def held(self) -> bool:
        return self.depth > 0

    def __enter__(self) -> RunLock:
        if self.depth == 0:
            self.acquire()
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.release()

    def _mkdir(self) -> None:
        missing = []
        d = self.run_dir.absolute()
        while not d.exists() and d.parent != d:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            self._created.append(d)

    def _os_error(self, exc: OSError) -> ConfigError:
        reason = exc.strerror or str(exc)
        fix = "give a writable folder with --run-dir or --output"
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            fix = "give a folder path with --run-dir or --output"
        return ConfigError(f"run folder {self.run_dir}: cannot write {exc.filename or self.path} ({reason}); {fix}")

    def acquire(self) -> None:
        """Creates the lock; raises :class:`RunLockedError` when a live process holds it."""
        problem = folder_problem(self.run_dir)
        if problem:
            raise ConfigError(problem)
        if self.path.is_dir() or (self.path.exists() and not self.path.is_file()):
            kind = "a folder" if self.path.is_dir() else "not a regular file"
            raise ConfigError(f"run folder {self.run_dir}: its lock {self.path} is {kind}, which `bench run` never "
                              f"writes; move it away (mv {self.path} {self.path}.moved) and run again, or give "
                              "another --run-dir")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "start": _now(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500], "token": self.token}
        try:
            self._mkdir()
            for _ in range(3):
                if self._create(info):
                    return
                self._check_holder()  # raises unless the lock was stale and has been removed
            raise RunLockedError(f"run folder {self.run_dir} is in use by {describe_holder(read_lock(self.path))}")
        except OSError as exc:
            self._remove_created()
            raise self._os_error(exc) from None
        except BaseException:
            self._remove_created()
            raise

    def _create(self, info: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _check_holder(self) -> None:
        """Removes a stale lock (with a warning); raises :class:`RunLockedError` for a live one, and for
        one whose liveness cannot be checked (another host, a pid that is no process id of this host)."""
        info = self._read_settled()
        if info is None and not self.path.exists():
            return  # released meanwhile
        if info is not None and info.get("host") != socket.gethostname():
            raise RunLockedError(f"run folder {self.run_dir} is in use by {describe_holder(info)}; if that process "
                                 f"is gone, delete {self.path}, or give another --run-dir")
        alive = False if info is None else pid_alive(info.get("pid"))
        if alive is None:
            raise RunLockedError(f"run folder {self.run_dir}: its lock {self.path} names the pid "
                                 f"{shorten(info.get('pid'), 30)}, which is no process id of this host, so whether "
                                 f"its run goes on cannot be checked; if no `bench run` uses this folder (see `ps`), "
                                 f"delete {self.path} and run again, or give another --run-dir")
        if alive:
            raise RunLockedError(f"run folder {self.run_dir} is in use by {describe_holder(info)}; wait for it to "
                                 f"finish (its lock is {self.path}), or give another --run-dir")
        self._take_over(info)

    def _read_settled(self) -> dict[str, Any] | None:
        """The lock's content; an unreadable one is re-read until it is older than a crash mid-write."""
        while True:
            info = read_lock(self.path)
            if info is not None:
                return info
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            if age >= _UNREADABLE_STALE_S:
                return None
            time.sleep(0.2)

    def _take_over(self, info: dict[str, Any] | None) -> None:
        """Moves the stale lock aside (one taker wins the rename) and checks that it was the stale one."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first; try to create ours again
        moved = read_lock(aside)
        if (moved or {}).get("token") != (info or {}).get("token"):
            # a faster taker replaced the stale lock with its own between our read and rename: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning("run folder %s: taking over the stale lock of %s (that process no longer exists)",
                    self.run_dir, describe_holder(info))

    def release(self) -> None:
        """Removes the lock if it is still ours; removes the folders the lock created if they are empty."""
        if (read_lock(self.path) or {}).get("token") == self.token:
            try:
                self.path.unlink()
            except OSError as exc:
                log.warning("run folder %s: could not remove its lock %s: %s", self.run_dir, self.path, exc)
        self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self._created):
            try:
                d.rmdir()  # only when empty: a run that wrote nothing leaves no trace
            except OSError:
                break
        self._created = []
