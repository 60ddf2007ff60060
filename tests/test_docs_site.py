"""The documentation: a short README that points into docs/, and docs/ as an MkDocs site that builds with
``--strict`` (skipped where MkDocs is not installed: ``pip install -e ".[docs]"``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("\n") < 250
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/guides/attack-plugin.md" in local and "docs/guides/defense-plugin.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs" and config["strict"] is True
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages


def test_plugin_reference_pages_are_current():
    """docs/reference/ is generated from the plugins' metadata: regenerate it with
    ``python -m inversion_bench.plugin_docs`` after changing a plugin."""
    from inversion_bench.plugin_docs import TITLES, reference_page
    from inversion_bench.registry import REGISTRIES

    for kind in TITLES:
        page = reference_page(kind)
        assert (DOCS / "reference" / f"{kind}.md").read_text(encoding="utf-8") == page, (
            f"docs/reference/{kind}.md is stale: run python -m inversion_bench.plugin_docs")
        builtin = [i.name for i in REGISTRIES[kind] if i.origin == "built-in"]
        assert builtin and all(f"## `{name}`" in page for name in builtin)
    assert "access: **black-box**" in reference_page("attacks")


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="MkDocs is not installed (pip install -e \".[docs]\")")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "site" / "guides" / "attack-plugin" / "index.html").read_text(encoding="utf-8")
    assert "Writing an attack plugin" in page and "public-search" in page
