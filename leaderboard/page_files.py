"""The page's figures across reports: ``bench leaderboard`` (tables only) never drops the figures that
``bench report`` drew into the same folder.

``bench report`` lists the figures it drew in ``figures/figures.json``; a later report without figures
embeds those (the files are still there). A folder with figures but no list (written by an older
version) keeps its ``index.html``: the table-only page goes to ``index-tables.html`` instead, and a note
says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "figures.json"
TABLE_ONLY_PAGE = "index-tables.html"


def save_figure_list(out: Path, figures: Sequence[dict[str, Any]]) -> None:
    """Writes ``out/figures/figures.json``: the figures drawn (paths relative to ``out``)."""
    folder = out / "figures"
    if not figures and not folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)

    def rel(p: Any) -> str:
        path = Path(p)
        return path.relative_to(out).as_posix() if path.is_absolute() and path.is_relative_to(out) else str(path)

    entries = [{**{k: v for k, v in f.items() if k not in ("png", "svg")}, "png": rel(f["png"]), "svg": rel(f["svg"])}
               for f in figures]
    (folder / MANIFEST).write_text(json.dumps(entries, indent=2, default=str), encoding="utf-8")


def kept_figures(out: Path) -> list[dict[str, Any]] | None:
    """The figures an earlier report drew into ``out`` that still exist (``None`` when there is no list)."""
    manifest = out / "figures" / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s); its figures are not embedded", manifest, exc)
        return None
    kept = []
    for e in entries if isinstance(entries, list) else []:
        png, svg = out / str(e.get("png", "")), out / str(e.get("svg", ""))
        if png.is_file() and svg.is_file():
            kept.append({**e, "png": png, "svg": svg})
    return kept


def page_path(out: Path, drew_figures: bool, figures: list[dict[str, Any]], notes: list[str]) -> Path:
    """Where the page goes; without new figures, the kept ones are added to ``figures``.

    A report without figures into a folder whose figures are not listed (older version) writes
    ``index-tables.html`` and leaves ``index.html`` (with its figures) as it is, with a note.
    """
    page = out / "index.html"
    if drew_figures:
        return page
    kept = kept_figures(out)
    if kept is not None:
        figures.extend(kept)
        if kept:
            notes.append(f"the page embeds the {len(kept)} figure(s) drawn earlier into {out / 'figures'} "
                         "(run `bench report` to redraw them)")
        return page
    has_figures = (out / "figures").is_dir() and any((out / "figures").glob("*.png"))
    if has_figures and page.is_file():
        notes.append(f"{page} (with figures) is kept; the page without figures is {out / TABLE_ONLY_PAGE}")
        return out / TABLE_ONLY_PAGE
    return page
