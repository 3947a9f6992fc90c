"""Which case `Next case` loads: the best-ranked case of `lesiondetect rank`'s ranking that is
still unreviewed in the dataset (`pick_next_case`), whether a kept ranking can be reused
(`ranking_covers`), and loading the case's image.  Part of "learn from corrections" (learn.py
re-exports these names).

Module-level imports are the standard library only; the library and the other adapter modules
are imported in functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_VERSION_SUFFIX = re.compile(r"_v\d+$")  # export.py: a case exported again is <id>_v2, _v3, ...


# --- which case to review next --------------------------------------------------------------------

@dataclass
class RankedCase:
    """The case `Next case` loads: its id, image and place in the ranking."""
    id: str
    image: Path
    rank: int
    score: float | int | None
    kind: str
    unreviewed_left: int  # unreviewed cases not yet shown, this one included


def _base_id(case_id: str) -> str:
    return _VERSION_SUFFIX.sub("", case_id)


def pick_next_case(ranking: dict, dataset_folder, skip=()) -> RankedCase | None:
    """The best-ranked case of `ranking` (the JSON `lesiondetect rank --out` writes) that is still
    unreviewed in the dataset as it is now; None when there is none.

    Left out: cases reviewed since the ranking was made, cases whose reviewed export is in the
    dataset under another version of their id (the module's Export writes a corrected `X` as
    `X_v2` with a "review": `X` itself stays unreviewed), cases ranked with an error (their
    image could not be read), cases no longer in the dataset and the ids in `skip` (the cases
    already shown this session)."""
    from LesionDetectLib.dataset import load_dataset

    dataset = load_dataset(dataset_folder)
    reviewed_bases = {_base_id(c.id) for c in dataset.cases if c.reviewed}
    open_cases = {c.id: c for c in dataset.cases if not c.reviewed and _base_id(c.id) not in reviewed_bases}
    skip = set(skip)
    rows = sorted((r for r in ranking.get("cases", []) if isinstance(r, dict)), key=lambda r: r.get("rank", 1 << 30))
    usable = [r for r in rows if r.get("id") in open_cases and r.get("id") not in skip
              and not r.get("error") and r.get("score") is not None]
    if not usable:
        return None
    top = usable[0]
    return RankedCase(id=top["id"], image=open_cases[top["id"]].image, rank=int(top.get("rank", 0)),
                      score=top.get("score"), kind=str(top.get("kind", "")), unreviewed_left=len(usable))


def ranking_covers(ranking: dict, dataset_folder, model_dir) -> bool:
    """Whether `ranking` can be reused: made with the model in `model_dir` (same folder, same
    model id) and holding every case of the dataset that is unreviewed now."""
    from LesionDetectLib.dataset import load_dataset
    from LesionDetectLib.errors import LesionDetectError
    from LesionDetectLib.models import read_card

    try:
        model_id = read_card(model_dir)[1].model_id
        dataset = load_dataset(dataset_folder)
    except LesionDetectError:
        return False
    if ranking.get("model") != str(model_dir) or ranking.get("model_id") != model_id:
        return False
    ranked = {r.get("id") for r in ranking.get("cases", []) if isinstance(r, dict)}
    return all(c.id in ranked for c in dataset.cases if not c.reviewed)


@dataclass
class NextCase:
    """What `Next case` did: the case it loaded (None when no unreviewed case is left: `message`
    says so) and its volume node."""
    case: RankedCase | None
    volume: object = None
    message: str = ""


def load_case_image(scene, case: RankedCase, name: str | None = None):
    """The case's image as a volume node in the slice views' background (like a sample study)."""
    from LesionDetectLib.io import read_image

    from . import convert, overlay

    node = convert.add_image_volume(scene, read_image(case.image), name or case.id)
    overlay.show_background(scene, node)
    return node
