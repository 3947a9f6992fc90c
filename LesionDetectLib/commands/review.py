"""`lesiondetect review --data DATASET [--model M | --method NAME] [--port P] [--host H]`: the
review-and-correct loop in a web page.

Starts the web app of LesionDetect/LesionDetectWeb (trame + trame-slicer on slicer-core's MRML,
through the same adapter as the Slicer module) on 127.0.0.1.  Nothing here imports slicer, vtk,
qt or trame: the web app is imported when the command runs, and a missing requirement is one
error line naming what to install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LesionDetectError, input_error


def add_parser(sub) -> None:
    p = sub.add_parser("review", help="review and correct a dataset's cases in a web page (trame-slicer)",
                       description="Starts a local web page to review a dataset: open a case in axial, coronal, "
                                   "sagittal and 3-D views, run the detector (progress, Cancel), move the "
                                   "threshold, accept or reject each finding, paint the lesion segment, add boxes "
                                   "and points, and export the corrected case into the dataset (never "
                                   "overwriting; review decisions recorded).  Listens on 127.0.0.1 unless --host "
                                   "says otherwise; any other address prints a warning and requires the token "
                                   "printed at start.  Needs trame-slicer (pip install trame-slicer==2.0.0).")
    p.add_argument("--data", required=True, help="dataset folder (with dataset.json)")
    p.add_argument("--model", help="model directory (default: the active model of --method)")
    p.add_argument("--method", help="method whose active model Detect runs (default: with --model, the model's)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--host", default=None,
                   help="address to listen on (default 127.0.0.1); another than loopback needs the printed token")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # a chosen token, required even on loopback
    p.add_argument("--reviewer", default="", help="name recorded in exported reviews (default: login name)")
    p.add_argument("--python", default=None,
                   help="Python interpreter that runs the detector as a child process (default: this one)")
    p.add_argument("--open", action="store_true", help="open the page in the system browser")
    p.set_defaults(func=run)


def web_package_parent() -> Path:
    """The folder holding LesionDetectWeb and LesionDetectMRML (the extension's LesionDetect/)."""
    return Path(__file__).resolve().parents[2] / "LesionDetect"


def run(args) -> int:
    root = Path(args.data)
    if root.is_file() and root.name == "dataset.json":
        root = root.parent
    if not (root / "dataset.json").is_file():
        raise input_error(root, "is not a dataset folder: it has no dataset.json")
    if not 0 <= args.port <= 65535:
        raise LesionDetectError(f"--port {args.port}: give a port between 0 and 65535")
    if args.model is None and args.method is None:
        raise LesionDetectError("give --model (a model folder) or --method (its active model), for Detect")
    parent = web_package_parent()
    if not (parent / "LesionDetectWeb").is_dir():
        raise LesionDetectError(f"the web app (LesionDetectWeb) is not beside this LesionDetectLib ({parent}); "
                                "run `lesiondetect review` from a checkout of the LesionDetect extension")
    if str(parent) not in sys.path:
        sys.path.insert(0, str(parent))
    import LesionDetectWeb

    missing = LesionDetectWeb.missing_requirement()
    if missing:
        raise LesionDetectError(missing)
    from LesionDetectWeb.app import serve

    serve(root, model=args.model, method=args.method, port=args.port, host=args.host, python=args.python,
          reviewer=args.reviewer, open_browser=args.open, token=args.token)
    return 0
