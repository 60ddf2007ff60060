"""File names and modes inside a run folder or store: one plain entry of a folder, the umask's mode.

Kept apart from :mod:`~inversion_bench.store` (which stores tensors) so that the record writer and the
tables-only path (``bench leaderboard``) need no torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``), else
    by setting and restoring it (a moment in which another thread's new file would get mode 0666)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def umask_mode(path: Path | str, folder: bool = False) -> None:
    """Gives ``path`` the mode a plain new file (0666) or folder (0777) gets under the umask; for what
    ``tempfile`` created private."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def check_name(name: str, what: str = "name") -> str:
    """``name`` when it is one plain file or folder name, else a ValueError naming ``what`` and the rule.

    Refused: empty, ``.``, ``..``, a ``/``, a NUL byte, more than 255 bytes (the file system's limit).
    """
    text = str(name)
    if not text or text in (".", "..") or any(c in text for c in "/\x00"):
        problem = "must be one plain file or folder name (no '/', '..', NUL byte, not empty)"
    elif len(text.encode("utf-8", "surrogatepass")) > 255:
        problem = f"is {len(text.encode('utf-8', 'surrogatepass'))} bytes long; file names hold at most 255"
    else:
        return text
    shown = text if len(text) <= 80 else text[:80] + "..."
    raise ValueError(f"{what} {shown!r} {problem}")


def inside(folder: Path, name: str, what: str = "name") -> Path:
    """``folder / name``, refused unless ``name`` is one plain entry of ``folder``.

    ``name`` is checked (:func:`check_name`), then joined to the resolved folder and compared
    (symbolic links of the folder itself are fine).

    Raises:
        ValueError: naming ``what``, ``name`` and ``folder``.
    """
    folder = Path(folder)
    check_name(name, what)
    base = folder.resolve()
    if Path(os.path.normpath(base / name)).parent != base:
        raise ValueError(f"{what} {name!r} would leave the folder {folder}")
    return folder / name
