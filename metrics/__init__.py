"""Metric plugins: pure functions plus a thin plugin class per metric.

``from inversion_bench import metrics`` gives this package; ``@metrics.register("name")`` is the
metric registry's decorator (the registry itself: ``metrics.registry``).
"""

from inversion_bench.registry import metrics as registry

register = registry.register

__all__ = ["register", "registry"]
