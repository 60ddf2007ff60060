import pytest
from pydantic import ValidationError

from inversion_bench.errors import ConfigError, UnknownPluginError
from inversion_bench.interfaces import Defense
from inversion_bench.registry import PluginParams, Registry, defenses, load_plugin_file


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownPluginError) as exc:
        defenses.get("label_smothing")
    msg = str(exc.value)
    assert "unknown defense 'label_smothing'" in msg
    assert "Did you mean 'label_smoothing'?" in msg
    assert "Known defenses: " in msg and "label_smoothing" in msg


def test_register_and_duplicate_names():
    reg = Registry("thing", "bench.things")

    @reg.register("a")
    class A:
        """An A."""

    assert reg._entries["a"].obj is A and A.name == "a" and A.version == "1"

    class B:
        pass

    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", B)


def test_plugin_info_parameters():
    info = defenses.info("label_smoothing")
    params = {p["name"]: p for p in info.parameters()}
    assert params["alpha"]["default"] == 0.0
    assert "smoothing factor" in params["alpha"]["doc"]
    assert info.origin == "built-in"
    assert info.doc.startswith("Label smoothing")


def test_plugin_file(tmp_path):
    f = tmp_path / "my_plugin.py"
    f.write_text(
        "from inversion_bench.interfaces import Defense\n"
        "from inversion_bench.registry import defenses, PluginParams\n"
        "@defenses.register('file-defense')\n"
        "class FileDefense(Defense):\n"
        "    '''A defense from a file.'''\n"
    )
    load_plugin_file(f)
    info = defenses.info("file-defense")
    assert info.origin == f"file {f.resolve()}"
    with pytest.raises(ConfigError, match="no such file"):
        load_plugin_file(tmp_path / "missing.py")


def test_params_forbid_unknown_keys():
    class P(PluginParams):
        x: int = 1

    with pytest.raises(ValidationError):
        P(y=2)
    assert issubclass(Defense, object)


def test_public_api_registers_plugins_in_a_fresh_interpreter(tmp_path):
    """``from inversion_bench import Defense, PluginParams, defenses`` and ``@defenses.register``
    work before and after the built-in plugins are loaded (``defenses`` is the subpackage, whose
    ``register`` is the registry's decorator)."""
    import subprocess
    import sys

    code = (
        "from inversion_bench import Attack, Defense, PluginParams, attacks, defenses, metrics\n"
        "from inversion_bench.registry import REGISTRIES, load_plugins\n"
        "@defenses.register('api-early')\n"
        "class Early(Defense):\n"
        "    class Params(PluginParams):\n"
        "        beta: float = 0.5\n"
        "load_plugins()\n"
        "from inversion_bench import defenses as again\n"
        "@again.register('api-late')\n"
        "class Late(Defense):\n"
        "    pass\n"
        "assert again is defenses and defenses.registry is REGISTRIES['defenses']\n"
        "assert attacks.registry is REGISTRIES['attacks'] and metrics.registry is REGISTRIES['metrics']\n"
        "names = REGISTRIES['defenses'].names()\n"
        "assert {'api-early', 'api-late', 'label_smoothing'} <= set(names), names\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
