"""Attack plugins (one module per attack); shared pieces in ``inversion_bench.attacks.common``.

``from inversion_bench import attacks`` gives this package; ``@attacks.register("name")`` is the
attack registry's decorator (the registry itself: ``attacks.registry``).
"""

from inversion_bench.registry import attacks as registry

register = registry.register

__all__ = ["register", "registry"]
