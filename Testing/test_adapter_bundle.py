"""Scene bundles: LesionDetectLib.scene_bundle.write_scene_bundle -> .mrb -> unzip -> re-open in
a fresh slicer-core scene: the input, the coloured and thresholded probability map in the
foreground, the lesion segmentation, the ROIs with scores, the points and the class table."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import zipfile

import numpy as np
import pytest
import vtk

from adapter_support import assert_same_box, make_study, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectLib import scene_bundle
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.io import write_image
from LesionDetectLib.prediction import write_prediction
from LesionDetectMRML import convert, overlay

OPACITY = 0.35
THRESHOLD = 0.4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """One .mrb of the synthetic bone-CT study (writing one takes a few seconds)."""
    folder = tmp_path_factory.mktemp("bundle")
    study = make_study("bone-ct")
    write_image(study.image, folder / "case 1.nrrd")
    write_prediction(study.prediction, folder / "prediction")
    out = scene_bundle.write_scene_bundle(folder / "case 1.nrrd", folder / "prediction", folder / "case 1.mrb",
                                          threshold=THRESHOLD, opacity=OPACITY)
    return study, folder, out


def _nodes(scene, class_name):
    return [scene.GetNthNodeByClass(n, class_name) for n in range(scene.GetNumberOfNodesByClass(class_name))]


def test_bundle_is_a_zip_laid_out_as_slicer_writes_it(bundle):
    _, _, out = bundle
    names = zipfile.ZipFile(out).namelist()
    assert "case 1/case 1.mrml" in names
    data = [n for n in names if n.startswith("case 1/Data/")]
    assert any(n.endswith(".seg.nrrd") for n in data)
    assert sum(n.endswith(".mrk.json") for n in data) == 3 + 1  # three ROIs, one point list
    assert sum(n.endswith(".nrrd") and not n.endswith(".seg.nrrd") for n in data) == 2  # input, probability


def test_bundle_reopens_in_a_fresh_scene_with_everything_styled(bundle, mrml):
    study, _, out = bundle
    pred = study.prediction
    with tempfile.TemporaryDirectory() as tmp:
        assert mrml.app_logic.OpenSlicerDataBundle(str(out), tmp)
    scene = mrml.scene
    volumes = {n.GetAttribute(convert.ROLE_ATTRIBUTE) or "input": n for n in _nodes(scene, "vtkMRMLScalarVolumeNode")}
    assert set(volumes) == {"input", "probability"}
    volume, probability = volumes["input"], volumes["probability"]
    assert volume.GetName() == "case 1"
    assert convert.volume_geometry(volume).same_grid(pred.geometry, tol=1e-9)
    np.testing.assert_array_equal(convert.volume_array(probability), pred.probability)

    display = probability.GetDisplayNode()
    assert display.GetColorNodeID() == overlay.INFERNO and display.GetColorNode() is not None
    assert not display.GetAutoWindowLevel() and (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == THRESHOLD
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == probability.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(OPACITY)

    [seg] = _nodes(scene, "vtkMRMLSegmentationNode")
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
    segment = seg.GetSegmentation().GetSegment(convert.LESION_SEGMENT_ID)
    tag = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    assert "Morphologically Altered Structure" in str(tag)
    mask = convert.segment_mask(seg, convert.LESION_SEGMENT_ID, volume, mrml.logic("Segmentations"))
    np.testing.assert_array_equal(mask, pred.probability >= THRESHOLD)  # the bundle's threshold, not the model's

    rois = _nodes(scene, "vtkMRMLMarkupsROINode")
    assert sorted(r.GetName() for r in rois) == sorted(f"lesion {b.score:.2f}" for b in pred.boxes)
    for roi, box in zip(sorted(rois, key=convert.box_score, reverse=True),
                        sorted(pred.boxes, key=lambda b: b.score, reverse=True)):
        assert roi.GetMeasurement(convert.SCORE_MEASUREMENT).GetValue() == pytest.approx(box.score, abs=1e-12)
        assert_same_box(convert.roi_to_box(roi), box, tol_mm=1e-6, mrml_centre=True)

    [points_node] = _nodes(scene, "vtkMRMLMarkupsFiducialNode")
    points = convert.fiducials_to_points(points_node)
    assert [p.score for p in points] == [p.score for p in pred.points]
    np.testing.assert_allclose([p.position for p in points], [p.position for p in pred.points], atol=1e-6)

    [table] = _nodes(scene, "vtkMRMLTableNode")
    assert convert.table_to_classes(table)[0].label == pred.classes[0].label


def test_existing_bundle_is_never_replaced(bundle):
    _, folder, out = bundle
    before = out.read_bytes()
    with pytest.raises(LesionDetectError, match="refusing to overwrite"):
        scene_bundle.write_scene_bundle(folder / "case 1.nrrd", folder / "prediction", out)
    assert out.read_bytes() == before


def test_prediction_for_another_image_is_a_clear_error(bundle, tmp_path):
    _, folder, _ = bundle
    from LesionDetectMRML.bundle import write_bundle  # in this process: the child's error path is the same code

    other = make_study("liver", geometry=overlay_geometry())
    write_image(other.image, tmp_path / "other.nrrd")
    with pytest.raises(LesionDetectError, match="does not fit"):
        write_bundle(tmp_path / "other.nrrd", folder / "prediction", tmp_path / "x.mrb")
    assert not (tmp_path / "x.mrb").exists()


def overlay_geometry():
    from LesionDetectLib.geometry import Geometry

    return Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))


def test_missing_slicer_core_is_one_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "slicer" else real_find_spec(name, *a))
    with pytest.raises(LesionDetectError, match="slicer-core is not installed"):
        scene_bundle.write_scene_bundle(tmp_path / "i.nrrd", tmp_path / "p", tmp_path / "o.mrb")


def test_missing_slicer_core_in_another_python_is_one_clear_error(tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import slicer"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without slicer-core to try")
    with pytest.raises(LesionDetectError, match="slicer-core is not installed"):
        scene_bundle.write_scene_bundle(tmp_path / "i.nrrd", tmp_path / "p", tmp_path / "o.mrb", python=python)


def test_adapter_folder_is_found_in_the_source_tree():
    folder = scene_bundle.adapter_folder()
    assert (folder / "LesionDetectMRML" / "bundle.py").is_file()
    assert folder.name == "LesionDetect"


def _offscreen_rendering() -> bool:
    """Whether VTK can render without a display here (EGL/OSMesa).  Probed in a child process:
    an EGL window in the test process would break later torch/torchvision imports."""
    import sys

    probe = ("import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8); w.Render(); "
             "print(w.GetClassName())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return done.returncode == 0


def test_bundle_renders_offscreen_with_the_overlays(bundle, tmp_path):
    """The slice views of the re-opened bundle, drawn by MRML's slice logic and displayable
    managers (in a child process, so a graphics driver problem cannot take pytest down)."""
    if not _offscreen_rendering():
        pytest.skip("no offscreen OpenGL (EGL/OSMesa) and no display")
    import sys

    from adapter_support import ADAPTER_FOLDER, ROOT

    _, _, out = bundle
    png = tmp_path / "views.png"
    env = {**__import__("os").environ, "PYTHONPATH": f"{ADAPTER_FOLDER}:{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "LesionDetectMRML.render", "--bundle", str(out), "--out", str(png),
                           "--size", "120", "--field-of-view", "40"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(png))
    reader.Update()
    image = reader.GetOutput()
    assert image.GetDimensions()[:2] == (3 * 120, 120)
    from vtk.util import numpy_support

    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(120, 360, -1)[..., :3].astype(int)
    centre = rgb[50:70, 50:70]  # the red view is centred on the best box: the lesion, in colour
    colourful = (centre.max(axis=-1) - centre.min(axis=-1)) > 40
    assert colourful.mean() > 0.3, "no coloured overlay (probability map, segment, box) at the lesion"


def test_the_bundle_writers_error_comes_back_as_one_line(bundle, tmp_path):
    _, folder, _ = bundle
    with pytest.raises(LesionDetectError, match=r"prediction.json: not found: not a LesionDetect prediction folder"):
        scene_bundle.write_scene_bundle(folder / "case 1.nrrd", tmp_path, tmp_path / "x.mrb")
    assert not (tmp_path / "x.mrb").exists()
