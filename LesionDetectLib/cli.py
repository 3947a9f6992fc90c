"""The `lesiondetect` command.

Each subcommand lives in `LesionDetectLib/commands/<name>.py` with two functions:
`add_parser(subparsers)` (which must set `func`) and the function it points to.  This file
only finds them, runs the chosen one and turns user errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback

from . import __version__
from .errors import LesionDetectError
from .progress import ENV as PROGRESS_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesiondetect",
        description="Lesion detectors from five papers, with results that open in 3D Slicer.",
    )
    parser.add_argument("--version", action="version", version=f"lesiondetect {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--progress", choices=["bar", "lines"], default=None,
                        help="'lines' prints machine-readable 'PROGRESS <fraction> <what>' lines on stdout "
                             "(used by the Slicer module)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.progress:
        os.environ[PROGRESS_ENV] = args.progress
    try:
        result = args.func(args)
        return int(result or 0)
    except LesionDetectError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"lesiondetect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lesiondetect: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
