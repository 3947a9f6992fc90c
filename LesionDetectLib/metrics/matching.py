"""Matching detections to annotated lesions, with the hit rule as a separate step.

Two steps, so that every method counts hits and false positives the same way:

1. A hit rule gives a bool matrix `hits` (n_detections, n_lesions):
   - `point_hits`: a candidate point hits a lesion box when it lies inside the (oriented)
     box, and a lesion point when it lies within `radius_mm` of it; a point may hit
     several lesions (bone-ct-patch, paper 000);
   - `box_hits`: a 2-D box hits only the truth box it overlaps most, and only when that
     IoU >= `iou_threshold` (the DeepLesion rule; liver-frcnn, paper 003).
2. `match_detections(scores, hits)` turns it into what `metrics.froc` takes (MONAI's
   `fp_probs` / `tp_probs`): the scores of detections that hit no lesion, and per lesion
   the highest score of the detections that hit it (each lesion counted once; further
   hits on it are neither hits nor false positives), or None when none did.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..prediction import LesionBox

BOX_TOLERANCE = 1e-9  # mm: a point on a box's face is inside


def match_detections(scores, hits) -> tuple[list[float], list[float | None]]:
    """(false-positive scores, best score per lesion) for one image or a whole evaluation.

    Arguments:
        scores: array-like (n_det,), the score of each detection.
        hits: bool array-like (n_det, n_lesions): hits[i, j] is True when detection i hits
            lesion j (from `point_hits`, `box_hits` or any other rule).  (0, n_lesions)
            and (n_det, 0) are fine.

    Returns:
        (fp_scores, lesion_scores): the scores of the detections that hit no lesion, in
        detection order; and for each lesion the highest score among the detections that
        hit it, or None when none did.  A detection hitting any lesion is never a false
        positive, however many other detections hit the same lesion.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2 or hits.shape[0] != len(scores):
        raise ValueError(f"hits must be (n_detections, n_lesions) = ({len(scores)}, n), not {hits.shape}")
    fp_scores = [float(s) for s in scores[~hits.any(axis=1)]]
    lesion_scores = [float(scores[column].max()) if column.any() else None for column in hits.T]
    return fp_scores, lesion_scores


def point_hits(points, lesions: Sequence, radius_mm: float) -> np.ndarray:
    """Which candidate points hit which lesions: bool (n_points, n_lesions).

    Arguments:
        points: the candidates, either LesionPoint objects (their `.position` is used) or
            positions in LPS mm, (n, 3); an empty sequence is fine.
        lesions: the annotated lesions, each a LesionBox (hit when the point lies inside the
            oriented box: |(p - center) . axis_k| <= size_k / 2 + 1e-9 for its three axes)
            or a LesionPoint (or plain LPS position) (hit when the Euclidean distance is
            <= radius_mm).  Boxes and points may be mixed.
        radius_mm: hit radius around lesion points, in mm (unused for boxes).

    Returns:
        hits[i, j] True when point i hits lesion j; a point may hit several lesions.
    """
    positions = np.array([getattr(p, "position", p) for p in points], dtype=float).reshape(-1, 3)
    out = np.zeros((len(positions), len(lesions)), dtype=bool)
    for j, lesion in enumerate(lesions):
        if isinstance(lesion, LesionBox):
            axes = np.asarray(lesion.axes, dtype=float).reshape(3, 3)  # columns: the box's axis directions
            local = (positions - np.asarray(lesion.center)) @ axes  # coordinates along the box's axes
            out[:, j] = np.all(np.abs(local) <= np.asarray(lesion.size) / 2 + BOX_TOLERANCE, axis=1)
        else:
            centre = np.asarray(getattr(lesion, "position", lesion), dtype=float).reshape(3)
            out[:, j] = np.linalg.norm(positions - centre, axis=1) <= radius_mm
    return out


def box_hits(boxes, truth, iou_threshold: float) -> np.ndarray:
    """Which 2-D boxes hit which truth boxes, by the DeepLesion rule: bool (n_boxes, n_truth).

    Arguments:
        boxes: detected boxes (n_boxes, 4) as [x0, y0, x1, y1] (pixels or mm, as long as
            `truth` uses the same).
        truth: annotated boxes (n_truth, 4), same convention.
        iou_threshold: the least IoU (torchvision.ops.box_iou) that counts as a hit, e.g. 0.5.

    Returns:
        hits[i, j] True only when truth box j is the one box i overlaps most (argmax IoU,
        the first on a tie) and that IoU >= iou_threshold; so every row has at most one hit.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    truth = np.asarray(truth, dtype=np.float32).reshape(-1, 4)
    out = np.zeros((len(boxes), len(truth)), dtype=bool)
    if len(boxes) == 0 or len(truth) == 0:
        return out
    import torch
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(truth)).numpy()
    best = np.argmax(iou, axis=1)
    rows = np.arange(len(boxes))
    out[rows, best] = iou[rows, best] >= iou_threshold
    return out
