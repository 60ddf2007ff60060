"""Defense plugins (one module per defense family)."""
