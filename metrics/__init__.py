"""Metric plugins: pure functions plus a thin plugin class per metric.

``from inversion_bench import metrics`` gives this package; ``@metrics.register("name")`` is the
metric registry's decorator (the registry itself: ``metrics.registry``).
"""

from inversion_bench.metrics import (
    agreement,  # noqa: F401  (registers evaluator_agreement)
    calibration,  # noqa: F401  (registers calibration)
    embedding,  # noqa: F401  (registers embedding_separation)
    gradient_stability,  # noqa: F401  (registers gradient_stability)
    knowledge_extraction,  # noqa: F401  (registers knowledge_extraction)
)
from inversion_bench.registry import metrics as registry

register = registry.register

__all__ = ["register", "registry"]
