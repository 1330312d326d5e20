"""The ``fpnlink`` command. Each subcommand lives in its own module, which exposes ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "fpnlink.tools.demo",
    "fpnlink.tools.bench",
    "fpnlink.tools.synth",
    "fpnlink.tools.train",
    "fpnlink.tools.codec.cli",
    "fpnlink.tools.mfiba_tools",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpnlink", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
