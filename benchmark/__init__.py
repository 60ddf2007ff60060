"""Inversion Bench: benchmarking privacy defenses against model inversion attacks.

The public API for plugins is importable from here::

    from inversion_bench import Defense, PluginParams, defenses

    @defenses.register("my-defense")
    class MyDefense(Defense):
        class Params(PluginParams):
            beta: float = 0.1

Names are resolved on first use, so ``import inversion_bench`` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API: dict[str, str] = {
    # registries and the plugin base (``defenses``, ``attacks`` and ``metrics`` are the subpackages
    # of those names, whose ``register`` is their registry's decorator)
    "datasets": "inversion_bench.registry",
    "architectures": "inversion_bench.registry",
    "generators": "inversion_bench.registry",
    "extractors": "inversion_bench.registry",
    "Plugin": "inversion_bench.registry",
    "PluginParams": "inversion_bench.registry",
    "load_plugins": "inversion_bench.registry",
    # plugin interfaces and the objects they exchange
    "Defense": "inversion_bench.interfaces",
    "Attack": "inversion_bench.interfaces",
    "Metric": "inversion_bench.interfaces",
    "Generator": "inversion_bench.interfaces",
    "Classifier": "inversion_bench.interfaces",
    "Reconstruction": "inversion_bench.interfaces",
    "AttackContext": "inversion_bench.interfaces",
    "MetricContext": "inversion_bench.interfaces",
    "PriorContext": "inversion_bench.interfaces",
    "GeneratorPlugin": "inversion_bench.interfaces",
    # errors a plugin raises
    "BenchError": "inversion_bench.errors",
    "ConfigError": "inversion_bench.errors",
    "MetricUnavailableError": "inversion_bench.errors",
    "DivergedError": "inversion_bench.errors",
    "MissingResourceError": "inversion_bench.errors",
}

__all__ = ["__version__", "defenses", "attacks", "metrics", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'inversion_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
