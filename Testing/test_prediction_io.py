"""write_prediction -> read_prediction round trip: every part, on an oblique anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest
from io_helpers import oblique_image

from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.prediction import (FILES, MANIFEST, ClassResult, LesionBox, LesionPoint, Prediction, Provenance,
                                        Region, read_prediction, write_prediction)

GEOMETRY = Geometry.of(oblique_image())


def _prediction() -> Prediction:
    rng = np.random.default_rng(7)
    probability = rng.random(GEOMETRY.shape).astype(np.float32)
    threshold = 0.8
    box = LesionBox.from_index_range(GEOMETRY, (1, 2, 0), (4, 5, 2), score=0.75, label="nodule",
                                     extra={"key_slice": 1, "box_2d": [1, 2, 4, 5]})
    return Prediction(
        geometry=GEOMETRY,
        provenance=Provenance(method="test-method", model_id="m1", model_version="1.2.3",
                              parameters={"tile": [32, 32], "hu_window": [-160, 240]}, input="ct.nrrd"),
        probability=probability,
        mask=probability >= threshold,
        threshold=threshold,
        points=[LesionPoint(GEOMETRY.index_to_lps((2, 3, 1)), score=0.9, label="a"),
                LesionPoint(GEOMETRY.index_to_lps((7.5, 0.25, 4)), score=1 / 3, label="b")],
        boxes=[box, LesionBox(center=(1.5, -2.25, 3.0), size=(2.0, 3.0, 4.0), score=0.125)],
        classes=[ClassResult({"benign": 0.2, "malignant": 0.8}),
                 ClassResult({"benign": 0.6, "malignant": 0.4}, scope="slice", index=3, z_mm=-12.5)],
        regions=np.where(probability >= 0.9, 2, np.where(probability <= 0.05, 5, 0)),
        region_names=[Region(2, "L2: lytic", (0.85, 0.2, 0.2)), Region(5, "T12: blastic", (0.95, 0.9, 0.55))],
    )


def test_round_trip_keeps_every_part(tmp_path):
    pred = _prediction()
    written = write_prediction(pred, tmp_path / "out")
    assert {p.name for p in written.values()} == {MANIFEST, *FILES.values()}
    back = read_prediction(tmp_path / "out")

    assert back.geometry == pred.geometry
    assert back.provenance == pred.provenance
    assert back.threshold == pred.threshold
    np.testing.assert_array_equal(back.probability, pred.probability)
    assert back.probability.dtype == np.float32
    np.testing.assert_array_equal(back.mask, pred.mask)
    assert back.mask.sum() > 0
    np.testing.assert_array_equal(back.regions, pred.regions)
    assert back.region_names == pred.region_names
    assert back.classes == pred.classes
    assert back.points == pred.points  # positions, scores and labels exactly
    assert len(back.boxes) == len(pred.boxes)
    for got, expected in zip(back.boxes, pred.boxes):
        assert (got.center, got.size, got.score, got.label, got.extra) == (
            expected.center, expected.size, expected.score, expected.label, expected.extra)
        # a box's axes have no sign: the file keeps Slicer's convention, the box itself is the same
        np.testing.assert_allclose(np.sort(got.corners(), axis=0), np.sort(expected.corners(), axis=0),
                                   rtol=0, atol=1e-9)


def test_a_partial_prediction_writes_only_its_parts(tmp_path):
    pred = Prediction(geometry=GEOMETRY, provenance=Provenance(method="points-only"),
                      points=[LesionPoint(GEOMETRY.index_to_lps((1, 1, 1)), score=0.5)])
    written = write_prediction(pred, tmp_path)
    assert sorted(written) == ["manifest", "points"]
    back = read_prediction(tmp_path)
    assert back.points == pred.points and back.mask is None and back.boxes == [] and back.classes == []


def test_refuses_to_overwrite_an_existing_prediction(tmp_path):
    write_prediction(_prediction(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = _prediction()
    other.points = other.points[:1]
    with pytest.raises(LesionDetectError, match="already exists"):
        write_prediction(other, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    write_prediction(other, tmp_path, overwrite=True)
    assert len(read_prediction(tmp_path).points) == 1


def test_reading_a_folder_without_prediction_is_a_clear_error(tmp_path):
    with pytest.raises(LesionDetectError, match="not a LesionDetect prediction folder"):
        read_prediction(tmp_path)


def test_results_get_the_permissions_of_any_new_file_not_private_ones(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        written = write_prediction(_prediction(), tmp_path / "out")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in written.values()} == {0o644}
