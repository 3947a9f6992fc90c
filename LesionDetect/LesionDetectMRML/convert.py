"""LesionDetectLib objects <-> MRML nodes, both ways, with geometry kept exactly.

Every function takes the scene (and the logic it needs) as an argument: no slicer.app, no
slicer.modules, so the same code runs inside Slicer and against the slicer-core wheel.
Physical points are LPS in LesionDetectLib and RAS in MRML; every conversion goes through
`LesionDetectLib.geometry.lps_to_ras` / `ras_to_lps` (its own inverse), nowhere else.

Score conventions: the same as LesionDetectLib.markups writes into .mrk.json, so that what
Slicer saves from these nodes reads back there: a control point carries the lesion's label
as its label and {"score": ..., "extra": ...} as JSON in its description (Slicer keeps
control-point descriptions when the user deletes or reorders points); a ROI also keeps its
score as the custom measurement "LesionDetect.score" and is named "<label> <score>".  A box
or point the user added by hand has no score: it reads back with score 1.0, label "lesion".
"""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from LesionDetectLib.geometry import Geometry, lps_to_ras, ras_to_lps
from LesionDetectLib import markups
from LesionDetectLib.markups import SCORE_MEASUREMENT
from LesionDetectLib.prediction import ClassResult, LesionBox, LesionPoint
from LesionDetectLib.segnrrd import LESION_COLOR, LESION_TERMINOLOGY, lesion_segment

ROLE_ATTRIBUTE = "LesionDetect.role"  # "probability", "segmentation", "box", "points", "classes", "regions"
LESION_SEGMENT_ID = lesion_segment().id
HAND_PLACED_SCORE = 1.0
HAND_PLACED_LABEL = "lesion"
SEGMENT_FILL_OPACITY = 0.2


# --- matrices -------------------------------------------------------------------------------

def vtk_matrix(array) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=float)
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            m.SetElement(r, c, a[r, c])
    return m


def numpy_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _lps_columns_to_ras(matrix3) -> np.ndarray:
    """A 3x3 whose columns are LPS directions -> the same directions in RAS."""
    return lps_to_ras(np.asarray(matrix3, dtype=float).reshape(3, 3).T).T


_ras_columns_to_lps = _lps_columns_to_ras  # the flip is its own inverse


# --- volumes --------------------------------------------------------------------------------

def set_volume_array(node, array: np.ndarray, geometry: Geometry) -> None:
    """Put a (z, y, x) array with `geometry` into a volume node (deep copy, exact geometry)."""
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise ValueError(f"array shape {array.shape} differs from the geometry's (z, y, x) {geometry.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    flat = np.ascontiguousarray(array).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=numpy_support.get_vtk_array_type(flat.dtype))
    image = vtk.vtkImageData()
    image.SetDimensions(*geometry.size)
    image.GetPointData().SetScalars(scalars)
    # spacing, origin and directions set one by one so each is stored exactly as given
    node.SetSpacing(*geometry.spacing)
    node.SetOrigin(*lps_to_ras(geometry.origin))
    directions = np.eye(4)
    directions[:3, :3] = _lps_columns_to_ras(geometry.direction)
    node.SetIJKToRASDirectionMatrix(vtk_matrix(directions))
    node.SetAndObserveImageData(image)


def add_volume(scene, array: np.ndarray, geometry: Geometry, name: str,
               class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node (with display node) holding `array` on `geometry`."""
    node = scene.AddNewNodeByClass(class_name, name)
    set_volume_array(node, array, geometry)
    node.CreateDefaultDisplayNodes()
    return node


def add_image_volume(scene, image: sitk.Image, name: str):
    """A SimpleITK image as a scalar volume node (values and geometry exactly as in the image;
    a 2-D image, e.g. a planar scintigram, becomes a one-slice volume as Slicer loads it)."""
    geometry = Geometry.of(image)
    return add_volume(scene, sitk.GetArrayFromImage(image).reshape(geometry.shape), geometry, name)


def volume_geometry(node) -> Geometry:
    """The LPS geometry of a volume node."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    directions = _ras_columns_to_lps(numpy_matrix(m)[:3, :3])
    size = node.GetImageData().GetDimensions()
    return Geometry(size, node.GetSpacing(), ras_to_lps(node.GetOrigin()), directions.ravel())


def volume_array(node, copy: bool = True) -> np.ndarray:
    """A (z, y, x) copy of a volume node's voxels (copy=False: a read-only view of them, valid
    while the node keeps its image data; for reading a large map without copying it)."""
    image = node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    if copy:
        return scalars.copy()
    scalars.flags.writeable = False
    return scalars


def volume_to_image(node) -> sitk.Image:
    """A volume node as a SimpleITK image with its exact geometry."""
    return volume_geometry(node).image(volume_array(node))


# --- segmentation ---------------------------------------------------------------------------

def _segmentation_node(scene, name: str, reference_volume):
    """An empty segmentation node shown in every view, with the reference volume's geometry."""
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    seg_node.GetDisplayNode().SetOpacity2DFill(SEGMENT_FILL_OPACITY)  # the probability map shows through
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg_node.SetNodeReferenceID(seg_node.GetReferenceImageGeometryReferenceRole(), reference_volume.GetID())
    return seg_node


def add_segmentation(scene, segmentations_logic, mask: np.ndarray, geometry: Geometry, reference_volume,
                     name: str = "Lesions", status: str = "inprogress"):
    """A segmentation node with one lesion segment (terminology, colour, Segmentation.Status),
    the reference volume as its geometry, and `mask` as the segment's voxels."""
    seg_node = _segmentation_node(scene, name, reference_volume)
    segmentation = seg_node.GetSegmentation()
    segmentation.AddEmptySegment(LESION_SEGMENT_ID, lesion_segment().name, LESION_COLOR)
    segment = segmentation.GetSegment(LESION_SEGMENT_ID)
    segment.SetTag(segment.GetTerminologyEntryTagName(), LESION_TERMINOLOGY)
    segment.SetTag("Segmentation.Status", status)
    set_segment_mask(seg_node, LESION_SEGMENT_ID, mask, geometry, segmentations_logic)
    return seg_node


def add_region_segmentation(scene, segmentations_logic, labels: np.ndarray, regions, geometry: Geometry,
                            reference_volume, name: str = "Regions"):
    """A segmentation node with one segment per `Region` (its name and colour; the voxels of
    `labels` equal to its value), the reference volume as its geometry."""
    seg_node = _segmentation_node(scene, name, reference_volume)
    for region in regions:
        segment_id = f"region{region.value}"
        seg_node.GetSegmentation().AddEmptySegment(segment_id, region.name, tuple(region.color))
        set_segment_mask(seg_node, segment_id, np.asarray(labels) == region.value, geometry, segmentations_logic)
    return seg_node


def mask_block(inside: np.ndarray) -> tuple[slice, ...] | None:
    """The (z, y, x) slices of the smallest block holding every True voxel of `inside`; None when
    there is none."""
    extent = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(len(e) == 0 for e in extent):
        return None
    return tuple(slice(int(e[0]), int(e[-1]) + 1) for e in extent)


def set_segment_mask(seg_node, segment_id: str, mask: np.ndarray, geometry: Geometry, segmentations_logic,
                     offset=None) -> None:
    """Replace one segment's voxels with `mask` ((z, y, x) on `geometry`).

    With `offset` (z, y, x), `mask` is only the block of the grid starting at that voxel and
    the segment becomes that block's voxels (nothing outside it).  Without it the mask is cut
    to the block that holds it.  The segment keeps the block as its labelmap's extent on the
    grid (as Slicer keeps a segment's effective extent), so a lesion-sized block costs its
    size, not the volume's."""
    import slicer

    if offset is None:
        inside = np.asarray(mask) > 0
        block = mask_block(inside) or (slice(0, 1),) * 3
        mask, offset = inside[block], tuple(b.start for b in block)
    mask = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if seg_node.GetSegmentation().GetSegment(segment_id) is None:
        raise KeyError(f"no segment {segment_id!r} in {seg_node.GetName()}")
    image = slicer.vtkOrientedImageData()
    (z0, y0, x0), (nz, ny, nx) = offset, mask.shape
    image.SetExtent(x0, x0 + nx - 1, y0, y0 + ny - 1, z0, z0 + nz - 1)  # on the whole grid
    image.SetImageToWorldMatrix(vtk_matrix(geometry.ijk_to_ras()))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    replace = slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, seg_node, segment_id, replace):
        raise RuntimeError(f"could not put the mask into segment {segment_id!r}")


def segment_mask(seg_node, segment_id: str, reference_volume, segmentations_logic) -> np.ndarray:
    """One segment as a uint8 (z, y, x) mask on the reference volume's grid."""
    import slicer

    scene = seg_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LesionDetect temporary export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = segmentations_logic.ExportSegmentsToLabelmapNode(
            seg_node, ids, labelmap, reference_volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError(f"could not export segment {segment_id!r}")
        if not volume_geometry(labelmap).same_grid(volume_geometry(reference_volume), tol=1e-6):
            raise RuntimeError("the exported segment is not on the reference volume's grid")
        return (volume_array(labelmap) > 0).astype(np.uint8)
    finally:
        scene.RemoveNode(labelmap)


def segment_mask_block(seg_node, segment_id: str, reference_volume, segmentations_logic) -> tuple:
    """(uint8 (z, y, x) mask, offset): one segment cut to the block Slicer keeps its labelmap in,
    the block's first voxel at `offset` (z, y, x) on the reference volume's grid; an empty segment
    is a (0, 0, 0) mask.  What segment_mask gives, without the empty rest of a large volume.  Read
    from the segment's binary labelmap when it lies on the reference grid (as the model's mask and
    the editor's strokes do), else through segment_mask."""
    import slicer

    segment = seg_node.GetSegmentation().GetSegment(segment_id)
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    image = segment.GetRepresentation(name) if segment is not None else None
    untransformed = seg_node.GetParentTransformNode() is None and reference_volume.GetParentTransformNode() is None
    segmentation = seg_node.GetSegmentation()
    source = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    if image is not None and untransformed and source() == name:
        grid, labelmap = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        reference_volume.GetIJKToRASMatrix(grid)
        image.GetImageToWorldMatrix(labelmap)
        grid, labelmap = numpy_matrix(grid), numpy_matrix(labelmap)
        extent = image.GetExtent()
        if any(extent[2 * a] > extent[2 * a + 1] for a in range(3)):
            return np.zeros((0, 0, 0), np.uint8), (0, 0, 0)
        shift = np.linalg.solve(grid, labelmap[:, 3])[:3]  # the labelmap's index 0 on the grid
        start = np.round(shift).astype(int) + np.array(extent[::2])
        size = reference_volume.GetImageData().GetDimensions()
        if (np.allclose(grid[:3, :3], labelmap[:3, :3], atol=1e-6) and np.allclose(shift, np.round(shift), atol=1e-3)
                and all(0 <= b and b + extent[2 * a + 1] - extent[2 * a] < n
                        for a, (b, n) in enumerate(zip(start, size)))):
            dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
            values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
            mask = (values == segment.GetLabelValue()).astype(np.uint8)
            return mask, tuple(int(v) for v in start[::-1])
    return segment_mask(seg_node, segment_id, reference_volume, segmentations_logic), (0, 0, 0)


# --- boxes ----------------------------------------------------------------------------------

def format_score(score: float) -> str:
    return f"{score:.2f}"


def roi_axes_ras(axes_lps) -> np.ndarray:
    """A box's edge directions (LPS columns) as an ROI's rotation in RAS: a box is symmetric, so
    its axes are signed as Slicer's ROIs are (a rotation, identity when axis-aligned), the same
    rule the markups writer uses for files."""
    return _lps_columns_to_ras(markups.roi_orientation_lps(axes_lps))


def add_box(scene, box: LesionBox, name: str | None = None):
    """One ROI node (type Box) for a LesionBox, named with its score, score as a measurement."""
    import slicer  # the measurement class lives in the MRML library

    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name or f"{box.label} {format_score(box.score)}")
    roi.SetROIType(roi.ROITypeBox)
    axes = roi_axes_ras(box.axes)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = lps_to_ras(box.center)
    # size first: SetSize moves the centre through single-precision points, the matrix does not
    roi.SetSize(*box.size)
    roi.SetAndObserveObjectToNodeMatrix(vtk_matrix(object_to_node))
    roi.SetNthControlPointLabel(0, box.label)
    roi.SetNthControlPointDescription(0, _description(box.score, box.extra))
    measurement = slicer.vtkMRMLStaticMeasurement()
    measurement.SetName(SCORE_MEASUREMENT)
    measurement.SetValue(box.score)
    measurement.SetUnits("")
    measurement.SetPrintFormat("%.2f")
    measurement.SetDescription("detection score")
    measurement.SetEnabled(True)
    roi.AddMeasurement(measurement)
    roi.SetAttribute(ROLE_ATTRIBUTE, "box")
    roi.CreateDefaultDisplayNodes()
    roi.GetDisplayNode().SetFillVisibility(False)  # an outline: the lesion stays visible inside its box
    return roi


def _description(score: float, extra: dict | None = None) -> str:
    """The control-point description LesionDetectLib.markups writes: JSON with the score."""
    return json.dumps({"score": score, **({"extra": extra} if extra else {})}, sort_keys=True)


def _parse_description(text: str) -> dict:
    try:
        d = json.loads(text or "")
    except (json.JSONDecodeError, TypeError):
        return {}
    return d if isinstance(d, dict) and isinstance(d.get("score"), (int, float)) else {}


def box_has_score(roi) -> bool:
    """Whether a ROI carries a detection score (a model's box), as opposed to one drawn by hand."""
    if roi.GetNumberOfControlPoints() and _parse_description(roi.GetNthControlPointDescription(0)):
        return True
    measurement = roi.GetMeasurement(SCORE_MEASUREMENT)
    return measurement is not None and bool(measurement.GetValueDefined())


def box_score(roi) -> float:
    """A ROI's score: its control point's description, else its score measurement, else 1.0 (drawn by hand)."""
    if roi.GetNumberOfControlPoints():
        d = _parse_description(roi.GetNthControlPointDescription(0))
        if d:
            return float(d["score"])
    measurement = roi.GetMeasurement(SCORE_MEASUREMENT)
    if measurement is not None and measurement.GetValueDefined():
        return float(measurement.GetValue())
    return HAND_PLACED_SCORE


def roi_to_box(roi) -> LesionBox:
    """A ROI node (as the user left it: moved, resized, rotated) as a LesionBox in LPS."""
    object_to_node = numpy_matrix(roi.GetObjectToNodeMatrix())
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    d = _parse_description(roi.GetNthControlPointDescription(0)) if roi.GetNumberOfControlPoints() else {}
    label = roi.GetNthControlPointLabel(0) if d else HAND_PLACED_LABEL
    return LesionBox(center=ras_to_lps(center), size=roi.GetSize(), score=box_score(roi), label=label,
                     axes=_ras_columns_to_lps(object_to_node[:3, :3]).ravel(), extra=d.get("extra") or {})


# --- points ---------------------------------------------------------------------------------

def add_points(scene, points: list[LesionPoint], name: str = "Lesion points"):
    """A fiducial list with one control point per lesion point (label and score kept)."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, "points")
    node.CreateDefaultDisplayNodes()
    for point in points:
        index = node.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(point.position)), point.label)
        node.SetNthControlPointDescription(index, _description(point.score))
    return node


def point_score(node, n: int) -> float:
    d = _parse_description(node.GetNthControlPointDescription(n))
    return float(d["score"]) if d else HAND_PLACED_SCORE


def point_has_score(node, n: int) -> bool:
    """Whether control point `n` carries a detection score (a model's point), not placed by hand."""
    return bool(_parse_description(node.GetNthControlPointDescription(n)))


def control_point_to_point(node, n: int) -> LesionPoint:
    """Control point `n` of a fiducial list as a LesionPoint in LPS."""
    return LesionPoint(ras_to_lps(node.GetNthControlPointPositionVector(n)), score=point_score(node, n),
                       label=node.GetNthControlPointLabel(n) if point_has_score(node, n) else HAND_PLACED_LABEL)


def fiducials_to_points(node) -> list[LesionPoint]:
    """Every placed control point of a fiducial list as a LesionPoint in LPS."""
    return [control_point_to_point(node, n) for n in range(node.GetNumberOfControlPoints())
            if node.GetNthControlPointPositionStatus(n) == node.PositionDefined]  # not one still being placed


# --- class results --------------------------------------------------------------------------

def add_class_table(scene, classes: list[ClassResult], name: str = "Lesion classes"):
    """A table node: one row per class result (scope, index, z_mm when results have one, label,
    one column per class in the order the results name them)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table.SetAttribute(ROLE_ATTRIBUTE, "classes")
    class_names = list(dict.fromkeys(k for c in classes for k in c.probabilities))
    columns = {"scope": vtk.vtkStringArray(), "index": vtk.vtkStringArray()}
    if any(c.z_mm is not None for c in classes):
        columns["z_mm"] = vtk.vtkStringArray()
    columns["label"] = vtk.vtkStringArray()
    columns.update({k: vtk.vtkDoubleArray() for k in class_names})
    for column_name, column in columns.items():
        column.SetName(column_name)
    for c in classes:
        columns["scope"].InsertNextValue(c.scope)
        columns["index"].InsertNextValue("" if c.index is None else str(c.index))
        if "z_mm" in columns:
            columns["z_mm"].InsertNextValue("" if c.z_mm is None else f"{c.z_mm:g}")
        columns["label"].InsertNextValue(c.label)
        for k in class_names:
            columns[k].InsertNextValue(c.probabilities.get(k, float("nan")))
    for column in columns.values():
        table.AddColumn(column)
    return table


def table_to_classes(table) -> list[ClassResult]:
    """The inverse of `add_class_table`."""
    vtable = table.GetTable()
    names = [vtable.GetColumnName(c) for c in range(vtable.GetNumberOfColumns())]
    class_names = [n for n in names if n not in ("scope", "index", "z_mm", "label")]
    results = []
    for r in range(vtable.GetNumberOfRows()):
        index = vtable.GetValueByName(r, "index").ToString()
        z_mm = vtable.GetValueByName(r, "z_mm").ToString() if "z_mm" in names else ""
        probabilities = {k: v for k in class_names if not np.isnan(v := vtable.GetValueByName(r, k).ToDouble())}
        label = vtable.GetValueByName(r, "label").ToString()
        likeliest = max(probabilities, key=probabilities.get) if probabilities else ""
        results.append(ClassResult(probabilities, scope=vtable.GetValueByName(r, "scope").ToString(),
                                   index=int(index) if index else None,
                                   decision=label if label and label != likeliest else None,
                                   z_mm=float(z_mm) if z_mm else None))
    return results
