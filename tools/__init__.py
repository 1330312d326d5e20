"""Offline tools: the ``fpnlink`` command (demo, benchmarks, data, training)."""
