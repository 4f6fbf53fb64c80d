"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks; appends a default only where it says something."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        # identity, not equality: a default of 0 (a seed) says something, False does not
        if "default" in help_text or any(action.default is v
                                         for v in (None, False, argparse.SUPPRESS)):
            return help_text
        return super()._get_help_string(action)


def add_command(subparsers, name: str, help: str, description: str, examples: str):
    """Create one command's parser with the shared formatter and an examples epilog."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=Formatter,
    )


