"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_command(subparsers, name: str, help: str, description: str, examples: str):
    """Create one command's parser with the shared formatter and an examples epilog."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=Formatter,
    )


