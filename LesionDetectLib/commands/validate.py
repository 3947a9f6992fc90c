"""`lesiondetect validate DATASET`: report every problem of a dataset at once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..dataset import load_dataset, validate_dataset
from ..errors import input_error


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a dataset folder (dataset.json and the files it names)",
                       description="Report every problem at once: bad JSON, missing keys, unknown modality, "
                                   "missing or unreadable files, duplicate ids, a patient in two splits, masks "
                                   "that do not match their image, points or boxes outside the image. "
                                   "Exit status 0 when valid, 1 when there are problems.")
    p.add_argument("dataset", help="dataset folder or its dataset.json")
    p.set_defaults(func=run)


def run(args) -> int:
    if not Path(args.dataset).exists():
        raise input_error(args.dataset, "does not exist; give a dataset folder (holding dataset.json) or the file")
    problems = validate_dataset(args.dataset)
    if problems:
        for line in problems:
            print(f"problem: {line}")
        print(f"{args.dataset}: {len(problems)} problem(s) found; fix them and run `lesiondetect validate` again")
        return 1
    ds = load_dataset(args.dataset)
    splits = Counter(c.split for c in ds.cases if c.split)
    split_text = (", splits " + ", ".join(f"{k} {n}" for k, n in sorted(splits.items()))) if splits else ""
    print(f"{args.dataset}: valid ({len(ds.cases)} cases, {len({c.patient for c in ds.cases})} patients, "
          f"modality {ds.modality}{split_text})")
    return 0
