"""The products of a run, one module each, with the store key it lives under (:mod:`inversion_bench.plan`).

``data`` (the splits), ``evaluator`` (the evaluation model), ``prior`` (the image prior), ``target``
(a classifier per defense and seed), ``reconstruction`` (an attack's output per pair), ``record``
(scoring and the JSON record per pair) and ``mirror`` (the record's MLflow run). Each takes a
:class:`~inversion_bench.run_context.RunContext`, loads its product from the store when the key is
there and computes and stores it otherwise. The job graph (:mod:`inversion_bench.jobs`) calls them;
none of them imports an executor or the job graph.
"""
