"""Every option of the three commands says what it does in ``--help``."""

from __future__ import annotations

import argparse

import pytest

from fpnlink.cloud import cli as cloud_cli
from fpnlink.edge import cli as edge_cli
from fpnlink.tools import cli as tools_cli


def options_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += options_without_help(sub, f"{path} {name}")
        elif action.option_strings and not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{path} {action.option_strings[0]}")
    return missing


@pytest.mark.parametrize("command, module", [("fpnlink", tools_cli), ("fpnlink-edge", edge_cli),
                                             ("fpnlink-cloud", cloud_cli)])
def test_every_option_has_help(command: str, module: object) -> None:
    assert options_without_help(module.build_parser(), command) == []
