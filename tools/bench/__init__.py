"""``fpnlink bench ...``: benchmarks that write JSON. Each benchmark module exposes ``register(bench_subparsers)``."""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES: tuple[str, ...] = (
    "fpnlink.tools.bench.split", "fpnlink.tools.bench.codec", "fpnlink.tools.bench.ratecontrol",
    "fpnlink.tools.bench.rd", "fpnlink.tools.bench.load", "fpnlink.tools.bench.edge",
    "fpnlink.tools.bench.device", "fpnlink.tools.bench.store",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that write JSON (medians; ratios side by side)")
    bench_subparsers = parser.add_subparsers(dest="bench", required=True)
    for module_name in BENCH_MODULES:
        importlib.import_module(module_name).register(bench_subparsers)
