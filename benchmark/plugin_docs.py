"""The plugin reference of the documentation site, generated from the registries' metadata.

One Markdown page per kind of plugin (``docs/reference/<kind>.md``): every built-in plugin with the
first paragraph of its docstring, its version, what it needs (an attack's access level, an image
prior, a GAN of its own; a metric's keys and directions) and its parameters (type, default, bounds,
description), the same facts ``bench list`` prints. Nothing is kept by hand: regenerate the pages
after changing a plugin with ``python -m inversion_bench.plugin_docs`` (from the repository root);
``tests/test_docs_site.py`` fails while a page is stale. Plugins of installed packages and
``--plugin`` files are left out, so the pages do not depend on the machine that writes them.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from inversion_bench.registry import REGISTRIES, PluginInfo, load_plugins

TITLES = {"defenses": "Defenses", "attacks": "Attacks", "metrics": "Metrics", "datasets": "Datasets",
          "architectures": "Architectures", "generators": "Generators (image priors)",
          "extractors": "Feature extractors"}
"""Page title of each kind, in the order of the site's navigation."""

DEFAULT_FOLDER = Path("docs") / "reference"


def _cell(text: Any) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _summary(obj: Any) -> str:
    """The first paragraph of the plugin's docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _facts(info: PluginInfo) -> list[str]:
    """What the plugin is and needs, as bullet lines."""
    obj = info.obj
    facts = [f"version {info.version}"]
    if info.aliases:
        facts.append("also named " + ", ".join(f"`{a}`" for a in info.aliases))
    if info.kind == "attack":
        facts.append(f"access: **{obj.access}**")
        if getattr(obj, "needs_prior", False):
            facts.append("needs the suite's image prior (`prior:`)")
        if getattr(obj, "trains_generator", False):
            facts.append("trains its own GAN with the target's knowledge")
    if info.kind == "metric":
        outputs = getattr(obj, "outputs", None) or {}
        if outputs:
            facts.append("reports " + ", ".join(
                f"`{k}` ({o.unit}, {o.better} is better{', per identity' if o.per_identity else ''})"
                for k, o in outputs.items()))
        facts.append(f"scope: {getattr(obj, 'scope', 'attack')}")
    return ["- " + "; ".join(facts)]


def _parameters(info: PluginInfo) -> list[str]:
    """The parameter table (or a line saying there is none)."""
    params = info.parameters()
    if not params:
        return ["No parameters."]
    lines = ["| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
    for p in params:
        default = p["default"] if p["default"] == "(required)" else f"`{p['default']!r}`"
        lines.append(f"| `{p['name']}` | `{_cell(p['type'])}` | {_cell(default)} | {_cell(p['constraints'])} | "
                     f"{_cell(p['doc'])} |")
    return lines


def reference_page(kind: str) -> str:
    """The Markdown reference page of one kind of plugin (its built-in plugins, by name).

    Args:
        kind: a registry name (:data:`TITLES`).

    Returns:
        The page's text, ending with a newline.
    """
    load_plugins()
    infos = sorted((i for i in REGISTRIES[kind] if i.origin == "built-in"), key=lambda i: i.name)
    lines = [f"# {TITLES[kind]}", "",
             f"Every built-in {kind[:-1] if kind != 'generators' else 'generator'} with its parameters, generated "
             f"from the plugins' metadata (`python -m inversion_bench.plugin_docs`; do not edit by hand). "
             f"`bench list {kind}` prints the same, plugins of installed packages included.", ""]
    for info in infos:
        lines += [f"## `{info.name}`", "", _summary(info.obj), "", *_facts(info), "", *_parameters(info), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_reference(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Writes every kind's page into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in TITLES:
        path = folder / f"{kind}.md"
        path.write_text(reference_page(kind), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m inversion_bench.plugin_docs [FOLDER]``: writes the pages (default ``docs/reference``)."""
    args = sys.argv[1:] if argv is None else argv
    for path in write_reference(Path(args[0]) if args else DEFAULT_FOLDER):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
