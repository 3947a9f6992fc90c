"""FROC: lesion sensitivity against false positives per image (or per volume).

Matching a detection to a lesion is `metrics.matching`'s business (the hit rule a method
chooses: a point inside a lesion box for 000, IoU >= 0.5 for 003); this module takes the
matched result, exactly as MONAI's `compute_froc_curve_data(fp_probs, tp_probs, num_targets,
num_images)` does:

- `fp_scores`: the score of every detection that hit no lesion;
- `lesion_scores`: per annotated lesion, the highest score of the detections that hit it
  (each lesion counted once, however many detections hit it), or None if none did.

At a score threshold t, sensitivity = lesions with score >= t / lesions, and false
positives per image = fp detections with score >= t / images.  `froc_summary` reads the
sensitivity at the standard rates 0.5, 1, 2, 4, 8 FP/image (the highest sensitivity whose
FP rate does not exceed the rate, the DeepLesion/LUNA convention) and their mean.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

FP_RATES = (0.5, 1.0, 2.0, 4.0, 8.0)


def froc_curve(fp_scores: Sequence[float], lesion_scores: Sequence[float | None], n_images: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives per image, sensitivity, thresholds), thresholds descending.

    Arguments:
        fp_scores: the score of every detection that hit no lesion (all images together).
        lesion_scores: per annotated lesion, the highest score of the detections that hit
            it, or None when none did (`metrics.matching.match_detections` gives both).
        n_images: how many images (or volumes) the detections come from, >= 1.

    Returns:
        One operating point per distinct score t of fp_scores and lesion_scores (highest
        first): false positives with score >= t per image, and the fraction of all lesions
        (found or not) whose score is >= t.
    """
    if n_images <= 0:
        raise ValueError("FROC needs at least one image")
    fp = np.asarray(fp_scores, dtype=float)
    hit = np.asarray([s for s in lesion_scores if s is not None], dtype=float)
    n_lesions = len(lesion_scores)
    thresholds = np.unique(np.concatenate([fp, hit]))[::-1]
    fps = np.array([(fp >= t).sum() for t in thresholds], dtype=float) / n_images
    sens = np.array([(hit >= t).sum() for t in thresholds], dtype=float) / max(n_lesions, 1)
    return fps, sens, thresholds


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Best sensitivity reachable with at most `rate` false positives per image.

    Arguments:
        fps, sens: a curve from `froc_curve`.
        rate: false positives per image allowed.
    """
    ok = fps <= rate + 1e-12
    return float(sens[ok].max()) if ok.any() else 0.0


def threshold_at(fps: np.ndarray, thresholds: np.ndarray, rate: float, default: float) -> float:
    """The lowest score threshold whose false positives per image stay within `rate` (the
    operating point a detector's card stores); `default` when no threshold does.

    Arguments:
        fps, thresholds: a curve from `froc_curve` (or `froc_summary(...)["curve"]`).
        rate: false positives per image allowed.
        default: returned when even the highest threshold exceeds `rate`.
    """
    fps, thresholds = np.asarray(fps, dtype=float), np.asarray(thresholds, dtype=float)
    ok = fps <= rate
    return float(thresholds[ok].min()) if ok.any() else float(default)


def froc_summary(fp_scores, lesion_scores, n_images: int, rates=FP_RATES) -> dict:
    """{"froc": {"0.5": s, "1": s, ...}, "froc_mean": mean, "curve": {...}, counts}.

    Arguments:
        fp_scores, lesion_scores, n_images: as for `froc_curve`.
        rates: the false-positive rates per image to read the sensitivity at (default
            0.5, 1, 2, 4, 8); "froc_mean" is the mean of those sensitivities.

    Returns:
        {"froc": {rate key: sensitivity}, "froc_mean", "curve": {"fp_per_image",
        "sensitivity", "threshold"} (lists), "lesions", "images"}.
    """
    fps, sens, thr = froc_curve(fp_scores, lesion_scores, n_images)
    table = {_key(r): sensitivity_at(fps, sens, r) for r in rates}
    return {
        "froc": table,
        "froc_mean": float(np.mean(list(table.values()))),
        "curve": {"fp_per_image": fps.tolist(), "sensitivity": sens.tolist(), "threshold": thr.tolist()},
        "lesions": len(lesion_scores),
        "images": n_images,
    }


def _key(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else str(rate)


def plot_froc(summary: dict, path, title: str = "FROC") -> None:
    """Save the curve (log-scaled FP axis) with the standard operating points marked.

    Arguments:
        summary: a `froc_summary` result (or metrics holding its "froc", "froc_mean", "curve").
        path: the image file to write (format from its extension, e.g. .png).
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["curve"]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    fps = np.maximum(np.asarray(curve["fp_per_image"]), 1e-3)
    ax.step(fps, curve["sensitivity"], where="post", label="LesionDetect")
    rates = [float(k) for k in summary["froc"]]
    ax.plot(rates, list(summary["froc"].values()), "o", label=f"mean {summary['froc_mean']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
