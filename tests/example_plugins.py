"""Installing an example plugin package (examples/plugin-*) into a temporary site folder and running the CLI
with it on the path: shared by the defense and attack plugin example tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def install_example(tmp_path_factory, name: str) -> Path:
    """Builds ``examples/<name>`` from a copy (so the build leaves nothing in the example folder) and
    installs it with pip into a fresh folder, which is returned."""
    src = tmp_path_factory.mktemp("src") / name
    shutil.copytree(EXAMPLES / name, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True)
    return site


def bench_with(args: list[str], site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``bench ARGS`` in a subprocess with ``site`` on ``PYTHONPATH`` (and ``env`` added)."""
    full = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "inversion_bench.cli", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=600)


@contextlib.contextmanager
def imported_example(registry, folder: str, package: str) -> Iterator[None]:
    """Makes ``examples/<folder>`` importable (its package ``package``) for the block, then removes it from
    ``sys.path`` and ``sys.modules`` and undoes the registrations importing it made in ``registry``."""
    entries = dict(registry._entries)
    sys.path.insert(0, str(EXAMPLES / folder))
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLES / folder))
        registry._entries.clear()
        registry._entries.update(entries)
        for mod in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[mod]
