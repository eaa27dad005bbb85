"""Subcommands of `acked` (see harness/cli.py)."""


def register(subparsers) -> None:
    pass
