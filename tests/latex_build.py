"""Compiling a leaderboard's LaTeX table with pdflatex in a minimal document (the LaTeX tests share it)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def compile_table(folder: Path, table: str) -> subprocess.CompletedProcess:
    """Writes ``table`` to ``folder/leaderboard.tex``, inputs it from an article with booktabs and graphicx
    (what the README says a paper needs) and runs pdflatex there; returns the finished process."""
    (folder / "leaderboard.tex").write_text(table, encoding="utf-8")
    (folder / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
        "\\input{leaderboard.tex}\n\\end{document}\n", encoding="utf-8")
    return subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
