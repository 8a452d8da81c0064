"""Benchmarks against TRL (issue #7): memory and speed, side by side, in one run.

``tokenrl bench memory|speed|all|scaling`` (see docs/benchmarks.md). Modules:

* :mod:`~tokenrl.bench.workloads`: workloads A, B, C-i, C-ii (and smoke / GPU ones), goals;
* :mod:`~tokenrl.bench.inputs`: the shared LoRA policy and fixed rollouts;
* :mod:`~tokenrl.bench.ours`, :mod:`~tokenrl.bench.trl_runner`: one configuration each side;
* :mod:`~tokenrl.bench.measure`: peak memory (RSS sampler / CUDA), machine, versions;
* :mod:`~tokenrl.bench.worker`: one configuration in a fresh process;
* :mod:`~tokenrl.bench.run`, :mod:`~tokenrl.bench.scaling`: drivers, ratios, goals, tables.

Nothing here is imported by the training code; this package imports torch only in functions.
"""
