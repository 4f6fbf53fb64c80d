"""`commonspace embed` (placeholder until its issue lands)."""

from commonspace.cli._common import add_command
from commonspace.exceptions import CommonspaceError


def register(subparsers):
    p = add_command(subparsers, "embed", help="(not implemented yet)", description="", examples="")
    p.set_defaults(func=run)


def run(args):
    raise CommonspaceError("'embed' is not implemented yet")
