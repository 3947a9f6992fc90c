"""`lesiondetect validate DATASET`: report every problem of a dataset at once."""

from __future__ import annotations

import sys

from ..dataset import load_dataset, validate_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a dataset folder (dataset.json and the files it names)",
                       description="Report every problem at once: missing files, geometry mismatches, "
                                   "duplicate ids, points or boxes outside the image. Exit 1 if any.")
    p.add_argument("dataset", help="dataset folder or its dataset.json")
    p.set_defaults(func=run)


def run(args) -> int:
    problems = validate_dataset(args.dataset)
    if problems:
        for line in problems:
            print(f"problem: {line}", file=sys.stderr)
        print(f"{args.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    ds = load_dataset(args.dataset)
    print(f"{args.dataset}: valid ({len(ds.cases)} cases, {len({c.patient for c in ds.cases})} patients, "
          f"modality {ds.modality})")
    return 0
