"""How a prediction did against a study's truth, lesion by lesion (the demo's verdict).

`check_against_truth(pred, truth)` compares one `Prediction` with the ground truth of one
case (a dataset `Case`, as the synthetic studies write them, or a `Truth` made by hand) and
returns a `TruthCheck`: lesions found / missed / false, lesion-level precision, recall and
F1, or for a classifier its class result against the case's label.  One rule per output
kind, chosen in this order (the first the prediction has and the truth can answer):

- "vertebrae" (vertebra-level class results, spine-mtl; the case lists its vertebrae with
  their slices): each predicted vertebra is matched to the true vertebra whose slices hold
  its z; a vertebra with metastasis (bone quality not normal) is found when its match is
  predicted not normal; false = vertebrae predicted with metastasis that have none (or no
  true vertebra); `correct` = true vertebrae whose bone quality the match got exactly, and
  every vertebra is listed (truth | prediction).
- "class"  (image-level class results; the case has a "label"): the prediction is positive
  when its image-level result is a class that is not negative (findings.is_negative_class:
  normal / background / negative / "no ..."), the truth when the label is not 0; correct
  when the two agree.
- "points" (lesion points; the truth has boxes or points): `metrics.matching.point_hits`: a
  point hits a truth box it lies inside, or a truth point within `hit_radius_mm` (the model
  card's `hit_radius_mm`, else 10 mm); `match_detections` counts each lesion once.
  found = lesions hit; missed = the rest; false = points that hit no lesion (more points on
  a found lesion are neither).  precision = found / (found + false), recall = found / truth.
- "boxes"  (boxes; the truth has boxes): `point_hits` on the box centres: a box finds the
  lesions whose truth box holds its centre (the rule the shipped liver-frcnn model's
  post-processing was chosen by, Testing/benchmarks/make_shipped_models.py).  Counting as
  for points.
- "mask"   (a mask; the truth has a mask): Anima's lesion-wise rule
  (`metrics.lesionwise.lesion_detection`: face-connected components over 3 mm^3, detected
  when overlapping enough and not mostly outside).  found = truth lesions detected; false =
  predicted lesions that are not true positives; precision = true positive predicted
  lesions / predicted lesions (Anima's), recall = found / truth.

F1 = 2 P R / (P + R) (`lesionwise.f1_score`: 0 when either is 0, NaN when neither is defined).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import markups
from .findings import LesionBox, LesionPoint, is_negative_class
from .metrics.lesionwise import f1_score, lesion_detection
from .metrics.matching import match_detections, point_hits
from .prediction import Prediction

KINDS = ("vertebrae", "class", "points", "boxes", "mask")
HIT_RADIUS_MM = 10.0


@dataclass
class Truth:
    """The ground truth of one case: any of a lesion mask on the prediction's grid (values
    > 0 are lesion), lesion boxes, lesion points, and an image label (0 = negative) with its
    name."""

    mask: np.ndarray | None = None
    boxes: list[LesionBox] = field(default_factory=list)
    points: list[LesionPoint] = field(default_factory=list)
    label: Any = None
    label_name: str | None = None
    # spine: {"name", "bone_quality", "posterolateral", "slices": [slice index, ...]} per vertebra
    vertebrae: list[dict] = field(default_factory=list)

    @classmethod
    def of_case(cls, case, geometry=None, labels: dict | None = None) -> "Truth":
        """The truth of a dataset `Case` (its mask read on `geometry`, its boxes, points and
        label; `labels` is the dataset's label -> name table)."""
        from .dataset import read_mask

        mask = None
        if case.mask is not None:
            mask = read_mask(case.mask, geometry) if geometry is not None else read_mask(case.mask)
            if geometry is not None:
                mask = np.asarray(mask).reshape(geometry.shape)
        name = None if case.label is None else (labels or {}).get(str(case.label), str(case.label))
        return cls(mask=mask, boxes=markups.read_boxes(case.boxes) if case.boxes else [],
                   points=markups.read_points(case.points) if case.points else [], label=case.label,
                   label_name=name, vertebrae=[v for v in case.extra.get("vertebrae", []) if v.get("slices")])


@dataclass
class TruthCheck:
    """The verdict.  Detectors: `truth`, `found`, `missed`, `false`, `predicted` lesion
    counts and the lesion-level scores; classifiers: `predicted_class`, `truth_class`,
    `correct` (and the positive `probability`)."""

    kind: str
    rule: str
    truth: int = 0
    found: int = 0
    missed: int = 0
    false: int = 0
    predicted: int = 0
    precision: float = math.nan
    recall: float = math.nan
    predicted_class: str | None = None
    truth_class: str | None = None
    correct: bool | None = None
    probability: float | None = None
    details: list[str] = field(default_factory=list)  # one line per vertebra (spine)

    @property
    def f1(self) -> float:
        return f1_score(self.precision, self.recall)

    def to_dict(self) -> dict:
        """As JSON can hold it (NaN -> None)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in {**asdict(self), "f1": self.f1}.items()}

    def lines(self) -> list[str]:
        """What the demo prints (label in a 12-character column, then the value)."""
        if self.kind == "class":
            verdict = "correct" if self.correct else "wrong"
            p = "" if self.probability is None else f" (p {self.probability:.3f})"
            return [f"{'class':12s} {self.predicted_class}{p}; the study's label: {self.truth_class}: {verdict}",
                    f"{'rule':12s} {self.rule}"]
        rows = [f"{'vertebra':12s} {line}" for line in self.details]
        if self.kind == "vertebrae":
            rows.append(f"{'bone quality':12s} {self.probability:.0%} of the vertebrae exactly right")
        return rows + [f"{'lesions':12s} {self.found} found, {self.missed} missed, {self.false} false "
                f"({self.truth} in the truth, {self.predicted} predicted)",
                f"{'lesion level':12s} precision {_fmt(self.precision)}, recall {_fmt(self.recall)}, "
                f"F1 {_fmt(self.f1)}",
                f"{'rule':12s} {self.rule}"]


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def choose_kind(pred: Prediction, truth: Truth) -> str | None:
    """The first of KINDS the prediction has and the truth can answer (None: nothing to compare)."""
    if any(c.scope == "vertebra" for c in pred.classes) and truth.vertebrae:
        return "vertebrae"
    if any(c.scope == "image" for c in pred.classes) and truth.label is not None:
        return "class"
    if pred.points and (truth.boxes or truth.points):
        return "points"
    if pred.boxes and truth.boxes:
        return "boxes"
    if pred.mask is not None and truth.mask is not None:
        return "mask"
    return None


def check_against_truth(pred: Prediction, truth, kind: str | None = None, hit_radius_mm: float | None = None,
                        labels: dict | None = None) -> TruthCheck | None:
    """How `pred` did against `truth` (a `Truth`, or a dataset `Case` read with `Truth.of_case`
    on the prediction's grid, `labels` naming its label); `kind` forces one of KINDS, else
    `choose_kind` picks it.  None when the prediction holds nothing the truth can judge."""
    if not isinstance(truth, Truth):
        truth = Truth.of_case(truth, pred.geometry, labels)
    kind = kind or choose_kind(pred, truth)
    if kind is None:
        return None
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "vertebrae":
        return _check_vertebrae(pred, truth)
    if kind == "class":
        return _check_class(pred, truth)
    if kind == "mask":
        return _check_mask(pred, truth)
    if kind == "points":
        radius = HIT_RADIUS_MM if hit_radius_mm is None else float(hit_radius_mm)
        lesions = truth.boxes or truth.points
        hits = point_hits(pred.points, lesions, radius)
        where = "inside a truth box" if truth.boxes else f"within {radius:g} mm of a truth lesion centre"
        return _count("points", f"a point finds a lesion when it lies {where}", [p.score for p in pred.points],
                      hits)
    centres = [LesionPoint(b.center, b.score) for b in pred.boxes]
    return _count("boxes", "a box finds a lesion when its centre lies inside the lesion's truth box",
                  [b.score for b in pred.boxes], point_hits(centres, truth.boxes, 0.0))


def _count(kind: str, rule: str, scores, hits) -> TruthCheck:
    fp, lesion_scores = match_detections(scores, hits)
    found = sum(s is not None for s in lesion_scores)
    n_truth = len(lesion_scores)
    precision = found / (found + len(fp)) if found + len(fp) else math.nan
    recall = found / n_truth if n_truth else math.nan
    return TruthCheck(kind=kind, rule=rule, truth=n_truth, found=found, missed=n_truth - found, false=len(fp),
                      predicted=len(scores), precision=precision, recall=recall)


def _check_mask(pred: Prediction, truth: Truth) -> TruthCheck:
    result = lesion_detection(np.asarray(truth.mask) > 0, pred.mask, spacing=pred.geometry.spacing)
    found = int(result.truth_detected.sum())
    true_pred = int(result.pred_true.sum())
    return TruthCheck(kind="mask", rule="lesions are mask components over 3 mm^3, matched by Anima's lesion-wise "
                                        "overlap rule (MSSEG)",
                      truth=result.n_truth, found=found, missed=result.n_truth - found,
                      false=result.n_pred - true_pred, predicted=result.n_pred, precision=result.precision,
                      recall=result.sensitivity)


def _check_vertebrae(pred: Prediction, truth: Truth) -> TruthCheck:
    """The vertebra rule (module docstring)."""
    dz = float(pred.geometry.matrix[2, 2])
    z0 = float(pred.geometry.origin[2])
    spans = [(min(v["slices"]), max(v["slices"])) for v in truth.vertebrae]
    matched: dict[int, tuple[str, str]] = {}  # true vertebra -> (predicted label, bone quality)
    false = n_pos = 0
    for c in (c for c in pred.classes if c.scope == "vertebra"):
        k = (c.z_mm - z0) / dz if c.z_mm is not None else math.nan
        owner = next((n for n, (lo, hi) in enumerate(spans) if lo - 0.5 <= k <= hi + 0.5), None)
        quality = c.label.split(": ", 1)[-1].split(",")[0]  # "L2: lytic, bilateral" -> "lytic"
        n_pos += quality != "normal"
        if owner is None or owner in matched:
            false += quality != "normal"
            continue
        matched[owner] = (c.label, quality)
        false += quality != "normal" and truth.vertebrae[owner]["bone_quality"] == "normal"
    diseased = [n for n, v in enumerate(truth.vertebrae) if v["bone_quality"] != "normal"]
    found = sum(n in matched and matched[n][1] != "normal" for n in diseased)
    exact = sum(n in matched and matched[n][1] == v["bone_quality"] for n, v in enumerate(truth.vertebrae))
    details = [f"{v['name']}: {v['bone_quality']}, {v['posterolateral']} | "
               f"{matched[n][0] if n in matched else 'not found'}" for n, v in enumerate(truth.vertebrae)]
    return TruthCheck(kind="vertebrae", rule="a vertebra with metastasis is found when the predicted vertebra at its "
                                             "level is not normal; lines: truth | prediction",
                      truth=len(diseased), found=found, missed=len(diseased) - found, false=int(false),
                      predicted=n_pos, precision=found / n_pos if n_pos else math.nan,
                      recall=found / len(diseased) if diseased else math.nan,
                      probability=exact / len(truth.vertebrae), details=details)


def _check_class(pred: Prediction, truth: Truth) -> TruthCheck:
    from .findings import positive_probability

    image = next(c for c in pred.classes if c.scope == "image")
    predicted_positive = not is_negative_class(image.label)
    truth_positive = _label_positive(truth.label)
    return TruthCheck(kind="class", rule="the image-level class (positive unless normal/background/negative) "
                                         "against the label (positive unless 0)",
                      predicted_class=image.label, truth_class=truth.label_name or str(truth.label),
                      correct=predicted_positive == truth_positive, probability=positive_probability(pred.classes))


def _label_positive(label) -> bool:
    try:
        return float(label) != 0
    except (TypeError, ValueError):
        return not is_negative_class(str(label))
