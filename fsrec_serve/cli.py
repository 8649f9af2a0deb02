"""The ``fsrec`` command line. Argument parsing only: each command calls one library function.

Each area registers its sub-commands from ``fsrec_serve/commands/<area>.py`` through an
``add_parsers(subparsers)`` function; a command's handler is set with ``set_defaults(func=...)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import FsRecError

# modules under fsrec_serve.commands that register sub-commands, in --help order
COMMAND_MODULES = ["data", "train", "adapt", "export", "serve", "loadtest", "ops", "pipeline"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrec", description="Few-shot adaptive recommendation: train, adapt, export, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"fsrec_serve.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fsrec_serve.commands.{name}":
                continue  # area not installed yet
            raise
        mod.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = args.func(args)
    except FsRecError as e:
        print(f"fsrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fsrec: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
