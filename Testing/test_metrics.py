"""metrics/: F-max threshold, hit rules and matching, FROC, each against an independent reference.

References: a brute-force F1 over every candidate threshold (sklearn.metrics.f1_score); the
matching rules the methods used before metrics/matching.py, written out again here as plain
loops; MONAI's FROC curve.  (froc_summary against MONAI's compute_froc_score on
DeepLesion-style box matching is in test_liver_frcnn.py::test_froc_agrees_with_monai.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from LesionDetectLib import metrics
from LesionDetectLib.metrics.froc import froc_curve, froc_summary
from LesionDetectLib.metrics.matching import box_hits, match_detections, point_hits
from LesionDetectLib.metrics.thresholds import fmax_threshold
from LesionDetectLib.prediction import LesionBox, LesionPoint


# --- F-max threshold -------------------------------------------------------------------------

def _brute_force_fmax(labels, scores):
    """(best F1, lowest threshold > 0 reaching it) over every distinct score, by sklearn's f1_score."""
    from sklearn.metrics import f1_score

    candidates = np.unique(scores)
    candidates = candidates[candidates > 0]
    f = np.array([f1_score(labels, scores >= t, zero_division=0) for t in candidates])
    best = f.max()
    return best, float(candidates[np.flatnonzero(np.isclose(f, best, rtol=0, atol=1e-12))[0]])


@pytest.mark.parametrize("seed", range(8))
def test_fmax_is_the_best_f_over_every_threshold(seed):
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    labels[:2] = [0, 1]  # both classes
    scores = np.clip(labels * rng.uniform(0, 0.4) + rng.random(n) * 0.8, 0, 1)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties, and some exact zeros
    if seed % 4 == 3:
        scores = scores - 0.3  # logits-like: negative scores, thresholds <= 0 excluded
    t = fmax_threshold(labels, scores)
    best, lowest = _brute_force_fmax(labels, scores)
    assert t > 0 and t in set(scores.tolist())
    assert f1_score(labels, scores >= t) == pytest.approx(best, abs=1e-12)
    assert t == lowest  # ties go to the lowest threshold


def test_fmax_never_picks_a_threshold_at_or_below_zero():
    # every positive scores 0: "predict >= 0" would give recall 1, but marks every pixel
    labels = np.array([1, 1, 0, 0, 0, 0])
    scores = np.array([0.0, 0.0, 0.0, 0.0, 0.2, 0.0])
    assert fmax_threshold(labels, scores) == pytest.approx(0.2)
    assert fmax_threshold(labels, np.zeros(6)) == 0.5  # nothing above 0: the default
    assert fmax_threshold(labels, -np.arange(6.0)) == 0.5


def test_fmax_defaults_and_shapes():
    assert fmax_threshold([0, 0, 0], [0.1, 0.7, 0.3]) == 0.5
    assert fmax_threshold([1, 1], [0.1, 0.7]) == 0.5
    assert fmax_threshold([], []) == 0.5
    # the hand-counted example of test_bone_ct_patch: F = 0.75 at 0.2 (P 3/5, R 1)
    assert fmax_threshold([1, 1, 1, 0, 0, 0, 0], [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05]) == pytest.approx(0.2)
    # masks: any shape, bool truth
    truth = np.zeros((3, 4, 5), bool)
    truth[1, 1:3, 1:3] = True
    prob = np.where(truth, 0.8, 0.1)
    prob[0, 0, 0] = 0.9
    assert fmax_threshold(truth, prob) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="4 labels but 3 scores"):
        fmax_threshold([0, 1, 0, 1], [0.1, 0.2, 0.3])


# --- the old rules, written out again as loops --------------------------------------------------

def _old_point_match(candidates, lesions, radius):
    """bone-ct-patch's match_candidates: a point in a box or within radius of a point hits it;
    it counts for every lesion it hits; a candidate hitting none is a false positive."""
    fp, best = [], [None] * len(lesions)
    for cand in candidates:
        hit_any = False
        for k, lesion in enumerate(lesions):
            p = np.asarray(cand.position)
            if isinstance(lesion, LesionBox):
                axes = np.asarray(lesion.axes).reshape(3, 3)
                inside = True
                for a in range(3):
                    along = float(np.dot(p - np.asarray(lesion.center), axes[:, a]))
                    inside &= abs(along) <= lesion.size[a] / 2 + 1e-9
                hit = inside
            else:
                hit = math.dist(p, lesion.position) <= radius
            if hit:
                hit_any = True
                best[k] = cand.score if best[k] is None else max(best[k], cand.score)
        if not hit_any:
            fp.append(cand.score)
    return fp, best


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _old_box_match(boxes, scores, truth, threshold):
    """liver-frcnn's match_detections: a box hits the truth box it overlaps most if that IoU >=
    threshold; each lesion keeps its best score; further hits are neither hits nor FPs."""
    best = [None] * len(truth)
    fp = []
    for box, score in zip(boxes, scores):
        if len(truth) == 0:
            fp.append(float(score))
            continue
        ious = [_iou(box, t) for t in truth]
        j = int(np.argmax(ious))
        if ious[j] >= threshold:
            if best[j] is None or score > best[j]:
                best[j] = float(score)
        else:
            fp.append(float(score))
    return fp, best


# --- match_detections --------------------------------------------------------------------------

def test_match_detections_counts_each_lesion_once():
    hits = np.array([[1, 0, 0],
                     [1, 1, 0],  # one detection on two lesions: a hit on both
                     [0, 0, 0],
                     [1, 0, 0],
                     [0, 0, 0]], bool)
    fp, lesions = match_detections([0.4, 0.7, 0.9, 0.8, 0.1], hits)
    assert fp == [0.9, 0.1]
    assert lesions == [0.8, 0.7, None]
    assert all(type(s) is float for s in fp + lesions[:2])


def test_match_detections_empty_shapes():
    assert match_detections(np.zeros(0), np.zeros((0, 3), bool)) == ([], [None, None, None])
    assert match_detections([0.3, 0.6], np.zeros((2, 0), bool)) == ([0.3, 0.6], [])
    assert match_detections([], np.zeros((0, 0), bool)) == ([], [])
    with pytest.raises(ValueError, match="n_detections, n_lesions"):
        match_detections([0.3, 0.6], np.zeros((3, 1), bool))


# --- point hits (bone-ct-patch) ------------------------------------------------------------------

def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def test_point_hits_boxes_points_faces_and_overlaps():
    c, s = math.cos(0.5), math.sin(0.5)
    oblique = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # columns: box axes in LPS
    lesions = [
        LesionBox((0, 0, 0), (10, 4, 6)),
        LesionBox((3, 0, 0), (10, 4, 6)),  # overlaps the first
        LesionBox((40, 0, 0), (10, 2, 2), axes=tuple(oblique.ravel())),
        LesionPoint((0, 20, 0)),
    ]
    along = np.array([40, 0, 0]) + 4.9 * oblique[:, 0]  # inside the oblique box, along its long axis
    across = np.array([40, 0, 0]) + 4.9 * oblique[:, 1]  # outside it: its second edge is 2 mm
    points = [
        (1, 0, 0),  # in both overlapping boxes
        (-5, 2, 3),  # on the first box's corner (face tolerance)
        (7.9, 0, 0),  # only in the second box
        tuple(along), tuple(across),
        (0, 23, 4),  # 5 mm from the lesion point
        (0, 23, 4.0001),
    ]
    expected = np.array([[1, 1, 0, 0],
                         [1, 0, 0, 0],
                         [0, 1, 0, 0],
                         [0, 0, 1, 0],
                         [0, 0, 0, 0],
                         [0, 0, 0, 1],
                         [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(point_hits(points, lesions, 5.0), expected)
    np.testing.assert_array_equal(point_hits([LesionPoint(p) for p in points], lesions, 5.0), expected)
    np.testing.assert_array_equal(point_hits(np.array(points), lesions, 5.0), expected)
    assert point_hits([], lesions, 5.0).shape == (0, 4)
    assert point_hits(points, [], 5.0).shape == (7, 0)
    assert point_hits(np.zeros((0, 3)), [], 5.0).shape == (0, 0)


def test_point_matching_reproduces_bone_ct_patch():
    rng = np.random.default_rng(7)
    for trial in range(60):
        lesions = []
        for _ in range(rng.integers(0, 6)):
            centre = rng.uniform(-30, 30, 3)
            if rng.random() < 0.6:
                axes = _rotation(rng) if rng.random() < 0.5 else np.eye(3)
                lesions.append(LesionBox(centre, rng.uniform(2, 25, 3), axes=tuple(axes.ravel())))
            else:
                lesions.append(LesionPoint(centre))
        n = int(rng.integers(0, 25))
        candidates = [LesionPoint(rng.uniform(-35, 35, 3), score=float(rng.choice([0.2, 0.5, 0.9, rng.random()])))
                      for _ in range(n)]
        candidates += [LesionPoint(c.position, score=float(rng.random())) for c in candidates[:3]]  # duplicates
        if lesions:  # some candidates right on lesions
            candidates += [LesionPoint(np.asarray(getattr(les, "center", getattr(les, "position", None)))
                                       + rng.normal(0, 2, 3), score=float(rng.random())) for les in lesions]
        radius = float(rng.choice([3.0, 8.0, 15.0]))
        scores = [c.score for c in candidates]
        ours = match_detections(scores, point_hits(candidates, lesions, radius))
        assert ours == _old_point_match(candidates, lesions, radius), trial


# --- box hits (liver-frcnn, DeepLesion) ------------------------------------------------------------

def test_box_hits_fixture():
    truth = np.array([[10, 10, 20, 20], [14, 10, 24, 20], [40, 40, 50, 50]], float)  # the first two overlap
    boxes = np.array([
        [10, 10, 20, 21],  # best on truth 0
        [14, 10, 24, 20],  # exactly truth 1 (also overlaps truth 0 with IoU 0.43)
        [12, 10, 22, 20],  # IoU 0.667 with both: the first wins the tie
        [0, 0, 5, 5],  # overlaps nothing
        [40, 40, 50, 60],  # IoU exactly 0.5 with truth 2
        [40, 40, 50, 61],  # IoU 10/21 < 0.5
    ], float)
    expected = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
    np.testing.assert_array_equal(box_hits(boxes, truth, 0.5), expected)
    fp, lesions = match_detections([0.9, 0.6, 0.95, 0.5, 0.4, 0.7], box_hits(boxes, truth, 0.5))
    assert lesions == [0.95, 0.6, 0.4]  # the 0.9 duplicate on lesion 0 is neither a hit nor an FP
    assert fp == [0.5, 0.7]
    assert (fp, lesions) == _old_box_match(boxes, [0.9, 0.6, 0.95, 0.5, 0.4, 0.7], truth, 0.5)
    assert box_hits(np.zeros((0, 4)), truth, 0.5).shape == (0, 3)
    assert box_hits(boxes, np.zeros((0, 4)), 0.5).shape == (6, 0)
    assert box_hits([], [], 0.5).shape == (0, 0)
    assert match_detections([0.3], box_hits(boxes[:1], np.zeros((0, 4)), 0.5)) == ([0.3], [])
    assert match_detections([], box_hits(np.zeros((0, 4)), truth, 0.5)) == ([], [None, None, None])


def test_box_matching_reproduces_liver_frcnn():
    rng = np.random.default_rng(3)
    for trial in range(80):
        truth = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 30, 2)  # crowded: truth boxes often overlap each other
            truth.append([x, y, x + rng.uniform(4, 30), y + rng.uniform(4, 30)])
        truth = np.array(truth).reshape(-1, 4)
        boxes = [t + rng.normal(0, 3, 4) for t in truth for _ in range(rng.integers(0, 3))]  # hits and duplicates
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 80, 2)
            boxes.append([x, y, x + rng.uniform(3, 20), y + rng.uniform(3, 20)])
        boxes = np.array(boxes).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        boxes = boxes.astype(np.float32).astype(float)  # the old function compared float32 IoUs
        scores = rng.choice([0.3, 0.6, 0.9], len(boxes)) if trial % 2 else rng.random(len(boxes))
        threshold = float(rng.choice([0.3, 0.5, 0.7]))
        ours = match_detections(scores, box_hits(boxes, truth, threshold))
        assert ours == _old_box_match(boxes, scores, truth.astype(np.float32).astype(float), threshold), trial


# --- FROC ----------------------------------------------------------------------------------------

def test_froc_curve_points_agree_with_monai():
    """Every operating point of froc_curve against MONAI's compute_froc_curve_data, on
    point-matched candidates (the bone-ct-patch path) with lesions found twice or never."""
    from monai.metrics.froc import compute_froc_curve_data

    rng = np.random.default_rng(5)
    fp_all, lesions_all, n_images = [], [], 12
    for _ in range(n_images):
        lesions = [LesionPoint(rng.uniform(0, 100, 3)) for _ in range(rng.integers(0, 4))]
        candidates = []
        for lesion in lesions:
            for _ in range(rng.integers(0, 3)):
                candidates.append(LesionPoint(np.asarray(lesion.position) + rng.normal(0, 2, 3),
                                              score=rng.uniform(0.05, 1)))
        candidates += [LesionPoint(rng.uniform(150, 300, 3), score=rng.uniform(0.05, 0.95))
                       for _ in range(rng.integers(0, 6))]
        fp, best = match_detections([c.score for c in candidates], point_hits(candidates, lesions, 6.0))
        fp_all += fp
        lesions_all += best
    assert any(s is None for s in lesions_all) and len(fp_all) > n_images
    fps, sens, thresholds = froc_curve(fp_all, lesions_all, n_images)
    tp = np.array([0.0 if s is None else s for s in lesions_all])
    monai_fps, monai_sens = compute_froc_curve_data(np.array(fp_all), tp, len(lesions_all), n_images)
    # MONAI's points are at its sorted scores[1:] (ascending) plus a final (0, 0); the lowest
    # value is 0.0, a missed lesion, so its thresholds are exactly our detection scores
    monai_thresholds = sorted(set(fp_all) | set(tp.tolist()))[1:]
    np.testing.assert_array_equal(thresholds, monai_thresholds[::-1])
    np.testing.assert_allclose(fps, monai_fps[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(sens, monai_sens[:-1][::-1], atol=1e-12)
    # with distinct scores the step rule and MONAI's interpolation agree between points
    rates = (0.3, 0.8, 1.55, 20.0)  # off the k/12 grid, where interpolating is well defined
    summary = froc_summary(fp_all, lesions_all, n_images, rates=rates)
    expected = np.interp(rates, monai_fps[::-1], monai_sens[::-1])
    np.testing.assert_allclose(list(summary["froc"].values()), expected, atol=1e-12)


def test_froc_hand_counts():
    # 2 images, lesions found at 0.9 and 0.4, one missed; false positives 0.8, 0.5, 0.3
    summary = froc_summary([0.8, 0.5, 0.3], [0.9, None, 0.4], n_images=2, rates=(0.5, 1, 2))
    assert summary["curve"]["threshold"] == [0.9, 0.8, 0.5, 0.4, 0.3]
    assert summary["curve"]["fp_per_image"] == [0, 0.5, 1.0, 1.0, 1.5]
    assert summary["curve"]["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert summary["froc"] == pytest.approx({"0.5": 1 / 3, "1": 2 / 3, "2": 2 / 3})
    assert summary["lesions"] == 3 and summary["images"] == 2
    with pytest.raises(ValueError, match="at least one image"):
        froc_curve([], [], 0)


def test_package_exports():
    assert metrics.fmax_threshold is fmax_threshold
    assert metrics.match_detections is match_detections
    assert {"point_hits", "box_hits", "froc_summary", "froc_curve", "plot_froc", "lesion_detection"} <= set(
        metrics.__all__)


def test_threshold_at_is_the_lowest_threshold_within_the_rate():
    from LesionDetectLib.metrics.froc import froc_summary, threshold_at

    # 2 images; false positives scored 0.9, 0.6, 0.3, 0.2; one lesion found at 0.8
    curve = froc_summary([0.9, 0.6, 0.3, 0.2], [0.8, None], n_images=2)["curve"]
    assert threshold_at(curve["fp_per_image"], curve["threshold"], 1.0, default=0.05) == pytest.approx(0.6)
    assert threshold_at(curve["fp_per_image"], curve["threshold"], 0.5, default=0.05) == pytest.approx(0.8)
    assert threshold_at(curve["fp_per_image"], curve["threshold"], 2.0, default=0.05) == pytest.approx(0.2)
    assert threshold_at([1.0, 2.0], [0.9, 0.5], 0.5, default=0.05) == 0.05


def test_youden_threshold_is_the_best_sensitivity_plus_specificity():
    from LesionDetectLib.metrics.thresholds import youden_threshold

    for seed in range(5):
        rng = np.random.default_rng(seed)
        labels = rng.random(300) < 0.1
        scores = np.round(labels * 0.4 + rng.random(300) * 0.8, 2)  # ties included
        t = youden_threshold(labels, scores)

        def j(th):
            pred = scores >= th
            return pred[labels].mean() + (~pred[~labels]).mean() - 1

        assert j(t) == pytest.approx(max(j(th) for th in np.unique(scores)))
    assert youden_threshold([1, 1], [0.2, 0.3]) == 0.5


def test_binary_metrics_match_hand_counts_and_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from LesionDetectLib.metrics.classification import binary_metrics, bootstrap_ci

    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05, 0.4])
    m = binary_metrics(labels, scores, 0.5)
    assert m["confusion_matrix"] == {"tp": 2, "fp": 1, "tn": 4, "fn": 1}
    assert m["accuracy"] == pytest.approx(6 / 8) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    lo, hi = bootstrap_ci(labels, scores, roc_auc_score, n=200, seed=1)
    assert 0 <= lo <= m["auc"] <= hi <= 1
