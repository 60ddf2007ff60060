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
        "assert {'api-early', 'api-late', 'label-smoothing'} <= set(names), names\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_aliases_resolve_to_the_canonical_plugin():
    reg = Registry("thing", "bench.things")

    @reg.register("new-name", aliases=("old_name",))
    class A:
        """An A."""

    assert reg.canonical("old_name") == "new-name" and reg.canonical("new-name") == "new-name"
    assert "old_name" in reg and "new-name" in reg
    assert reg._aliases == {"old_name": "new-name"}
    assert reg._entries["new-name"].aliases == ("old_name",)
    assert reg._entries["new-name"].name == "new-name" and A.name == "new-name"

    class B:
        pass

    with pytest.raises(ValueError, match="alias"):
        reg.add("old_name", B)


def test_hyphenated_defense_names_keep_the_old_ones_as_aliases():
    for new, old in [("label-smoothing", "label_smoothing"), ("top-k-logits", "top_k_logits"),
                     ("confidence-rounding", "confidence_rounding"), ("dp-sgd", "dp_sgd"), ("tl-dmi", "tl_dmi")]:
        assert defenses.get(old) is defenses.get(new)
        assert defenses.info(old).name == new and old in defenses.info(new).aliases
        assert defenses.key_name(new) == old and defenses.key_name(old) == old  # store keys hash the old name
    assert defenses.key_name("mid") == "mid"


def test_parameters_state_bounds_and_choices():
    params = {p["name"]: p for p in defenses.info("label_smoothing").parameters()}
    assert params["warmup_start"]["constraints"] == ">= 0.0, <= 1.0"
    bido = {p["name"]: p for p in defenses.info("bido").parameters()}
    assert bido["measure"]["constraints"] == "one of: 'nhsic', 'hsic', 'coco'"
    assert bido["lambda_x"]["constraints"] == ">= 0.0"  # also inside Optional
