"""Packaging: one import package ``inversion_bench``, nothing generic at the top of site-packages.

The official StyleGAN2-ADA code has its own top-level ``metrics``, ``training``, ``dnnlib`` and
``torch_utils`` packages, and the ``stylegan2-ada`` generator puts that code first on ``sys.path``
to unpickle a network. These tests check that a regular (non-editable) install of this project
still finds every built-in plugin then, and that the pickle imports the code folder's own modules
even when modules of the same names were imported from elsewhere before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from inversion_bench.attacks.generators.stylegan2_ada import code_dir_imports, shadowed_modules, top_level_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

ROOT = Path(__file__).resolve().parent.parent
TINY_STYLEGAN = Path(__file__).resolve().parent / "tiny_stylegan.py"
PLUGIN_FOLDERS = {"benchmark", "defenses", "attacks", "metrics", "leaderboard"}
GENERIC_NAMES = {"benchmark", "defenses", "attacks", "metrics", "leaderboard", "suites", "data", "executors"}
SG_LOGGER = "inversion_bench.attacks.generators.stylegan2_ada"


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python >= 3.11 or tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _package_dirs() -> dict[str, str]:
    return dict(_pyproject()["tool"]["setuptools"]["package-dir"])


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """The source folder of a package name under the package-dir mapping (longest mapped prefix)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[i:])
    return ROOT / Path(*parts)


def _is_code_folder(p: Path) -> bool:
    return p.is_dir() and p.name != "__pycache__" and not p.name.endswith(".egg-info")


# --------------------------------------------------------------------------------- packages list
def test_packages_list_covers_every_package_folder() -> None:
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    package_dir = _package_dirs()
    listed = set(setuptools_cfg["packages"])
    assert {Path(f).name for f in package_dir.values()} >= PLUGIN_FOLDERS, package_dir
    assert package_dir["inversion_bench"] == "benchmark"

    found: set[str] = set()
    without_init: list[str] = []
    for package, folder in package_dir.items():
        root = ROOT / folder
        assert root.is_dir(), f"package-dir maps {package} to {folder}, which does not exist"
        for d in [root, *(p for p in root.rglob("*") if _is_code_folder(p))]:
            if any(part == "__pycache__" or part.endswith(".egg-info") for part in d.relative_to(ROOT).parts):
                continue
            rel = d.relative_to(root).parts
            name = ".".join((package, *rel))
            if (d / "__init__.py").is_file():
                found.add(name)
            elif any(d.glob("*.py")):
                without_init.append(str(d.relative_to(ROOT)))

    missing = sorted(found - listed)
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not without_init, f"folders with Python modules but no __init__.py (not installed): {without_init}"
    for package in listed:  # no stale or misspelt entries
        assert _folder_of(package, package_dir).is_dir(), f"packages lists {package}, which has no folder"
    for package in setuptools_cfg.get("package-data", {}):
        assert package in listed, f"package-data names {package}, which is not in packages"
    assert setuptools_cfg["package-data"]["inversion_bench.suites"] == ["*.yaml"]
    assert (ROOT / package_dir["inversion_bench.suites"] / "quickstart.yaml").is_file()
    assert _pyproject()["project"]["scripts"]["bench"] == "inversion_bench.cli:main"


# ---------------------------------------------------------------------------- code_dir isolation
def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def restore_imports(monkeypatch):
    """Restores sys.path and removes the test's modules from sys.modules afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0].startswith("ib_pkgtest_"):
            del sys.modules[name]


def test_top_level_names(tmp_path: Path) -> None:
    _write(tmp_path / "pkg" / "__init__.py")
    _write(tmp_path / "pkg" / "inner.py")
    _write(tmp_path / "mod.py")
    _write(tmp_path / "ext.cpython-311-x86_64-linux-gnu.so")
    _write(tmp_path / "namespace_only" / "a.py")  # no __init__: never shadows a regular package
    _write(tmp_path / "docs" / "readme.md")
    _write(tmp_path / "README.md")
    _write(tmp_path / "my-script.py")  # not importable
    _write(tmp_path / "__main__.py")
    (tmp_path / "__pycache__").mkdir()
    names = top_level_names(tmp_path)
    assert names >= {"pkg", "mod"}
    assert names <= {"pkg", "mod", "ext"}  # ext only where .so is an extension suffix
    assert not names & {"namespace_only", "docs", "README", "my-script", "__main__", "__pycache__", "inner"}


def test_shadowed_modules_is_pure(tmp_path: Path) -> None:
    code = tmp_path / "code"
    for name in ("training", "metrics", "dnnlib", "inversion_bench", "json"):
        _write(code / name / "__init__.py")
    _write(code / "legacy.py")

    def module(name: str, file: Path | None) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__file__ = str(file) if file is not None else None
        return m

    elsewhere = tmp_path / "elsewhere"
    mods = {
        "metrics": module("metrics", elsewhere / "metrics" / "__init__.py"),
        "training": module("training", code / "training" / "__init__.py"),  # already the code_dir's own
        "legacy": module("legacy", None),  # no file (e.g. a namespace package): another location
        "dnnlib.util": module("dnnlib.util", elsewhere / "util.py"),  # only submodules are not checked
        "inversion_bench": module("inversion_bench", elsewhere / "inversion_bench" / "__init__.py"),
        "json": module("json", elsewhere / "json" / "__init__.py"),
        "unrelated": module("unrelated", elsewhere / "unrelated.py"),
    }
    snapshot = dict(mods)
    assert shadowed_modules(code, mods) == {"legacy": "built-in", "metrics": str(elsewhere / "metrics" / "__init__.py")}
    assert set(shadowed_modules(code, mods, protected=True)) == {"inversion_bench", "json"}
    assert mods == snapshot  # nothing changed


def test_code_dir_imports_evicts_modules_from_another_location(tmp_path: Path, restore_imports, caplog) -> None:
    import inversion_bench

    other, code = tmp_path / "other", tmp_path / "code"
    for folder in (other, code):
        _write(folder / "ib_pkgtest_pkg" / "__init__.py", f"ORIGIN = {folder.name!r}\n")
        _write(folder / "ib_pkgtest_pkg" / "sub.py", f"ORIGIN = {folder.name!r}\n")
        _write(folder / "ib_pkgtest_mod.py", f"ORIGIN = {folder.name!r}\n")
    _write(code / "ib_pkgtest_own.py", "ORIGIN = 'code'\n")
    _write(code / "inversion_bench" / "__init__.py", "raise RuntimeError('never imported')\n")
    _write(code / "json.py", "raise RuntimeError('never imported')\n")
    _write(other / "ib_pkgtest_untouched.py", "ORIGIN = 'other'\n")  # not in code: stays

    sys.path.insert(0, str(other))
    import ib_pkgtest_mod
    import ib_pkgtest_pkg.sub
    import ib_pkgtest_untouched

    assert ib_pkgtest_pkg.sub.ORIGIN == ib_pkgtest_mod.ORIGIN == "other"
    ours = {k: v for k, v in sys.modules.items() if k == "inversion_bench" or k.startswith("inversion_bench.")}
    json_module = sys.modules["json"]

    with caplog.at_level(logging.INFO, logger=SG_LOGGER), code_dir_imports(code) as evicted:
        assert sys.path[0] == str(code.resolve())
        assert set(evicted) == {"ib_pkgtest_pkg", "ib_pkgtest_mod"}
        assert evicted["ib_pkgtest_mod"] == str(other / "ib_pkgtest_mod.py")
        for name in ("ib_pkgtest_pkg", "ib_pkgtest_pkg.sub", "ib_pkgtest_mod"):
            assert name not in sys.modules
        import ib_pkgtest_mod as mod_again
        import ib_pkgtest_own
        import ib_pkgtest_pkg.sub as sub_again
    assert sub_again.ORIGIN == mod_again.ORIGIN == sys.modules["ib_pkgtest_pkg"].ORIGIN == "code"
    assert Path(sys.modules["ib_pkgtest_pkg"].__file__).is_relative_to(code)
    assert sys.modules["ib_pkgtest_untouched"] is ib_pkgtest_untouched

    infos = [r.getMessage() for r in caplog.records if r.name == SG_LOGGER and r.levelno == logging.INFO]
    assert any("ib_pkgtest_mod, ib_pkgtest_pkg" in m and str(other) in m for m in infos), infos
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("stylegan2-ada: inversion_bench in") for m in warnings), warnings
    assert any(m.startswith("stylegan2-ada: json in") for m in warnings), warnings

    # inversion_bench.* and the standard library are untouched
    assert sys.modules["inversion_bench"] is inversion_bench and sys.modules["json"] is json_module
    for name, module in ours.items():
        assert sys.modules[name] is module, name

    # code_dir stays on sys.path; a second use keeps modules already imported from it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=SG_LOGGER), code_dir_imports(code) as evicted:
        assert evicted == {}
        assert sys.path.count(str(code.resolve())) == 1 and sys.path[0] == str(code.resolve())
    assert sys.modules["ib_pkgtest_own"] is ib_pkgtest_own and sys.modules["ib_pkgtest_mod"] is mod_again
    assert not [r for r in caplog.records if r.levelno == logging.INFO]


# ------------------------------------------------------------------------- non-editable install
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the project (the build writes build/ and *.egg-info into
    the source folder; a copy leaves the shared checkout alone)."""
    start = time.perf_counter()
    src = tmp_path_factory.mktemp("src") / "inversion-bench"
    src.mkdir()
    for f in ROOT.iterdir():
        if f.is_file():
            shutil.copy2(f, src / f.name)
    for folder in set(_package_dirs().values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--no-cache-dir", "--target", str(target), str(src)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"pip install --target: {time.perf_counter() - start:.1f} s")
    return target


def test_install_has_one_top_level_package(installed: Path) -> None:
    top = {p.name for p in installed.iterdir() if p.name not in {"bin", "__pycache__"}
           and not p.name.endswith((".dist-info", ".egg-info"))}
    assert top == {"inversion_bench"}, top
    assert not top & GENERIC_NAMES

    # every module and suite of the source folders is installed at its mapped place
    pkg = installed / "inversion_bench"
    for package, folder in _package_dirs().items():
        dest = pkg.joinpath(*package.split(".")[1:])
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in {".py", ".yaml"} and "__pycache__" not in f.parts:
                assert (dest / f.relative_to(ROOT / folder)).is_file(), f"{f.relative_to(ROOT)} is not installed"

    bench = installed / "bin" / "bench"
    assert bench.is_file() and os.access(bench, os.X_OK)
    assert "inversion_bench.cli" in bench.read_text()


# Runs with PYTHONPATH=<site>, outside the repository: argv = code_dir, project, pickle, site, out.json.
# `project` is a user's folder with generic top-level packages imported before (as the repository's
# own metrics/ and attacks/ once were); code_dir is then put first on sys.path.
ISOLATION_SCRIPT = r'''
import contextlib, importlib, io, json, logging, runpy, sys
from pathlib import Path

code, project, pkl, site, out_path = sys.argv[1:6]
facts = {}
sys.path.insert(0, project)
import attacks, metrics, training  # noqa: E401  the user's own generic packages
facts["before"] = {n: sys.modules[n].__file__ for n in ("attacks", "metrics", "training")}
sys.path.insert(0, code)

import inversion_bench
from inversion_bench.registry import BUILTIN_MODULES, REGISTRIES, load_plugins
facts["inversion_bench"] = inversion_bench.__file__
load_plugins()
facts["registries"] = {kind: {i.name: i.origin for i in reg} for kind, reg in REGISTRIES.items()}
facts["builtin_files"] = {m: sys.modules[m].__file__ for m in BUILTIN_MODULES}
from importlib.resources import files
q = files("inversion_bench.suites") / "quickstart.yaml"
facts["quickstart"] = [str(q), q.is_file()]
ours = {k: id(v) for k, v in sys.modules.items() if k.split(".")[0] == "inversion_bench"}

import torch
from inversion_bench.attacks.generators.stylegan2_ada import StyleGAN2ADAPlugin
from inversion_bench.data import LabeledImages, TensorFaces
from inversion_bench.interfaces import PriorContext
records = []


class Collect(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])


handler = Collect(logging.INFO)
sg_log = logging.getLogger("inversion_bench.attacks.generators.stylegan2_ada")
sg_log.addHandler(handler)
sg_log.setLevel(logging.INFO)

u8 = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
public = LabeledImages(TensorFaces(u8, torch.arange(4), ["p0", "p1", "p2", "p3"]), torch.arange(4),
                       torch.arange(4), "public")
ctx = PriorContext(public=public, resolution=16, seed=0, device=torch.device("cpu"),
                   weights={"ffhq": Path(pkl), "sg2code": Path(code)}, progress=False)
plugin = StyleGAN2ADAPlugin(StyleGAN2ADAPlugin.Params(pickle="ffhq", code_dir="sg2code"))
gen = plugin.fit(ctx)
with torch.no_grad():
    x = gen.synthesize(gen.map(gen.sample_z(3, torch.Generator().manual_seed(0))))
    logits = gen.discriminator_logits(x)
facts["image"] = [list(x.shape), float(x.min()), float(x.max())]
facts["logits"] = list(logits.shape)
facts["classes"] = [type(gen.g).__module__, type(gen.g).__name__, type(gen.d).__module__]
facts["after"] = {n: sys.modules[n].__file__ for n in ("attacks", "metrics", "training", "training.networks",
                                                       "dnnlib", "torch_utils")}
facts["marker"] = sys.modules["metrics"].ORIGIN
facts["sys_path0"] = sys.path[0]
facts["log"] = records
facts["ours_untouched"] = all(id(sys.modules.get(k)) == v for k, v in ours.items())

stdout = io.StringIO()
sys.argv = ["bench", "list", "metrics"]
with contextlib.redirect_stdout(stdout):
    try:
        runpy.run_path(str(Path(site) / "bin" / "bench"), run_name="__main__")
    except SystemExit as exc:
        facts["bench_rc"] = exc.code
facts["bench_stdout"] = stdout.getvalue()
Path(out_path).write_text(json.dumps(facts))
'''

MAKE_PICKLE = r'''
import pickle, sys
code, pkl = sys.argv[1:3]
sys.path.insert(0, code)
from training.networks import TinyD, TinyG, make_pickle_dict
assert TinyG.__module__ == "training.networks" and TinyG.__module__ == TinyD.__module__
with open(pkl, "wb") as f:
    pickle.dump(make_pickle_dict(), f)
'''


def _fake_stylegan_code(code: Path) -> None:
    """A stand-in for the official stylegan2-ada-pytorch folder (generic top-level packages)."""
    for name in ("metrics", "attacks", "dnnlib", "torch_utils"):
        _write(code / name / "__init__.py", "ORIGIN = 'code_dir'\n")
    _write(code / "metrics" / "metric_main.py", "ORIGIN = 'code_dir'\n")
    # like the official training code, its modules import the folder's other top-level packages
    _write(code / "training" / "__init__.py", "import attacks, dnnlib, metrics, torch_utils  # noqa: E401, F401\n")
    shutil.copy2(TINY_STYLEGAN, code / "training" / "networks.py")
    _write(code / "legacy.py", "ORIGIN = 'code_dir'\n")


def _under(file: str | None, folder: Path) -> bool:
    return file is not None and Path(file).resolve().is_relative_to(folder.resolve())


def test_installed_package_with_stylegan_code_first_on_path(installed: Path, tmp_path: Path) -> None:
    from inversion_bench.registry import REGISTRIES, load_plugins

    start = time.perf_counter()
    code, project, work = tmp_path / "sg2code", tmp_path / "project", tmp_path / "work"
    _fake_stylegan_code(code)
    for name in ("metrics", "attacks", "training"):  # a user's generic packages (no training.networks)
        _write(project / name / "__init__.py", "ORIGIN = 'project'\n")
    work.mkdir()
    script = _write(work / "isolation.py", ISOLATION_SCRIPT)
    pkl, result = tmp_path / "network.pkl", tmp_path / "facts.json"
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONDONTWRITEBYTECODE": "1"}

    made = subprocess.run([sys.executable, "-c", MAKE_PICKLE, str(code), str(pkl)], capture_output=True, text=True,
                          env=env, cwd=work, timeout=600)
    assert made.returncode == 0, made.stderr
    out = subprocess.run([sys.executable, str(script), str(code), str(project), str(pkl), str(installed), str(result)],
                         capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    facts = json.loads(result.read_text())

    # the installed copy, not the repository's folders
    assert _under(facts["inversion_bench"], installed), facts["inversion_bench"]
    for module, file in facts["builtin_files"].items():
        assert _under(file, installed), (module, file)
    assert _under(facts["quickstart"][0], installed) and facts["quickstart"][1]

    # every built-in plugin is registered, as in this (editable) install
    load_plugins()
    expected = {kind: sorted(i.name for i in reg if i.origin == "built-in") for kind, reg in REGISTRIES.items()}
    got = {kind: sorted(n for n, origin in reg.items() if origin == "built-in")
           for kind, reg in facts["registries"].items()}
    assert got == expected
    assert all(expected[k] for k in ("defenses", "attacks", "metrics", "generators")), expected
    for kind, reg in facts["registries"].items():
        assert all(o == "built-in" or o.startswith("entry point") for o in reg.values()), (kind, reg)

    # the user's packages were loaded first; the pickle then imported the code_dir's own
    for name in ("metrics", "attacks", "training"):
        assert _under(facts["before"][name], project), facts["before"]
    for name, file in facts["after"].items():
        assert _under(file, code), (name, file)
    assert facts["marker"] == "code_dir"
    assert facts["classes"] == ["training.networks", "TinyG", "training.networks"]
    assert facts["sys_path0"] == str(code.resolve())
    assert facts["ours_untouched"]
    infos = [m for level, m in facts["log"] if level == "INFO" and "importing" in m]
    assert len(infos) == 1 and "attacks, metrics, training" in infos[0] and str(project) in infos[0], facts["log"]

    shape, lo, hi = facts["image"]
    assert shape == [3, 3, 16, 16] and 0.0 <= lo < hi <= 1.0
    assert facts["logits"] == [3]

    # the installed console script works
    assert facts["bench_rc"] in (0, None), facts["bench_stdout"]
    for name in expected["metrics"]:
        assert f"  {name} " in facts["bench_stdout"], name
    print(f"isolation subprocesses: {time.perf_counter() - start:.1f} s")
