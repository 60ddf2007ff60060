"""The suites shipped with the package (``inversion_bench.suites``) and how ``include:`` finds them.

``include: quickstart.yaml`` names a file relative to the including suite; where no such file
exists and the name is a built-in suite's (``quickstart.yaml`` or just ``quickstart``), the copy
installed with the package is used, so a suite written anywhere can build on the shipped ones.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from inversion_bench.errors import ConfigError

PACKAGE = "inversion_bench.suites"
DEFAULT_SUITE = "suites/quickstart.yaml"


def builtin_dir() -> Path:
    """The folder that holds the built-in suites (a real folder: the package is never zipped)."""
    return Path(str(files(PACKAGE)))


def default_suite() -> str:
    """The suite ``bench`` runs when none is named: ``suites/quickstart.yaml`` of the working
    directory, else the copy installed with the package."""
    if Path(DEFAULT_SUITE).is_file():
        return DEFAULT_SUITE
    return str(builtin_dir() / "quickstart.yaml")


def builtin_suite_names() -> list[str]:
    """File names of the built-in suites, sorted (``["alpha-sweep.yaml", ..., "toy2d.yaml"]``)."""
    return sorted(p.name for p in builtin_dir().glob("*.yaml") if p.is_file())


def builtin_suite(name: str) -> Path | None:
    """The built-in suite called ``name`` (with or without ``.yaml``), or ``None``.

    Args:
        name: A bare file name such as ``quickstart.yaml`` or ``quickstart``; anything with a folder
            part names no built-in suite.

    Returns:
        The suite file's path, or ``None`` when no built-in suite has that name.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        return None
    for candidate in (name, f"{name}.yaml"):
        path = builtin_dir() / candidate
        if candidate.endswith(".yaml") and path.is_file():
            return path
    return None


def resolve_include(including: Path, include: str) -> Path:
    """The file that ``include: <include>`` in the suite ``including`` names.

    A path relative to the including file comes first (absolute paths are taken as they are); when
    no such file exists, a built-in suite of that name.

    Args:
        including: The suite file that holds the ``include:`` line.
        include: The text of one ``include:`` item.

    Returns:
        The path of the suite to merge.

    Raises:
        ConfigError: Neither a file nor a built-in suite has that name; the message names the file
            looked at and lists the built-in suites.
    """
    local = Path(include) if Path(include).is_absolute() else including.parent / include
    if local.is_file():
        return local
    builtin = None if Path(include).is_absolute() else builtin_suite(include)
    if builtin is not None:
        return builtin
    names = ", ".join(builtin_suite_names()) or "none installed"
    raise ConfigError(f"{including}: include: {include}: no such file (looked at {local}) and no built-in suite "
                      f"of that name; give a path relative to {including.name} or a built-in suite: {names}")
