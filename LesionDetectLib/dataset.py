"""The dataset layout that training reads and export writes.

A folder with `dataset.json` (nnU-Net/MSD style) and the files it names:

    {"name": "...", "modality": "CT" | "MR" | "NM",
     "labels": {"0": "background", "1": "lesion"},
     "cases": [{"id", "patient", "image", "mask"?, "roi"?, "points"?, "boxes"?,
                "label"?, "split"?, ...}]}

`image`, `mask` (lesion mask, .seg.nrrd or .nii.gz), `roi` (the region a method works in:
bone mask, brain mask), `points` (fiducial .mrk.json) and `boxes` (ROI .mrk.json) are paths
relative to dataset.json or absolute.  Any other keys (e.g. "key_slices", "classes",
"provenance") are kept as they are.  Splits are always made by patient.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LesionDetectError, input_error
from .files import write_json

DATASET_FILE = "dataset.json"
MODALITIES = ("CT", "MR", "NM")
PATH_KEYS = ("image", "mask", "roi", "points", "boxes")


@dataclass
class Case:
    id: str
    patient: str
    image: Path
    mask: Path | None = None
    roi: Path | None = None
    points: Path | None = None
    boxes: Path | None = None
    label: Any = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    root: Path
    name: str
    modality: str
    labels: dict[str, str]
    cases: list[Case]
    extra: dict[str, Any] = field(default_factory=dict)

    def by_split(self, split: str) -> list[Case]:
        return [c for c in self.cases if c.split == split]


def _resolve(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else root / p


def _dataset_json(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / DATASET_FILE if path.is_dir() else path


def read_dataset_json(path: str | os.PathLike) -> tuple[Path, dict]:
    """(path of dataset.json, its parsed content); the path may be the folder or the file."""
    file = _dataset_json(path)
    if not file.exists():
        raise input_error(file, "not found: a dataset is a folder with a dataset.json")
    try:
        return file, json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error(file, f"is not valid JSON ({exc})") from None


def _structure_problems(doc: Any) -> list[str]:
    """Problems with the JSON's shape (keys and types), before any file is looked at."""
    if not isinstance(doc, dict):
        return ["the top level must be a JSON object"]
    problems = []
    for key in ("name", "modality", "labels", "cases"):
        if key not in doc:
            problems.append(f'missing top-level key "{key}"')
    if "modality" in doc and doc["modality"] not in MODALITIES:
        problems.append(f'"modality" is {doc["modality"]!r}; expected one of {", ".join(MODALITIES)}')
    if "labels" in doc and not isinstance(doc["labels"], dict):
        problems.append('"labels" must be an object like {"0": "background", "1": "lesion"}')
    cases = doc.get("cases", [])
    if not isinstance(cases, list):
        return problems + ['"cases" must be a list']
    for n, case in enumerate(cases):
        where = f"case #{n}" + (f' ("{case.get("id")}")' if isinstance(case, dict) and "id" in case else "")
        if not isinstance(case, dict):
            problems.append(f"{where}: must be an object")
            continue
        for key in ("id", "patient", "image"):
            if not isinstance(case.get(key), str) or not case.get(key):
                problems.append(f'{where}: missing or empty "{key}"')
        for key in PATH_KEYS[1:]:
            if key in case and case[key] is not None and not isinstance(case[key], str):
                problems.append(f'{where}: "{key}" must be a path string')
    return problems


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Parse dataset.json (folder or file).  Raises on structural problems; file checks are
    `validate_dataset`'s job."""
    file, doc = read_dataset_json(path)
    problems = _structure_problems(doc)
    if problems:
        raise input_error(file, "invalid dataset: " + "; ".join(problems))
    root = file.parent
    cases = []
    for c in doc["cases"]:
        known = {"id", "patient", "label", "split", *PATH_KEYS}
        cases.append(Case(id=c["id"], patient=c["patient"], label=c.get("label"), split=c.get("split"),
                          extra={k: v for k, v in c.items() if k not in known},
                          **{k: _resolve(root, c.get(k)) for k in PATH_KEYS}))
    extra = {k: v for k, v in doc.items() if k not in ("name", "modality", "labels", "cases")}
    return Dataset(root=root, name=doc["name"], modality=doc["modality"], labels=doc["labels"], cases=cases,
                   extra=extra)


def validate_dataset(path: str | os.PathLike) -> list[str]:
    """Every problem with a dataset, at once, as readable lines (empty list = valid).

    Checks: JSON structure; duplicate case ids; every named file exists and reads; image is
    a finite scalar image; masks and ROI masks have the image's geometry; points and boxes
    lie inside the image.
    """
    from . import markups
    from .geometry import Geometry
    from .io import read_image, require_scalar_volume

    try:
        file, doc = read_dataset_json(path)
    except LesionDetectError as exc:
        return [str(exc)]
    problems = _structure_problems(doc)
    if problems:
        return [f"{file}: {p}" for p in problems]
    ds = load_dataset(file)
    for case_id, n in Counter(c.id for c in ds.cases).items():
        if n > 1:
            problems.append(f'duplicate case id "{case_id}" ({n} cases)')
    for case in ds.cases:
        where = f'case "{case.id}"'
        try:
            image = require_scalar_volume(read_image(case.image), case.image, allow_2d=True)
        except LesionDetectError as exc:
            problems.append(f"{where}: image {exc}")
            continue
        geom = Geometry.of(image)
        for key in ("mask", "roi"):
            p = getattr(case, key)
            if p is None:
                continue
            try:
                other = _mask_geometry(p)
            except LesionDetectError as exc:
                problems.append(f"{where}: {key} {exc}")
                continue
            if not geom.same_grid(other):
                problems.append(f"{where}: {key} {p} has a different geometry from the image "
                                f"(size {other.size} vs {geom.size}, spacing {_r(other.spacing)} vs {_r(geom.spacing)}, "
                                f"origin {_r(other.origin)} vs {_r(geom.origin)})")
        for key, reader in (("points", markups.read_points), ("boxes", markups.read_boxes)):
            p = getattr(case, key)
            if p is None:
                continue
            try:
                items = reader(p)
            except LesionDetectError as exc:
                problems.append(f"{where}: {key} {exc}")
                continue
            positions = [it.position for it in items] if key == "points" else [it.center for it in items]
            for n, pos in enumerate(positions):
                if not geom.contains(pos):
                    problems.append(f"{where}: {key} item {n} at LPS {_r(pos)} mm lies outside the image")
    return problems


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def _mask_geometry(path: Path):
    """Geometry of a mask file: a .seg.nrrd's reference grid, or any image's grid."""
    from . import segnrrd
    from .geometry import Geometry
    from .io import read_image

    if str(path).lower().endswith(".seg.nrrd"):
        return segnrrd.read_segmentation(path).geometry
    return Geometry.of(read_image(path))


def read_mask(path: str | os.PathLike, geometry=None) -> np.ndarray:
    """A lesion or ROI mask as a uint8 (z, y, x) array (union of all segments of a .seg.nrrd)."""
    from . import segnrrd
    from .io import read_image
    import SimpleITK as sitk

    if str(path).lower().endswith(".seg.nrrd"):
        seg = segnrrd.read_segmentation(path)
        return seg.union_mask(geometry).astype(np.uint8)
    return (sitk.GetArrayFromImage(read_image(path)) > 0).astype(np.uint8)


def split_by_patient(cases: list[Case], fractions: dict[str, float], seed: int = 0) -> dict[str, list[Case]]:
    """Assign whole patients to splits, e.g. {"train": 0.72, "val": 0.10, "test": 0.18}.

    Patients are shuffled with `seed` and given to splits in order until each split's share
    of patients is reached; every split with a positive fraction gets at least one patient
    when there are enough patients.  No patient's images ever straddle two splits.
    """
    patients = sorted({c.patient for c in cases})
    random.Random(seed).shuffle(patients)
    names = [k for k, v in fractions.items() if v > 0]
    total = sum(fractions[k] for k in names)
    counts = {k: int(round(len(patients) * fractions[k] / total)) for k in names}
    if len(patients) >= len(names):
        for k in names:
            counts[k] = max(counts[k], 1)
    # fix rounding so the counts add up, taking from / giving to the largest split
    while sum(counts.values()) > len(patients):
        counts[max(counts, key=counts.get)] -= 1
    while sum(counts.values()) < len(patients):
        counts[max(names, key=lambda k: fractions[k])] += 1
    assignment, start = {}, 0
    for k in names:
        for p in patients[start:start + counts[k]]:
            assignment[p] = k
        start += counts[k]
    out: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        out[assignment[c.patient]].append(c)
    return {k: out.get(k, []) for k in names}


def write_dataset_json(root: str | os.PathLike, name: str, modality: str, cases: list[dict],
                       labels: dict[str, str] | None = None, overwrite: bool = False, **extra) -> Path:
    """Write `root/dataset.json` atomically.  `cases` are dicts in the file's form (paths
    relative to root); extra keyword arguments become top-level keys (e.g. parameters)."""
    doc = {"name": name, "modality": modality, "labels": labels or {"0": "background", "1": "lesion"},
           **extra, "cases": cases}
    problems = _structure_problems(doc)
    if problems:
        raise LesionDetectError("refusing to write an invalid dataset.json: " + "; ".join(problems))
    return write_json(Path(root) / DATASET_FILE, doc, overwrite=overwrite)
