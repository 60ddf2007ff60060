"""Defense plugins (one module per defense family).

``from inversion_bench import defenses`` gives this package; ``@defenses.register("name")`` is the
defense registry's decorator (the registry itself: ``defenses.registry``).
"""

from inversion_bench.registry import defenses as registry

register = registry.register

__all__ = ["register", "registry"]
