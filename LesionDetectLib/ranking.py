"""Which case to review next: a dataset's unreviewed cases ordered by how much a review would teach.

A case is reviewed when its dataset.json entry has a "review" key (the Slicer export writes
{"review": {..., "findings": [...]}}); every other case is run through the model and scored
by the model's own uncertainty about it, highest first (uncertainty sampling: the cases the
model is least sure of are the ones whose corrected labels move it most).  One score per
output kind, the first that the prediction has:

- class probabilities (bone-scan-cls, spine-mtl's slice/vertebra classes): the normalised
  entropy of the class probabilities, H(p) / log2(number of classes), in [0, 1]; of the
  image-level result, else the highest over the slice-level ones.  For two classes this is
  the binary entropy of the positive probability: 1 at p = 0.5, 0 at p = 0 or 1; it orders
  cases exactly as the margin |p - 0.5| does, and unlike a margin to the decision threshold
  needs no calibrated threshold (the threshold is not where the model is least sure).
- a probability map (bone-ct-patch, ms-flair-fcn): the mean binary entropy (bits) of the
  voxels in the map's region of interest, the voxels with probability >= `roi_min` (0.01):
  the rest of the volume (outside the bone or brain, or confidently clear) is the same in
  every case and would only dilute the score with the image's size.  "uncertain_mm3", the
  volume of voxels with entropy > 0.5 bit (0.11 < p < 0.89), is reported beside it.  Binary
  entropy rather than flip disagreement: it needs one pass of the model, and the two agree in
  which voxels are hard (a voxel the flips disagree on sits near 0.5 in their mean).
- boxes or points without a map (liver-frcnn): a score margin, the number of findings whose
  score is within `margin` (0.2) of the decision threshold - the detections a reviewer's
  accept or reject actually decides - with the mean closeness 1 - |s - t| / margin as the
  tie-break.  The detector drops boxes under its threshold, so this counts the weak side
  above it only.

`rank` returns one row per unreviewed case; a case whose image cannot be read or checked gets
an "error" and sorts last, so one bad file does not stop the ranking.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Case, Dataset, load_dataset
from .errors import LesionDetectError, input_error
from .files import write_json, write_text
from .prediction import Prediction

ROI_MIN = 0.01
MARGIN = 0.2
UNCERTAIN_BITS = 0.5


def binary_entropy(p) -> np.ndarray:
    """H(p) in bits, elementwise (0 at p = 0 and 1, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def class_entropy(probabilities: dict[str, float]) -> float:
    """Normalised entropy of one class result's probabilities, in [0, 1]."""
    p = np.asarray([float(v) for v in probabilities.values()], dtype=np.float64)
    if len(p) < 2 or not np.all(np.isfinite(p)) or p.sum() <= 0:
        return 0.0
    if len(p) == 2:
        return float(binary_entropy(p[1] / p.sum()))
    p = np.clip(p / p.sum(), 1e-12, 1.0)
    return float(-(p * np.log2(p)).sum() / math.log2(len(p)))


def uncertainty_map(pred: Prediction) -> np.ndarray | None:
    """The binary entropy (bits) of every voxel of the probability map, zero outside its region
    of interest; None without a map."""
    if pred.probability is None:
        return None
    h = binary_entropy(pred.probability).astype(np.float32)
    h[pred.probability < ROI_MIN] = 0.0
    return h


def score_prediction(pred: Prediction, margin: float = MARGIN) -> dict[str, Any]:
    """{"kind", "score", "tie_break", "detail"} for one prediction (module docstring)."""
    if pred.classes:
        image_level = [c for c in pred.classes if c.scope == "image"]
        results = image_level or pred.classes
        entropies = [class_entropy(c.probabilities) for c in results]
        k = int(np.argmax(entropies))
        return {"kind": "class entropy", "score": round(entropies[k], 6), "tie_break": 0.0,
                "detail": {"probabilities": results[k].probabilities, "scope": results[k].scope,
                           **({"index": results[k].index} if results[k].index is not None else {})}}
    if pred.probability is not None:
        roi = pred.probability >= ROI_MIN
        h = binary_entropy(pred.probability[roi])
        voxel_mm3 = float(np.prod(pred.geometry.spacing))
        return {"kind": "map entropy", "score": round(float(h.mean()) if h.size else 0.0, 6),
                "tie_break": float(h.sum()),
                "detail": {"roi_voxels": int(roi.sum()),
                           "uncertain_mm3": round(float((h > UNCERTAIN_BITS).sum()) * voxel_mm3, 1)}}
    findings = [*pred.boxes, *pred.points]
    if findings:
        threshold = float(pred.threshold if pred.threshold is not None else 0.5)
        distance = np.abs(np.asarray([f.score for f in findings], dtype=np.float64) - threshold)
        near = distance <= margin
        closeness = float(np.mean(1 - distance[near] / margin)) if near.any() and margin > 0 else 0.0
        return {"kind": "score margin", "score": int(near.sum()), "tie_break": round(closeness, 6),
                "detail": {"findings": len(findings), "threshold": threshold, "margin": margin}}
    return {"kind": "nothing found", "score": 0.0, "tie_break": 0.0, "detail": {}}


def unreviewed(dataset: Dataset) -> list[Case]:
    """The cases without a "review" entry, in dataset order."""
    return [c for c in dataset.cases if not c.reviewed]


def method_for(dataset: Dataset, method: str | None = None) -> str:
    """The method to rank with when no model is given: `method`, else the one named by the cases'
    export provenance, else the only method of the dataset's modality."""
    from .methods import get_method, method_names

    if method:
        return method
    named = {c.extra.get("provenance", {}).get("method") for c in dataset.cases
             if isinstance(c.extra.get("provenance"), dict)} - {None}
    if len(named) == 1 and next(iter(named)) in method_names():
        return next(iter(named))
    fitting = [m for m in method_names() if get_method(m).modality == dataset.modality]
    if len(fitting) == 1:
        return fitting[0]
    raise LesionDetectError(f"cannot tell which method to rank {dataset.root} with ({dataset.modality} fits "
                            f"{', '.join(fitting) or 'no method'}); pass --method or --model")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def rank(data: str | os.PathLike, model: str | os.PathLike | None = None, method: str | None = None,
         device: str = "auto", margin: float = MARGIN, uncertainty_dir: str | os.PathLike | None = None,
         loaded=None) -> dict[str, Any]:
    """Rank a dataset's unreviewed cases, most informative first.

    Arguments:
        data: dataset folder or its dataset.json.
        model: a trained model folder; default the shipped model of `method` (or of the
            dataset's method, `method_for`).
        margin: the score margin of box and point outputs.
        uncertainty_dir: where to write each map case's entropy volume (<case>.nii.gz, the
            input's geometry, bits), for the Slicer module to overlay.
        loaded: (method, model, card, device) already loaded (benchmarks rank repeatedly).

    Returns:
        {"dataset", "method", "model", "model_id", "margin", "reviewed", "cases": [rows]}; each
        row {"rank", "id", "patient", "kind", "score", "tie_break", "detail", "uncertainty"?,
        "error"?}.
    """
    from .models import shipped_model_dir
    from .progress import progress
    from .training import load_trained

    if not (margin >= 0):
        raise LesionDetectError(f"--margin {margin}: a score margin is a number >= 0")
    dataset = load_dataset(data)
    if loaded is None:
        if model is None:
            name = method_for(dataset, method)
            model = shipped_model_dir(name)
            if model is None:
                raise LesionDetectError(f"no model is shipped for method '{name}'; train one and pass --model")
        loaded = load_trained(model, method_name=method, device=device)
    m, net, card, dev = loaded
    if m.modality != dataset.modality:
        raise input_error(dataset.root / "dataset.json", f"is a {dataset.modality} dataset; the model is a "
                                                         f"{m.name} ({m.modality}) model")
    out_dir = Path(uncertainty_dir) if uncertainty_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    todo = unreviewed(dataset)
    rows = []
    for case in progress(todo, desc="ranking cases", unit="case"):
        row: dict[str, Any] = {"id": case.id, "patient": case.patient}
        try:
            best = None
            for view, image in m.read_inputs(case.image):
                m.check_input(image, case.image)
                pred = m.predict(net, card, image, dev)
                scored = {**score_prediction(pred, margin), **({"view": view} if view else {})}
                if best is None or (scored["score"], scored["tie_break"]) > (best[0]["score"], best[0]["tie_break"]):
                    best = (scored, pred, view)
            row.update(best[0])
            h = uncertainty_map(best[1]) if best[0]["kind"] == "map entropy" else None
            if out_dir is not None and h is not None:
                import SimpleITK as sitk

                path = out_dir / f"{_safe(case.id)}{'_' + _safe(best[2]) if best[2] else ''}.nii.gz"
                sitk.WriteImage(best[1].geometry.image(h), str(path), True)
                row["uncertainty"] = str(path)
        except LesionDetectError as exc:
            row.update({"kind": "error", "score": None, "tie_break": None, "detail": {}, "error": str(exc)})
        rows.append(row)
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), -(r["tie_break"] or 0.0)))
    for n, row in enumerate(rows, start=1):
        row["rank"] = n
    return {"dataset": str(dataset.root), "method": m.name, "model": str(model) if model is not None else None,
            "model_id": card.model_id, "margin": margin, "reviewed": len(dataset.cases) - len(todo),
            "unreviewed": len(todo), "cases": [{"rank": r.pop("rank"), **r} for r in rows]}


def table(result: dict[str, Any], limit: int | None = None) -> str:
    """The ranking as a plain-text table (most informative first)."""
    rows = result["cases"][:limit] if limit else result["cases"]
    width = max([len("case")] + [len(str(r["id"])) for r in rows])
    lines = [f"{result['method']} ({result['model_id'] or result['model']}): {result['unreviewed']} unreviewed "
             f"case(s) ranked, {result['reviewed']} reviewed left out",
             f"{'rank':>4s}  {'case':{width}s}  {'score':>8s}  {'kind':14s}  detail"]
    for r in rows:
        score = "-" if r["score"] is None else (f"{r['score']:d}" if isinstance(r["score"], int)
                                                 else f"{r['score']:.4f}")
        detail = r.get("error") or ", ".join(f"{k} {_short(v)}" for k, v in r["detail"].items())
        lines.append(f"{r['rank']:>4d}  {str(r['id']):{width}s}  {score:>8s}  {r['kind']:14s}  {detail}")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()) + "}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_ranking(path: str | os.PathLike, result: dict[str, Any], overwrite: bool = False) -> Path:
    """The ranking as JSON (.json) or CSV (.csv: rank, id, patient, kind, score)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        lines = ["rank,id,patient,kind,score,tie_break,error"]
        for r in result["cases"]:
            cells = [r["rank"], r["id"], r["patient"], r["kind"], "" if r["score"] is None else r["score"],
                     "" if r["tie_break"] is None else r["tie_break"], r.get("error", "")]
            lines.append(",".join(_csv(c) for c in cells))
        return write_text(path, "\n".join(lines) + "\n", overwrite=overwrite)
    return write_json(path, result, overwrite=overwrite)


def _csv(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\n') else text
