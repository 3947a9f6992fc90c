"""Shared pieces of the adapter tests (Testing/test_adapter*.py): the adapter package on the
path, a fresh real MRML scene per test (slicer-core; the test module is skipped without it)
and synthetic studies with their Predictions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_FOLDER = ROOT / "LesionDetect"
if str(ADAPTER_FOLDER) not in sys.path:
    sys.path.insert(0, str(ADAPTER_FOLDER))

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` package is not slicer-core", allow_module_level=True)

from LesionDetectMRML import headless  # noqa: E402
from LesionDetectMRML.samples import KINDS, make_study  # noqa: E402

STUDY_KINDS = tuple(KINDS)  # bone-ct, flair, liver


@pytest.fixture
def mrml():
    """A fresh headless Slicer scene (application logic + module logics + slice views)."""
    s = headless.new_scene()
    yield s
    s.close()


def roi_centre_tolerance(center) -> np.ndarray:
    """1e-6 mm plus one single-precision step of each coordinate.

    MRML keeps a ROI's centre exactly when it is set, but the markups logic re-derives it from
    the control point (single-precision vtkPoints) on later scene events (e.g. a fiducial list
    gaining points), so ROIs hold their centre to float32 precision: < 1e-5 mm within 128 mm.
    """
    return 1e-6 + np.spacing(np.abs(np.asarray(center, dtype=np.float32))).astype(float)


def assert_same_box(got, want, tol_mm: float, score: bool = True, mrml_centre: bool = False) -> None:
    """Same centre, edge lengths and axes (each axis up to its sign: a box is symmetric)."""
    centre_tol = roi_centre_tolerance(want.center) if mrml_centre else tol_mm
    assert np.all(np.abs(np.subtract(got.center, want.center)) <= centre_tol), (got.center, want.center)
    np.testing.assert_allclose(got.size, want.size, atol=tol_mm, rtol=0)
    a, b = np.reshape(got.axes, (3, 3)), np.reshape(want.axes, (3, 3))
    for i in range(3):
        sign = np.sign(a[:, i] @ b[:, i])
        np.testing.assert_allclose(a[:, i] * sign, b[:, i], atol=1e-9)
    if score:
        assert got.score == pytest.approx(want.score, abs=1e-12)
        assert got.label == want.label


__all__ = ["ADAPTER_FOLDER", "ROOT", "STUDY_KINDS", "assert_same_box", "roi_centre_tolerance", "make_study", "mrml", "slicer"]
