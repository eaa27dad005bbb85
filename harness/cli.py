"""`acked`: the command line. Each room registers its own subcommands.

A module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds
its subcommands and sets `func` (called with the parsed args, returns the exit
status). Exit statuses (docs/running.md): 0 valid, 1 invalid, 2 unknown, 3 the harness
failed (acked check: the history could not be read), 4 bad input (arguments, test description).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from checkers.cli import EXIT_BAD_USAGE, Parser  # one argument parser for every acked command line

COMMAND_MODULES = [
    "checkers.cli",   # check, export
    "clusters.cli",   # image, cluster
    "harness.run_cli",  # run, profiles, nemeses, report
    "harness.doctor",   # doctor
]

# Commands whose module alone is imported when one of them is run: `acked
# check` need not import the cluster and harness code (docker clients, ...).
# Any other command line imports every module.
ALONE = {"check": "checkers.cli", "export": "checkers.cli"}

EXIT_HARNESS_FAILED = 3


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="acked",
        description="Jepsen-style correctness harness for a replicated Kafka-protocol log broker.",
        epilog="Exit statuses: 0 valid (or done), 1 invalid, 2 unknown (the checker could not decide), 3 the "
               "harness failed (acked check: the history could not be read), 4 bad arguments or test description "
               "(one line on stderr, before anything starts). docs/running.md lists each command's.",
    )
    parser.add_argument("--version", action="version", version=f"acked {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    only = ALONE.get(argv[0]) if argv else None
    for name in COMMAND_MODULES:
        if only is None or name == only:
            importlib.import_module(name).register(sub)
    return parser


def package_version() -> str:
    """The installed acked package's version (pyproject.toml), for --version of acked and acked-broker."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("acked")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_command_line(argv, ("command", "cluster_command", "image_command"))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("acked: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`acked profiles | head`): not an error of ours; silence the
        # interpreter's own complaint when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
