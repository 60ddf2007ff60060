"""Escaping of free text (labels, names, errors) for each output format: CSV cells a spreadsheet must not
read as formulas, Markdown table cells, matplotlib text (no mathtext).

HTML escaping is :func:`html.escape`; LaTeX is :mod:`~inversion_bench.leaderboard.latex_text`.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MD_ESCAPE = re.compile(r"([\\|`$])")


def csv_text(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula (starts with ``=``, ``+``, ``-``, ``@``, tab or
    CR) gets a leading ``'`` (OWASP CSV injection); other values, numbers and numeric text included, are
    returned as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Writes ``frame`` (no index) with every text cell and header through :func:`csv_text`; numeric
    columns are written as they are (negative numbers stay numbers)."""
    out = frame.copy().set_axis([csv_text(c) for c in frame.columns], axis=1)
    for i in range(out.shape[1]):
        if out.iloc[:, i].dtype == object or pd.api.types.is_string_dtype(out.iloc[:, i]):
            out.isetitem(i, out.iloc[:, i].map(csv_text))
    out.to_csv(path, index=False)
    return Path(path)


def md_text(text: Any) -> str:
    """Free text for Markdown (a table cell or prose): HTML (``<``, ``>``, ``&``) escaped so no raw HTML
    passes; backslash, ``|``, backtick and ``$`` backslash-escaped so a ``|`` never splits a table cell and a
    label opens no code span or (GitHub) math; line breaks as spaces."""
    out = _MD_ESCAPE.sub(r"\\\1", html.escape(str(text), quote=False))
    return re.sub(r"[\r\n]+", " ", out)


def plot_text(text: Any) -> str:
    """Free text drawn by matplotlib as plain text: ``$`` escaped (no mathtext, whose parse errors would
    cost the figure) and a zero-width space before a leading ``_`` (which a legend would hide)."""
    out = str(text).replace("$", r"\$")
    return "\u200b" + out if out.startswith("_") else out
