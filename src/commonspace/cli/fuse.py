"""`commonspace fuse` (placeholder until its issue lands)."""

from commonspace.cli._common import add_command
from commonspace.exceptions import CommonspaceError


def register(subparsers):
    p = add_command(subparsers, "fuse", help="(not implemented yet)", description="", examples="")
    p.set_defaults(func=run)


def run(args):
    raise CommonspaceError("'fuse' is not implemented yet")
