"""Benchmarks of the kit against its speed and memory targets.

``python -m bench`` (``make bench``) runs the suite of :mod:`bench.__main__` and writes one table to
``outputs/bench/<date>.json`` and ``.md``. Each part also runs alone as a script:
``bench/loader.py``, ``bench/models.py``, ``bench/adapt_bn.py``, ``bench/pipeline.py``;
``bench/gpu_check.sh`` is the GPU check: the GPU tests of Adapt BN, its statistics kernels, the loader
profiles and the real-size path, inside a time budget.
"""
