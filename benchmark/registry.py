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
it is not registered yet). ``load_plugin_file`` imports a single Python file (``bench --plugin FILE.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import types
import typing
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
    distribution: str = ""  # the installed distribution that provides it, or the --plugin file's path
    distribution_version: str = ""
    aliases: tuple[str, ...] = ()  # other names a suite may use (older spellings)

    @property
    def provenance(self) -> str:
        """Where its code comes from: ``"mydefense 0.1.0"``, ``"inversion-bench 0.1.0"``, a ``--plugin`` file."""
        return f"{self.distribution} {self.distribution_version}".strip() or self.origin

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
            out.append({"name": fname, "type": type_name, "default": default, "doc": field.description or "",
                        "constraints": _constraints(field)})
        return out


def _constraints(field: Any) -> str:
    """A field's bounds and choices in words: ``">= 0, <= 1"``, ``"one of: 'a', 'b'"`` ("" when none)."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length"}
    parts = [f"{sign} {getattr(m, a)}" for m in field.metadata for a, sign in signs.items()
             if getattr(m, a, None) is not None]
    choices = _literal_choices(field.annotation)
    return ", ".join(parts + (["one of: " + ", ".join(map(repr, choices))] if choices else []))


def _literal_choices(ann: Any) -> list[Any]:
    """The values of the ``Literal`` types in ``ann`` (also inside ``Optional``/unions)."""
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    return [c for arg in (typing.get_args(ann) if union else ()) for c in _literal_choices(arg)]


# (origin, distribution, its version) of plugins registered while a given source is being imported.
_current_origin: list[tuple[str, str, str]] = []
_added = [0]  # registrations so far (an entry point that registers nothing is a warning)


def _own_distribution() -> tuple[str, str]:
    try:
        return "inversion-bench", importlib.metadata.version("inversion-bench")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "inversion-bench", "unknown"


class Registry(Generic[T]):
    """A name -> plugin mapping for one kind of plugin (the timm way: one dict)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, PluginInfo] = {}
        self._aliases: dict[str, str] = {}  # alias -> canonical name

    def register(self, name: str, *, version: str | None = None,
                 aliases: tuple[str, ...] = ()) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers a plugin under ``name``.

        Args:
            name: the name suites use (lowercase, digits, ``-`` and ``_``).
            version: the plugin's version; part of every cache key of its products, so bump it
                when a change alters results. Defaults to the class attribute ``version`` or "1".
            aliases: other names that resolve to this plugin (e.g. an older spelling); the first one
                is the name its cache keys hash (:meth:`key_name`), so renaming keeps stored products.
        """

        def deco(cls: type[T]) -> type[T]:
            self.add(name, cls, version=version, aliases=aliases)
            return cls

        return deco

    def add(self, name: str, obj: Any, *, version: str | None = None, origin: str | None = None,
            aliases: tuple[str, ...] = ()) -> None:
        for n in (name, *aliases):
            if not n or not all(c.isalnum() or c in "-_." for c in n):
                raise ValueError(f"invalid {self.kind} name {n!r}")
        if self._aliases.get(name, name) != name:
            raise ValueError(f"{self.kind} {name!r} is an alias of {self._aliases[name]!r}")
        origin, dist, dist_version = self._source(obj, origin)
        _added[0] += 1
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
        self._entries[name] = PluginInfo(self.kind, name, obj, origin, ver, dist, dist_version, tuple(aliases))
        for alias in aliases:
            if alias in self._entries:
                raise ValueError(f"{self.kind} alias {alias!r} of {name!r} is the name of another {self.kind}")
            self._aliases[alias] = name

    @staticmethod
    def _source(obj: Any, origin: str | None) -> tuple[str, str, str]:
        """(origin, distribution, distribution version) of a plugin being registered."""
        if origin is None and _current_origin:
            return _current_origin[-1]
        module = getattr(obj, "__module__", None) or ""
        if origin == "built-in" or (origin is None and module in BUILTIN_MODULES):
            return ("built-in", *_own_distribution())
        dist = (importlib.metadata.packages_distributions().get(module.split(".")[0]) or [""])[0]
        try:
            return origin or f"module {module}", dist, importlib.metadata.version(dist) if dist else ""
        except importlib.metadata.PackageNotFoundError:
            return origin or f"module {module}", dist, ""

    def get(self, name: str) -> type[T]:
        return self.info(name).obj

    def canonical(self, name: str) -> str:
        """The name ``name`` resolves to (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def info(self, name: str) -> PluginInfo:
        load_plugins()
        name = self.canonical(name)
        if name not in self._entries:
            raise UnknownPluginError(self.unknown_message(name))
        return self._entries[name]

    def key_name(self, name: str) -> str:
        """The name cache keys hash for ``name``: the plugin's first alias when it has one (its name before
        the rename), else its name, so both spellings share the stored products of older runs."""
        info = self.info(name)
        return info.aliases[0] if info.aliases else info.name

    def provenance(self, name: str) -> str:
        """``"mydefense 0.1.0"``: the distribution (and its version) or file the plugin comes from."""
        return self.info(name).provenance

    def version_label(self, name: str) -> str:
        """The plugin's own version with its provenance, for records: ``"1 (mydefense 0.1.0)"``."""
        info = self.info(name)
        return f"{info.version} ({info.provenance})"

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), [*known, *self._aliases], n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries or name in self._aliases

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
    "inversion_bench.data.synthetic", "inversion_bench.data.image_folder", "inversion_bench.data.celeba",
    "inversion_bench.data.celeba_split",
    "inversion_bench.data.toy2d",
    "inversion_bench.models", "inversion_bench.published_models",
    "inversion_bench.defenses.label_smoothing", "inversion_bench.defenses.mid", "inversion_bench.defenses.bido",
    "inversion_bench.defenses.tl_dmi", "inversion_bench.defenses.dp_sgd", "inversion_bench.defenses.output",
    "inversion_bench.defenses.trap_mid", "inversion_bench.defenses.random_erasing",
    "inversion_bench.defenses.robust_smoothing", "inversion_bench.defenses.ssd",
    "inversion_bench.defenses.loft",
    "inversion_bench.attacks.mi_face", "inversion_bench.attacks.ppa", "inversion_bench.attacks.gmi",
    "inversion_bench.attacks.brep_mi", "inversion_bench.attacks.mirror", "inversion_bench.attacks.ked_mi",
    "inversion_bench.attacks.plg_mi", "inversion_bench.attacks.if_gmi", "inversion_bench.attacks.diff_mi",
    "inversion_bench.attacks.smile",
    "inversion_bench.attacks.generators.dcgan", "inversion_bench.attacks.generators.stylegan2_ada",
    "inversion_bench.metrics.accuracy", "inversion_bench.metrics.knn", "inversion_bench.metrics.extractors",
    "inversion_bench.metrics.file_extractors", "inversion_bench.metrics.fid", "inversion_bench.metrics.facenet",
    "inversion_bench.metrics.prdc", "inversion_bench.metrics.agreement", "inversion_bench.metrics.calibration",
    "inversion_bench.metrics.embedding", "inversion_bench.metrics.gradient_stability",
    "inversion_bench.metrics.knowledge_extraction",
)

_loaded = False
_loaded_files: set[Path] = set()


def _import_builtin(modname: str) -> None:
    _current_origin.append(("built-in", *_own_distribution()))
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
            _load_entry_point(reg, ep)


def _load_entry_point(reg: Registry[Any], ep: Any) -> None:
    """Imports one entry point; one that fails or registers nothing is a warning naming it."""
    dist = getattr(ep, "dist", None)
    dist_name, dist_version = (dist.name, str(dist.version)) if dist is not None else ("", "")
    origin = f"entry point {reg.group}:{ep.name} ({f'{dist_name} {dist_version}' if dist else ep.value})"
    _current_origin.append((origin, dist_name, dist_version))
    before = _added[0]
    try:
        obj = ep.load()
    except Exception as exc:  # a broken third-party package must not hide the others
        log.warning("could not load plugin %s (%s): %s", ep.name, origin, exc)
        return
    except SystemExit as exc:  # nor stop the command: sys.exit() at import is a broken package too
        log.warning("could not load plugin %s (%s): it called sys.exit(%s) while being imported; it is left out "
                    "(fix or uninstall %s)", ep.name, origin, repr(exc.code)[:200], dist_name or ep.value)
        return
    finally:
        _current_origin.pop()
    if inspect.isclass(obj):
        if ep.name not in reg._entries:
            reg.add(ep.name, obj, origin=origin)
            reg._entries[ep.name] = dataclasses.replace(reg._entries[ep.name], distribution=dist_name,
                                                        distribution_version=dist_version)
        return
    if _added[0] == before and not _registers(obj):
        where = getattr(obj, "__file__", None) or getattr(obj, "__name__", repr(obj))
        log.warning("entry point %r of group %s (%s) loaded %s from %s, which registered no plugin: is a "
                    "local folder of that name shadowing the installed package, or does the module lack its "
                    "@%s.register(...) decorators?", ep.name, reg.group, ep.value,
                    getattr(obj, "__name__", ep.value), where, reg.group.split(".")[-1])


def _registers(module: Any) -> bool:
    """Whether some registered plugin was defined in ``module`` or below it (already imported earlier)."""
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        return False
    return any(str(getattr(i.obj, "__module__", "")).split(".")[: name.count(".") + 1] == name.split(".")
               for r in REGISTRIES.values() for i in r._entries.values())


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
    _current_origin.append((f"file {p}", str(p), ""))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--plugin {path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:
        sys.modules.pop(modname, None)
        raise ConfigError(f"--plugin {path}: it called sys.exit({repr(exc.code)[:200]}) while being imported; a "
                          "plugin file must only define and register its classes") from None
    finally:
        _current_origin.pop()
    _loaded_files.add(p)


def loaded_plugin_files() -> list[Path]:
    """The ``--plugin`` files imported in this process (other processes, e.g. Ray workers, load them too)."""
    return sorted(_loaded_files)
