"""The dataset layout that training reads and export writes.

A folder with `dataset.json` (nnU-Net/MSD style) and the files it names:

    {"name": "...", "modality": "CT" | "MR" | "NM",
     "labels": {"0": "background", "1": "lesion"},
     "cases": [{"id", "patient", "image", "mask"?, "roi"?, "points"?, "boxes"?,
                "negative_points"?, "negative_boxes"?, "label"?, "split"?, "review"?, ...}]}

`image`, `mask` (lesion mask, .seg.nrrd or .nii.gz), `roi` (the region a method works in:
bone mask, brain mask), `points` (fiducial .mrk.json) and `boxes` (ROI .mrk.json) are paths
relative to dataset.json or absolute.  `negative_points` / `negative_boxes` (same forms) are
detections a reviewer rejected in Slicer (the export writes them, scores kept): confirmed
non-lesions that training may use as hard negatives (`hard_negatives`).  Any other keys (e.g.
"key_slices", "classes", "provenance", "review" - a case with "review" has been reviewed,
which `lesiondetect rank` reads) are kept as they are.  Splits are always made by patient.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import LesionDetectError, input_error
from .files import read_json, write_json

DATASET_FILE = "dataset.json"
MODALITIES = ("CT", "MR", "NM")
PATH_KEYS = ("image", "mask", "roi", "points", "boxes", "negative_points", "negative_boxes")
NEGATIVE_KEYS = ("negative_points", "negative_boxes")  # rejected detections (hard negatives)


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
    negative_points: Path | None = None  # rejected detections (Fiducial .mrk.json), see hard_negatives
    negative_boxes: Path | None = None  # rejected detections (ROI .mrk.json)

    @property
    def reviewed(self) -> bool:
        """Whether a reviewer has been through this case (the export adds a "review" entry)."""
        return self.extra.get("review") is not None


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
    return file, read_json(file)


def _structure_problems(doc: Any) -> list[str]:
    """Problems with the JSON's shape (keys and types), before any file is looked at."""
    if not isinstance(doc, dict):
        return ["the top level must be a JSON object"]
    problems = []
    for key in ("name", "modality", "labels", "cases"):
        if key not in doc:
            problems.append(f'missing top-level key "{key}"')
    if "name" in doc and not isinstance(doc["name"], str):
        problems.append(f'"name" must be a text, not {_short(doc["name"])}')
    if "modality" in doc and doc["modality"] not in MODALITIES:
        problems.append(f'"modality" is {doc["modality"]!r}; expected one of {", ".join(MODALITIES)}')
    if "labels" in doc and (not isinstance(doc["labels"], dict) or _label_values(doc["labels"]) is None
                            or not all(isinstance(v, str) for v in doc["labels"].values())):
        problems.append('"labels" must be an object whose keys are label numbers and whose values are names, like '
                        '{"0": "background", "1": "lesion"}')
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
        if case.get("split") is not None and not isinstance(case["split"], str):
            problems.append(f'{where}: "split" must be a name such as "train" or "test"')
    return problems


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Parse dataset.json (folder or file).  Raises on structural problems; file checks are
    `validate_dataset`'s job."""
    file, doc = read_dataset_json(path)
    problems = _structure_problems(doc)
    if problems:
        raise input_error(file, "invalid dataset: " + "; ".join(problems)
                          + f". Run `lesiondetect validate {file.parent}` to list every problem.")
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


def validate_dataset(path: str | os.PathLike, check_image: Callable | None = None) -> list[str]:
    """Every problem with a dataset, at once, as readable lines (empty list = valid).

    Checks: JSON structure; duplicate case ids; a patient in two explicit splits; every named
    file exists and reads; the image is a finite greyscale image whose DICOM modality (if
    any) is the dataset's; masks and ROI masks have the image's geometry and only values
    listed in "labels"; points and boxes lie inside the image.  A case whose JSON entry is
    broken is still checked as far as its entry allows.  `check_image(image, path)` (e.g. a
    method's `check_input`) adds its `LesionDetectError` for each image as a problem.
    """
    try:
        file, doc = read_dataset_json(path)
    except LesionDetectError as exc:
        return [str(exc)]
    problems = [f"{file}: {p}" for p in _structure_problems(doc)]
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        return problems
    cases = [c for c in doc["cases"] if isinstance(c, dict)]
    problems += _duplicate_ids(cases) + _patients_in_two_splits(cases)
    modality = doc.get("modality") if doc.get("modality") in MODALITIES else None
    labels = doc.get("labels")
    label_values = _label_values(labels) if isinstance(labels, dict) else None
    for n, entry in enumerate(cases):
        if isinstance(entry.get("image"), str) and entry["image"]:
            where = f'case "{entry["id"]}"' if isinstance(entry.get("id"), str) else f"case #{n}"
            problems += [f"{where}: {p}" for p in _case_file_problems(file.parent, entry, modality, label_values,
                                                                      check_image)]
    return problems


def _duplicate_ids(cases: list[dict]) -> list[str]:
    counts = Counter(c["id"] for c in cases if isinstance(c.get("id"), str))
    return [f'case id "{case_id}" is used by {n} cases; every case needs its own id'
            for case_id, n in counts.items() if n > 1]


def _patients_in_two_splits(cases: list[dict]) -> list[str]:
    """Explicit splits that put one patient's images on both sides (a leak between train and test)."""
    splits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        if isinstance(c.get("patient"), str) and isinstance(c.get("split"), str):
            splits[c["patient"]][c["split"]].append(str(c.get("id")))
    return [f'patient "{patient}" has cases in more than one split ('
            + "; ".join(f"{split}: {', '.join(ids)}" for split, ids in sorted(by_split.items()))
            + "); all images of a patient must be in the same split"
            for patient, by_split in splits.items() if len(by_split) > 1]


_LABEL_KEY = re.compile(r"^[0-9]+$")  # as Resources/schemas/dataset.schema.json says


def _label_values(labels: dict) -> set[int] | None:
    if not all(isinstance(k, str) and _LABEL_KEY.match(k) for k in labels):
        return None
    return {int(k) for k in labels}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _case_file_problems(root: Path, entry: dict, modality: str | None, label_values: set[int] | None,
                        check_image: Callable | None = None) -> list[str]:
    """What is wrong with the files one case names (its image first: the rest is checked against it)."""
    from .geometry import Geometry
    from .io import read_image, require_scalar_volume

    image_path = _resolve(root, entry["image"])
    try:
        image = require_scalar_volume(read_image(image_path), image_path, allow_2d=True)
        if check_image is not None:
            check_image(image, image_path)
    except LesionDetectError as exc:
        return [f"image {exc}"]
    problems = []
    tag = image.GetMetaData("0008|0060").strip().upper() if image.HasMetaDataKey("0008|0060") else None
    if modality and tag in MODALITIES and tag != modality:
        problems.append(f"image {image_path}: is a {tag} image (DICOM Modality tag) but the dataset's modality is "
                        f"{modality}; move it to a {tag} dataset or fix \"modality\"")
    elif modality and check_image is None and image.GetDimension() == 3:
        from .gate import modality_problem

        wrong = modality_problem(image, modality)
        if wrong:
            problems.append(f"image {image_path}: {wrong} (the dataset's modality is {modality})")
    geom = Geometry.of(image)
    for key in ("mask", "roi"):
        if isinstance(entry.get(key), str):
            problems += [f"{key} {p}" for p in _mask_problems(_resolve(root, entry[key]), geom,
                                                             label_values if key == "mask" else None)]
    for key in ("points", "boxes", *NEGATIVE_KEYS):
        if isinstance(entry.get(key), str):
            problems += [f"{key} {p}" for p in _markup_problems(_resolve(root, entry[key]), key, geom)]
    return problems


def _mask_problems(path: Path, image_geometry, label_values: set[int] | None) -> list[str]:
    """A mask must sit on the image's grid; a lesion mask may only hold values "labels" lists."""
    from .geometry import Geometry
    from .io import read_image

    try:
        if str(path).lower().endswith(".seg.nrrd"):
            from . import segnrrd

            geom, values = segnrrd.read_segmentation(path).geometry, None  # segments, not label values
        else:
            mask = read_image(path, allow_folder=False)
            geom, values = Geometry.of(mask), _mask_values(mask)
    except LesionDetectError as exc:
        return [str(exc)]
    problems = []
    if not image_geometry.same_grid(geom):
        problems.append(f"{path}: has a different geometry from the image (size {list(geom.size)} vs "
                        f"{list(image_geometry.size)}, spacing {_r(geom.spacing)} vs {_r(image_geometry.spacing)}, "
                        f"origin {_r(geom.origin)} vs {_r(image_geometry.origin)}); it was probably drawn on "
                        "another image or resampled. Export it again from the image it belongs to.")
    if values is not None and label_values is not None:
        if not np.all(np.mod(values, 1) == 0):
            problems.append(f"{path}: holds non-integer values; a mask must hold whole label numbers")
        else:
            unknown = sorted(int(v) for v in values if int(v) not in label_values)
            if unknown:
                problems.append(f"{path}: holds label value(s) {', '.join(map(str, unknown))} that \"labels\" does "
                                f"not list (it lists {', '.join(map(str, sorted(label_values)))})")
    return problems


def _mask_values(mask) -> np.ndarray | None:
    import SimpleITK as sitk

    if mask.GetNumberOfComponentsPerPixel() != 1:
        return None
    return np.unique(sitk.GetArrayViewFromImage(mask))


def _markup_problems(path: Path, key: str, image_geometry) -> list[str]:
    from . import markups

    try:
        is_points = key.endswith("points")
        items = markups.read_points(path) if is_points else markups.read_boxes(path)
    except LesionDetectError as exc:
        return [str(exc)]
    what = "point" if is_points else "box centre"
    positions = [it.position for it in items] if is_points else [it.center for it in items]
    return [f"{path}: {what} {n} at LPS {_r(pos)} mm lies outside the image (was it placed on another image?)"
            for n, pos in enumerate(positions) if not image_geometry.contains(pos)]


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def hard_negatives(case: Case) -> tuple[list, list]:
    """(rejected points, rejected boxes) of a case: the detections a reviewer rejected, read
    from its "negative_points" (Fiducial) and "negative_boxes" (ROI) markups, scores kept, as
    `LesionPoint`s and `LesionBox`es in LPS; empty lists when it has none.  A named file that is
    missing or not a markups file of that kind is a `LesionDetectError` naming the file (a
    broken export stops training rather than training without its negatives)."""
    from . import markups

    points, boxes = [], []
    for key, reader, out in (("negative_points", markups.read_points, points),
                             ("negative_boxes", markups.read_boxes, boxes)):
        path = getattr(case, key, None)
        if path is None:
            continue
        if not Path(path).is_file():
            raise input_error(path, f'not found: case "{case.id}" names it as its "{key}" (detections rejected '
                                    "in review); export the case again or remove the key")
        out += reader(path)
    return points, boxes


def hard_negative_centres(case: Case) -> np.ndarray:
    """Centres (N, 3) LPS of a case's rejected detections: its rejected points, then its
    rejected boxes' centres."""
    points, boxes = hard_negatives(case)
    return np.array([p.position for p in points] + [b.center for b in boxes], dtype=float).reshape(-1, 3)


def read_mask(path: str | os.PathLike, geometry=None) -> np.ndarray:
    """A lesion or ROI mask as a uint8 (z, y, x) array (union of all segments of a .seg.nrrd)."""
    from .io import read_image
    import SimpleITK as sitk

    if str(path).lower().endswith(".seg.nrrd"):
        from . import segnrrd

        return segnrrd.read_segmentation(path).union_mask(geometry).astype(np.uint8)
    return (sitk.GetArrayFromImage(read_image(path, allow_folder=False)) > 0).astype(np.uint8)


def split_by_patient(cases: list[Case], fractions: dict[str, float], seed: int = 0) -> dict[str, list[Case]]:
    """Assign whole patients to splits, e.g. {"train": 0.72, "val": 0.10, "test": 0.18}.

    Patients are shuffled with `seed`; each split gets its share of patients rounded by the
    largest-remainder rule (so every count is within one of its exact share), and every split
    with a positive fraction gets at least one patient when there are enough patients.  No
    patient's images ever straddle two splits.
    """
    if any(v < 0 for v in fractions.values()) or not any(v > 0 for v in fractions.values()):
        raise LesionDetectError(f"split fractions must be >= 0 with at least one positive, not {fractions}")
    names = [k for k, v in fractions.items() if v > 0]
    patients = sorted({c.patient for c in cases})
    random.Random(seed).shuffle(patients)
    counts = _largest_remainder(len(patients), [fractions[k] for k in names])
    if len(patients) >= len(names):
        for i, count in enumerate(counts):
            if count == 0:  # take one from the biggest split
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    assignment, start = {}, 0
    for name, count in zip(names, counts):
        for p in patients[start:start + count]:
            assignment[p] = name
        start += count
    out: dict[str, list[Case]] = {k: [] for k in names}
    for c in cases:
        out[assignment[c.patient]].append(c)
    return out


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Whole numbers summing to `total`, each within one of total * weight / sum(weights)."""
    exact = np.asarray(weights, dtype=float) / float(sum(weights)) * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val"}


def _split_name(name: str | None) -> str | None:
    return SPLIT_ALIASES.get(name, name)


def split_cases(cases: list[Case], fractions: dict[str, float], seed: int = 0,
                stratify: Callable[[Case], Any] | None = None) -> dict[str, list[Case]]:
    """The one case-selection policy: {"train": [...], "val": [...], "test": [...]}.

    Arguments:
        cases: the cases to divide (e.g. a Dataset's `cases`, or only its labelled ones).
        fractions: shares of patients per part when the cases carry no split of their own,
            e.g. {"train": 0.72, "val": 0.10, "test": 0.18}, {"train": 0.85, "val": 0.15} or
            {"train": 1.0}; parts it does not name stay empty.  Keys are "train", "val"
            ("validation" is read as "val") and "test".
        seed: shuffles the patients (`split_by_patient`); the same seed gives the same parts.
        stratify: optional key of a case (e.g. its class label): the patients of each key
            (a patient's key is the largest of its cases') are split separately by the same
            fractions, so every part keeps the classes' proportions (within one patient).

    Returns:
        All three keys, always.  When any case has a `split`, the dataset's own splits are
        used as they are ("validation" read as "val"; cases without a split, or with a split
        of another name, go nowhere).  Otherwise whole patients are assigned by
        `split_by_patient(cases, fractions, seed)`, so no patient is in two parts.
    """
    cases = list(cases)
    out: dict[str, list[Case]] = {name: [] for name in SPLITS}
    if any(c.split for c in cases):
        for c in cases:
            name = _split_name(c.split)
            if name in out:
                out[name].append(c)
        return out
    shares: dict[str, float] = {}
    for key, value in fractions.items():
        name = _split_name(key)
        if name not in out:
            raise LesionDetectError(f"unknown split '{key}' in split fractions {fractions}; use "
                                    + ", ".join(SPLITS))
        shares[name] = shares.get(name, 0.0) + float(value)
    if stratify is None:
        out.update(split_by_patient(cases, shares, seed))
        return out
    patient_key: dict[str, Any] = {}
    for c in cases:
        key = stratify(c)
        patient_key[c.patient] = key if c.patient not in patient_key else max(patient_key[c.patient], key)
    for key in sorted(set(patient_key.values())):
        for name, part in split_by_patient([c for c in cases if patient_key[c.patient] == key], shares, seed).items():
            out[name] += part
    return out


def cases_for(cases: list[Case], split: str, fractions: dict[str, float], seed: int = 0,
              stratify: Callable[[Case], Any] | None = None) -> list[Case]:
    """The cases of one part, e.g. for `lesiondetect evaluate --split test`.

    Arguments:
        cases: all candidate cases.
        split: "train", "val" (or "validation"), "test", or "all" (every case).
        fractions, seed, stratify: as for `split_cases`, used when the cases carry no split of
            their own.

    Returns:
        `split_cases(cases, fractions, seed)[split]`; except that when the cases define no
        splits of their own and that part is empty, every case (a dataset without splits is
        trained and tested whole).

    Raises:
        LesionDetectError: for a split name other than the ones above.
    """
    cases = list(cases)
    if split == "all":
        return cases
    name = _split_name(split)
    if name not in SPLITS:
        raise LesionDetectError(f"unknown split '{split}'; use one of train, val (or validation), test, all")
    chosen = split_cases(cases, fractions, seed, stratify)[name]
    if not chosen and not any(c.split for c in cases):
        return cases
    return chosen


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


def check_dataset(path: str | os.PathLike, method) -> Dataset:
    """The dataset gate of `train` and `evaluate`: `validate_dataset`'s checks plus the
    method's own input check of every image (3-D methods; a planar method's files may hold
    several views, which `validate_dataset` checks as images), every problem listed in one
    error; then the parsed dataset, whose modality must be the method's."""
    try:
        modality = load_dataset(path).modality
    except LesionDetectError:
        modality = None  # validate_dataset lists what is wrong
    if modality is not None and modality != method.modality:
        raise input_error(path, f"is a {modality} dataset; method '{method.name}' needs {method.modality}")
    check = method.check_input if method.modality != "NM" else None
    problems = validate_dataset(path, check_image=check)
    if problems:
        listed = "\n  ".join(problems)
        raise input_error(_dataset_json(path), f"has {len(problems)} problem(s); nothing was done:\n  {listed}")
    return load_dataset(path)
