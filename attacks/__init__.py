"""Attack plugins (one module per attack); shared pieces in ``attacks.common``."""
