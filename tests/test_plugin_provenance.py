"""Plugin provenance: an entry point that registers nothing is a warning; every plugin knows the
distribution (or file) it comes from; both spellings of a renamed plugin share the store keys."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from inversion_bench import registry
from inversion_bench.config import load_suite
from inversion_bench.interfaces import Defense
from inversion_bench.plan import make_plan
from inversion_bench.registry import Registry, defenses, load_plugin_file

SUITES = Path(__file__).resolve().parent.parent / "suites"


class _Dist:
    name, version = "mydefense", "0.1.0"


class _FakeEntryPoint:
    """What importlib.metadata.entry_points yields, loading ``obj``."""

    def __init__(self, name: str, value: str, obj, dist=_Dist) -> None:
        self.name, self.value, self.group, self.dist, self.obj = name, value, "bench.defenses", dist, obj

    def load(self):
        return self.obj() if callable(self.obj) and not isinstance(self.obj, type) else self.obj


def test_an_entry_point_that_registers_nothing_is_a_warning(caplog, tmp_path):
    shadow = types.ModuleType("mydefense")
    shadow.__file__ = str(tmp_path / "mydefense" / "__init__.py")  # e.g. a local folder shadowing the package
    ep = _FakeEntryPoint("my-defense", "mydefense", shadow)
    with caplog.at_level(logging.WARNING, logger="inversion_bench.registry"):
        registry._load_entry_point(defenses, ep)
    msg = caplog.text
    assert "entry point 'my-defense'" in msg and "bench.defenses" in msg and "registered no plugin" in msg
    assert str(tmp_path / "mydefense") in msg and "shadowing" in msg


def test_an_entry_point_that_registers_is_quiet_and_carries_its_distribution(caplog):
    reg = Registry("defense", "bench.defenses")
    module = types.ModuleType("mydefense_ok")

    def importing():  # what importing a plugin module does: its decorators register its classes
        @reg.register("ep-defense")
        class EpDefense(Defense):
            """A defense from an installed distribution."""

        EpDefense.__module__ = "mydefense_ok"
        return module

    with caplog.at_level(logging.WARNING, logger="inversion_bench.registry"):
        registry._load_entry_point(reg, _FakeEntryPoint("ep-defense", "mydefense_ok", importing))
    assert "registered no plugin" not in caplog.text
    info = reg._entries["ep-defense"]
    assert (info.distribution, info.distribution_version) == ("mydefense", "0.1.0")
    assert info.provenance == "mydefense 0.1.0"
    assert info.origin == "entry point bench.defenses:ep-defense (mydefense 0.1.0)"


def test_an_entry_point_naming_a_class_carries_its_distribution():
    reg = Registry("defense", "bench.defenses")

    class Cls(Defense):
        """A class entry point."""

    registry._load_entry_point(reg, _FakeEntryPoint("cls-defense", "mydefense:Cls", Cls))
    assert reg.provenance("cls-defense") == "mydefense 0.1.0"
    assert reg.version_label("cls-defense") == "1 (mydefense 0.1.0)"


def test_builtin_and_file_plugins_name_their_source(tmp_path):
    from importlib.metadata import version

    assert defenses.provenance("label_smoothing") == f"inversion-bench {version('inversion-bench')}"
    assert defenses.version_label("mid") == f"1 (inversion-bench {version('inversion-bench')})"
    f = tmp_path / "prov_plugin.py"
    f.write_text("from inversion_bench.interfaces import Defense\n"
                 "from inversion_bench.registry import defenses\n"
                 "@defenses.register('prov-file-defense')\n"
                 "class D(Defense):\n    '''From a file.'''\n")
    load_plugin_file(f)
    try:
        assert defenses.provenance("prov-file-defense") == str(f.resolve())
    finally:
        defenses._entries.pop("prov-file-defense", None)


def test_bench_list_shows_provenance_aliases_and_bounds(capsys):
    from inversion_bench.cli import main

    assert main(["list", "defenses", "label_smoothing"]) == 0
    out = capsys.readouterr().out
    assert "defense label-smoothing" in out and "inversion-bench" in out and "aliases: label_smoothing" in out
    assert "warmup_start: float = 0.5  [>= 0.0, <= 1.0]" in out
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "top-k-logits" in out and "aliases: top_k_logits" in out


def _keys(path: Path, text: str | None = None, tmp: Path | None = None):
    if text is not None:
        assert tmp is not None
        path = tmp / path.name
        path.write_text(text)
    p = make_plan(load_suite(path))
    return p.target_keys, [(j.attack_key, j.config_hash) for j in p.pairs]


@pytest.mark.parametrize("suite", ["quickstart.yaml", "threat-models.yaml"])
def test_old_names_in_shipped_suites_still_resolve(suite):
    target_keys, pairs = _keys(SUITES / suite)
    assert target_keys and pairs


def test_both_spellings_share_store_keys(tmp_path):
    src = (SUITES / "quickstart.yaml").read_text()
    assert "name: label_smoothing" in src
    assert _keys(SUITES / "quickstart.yaml") == _keys(SUITES / "quickstart.yaml",
                                                      src.replace("name: label_smoothing", "name: label-smoothing"),
                                                      tmp_path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
