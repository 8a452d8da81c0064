"""Benchmarks against TRL (issue #7): memory and speed, side by side, in one run.

``tokenrl bench memory|speed|all|scaling`` (see docs/benchmarks.md). Modules:

* :mod:`~benchmarks.trl.workloads`: workloads A, B, C-i, C-ii (and smoke / GPU ones), goals;
* :mod:`~benchmarks.trl.inputs`: the shared LoRA policy and fixed rollouts;
* :mod:`~benchmarks.trl.ours`, :mod:`~benchmarks.trl.trl_runner`: one configuration each side;
* :mod:`~benchmarks.trl.measure`: peak memory (RSS sampler / CUDA), timings, trl's presence
  (the machine and the versions come from :mod:`tokenrl.machine`);
* :mod:`~benchmarks.trl.worker`: one configuration in a fresh process;
* :mod:`~benchmarks.trl.run`, :mod:`~benchmarks.trl.scaling`: drivers, ratios, goals, tables.

The lab's, not the library's: it lives in the source checkout (``benchmarks/trl``, not installed
with tokenrl) and nothing in ``src/tokenrl`` imports it; ``tokenrl bench`` finds it by putting the
checkout on ``sys.path``, and each worker process gets the checkout on ``PYTHONPATH``. Its
drivers (cli, run, scaling) import torch only in functions.
"""
