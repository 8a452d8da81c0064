"""The lab's benchmarks, outside the library: :mod:`benchmarks.trl` (``tokenrl bench``, the TRL
comparison) and one-off scripts (``python benchmarks/NAME.py``). Nothing in ``src/tokenrl``
imports this package; it runs from a source checkout and is not installed with tokenrl.
"""
