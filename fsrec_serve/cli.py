"""The ``fsrec`` command line. Argument parsing only: each command calls one library function.

Each area registers its sub-commands from ``fsrec_serve/commands/<area>.py`` through an
``add_parsers(subparsers)`` function; a command's handler is set with ``set_defaults(func=...)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .errors import FsRecError

# modules under fsrec_serve.commands that register sub-commands, in --help order
COMMAND_MODULES = ["data", "train", "evaluate", "adapt", "export", "prune", "serve", "recommend", "events", "learn",
                   "loadtest", "rollout", "ops", "pipeline", "ensemble"]
# loggers and warning sources of this project: shown without -v (libraries' only with -v)
OWN_NAMESPACES = ("fsrec_serve", "exporters", "bench", "loadtests", "fsrec", "__main__")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnRecordsOnly(logging.Filter):
    """Keep this project's records and any library ERROR; drop the libraries' INFO/WARNING
    chatter (onnxruntime's "Axis 1 is out-of-range ...", Optimum's notes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_NAMESPACES
        return own or record.levelno >= logging.ERROR


def configure_output(verbose: bool) -> None:
    """Quiet by default: progress bars and step summaries (this project's INFO) stay; library
    warnings (TracerWarning, DeprecationWarning, third-party WARNING logs such as onnxruntime's
    "Axis 1 is out-of-range") show only with -v. Warnings of this project's own classes (e.g.
    ``exporters.ExportDriftWarning``) always show."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)  # no-op if configured
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.simplefilter("default")
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OwnRecordsOnly) for f in handler.filters):
            handler.addFilter(_OwnRecordsOnly())
    show = warnings.showwarning

    def show_own(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] in OWN_NAMESPACES:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrec", description="Few-shot adaptive recommendation: train, adapt, export, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the libraries' warnings (hidden by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"fsrec_serve.commands.{name}")
        except ImportError as e:  # a broken command module must not vanish from the CLI silently
            raise ImportError(f"fsrec: the command module fsrec_serve.commands.{name} failed to import: {e}") from e
        mod.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(args.verbose)
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
