"""Correct-and-export: user edits in a real MRML scene -> a dataset case that LesionDetectLib
validates and reads back for training (voxel-exact masks, boxes, points, scores, provenance),
never overwriting an earlier annotation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from adapter_support import STUDY_KINDS, assert_same_box, make_study, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectLib import markups
from LesionDetectLib.dataset import load_dataset, read_mask, validate_dataset
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry, lps_to_ras
from LesionDetectLib.io import read_image
from LesionDetectLib.prediction import LesionBox, LesionPoint
from LesionDetectMRML import convert, export, overlay


def _load(mrml, kind):
    study = make_study(kind)
    volume = convert.add_image_volume(mrml.scene, study.image, kind)
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction)
    return study, volume, nodes


def _export(mrml, root, case_id, volume, nodes, study, boxes=None):
    return export.export_from_scene(root, case_id, volume, mrml.logic("Segmentations"),
                                    segmentation=nodes.segmentation, box_nodes=nodes.boxes if boxes is None else boxes,
                                    points_node=nodes.points, prediction=study.prediction, threshold=nodes.threshold)


@pytest.mark.parametrize("kind", STUDY_KINDS)
def test_corrected_result_round_trips_into_a_valid_dataset(mrml, tmp_path, kind):
    study, volume, nodes = _load(mrml, kind)
    logic = mrml.logic("Segmentations")
    geometry = study.prediction.geometry
    # the annotator paints a slab, erases the first lesion's voxels ...
    mask = convert.segment_mask(nodes.segmentation, nodes.segment_id, volume, logic)
    mask[1, 2:6, 3:9] = 1
    first = tuple(np.round(geometry.lps_to_index(study.prediction.points[0].position)).astype(int))[::-1]
    mask[first] = 0
    convert.set_segment_mask(nodes.segmentation, nodes.segment_id, mask, geometry, logic)
    # ... moves and shrinks one box, deletes another, draws a new one ...
    moved = nodes.boxes[0]
    center = [0.0, 0.0, 0.0]
    moved.GetCenter(center)
    moved.SetCenter(center[0] + 1.25, center[1] - 0.5, center[2])
    moved.SetSize(3.0, 4.0, 5.0)
    mrml.scene.RemoveNode(nodes.boxes[1])
    drawn = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    drawn_center_lps = geometry.index_to_lps((np.array(geometry.size) - 1) / 2)
    drawn.SetSize(2.0, 2.5, 3.0)
    drawn.SetCenter(*lps_to_ras(drawn_center_lps))
    # ... deletes a point and places one
    nodes.points.RemoveNthControlPoint(0)
    placed_lps = geometry.index_to_lps([4.0, 5.0, 2.0])
    nodes.points.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(placed_lps)), "P")

    result = _export(mrml, tmp_path / "ds", f"{kind}-001", volume, nodes, study,
                     boxes=[r for r in nodes.boxes] + [drawn])
    assert validate_dataset(tmp_path / "ds") == []
    ds = load_dataset(tmp_path / "ds")
    [case] = ds.cases
    assert case.id == result.case_id == f"{kind}-001"
    provenance = case.extra["provenance"]
    assert provenance["corrected"] is True
    assert provenance["threshold"] == study.prediction.threshold
    assert provenance["model"] == study.prediction.provenance.model_id
    assert provenance["method"] == study.prediction.provenance.method
    assert provenance["time"]
    assert ds.modality == study.modality

    # what a trainer reads: the image exactly, the mask voxel-exact on the image's grid
    image = read_image(case.image)
    assert Geometry.of(image).same_grid(Geometry.of(study.image), tol=1e-12)  # NRRD stores direction x spacing
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(study.image))
    np.testing.assert_array_equal(read_mask(case.mask, Geometry.of(image)), mask)

    boxes = markups.read_boxes(case.boxes)
    predicted = study.prediction.boxes
    want_moved = LesionBox(center=np.asarray(predicted[0].center) + [-1.25, 0.5, 0.0], size=(3.0, 4.0, 5.0),
                           score=predicted[0].score, axes=predicted[0].axes, extra=predicted[0].extra)
    want_drawn = LesionBox(center=drawn_center_lps, size=(2.0, 2.5, 3.0), score=1.0)
    want_boxes = [want_moved, *predicted[2:], want_drawn]  # predicted[1] was deleted
    assert len(boxes) == len(want_boxes)
    for got, exp in zip(boxes, want_boxes):
        assert_same_box(got, exp, tol_mm=1e-6, mrml_centre=True)
        assert got.extra == exp.extra

    points = markups.read_points(case.points)
    want = [*study.prediction.points[1:], LesionPoint(placed_lps, score=1.0)]
    assert len(points) == len(want)
    for got, exp in zip(points, want):
        np.testing.assert_allclose(got.position, exp.position, atol=1e-9, rtol=0)
        assert got.score == exp.score and got.label == exp.label


def test_unedited_export_is_not_marked_corrected(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "bone-ct")
    result = _export(mrml, tmp_path, "case", volume, nodes, study)
    assert result.entry["provenance"]["corrected"] is False
    # a re-threshold alone is not a correction either, but the threshold is recorded
    overlay.set_threshold(nodes, 0.3, mrml.logic("Segmentations"))
    again = _export(mrml, tmp_path, "case", volume, nodes, study)
    assert again.entry["provenance"]["corrected"] is False
    assert again.entry["provenance"]["threshold"] == 0.3


def test_export_never_overwrites_it_adds_a_version(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "liver")
    first = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    before = {p: p.read_bytes() for p in first.files.values()}
    second = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    (tmp_path / "labels" / "liver7_v3.seg.nrrd").write_bytes(b"someone else's file")
    third = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    assert (first.case_id, second.case_id, third.case_id) == ("liver7", "liver7_v2", "liver7_v4")
    assert {p: p.read_bytes() for p in first.files.values()} == before
    assert (tmp_path / "labels" / "liver7_v3.seg.nrrd").read_bytes() == b"someone else's file"
    ds = load_dataset(tmp_path)
    assert [c.id for c in ds.cases] == ["liver7", "liver7_v2", "liver7_v4"]
    assert {c.patient for c in ds.cases} == {"liver7"}  # versions stay with their patient in splits
    assert not (tmp_path / "dataset.json.lock").exists()


def test_failed_export_leaves_the_dataset_as_it_was(mrml, tmp_path, monkeypatch):
    study, volume, nodes = _load(mrml, "flair")
    _export(mrml, tmp_path, "a", volume, nodes, study)
    dataset_before = (tmp_path / "dataset.json").read_text()
    files_before = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(markups, "write_points", broken)
    with pytest.raises(LesionDetectError, match=r"the case cannot be exported \(disk full\); the dataset was left as "
                                                r"it was"):
        _export(mrml, tmp_path, "b", volume, nodes, study)
    assert (tmp_path / "dataset.json").read_text() == dataset_before
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files_before


def test_a_dataset_keeps_one_modality_and_case_ids_are_checked(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "bone-ct")
    _export(mrml, tmp_path, "ct1", volume, nodes, study)
    mr, mr_volume, mr_nodes = _load(mrml, "flair")
    with pytest.raises(LesionDetectError, match="holds CT images; this case is MR"):
        _export(mrml, tmp_path, "mr1", mr_volume, mr_nodes, mr)
    with pytest.raises(LesionDetectError, match="case id"):
        _export(mrml, tmp_path, "../escape", volume, nodes, study)
    assert [c["id"] for c in json.loads((tmp_path / "dataset.json").read_text())["cases"]] == ["ct1"]


# --- SIGKILL during an export ----------------------------------------------------------------------------

KILL_POINTS = ("export-planned", "export-image", "export-mask", "export-boxes", "export-points", "export-committed")

_EXPORT_CHILD = """
import sys
sys.path.insert(0, sys.argv[4])
from LesionDetectMRML import convert, export, headless, overlay
from LesionDetectMRML.samples import make_study
root, case_id, kind = sys.argv[1:4]
s = headless.new_scene()
study = make_study(kind)
volume = convert.add_image_volume(s.scene, study.image, kind)
nodes = overlay.add_prediction(s.scene, s.logic("Segmentations"), volume, study.prediction)
export.export_from_scene(root, case_id, volume, s.logic("Segmentations"), segmentation=nodes.segmentation,
                         box_nodes=nodes.boxes, points_node=nodes.points, prediction=study.prediction,
                         threshold=nodes.threshold)
"""


def _export_child(root, case_id, kill_at):
    """Export one case of a real MRML scene in a child process killed with SIGKILL at `kill_at`."""
    import os
    import subprocess
    import sys

    from adapter_support import ADAPTER_FOLDER

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LESIONDETECT_TEST_KILL_AT": kill_at}
    proc = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, str(root), case_id, "liver", str(ADAPTER_FOLDER)],
                          env=env, capture_output=True, timeout=300)
    return proc.returncode, proc.stderr.decode()


def _dataset_state(root):
    """dataset.json and every file it names, as bytes."""
    names = ["dataset.json"] + [c[k] for c in json.loads((root / "dataset.json").read_text())["cases"]
                                for k in ("image", "mask", "boxes", "points") if c.get(k)]
    return {n: (root / n).read_bytes() for n in names}


def _kill_export(mrml, tmp_path, points):
    """Kill an export at each of `points`; returns what each left: "old" (the dataset as it was)
    or "new" (the dataset with the killed export's whole case)."""
    study, volume, nodes = _load(mrml, "liver")
    root = tmp_path / "ds"
    _export(mrml, root, "first", volume, nodes, study)  # the dataset the killed exports extend
    seen = []
    for n, point in enumerate(points):
        before = _dataset_state(root)
        code, err = _export_child(root, f"killed{n}", point)
        assert code == -9, (point, err)
        assert validate_dataset(root) == [], point  # valid straight after the kill
        after = _dataset_state(root)
        if after == before:
            seen.append("old")
        else:
            assert {k: v for k, v in after.items() if k in before and k != "dataset.json"} == \
                {k: v for k, v in before.items() if k != "dataset.json"}, point  # nothing it held was touched
            [case] = [c for c in json.loads(after["dataset.json"])["cases"] if c["id"] == f"killed{n}"]
            assert {k for k in ("image", "mask", "boxes", "points") if case.get(k)} == {"image", "mask", "boxes",
                                                                                        "points"}
            seen.append("new")
        if point == "export-image":  # emulate a writer killed mid-file: its temporary file beside the mask
            (root / "labels" / f".tmp-x1y2-killed{n}.seg.nrrd").write_bytes(b"half a segmentation")
    # the next export (here, in this process) clears what the killed ones left, and goes on
    assert (root / "dataset.json.lock").exists()
    result = _export(mrml, root, "after", volume, nodes, study)
    assert result.case_id == "after" and validate_dataset(root) == []
    named = set(_dataset_state(root))
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == named, f"files no case names: {sorted(on_disk - named)}"
    ids = [c.id for c in load_dataset(root).cases]
    assert ids == ["first"] + [f"killed{n}" for n, s in enumerate(seen) if s == "new"] + ["after"]
    return seen


def test_sigkill_during_an_export_leaves_the_dataset_as_it_was(mrml, tmp_path):
    assert _kill_export(mrml, tmp_path, ("export-image", "export-committed")) == ["old", "new"]


@pytest.mark.slow
def test_sigkill_at_every_step_of_an_export(mrml, tmp_path):
    assert _kill_export(mrml, tmp_path, KILL_POINTS) == ["old"] * 5 + ["new"]


def test_a_lock_of_a_live_export_is_waited_for_not_taken(mrml, tmp_path, monkeypatch):
    import os

    study, volume, nodes = _load(mrml, "flair")
    (tmp_path / "dataset.json.lock").write_text(json.dumps({"pid": os.getppid(), "host": __import__("socket")
                                                            .gethostname(), "files": ["images/x.nrrd"]}))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.nrrd").write_bytes(b"being written")
    monkeypatch.setattr(export, "LOCK_TIMEOUT_S", 0.3)
    with pytest.raises(LesionDetectError, match="another process is exporting into this dataset"):
        _export(mrml, tmp_path, "b", volume, nodes, study)
    assert (tmp_path / "images" / "x.nrrd").read_bytes() == b"being written"
    assert export.recover(tmp_path) == []


# --- a real full disk ----------------------------------------------------------------------------------------

from test_faults import fill_disk, leftovers, small_disk  # noqa: E402,F401  (small_disk: fixture)


def test_export_onto_a_full_disk_names_the_dataset_and_leaves_it_as_it_was(mrml, small_disk, monkeypatch):
    study, volume, nodes = _load(mrml, "liver")
    root = small_disk / "ds"
    # 1. refused before writing: the real file system has less room than the case plus the margin
    with pytest.raises(LesionDetectError, match=rf"^{root}: not enough free space for the exported case: it needs "
                                                r"about \d+\.\d MiB, the file system has 2\.0 MiB free; nothing was "
                                                r"written$"):
        _export(mrml, root, "a", volume, nodes, study)
    assert leftovers(small_disk) in ([], ["ds"])
    # 2. the disk fills up after the check passed: the dataset stays as it was, no file of the case is left
    monkeypatch.setattr(export, "check_free_space", lambda *a, **k: None)
    _export(mrml, root, "a", volume, nodes, study)
    before = _dataset_state(root)
    fill_disk(small_disk)
    with pytest.raises(LesionDetectError, match=r"no space left on the device"):
        _export(mrml, root, "b", volume, nodes, study)
    assert _dataset_state(root) == before and validate_dataset(root) == []
    assert leftovers(small_disk) == ["ds", *sorted({f"ds/{name}" for name in before} | {
        f"ds/{folder}" for folder in ("images", "labels", "boxes", "points")})]


def test_recover_keeps_every_file_when_dataset_json_cannot_be_read(tmp_path):
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process that is gone
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "c.nrrd").write_bytes(b"an image")
    (tmp_path / "images" / ".tmp-ab12-c.nrrd").write_bytes(b"half an image")
    (tmp_path / "dataset.json").write_text("{ damaged")
    lock = {"pid": child.pid, "host": socket.gethostname(), "files": ["images/c.nrrd"]}
    (tmp_path / "dataset.json.lock").write_text(json.dumps(lock))
    removed = export.recover(tmp_path)
    assert removed == [tmp_path / "images" / ".tmp-ab12-c.nrrd"]  # temporary files only
    assert (tmp_path / "images" / "c.nrrd").read_bytes() == b"an image"
    assert not (tmp_path / "dataset.json.lock").exists()
