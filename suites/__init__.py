"""The suites shipped with the package: found by name in ``include:`` (``inversion_bench.builtin_suites``)."""
