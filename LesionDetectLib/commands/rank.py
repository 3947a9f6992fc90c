"""`lesiondetect rank --data DATASET [--model M | --method NAME] [--out FILE]`: which case to review next.

Orders the dataset's unreviewed cases (those without a "review" entry) by the model's
uncertainty about them, most informative first (ranking.py says how each output kind is
scored), prints the order as a table and writes it as JSON (or CSV) with --out.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LesionDetectError, input_error
from ..methods import method_names


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="order a dataset's unreviewed cases by how much reviewing them would teach",
                       description="Runs the model on every case of the dataset that has no \"review\" entry and "
                                   "orders them by the model's uncertainty, most uncertain first: class "
                                   "probabilities by their entropy, probability maps by the mean binary entropy "
                                   "of their region of interest, boxes and points by how many scores lie within "
                                   "--margin of the decision threshold.")
    p.add_argument("--data", required=True, help="dataset folder (with dataset.json) or the file")
    p.add_argument("--model", help="model directory (default: the model shipped for the method)")
    p.add_argument("--method", choices=method_names(),
                   help="method whose shipped model to use (default: the one the cases were exported with, or "
                        "the only method of the dataset's modality)")
    p.add_argument("--out", help="write the ranking here (.json, or .csv for a spreadsheet)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--uncertainty-dir", help="write each case's voxel uncertainty (binary entropy, bits) as "
                                             "<case>.nii.gz here, for overlay in Slicer (probability-map methods)")
    p.add_argument("--margin", type=float, default=0.2,
                   help="score margin round the threshold for box and point outputs (default 0.2)")
    p.add_argument("--top", type=int, default=None, help="print only the first N rows (the file holds all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ranking import rank, table, write_ranking

    if not Path(args.data).exists():
        raise input_error(args.data, "does not exist; give a dataset folder (holding dataset.json) or the file")
    if args.out is not None:
        out = Path(args.out)
        if out.suffix.lower() not in (".json", ".csv"):
            raise input_error(out, "--out must end in .json or .csv")
        if out.exists() and not args.overwrite:
            raise input_error(out, "already exists; pass --overwrite to replace it")
        if not out.parent.exists():
            raise input_error(out.parent, "does not exist; create the folder for --out first")
    if args.top is not None and args.top < 1:
        raise LesionDetectError(f"--top {args.top}: give a number of rows >= 1")
    result = rank(args.data, model=args.model, method=args.method, device=args.device, margin=args.margin,
                  uncertainty_dir=args.uncertainty_dir)
    print(table(result, args.top))
    if args.out is not None:
        print(f"ranking      {write_ranking(args.out, result, overwrite=args.overwrite)}")
    return 0
