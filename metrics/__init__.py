"""Metric plugins: pure functions plus a thin plugin class per metric."""
