"""`python -m LesionDetectWeb --data DATASET ...`: `lesiondetect review` without the rest of the
command line (whose method plug-ins import torch), for an environment that holds only the web app
(trame-slicer with its slicer-core) and runs the detector with another Python (`--python`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for LesionDetectLib
    from LesionDetectLib.commands import review
    from LesionDetectLib.errors import LesionDetectError

    parser = argparse.ArgumentParser(prog="python -m LesionDetectWeb")
    review.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["review", *(sys.argv[1:] if argv is None else argv)])
    try:
        return review.run(args)
    except LesionDetectError as exc:
        print(f"lesiondetect review: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
