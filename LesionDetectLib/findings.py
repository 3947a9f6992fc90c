"""What a detector finds: lesion points, lesion boxes and class results.

These are the parts of a `Prediction` (prediction.py) that also live on their own: the
markups files (markups.py) store points and boxes, datasets read them back as annotations,
and the synthetic studies (synth/) make them as ground truth.  They sit in their own module
so those readers and writers need not import the Prediction type and its file writers
(which import markups.py in turn).  `LesionDetectLib.prediction` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import Geometry

__all__ = ["ClassResult", "LesionBox", "LesionPoint"]


@dataclass
class LesionPoint:
    """A lesion candidate: a physical position (LPS mm) with a score in [0, 1]."""

    position: tuple[float, float, float]
    score: float = 1.0
    label: str = "lesion"

    def __post_init__(self):
        self.position = tuple(float(v) for v in self.position)
        self.score = float(self.score)


@dataclass
class LesionBox:
    """A box in physical space: centre (LPS mm), edge lengths (mm) along its own axes.

    `axes` is row-major 3x3 whose columns are the box's axis directions in LPS; for a box
    drawn on an image grid these are the image's direction columns (identity for an
    axis-aligned image).  `extra` carries method-specific facts (e.g. the key slice index
    and 2-D pixel box of a DeepLesion-style detection).
    """

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    score: float = 1.0
    label: str = "lesion"
    axes: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.center = tuple(float(v) for v in np.ravel(self.center))
        self.size = tuple(float(v) for v in np.ravel(self.size))
        self.axes = tuple(float(v) for v in np.ravel(self.axes))
        self.score = float(self.score)

    @classmethod
    def from_index_range(cls, geometry: Geometry, index_min, index_max, **kwargs) -> "LesionBox":
        """The box covering voxels index_min..index_max inclusive ((x, y, z) order) of an image."""
        centre, size, axes = geometry.axis_aligned_box(index_min, index_max)
        return cls(center=centre, size=size, axes=axes, **kwargs)

    def corners(self) -> np.ndarray:
        """The 8 corners in LPS mm, (8, 3)."""
        axes = np.asarray(self.axes).reshape(3, 3)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        return np.asarray(self.center) + (signs * np.asarray(self.size) / 2) @ axes.T


@dataclass
class ClassResult:
    """Class probabilities for the whole image (scope "image") or one slice/vertebra."""

    probabilities: dict[str, float]
    scope: str = "image"
    index: int | None = None
    decision: str | None = None  # the class chosen at the model's threshold, when not simply the likeliest
    z_mm: float | None = None  # where a slice or vertebra result sits along the patient's z axis (LPS mm)

    @property
    def label(self) -> str:
        return self.decision or max(self.probabilities, key=self.probabilities.get)


NEGATIVE_CLASSES = ("normal", "background", "negative")


def is_negative_class(name: str) -> bool:
    """"normal", "background", "negative", or a name that says "no ..." / "non-...". """
    name = name.strip().lower()
    return name in NEGATIVE_CLASSES or name.startswith(("no ", "non-", "non ", "not "))


def positive_probability(results: list[ClassResult]) -> float | None:
    """The probability of the finding the classes are about: the highest probability of a
    class that is not negative (`is_negative_class`), over the image-level results (over all
    results when there are only slice- or vertebra-level ones); None without any."""
    scoped = [c for c in results if c.scope == "image"] or list(results)
    positives = [float(p) for c in scoped for name, p in c.probabilities.items() if not is_negative_class(name)]
    return max(positives) if positives else None
