"""Typed plugin registries: one per kind of plugin.

A plugin is a class registered with a decorator::

    from inversion_bench.registry import defenses

    @defenses.register("my_defense")
    class MyDefense(Defense):
        class Params(PluginParams):
            beta: float = 0.1

Other installed packages add plugins through the entry-point groups ``bench.defenses``,
``bench.attacks``, ``bench.metrics``, ``bench.datasets``, ``bench.architectures`` and
``bench.generators`` (and ``bench.extractors`` for feature extractors): the entry point names a
module (importing it registers its classes) or a class (registered under the entry point's name if
it is not registered yet). ``load_plugin_file``
imports a single Python file for quick work (``bench --plugin FILE.py``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from inversion_bench.errors import ConfigError, UnknownPluginError

log = logging.getLogger(__name__)

T = TypeVar("T")


class PluginParams(BaseModel):
    """Base class of every plugin's parameter model: unknown keys are errors, floats must be finite
    (a parameter that needs inf or nan says so with ``Field(allow_inf_nan=True)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Plugin:
    """Base of every plugin class: typed parameters in, ``self.params`` set.

    ``name`` and ``version`` are set by the registry; bump ``version`` when a change alters results
    (it is part of every cache key of the plugin's products).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    name: ClassVar[str]
    version: ClassVar[str] = "1"

    def __init__(self, params: PluginParams) -> None:
        self.params = params


@dataclass(frozen=True)
class PluginInfo:
    """What a registry knows about one plugin."""

    kind: str
    name: str
    obj: Any
    origin: str
    version: str

    @property
    def params_model(self) -> type[BaseModel]:
        return getattr(self.obj, "Params", PluginParams)

    @property
    def doc(self) -> str:
        """The first line of the plugin's docstring."""
        text = inspect.getdoc(self.obj) or ""
        return text.strip().splitlines()[0] if text.strip() else ""

    def parameters(self) -> list[dict[str, Any]]:
        """Each parameter with its type, default and description."""
        out = []
        for fname, field in self.params_model.model_fields.items():
            ann = field.annotation
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            default = "(required)" if field.is_required() else field.get_default(call_default_factory=True)
            out.append(
                {"name": fname, "type": type_name, "default": default, "doc": field.description or ""}
            )
        return out


# The "origin" recorded for plugins registered while a given source is being imported.
_current_origin: list[str] = []


class Registry(Generic[T]):
    """A name -> plugin mapping for one kind of plugin (the timm way: one dict)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, PluginInfo] = {}

    def register(self, name: str, *, version: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers a plugin under ``name``.

        Args:
            name: the name suites use (lowercase, digits, ``-`` and ``_``).
            version: the plugin's version; part of every cache key of its products, so bump it
                when a change alters results. Defaults to the class attribute ``version`` or "1".
        """

        def deco(cls: type[T]) -> type[T]:
            self.add(name, cls, version=version)
            return cls

        return deco

    def add(self, name: str, obj: Any, *, version: str | None = None, origin: str | None = None) -> None:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if origin is None:
            if _current_origin:
                origin = _current_origin[-1]
            elif getattr(obj, "__module__", None) in BUILTIN_MODULES:
                origin = "built-in"
            else:
                origin = f"module {obj.__module__}"
        ver = str(version if version is not None else getattr(obj, "version", "1"))
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj:
            if existing.obj.__qualname__ == obj.__qualname__ and existing.obj.__module__ == obj.__module__:
                log.debug("re-registering %s %r (module reloaded)", self.kind, name)
            else:
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: by {existing.origin} and by {origin}"
                )
        try:
            obj.name = name
            obj.version = ver
        except (AttributeError, TypeError):  # functions or builtins
            pass
        self._entries[name] = PluginInfo(self.kind, name, obj, origin, ver)

    def get(self, name: str) -> type[T]:
        return self.info(name).obj

    def info(self, name: str) -> PluginInfo:
        load_plugins()
        if name not in self._entries:
            raise UnknownPluginError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[PluginInfo]:
        load_plugins()
        return iter([self._entries[n] for n in sorted(self._entries)])


defenses: Registry[Any] = Registry("defense", "bench.defenses")
attacks: Registry[Any] = Registry("attack", "bench.attacks")
metrics: Registry[Any] = Registry("metric", "bench.metrics")
datasets: Registry[Any] = Registry("dataset", "bench.datasets")
architectures: Registry[Any] = Registry("architecture", "bench.architectures")
generators: Registry[Any] = Registry("generator", "bench.generators")
extractors: Registry[Any] = Registry("extractor", "bench.extractors")

REGISTRIES: dict[str, Registry[Any]] = {
    "defenses": defenses,
    "attacks": attacks,
    "metrics": metrics,
    "datasets": datasets,
    "architectures": architectures,
    "generators": generators,
    "extractors": extractors,
}

# Built-in plugins: importing these modules registers everything the suite ships with.
BUILTIN_MODULES: tuple[str, ...] = (
    "inversion_bench.data.synthetic",
    "inversion_bench.data.image_folder",
    "inversion_bench.data.celeba",
    "inversion_bench.data.toy2d",
    "inversion_bench.models",
    "inversion_bench.defenses.label_smoothing",
    "inversion_bench.defenses.mid",
    "inversion_bench.defenses.bido",
    "inversion_bench.defenses.tl_dmi",
    "inversion_bench.defenses.dp_sgd",
    "inversion_bench.defenses.output",
    "inversion_bench.attacks.mi_face",
    "inversion_bench.attacks.generators.dcgan",
    "inversion_bench.attacks.generators.stylegan2_ada",
    "inversion_bench.attacks.ppa",
    "inversion_bench.attacks.gmi",
    "inversion_bench.attacks.brep_mi",
    "inversion_bench.attacks.mirror",
    "inversion_bench.metrics.accuracy",
    "inversion_bench.metrics.knn",
    "inversion_bench.metrics.extractors",
    "inversion_bench.metrics.file_extractors",
    "inversion_bench.metrics.fid",
    "inversion_bench.metrics.facenet",
    "inversion_bench.metrics.prdc",
    "inversion_bench.metrics.agreement",
    "inversion_bench.metrics.calibration",
    "inversion_bench.metrics.embedding",
    "inversion_bench.metrics.gradient_stability",
    "inversion_bench.metrics.knowledge_extraction",
)

_loaded = False
_loaded_files: set[Path] = set()


def _import_builtin(modname: str) -> None:
    _current_origin.append("built-in")
    try:
        importlib.import_module(modname)
    finally:
        _current_origin.pop()


def load_plugins() -> None:
    """Import the built-in plugins and every installed entry point (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for modname in BUILTIN_MODULES:
        try:
            present = importlib.util.find_spec(modname) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            _import_builtin(modname)
    for reg in REGISTRIES.values():
        for ep in importlib.metadata.entry_points(group=reg.group):
            dist = getattr(ep, "dist", None)
            dist_txt = f"{dist.name} {dist.version}" if dist is not None else ep.value
            origin = f"entry point {reg.group}:{ep.name} ({dist_txt})"
            _current_origin.append(origin)
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party package must not hide the others
                log.warning("could not load plugin %s (%s): %s", ep.name, origin, exc)
                continue
            finally:
                _current_origin.pop()
            if inspect.isclass(obj) and ep.name not in reg._entries:
                reg.add(ep.name, obj, origin=origin)


def load_plugin_file(path: str | Path) -> None:
    """Import a single Python file whose decorators register plugins (``--plugin FILE.py``)."""
    p = Path(path).resolve()
    if p in _loaded_files:
        return
    if not p.is_file():
        raise ConfigError(f"--plugin {path}: no such file; give the path of a Python file")
    load_plugins()
    modname = f"bench_plugin_{abs(hash(str(p)))}"
    spec = importlib.util.spec_from_file_location(modname, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--plugin {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    _current_origin.append(f"file {p}")
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--plugin {path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _current_origin.pop()
    _loaded_files.add(p)


def loaded_plugin_files() -> list[Path]:
    """The ``--plugin`` files imported in this process (other processes, e.g. Ray workers, load them too)."""
    return sorted(_loaded_files)
