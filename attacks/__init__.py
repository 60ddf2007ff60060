"""Attack plugins (one module per attack); shared pieces in ``inversion_bench.attacks.common``."""
