"""The dataset as the review page lists it: cases, review status, images kept inside the root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .security import UnsafePath, resolve_inside


@dataclass
class CaseRow:
    id: str
    patient: str
    image: str  # as dataset.json names it (relative to the root)
    reviewed: bool
    split: str | None = None

    def as_dict(self) -> dict:
        return {"id": self.id, "patient": self.patient, "image": self.image, "reviewed": self.reviewed,
                "split": self.split or "", "status": "reviewed" if self.reviewed else "unreviewed"}


def read_cases(root: str | os.PathLike) -> list[CaseRow]:
    """Every case of the dataset with its review status ("review" entry), in dataset.json's order."""
    from LesionDetectLib.dataset import read_dataset_json

    _, doc = read_dataset_json(root)
    rows = []
    for entry in doc.get("cases", []) if isinstance(doc, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        rows.append(CaseRow(id=entry["id"], patient=str(entry.get("patient", "")), image=str(entry.get("image", "")),
                            reviewed=entry.get("review") is not None, split=entry.get("split")))
    return rows


def case_image(root: str | os.PathLike, case_id) -> Path:
    """The image of case `case_id`, resolved inside the dataset root (security.resolve_inside):
    an image that dataset.json names outside the root (absolute, `..`, a symlink leading out)
    is refused, so the page can only open what the dataset holds."""
    if not isinstance(case_id, str) or not case_id:
        raise ValueError("a case id must be a non-empty text")
    row = next((r for r in read_cases(root) if r.id == case_id), None)
    if row is None:
        raise KeyError(f"no case {case_id!r} in the dataset")
    path = resolve_inside(root, row.image)
    if not path.is_file():
        raise FileNotFoundError(f"case {case_id!r}: its image {row.image} is missing")
    return path


def next_unreviewed(root: str | os.PathLike, current: str | None = None, shown=()) -> tuple[str | None, str]:
    """(case id, how it was chosen) of the next case to review.

    LesionDetectLib.ranking orders unreviewed cases by model uncertainty but has to run the model
    on each (`lesiondetect rank`, minutes); the page takes a ranking already written into the
    dataset folder as `ranking.json` (`lesiondetect rank --data D --out D/ranking.json`) when
    there is one, else the first unreviewed case after `current` in dataset.json's order.
    Cases reviewed under a later version of their id (export writes X_v2) count as reviewed."""
    import json
    import re

    rows = read_cases(root)
    base = lambda case_id: re.sub(r"_v\d+$", "", case_id)  # noqa: E731
    reviewed = {base(r.id) for r in rows if r.reviewed}
    open_ids = [r.id for r in rows if not r.reviewed and base(r.id) not in reviewed and r.id not in shown]
    try:
        ranking_file = resolve_inside(root, "ranking.json")
    except UnsafePath:
        ranking_file = None
    if ranking_file is not None and ranking_file.is_file():
        try:
            ranking = json.loads(ranking_file.read_text())
            ranked = sorted((c for c in ranking.get("cases", []) if isinstance(c, dict)),
                            key=lambda c: c.get("rank", 1 << 30))
            for c in ranked:
                if c.get("id") in open_ids and c.get("id") != current and not c.get("error"):
                    return c["id"], f"rank {c.get('rank')} of ranking.json (model uncertainty)"
        except (OSError, ValueError, AttributeError):
            pass
    after = open_ids
    if current in [r.id for r in rows]:
        order = [r.id for r in rows]
        after = [i for i in open_ids if order.index(i) > order.index(current)] + \
                [i for i in open_ids if order.index(i) <= order.index(current) and i != current]
    if not after:
        return None, "every case of the dataset is reviewed"
    return after[0], "first unreviewed case in the dataset's order (no ranking.json)"
