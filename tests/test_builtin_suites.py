"""``include:`` finds the suites shipped with the package by name, from a folder outside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from inversion_bench.builtin_suites import builtin_suite, builtin_suite_names, resolve_include
from inversion_bench.cli import main
from inversion_bench.config import load_suite
from inversion_bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """An empty working folder that is not inside the repository (no ``suites/`` next to it)."""
    assert REPO not in tmp_path.resolve().parents
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_builtin_names_are_the_shipped_suites():
    names = builtin_suite_names()
    assert "quickstart.yaml" in names and "defenses.yaml" in names
    assert names == sorted(p.name for p in (REPO / "suites").glob("*.yaml"))
    assert builtin_suite("quickstart") == builtin_suite("quickstart.yaml")
    assert builtin_suite("suites/quickstart.yaml") is None  # a folder part names no built-in suite
    assert builtin_suite("nope.yaml") is None


@pytest.mark.parametrize("name", ["quickstart.yaml", "quickstart"])
def test_include_by_builtin_name_from_outside_the_repo(outside, name, capsys):
    (outside / "mine.yaml").write_text(f"include: {name}\nname: mine\n"
                                       "defenses: [{id: hard, name: label_smoothing, params: {alpha: 0.0}}]\n")
    suite = load_suite(outside / "mine.yaml").suite
    assert suite.name == "mine"
    assert [d.id for d in suite.defenses] == ["hard"]
    assert [a.id for a in suite.attacks] == ["mi-face", "ppa-select", "ppa", "gmi"]  # from the quickstart
    assert main(["validate", "mine.yaml"]) == 0
    assert "OK" in capsys.readouterr().out


def test_builtin_suite_that_includes_another_builtin(outside):
    (outside / "mine.yaml").write_text("include: defenses.yaml\nname: mine\n")
    suite = load_suite(outside / "mine.yaml").suite
    assert suite.dataset.name == "synthetic-faces"  # defenses.yaml includes quickstart.yaml in turn


def test_a_local_file_comes_before_the_builtin_suite(outside):
    (outside / "quickstart.yaml").write_text("name: local-base\n")
    assert resolve_include(outside / "mine.yaml", "quickstart.yaml") == outside / "quickstart.yaml"


def test_unknown_include_lists_the_builtin_suites(outside, capsys):
    (outside / "mine.yaml").write_text("include: quickstrat.yaml\nname: mine\n")
    assert main(["validate", "mine.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"include: quickstrat.yaml: no such file (looked at {Path('quickstrat.yaml')})" in err
    assert "no built-in suite of that name" in err
    assert "built-in suite: " + ", ".join(builtin_suite_names()) in err
    assert "Traceback" not in err


def test_unknown_include_raises_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"x\.yaml: include: sub/quickstart\.yaml: no such file"):
        resolve_include(tmp_path / "x.yaml", "sub/quickstart.yaml")


def test_defense_guide_suite_needs_no_path_to_the_repository(outside, capsys):
    """The defense plugin guide's ``mine.yaml`` (step 5) validates from any folder; its plugin defense is
    swapped for a built-in one so that no plugin file is needed here."""
    readme = (REPO / "docs" / "guides" / "defense-plugin.md").read_text(encoding="utf-8")
    block = readme.split("cat > mine.yaml <<'YAML'\n", 1)[1].split("YAML\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    assert lines[0].startswith("include: quickstart.yaml")
    text = "\n".join(lines).replace("name: my-defense", "name: label_smoothing")
    (outside / "mine.yaml").write_text(text + "\n")
    assert main(["validate", "mine.yaml"]) == 0
    assert "OK" in capsys.readouterr().out
