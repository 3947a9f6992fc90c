"""A Prediction shown in a scene, and the live controls on it (threshold, score filter, opacity).

`add_prediction` turns a Prediction into nodes: the probability map as a float volume in the
foreground of every slice view (Inferno, window 0-1, voxels under the threshold transparent),
the mask as a lesion segment referring to the input volume, one ROI per box, a fiducial list
of points and a table of class results.  Moving the threshold rebuilds the lesion segment
from the probability volume (no model run); the score filter hides boxes below it.
Everything takes the scene and logics as arguments (Qt-free; see convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from LesionDetectLib.prediction import Prediction

from . import convert, review

INFERNO = "vtkMRMLColorTableNodeFileInferno.txt"
COLD_TO_HOT = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
DEFAULT_OPACITY = 0.5


@dataclass
class PredictionNodes:
    """The nodes one Prediction became; the findings table and the export read them."""

    input_volume: object
    probability: object | None = None
    segmentation: object | None = None
    segment_id: str = convert.LESION_SEGMENT_ID
    boxes: list = field(default_factory=list)
    points: object | None = None
    classes: object | None = None
    regions: object | None = None  # labelled regions (e.g. involved vertebrae coloured by type)
    threshold: float | None = None
    peaks: tuple | None = field(default=None, repr=False, compare=False)  # threshold_block's cache

    def nodes(self) -> list:
        return [n for n in (self.probability, self.segmentation, *self.boxes, self.points, self.classes, self.regions)
                if n is not None]


def add_prediction(scene, segmentations_logic, input_volume, prediction: Prediction, threshold: float | None = None,
                   opacity: float = DEFAULT_OPACITY, color_node_id: str = INFERNO,
                   name: str | None = None) -> PredictionNodes:
    """Every part of `prediction` as styled nodes on `input_volume`'s geometry.

    `threshold` defaults to the prediction's own; with a probability map the segment is the
    map at that threshold, otherwise the prediction's mask.
    """
    if not convert.volume_geometry(input_volume).same_grid(prediction.geometry):
        raise ValueError("the prediction's geometry differs from the input volume's")
    base = name or input_volume.GetName()
    threshold = prediction.threshold if threshold is None else float(threshold)
    nodes = PredictionNodes(input_volume=input_volume, threshold=threshold)
    if prediction.probability is not None:
        nodes.probability = convert.add_volume(scene, prediction.probability, prediction.geometry,
                                               f"{base} lesion probability")
        nodes.probability.SetAttribute(convert.ROLE_ATTRIBUTE, "probability")
        style_probability(nodes.probability, threshold if threshold is not None else 0.5, color_node_id)
        show_in_slice_views(scene, input_volume, nodes.probability, opacity)
    mask = (prediction.thresholded(threshold) if prediction.probability is not None and threshold is not None
            else prediction.mask)
    if mask is not None:
        nodes.segmentation = convert.add_segmentation(scene, segmentations_logic, mask, prediction.geometry,
                                                      input_volume, name=f"{base} lesions")
        nodes.segmentation.SetAttribute(convert.ROLE_ATTRIBUTE, "segmentation")
    nodes.boxes = [convert.add_box(scene, box) for box in prediction.boxes]
    if prediction.points:
        nodes.points = convert.add_points(scene, prediction.points, name=f"{base} lesion points")
    if prediction.classes:
        nodes.classes = convert.add_class_table(scene, prediction.classes, name=f"{base} lesion classes")
    if prediction.regions is not None and prediction.region_names:
        nodes.regions = convert.add_region_segmentation(scene, segmentations_logic, prediction.regions,
                                                        prediction.region_names, prediction.geometry, input_volume,
                                                        name=f"{base} regions")
        nodes.regions.SetAttribute(convert.ROLE_ATTRIBUTE, "regions")
    review.register(nodes, mask=mask)  # ids and states of the model's findings (review.py)
    return nodes


def nodes_in_scene(scene) -> PredictionNodes | None:
    """The result nodes of a scene that was saved and opened again (e.g. a .mrb), found by their
    role attribute; the input volume is the segmentation's (or else the first other scalar
    volume).  None when the scene holds no result."""
    def by_role(class_name, role):
        found = [scene.GetNthNodeByClass(n, class_name) for n in range(scene.GetNumberOfNodesByClass(class_name))]
        return [node for node in found if node.GetAttribute(convert.ROLE_ATTRIBUTE) == role]

    probability = next(iter(by_role("vtkMRMLScalarVolumeNode", "probability")), None)
    segmentation = next(iter(by_role("vtkMRMLSegmentationNode", "segmentation")), None)
    boxes = by_role("vtkMRMLMarkupsROINode", "box")
    points = next(iter(by_role("vtkMRMLMarkupsFiducialNode", "points")), None)
    classes = next(iter(by_role("vtkMRMLTableNode", "classes")), None)
    regions = next(iter(by_role("vtkMRMLSegmentationNode", "regions")), None)
    input_volume = None
    if segmentation is not None:
        input_volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    if input_volume is None:
        volumes = [scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
                   for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        input_volume = next((v for v in volumes if v.GetAttribute(convert.ROLE_ATTRIBUTE) is None
                             and v.GetClassName() == "vtkMRMLScalarVolumeNode"), None)
    if input_volume is None or not any(n is not None for n in (probability, segmentation, points, classes, *boxes)):
        return None
    threshold = None
    if probability is not None and probability.GetDisplayNode() is not None:
        threshold = float(probability.GetDisplayNode().GetLowerThreshold())
    return PredictionNodes(input_volume=input_volume, probability=probability, segmentation=segmentation,
                           boxes=boxes, points=points, classes=classes, regions=regions, threshold=threshold)


def remove_prediction(scene, nodes: PredictionNodes) -> None:
    for node in nodes.nodes():
        scene.RemoveNode(node)


# --- display --------------------------------------------------------------------------------

def style_probability(volume, threshold: float, color_node_id: str = INFERNO) -> None:
    """Colour map, fixed window 0-1, voxels under `threshold` transparent."""
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(1)
    display.SetThreshold(threshold, max(1.0, threshold))
    display.SetInterpolate(0)


def show_in_slice_views(scene, background, foreground, opacity: float) -> None:
    """Input in the background and the probability map in the foreground of every slice view."""
    for composite in _composite_nodes(scene):
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)


def show_background(scene, volume) -> None:
    """`volume` in the background of every slice view; the other layers stay as they are."""
    for composite in _composite_nodes(scene):
        composite.SetBackgroundVolumeID(volume.GetID())


def set_opacity(scene, opacity: float) -> None:
    for composite in _composite_nodes(scene):
        composite.SetForegroundOpacity(opacity)


def _composite_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


# --- live controls --------------------------------------------------------------------------

def set_threshold(nodes: PredictionNodes, threshold: float, segmentations_logic) -> int:
    """Rebuild the lesion segment as probability >= threshold and move the display threshold.

    Returns the number of lesion voxels.  Hand edits to the segment are replaced: this is the
    model's mask at a new threshold.  Review states stay: the new components are matched to the
    recorded ones (review.sync_components).  Only the block of the map that reaches the
    threshold is read, put into the segment and labelled (threshold_block), so a change costs
    the lesions' size, not the volume's: the slider re-thresholds live in the module and the page.
    """
    if nodes.probability is None:
        raise ValueError("this result has no probability map to re-threshold")
    probability = convert.volume_array(nodes.probability, copy=False)
    geometry = convert.volume_geometry(nodes.probability)
    if nodes.segmentation is None:
        mask = (probability >= threshold).astype(np.uint8)
        scene = nodes.probability.GetScene()
        nodes.segmentation = convert.add_segmentation(scene, segmentations_logic, mask, geometry, nodes.input_volume)
        review.sync_components(nodes.segmentation, nodes.segment_id, mask, geometry, probability)
    else:
        block = threshold_block(nodes, probability, threshold)
        offset = tuple(b.start for b in block)
        mask = (probability[block] >= threshold).astype(np.uint8)
        convert.set_segment_mask(nodes.segmentation, nodes.segment_id, mask, geometry, segmentations_logic,
                                 offset=offset)
        review.sync_components(nodes.segmentation, nodes.segment_id, mask, geometry, probability[block],
                               offset=offset)
    display = nodes.probability.GetDisplayNode()
    display.SetThreshold(threshold, max(1.0, threshold))
    nodes.threshold = float(threshold)
    return int(np.count_nonzero(mask))


def threshold_block(nodes: PredictionNodes, probability, threshold: float) -> tuple:
    """The (z, y, x) slices of the smallest block holding every voxel >= threshold (one voxel
    at the corner when none is).  From the map's maximum along each axis' planes, computed once
    per map (kept on `nodes` with the image's modification time)."""
    image = nodes.probability.GetImageData()
    key = (image.GetMTime(), probability.shape)
    if nodes.peaks is None or nodes.peaks[0] != key:
        nodes.peaks = (key, [probability.max(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)])
    block = []
    for peak in nodes.peaks[1]:
        inside = np.flatnonzero(peak >= threshold)
        block.append(slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else None)
    if any(b is None for b in block):
        return (slice(0, 1),) * 3
    return tuple(block)


def filter_boxes(box_nodes, min_score: float) -> int:
    """Hide boxes scoring under `min_score`, show the others; returns how many are shown."""
    shown = 0
    for roi in box_nodes:
        visible = convert.box_score(roi) >= min_score
        roi.GetDisplayNode().SetVisibility(visible)
        shown += visible
    return shown


# --- findings (the module's table) ----------------------------------------------------------

@dataclass
class Finding:
    kind: str  # "class", "candidate", "component" or "box"
    name: str
    score: float | None
    center_ras: tuple[float, float, float]
    detail: str = ""


def findings(nodes: PredictionNodes, segmentations_logic, min_score: float = 0.0) -> list[Finding]:
    """What the table lists: image-level class results (the decision and its probability, centred
    on the image), lesion candidates (points), mask components, boxes at or above min_score."""
    from scipy import ndimage

    from LesionDetectLib.findings import positive_probability
    from LesionDetectLib.geometry import lps_to_ras

    rows: list[Finding] = []
    if nodes.classes is not None:
        geometry = convert.volume_geometry(nodes.input_volume)
        centre = lps_to_ras(geometry.index_to_lps((np.asarray(geometry.size, dtype=float) - 1) / 2))
        for result in convert.table_to_classes(nodes.classes):
            if result.scope == "image":
                rows.append(Finding("class", f"image: {result.label}", positive_probability([result]),
                                    tuple(float(v) for v in centre),
                                    ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())))
    if nodes.points is not None:
        for n in range(nodes.points.GetNumberOfControlPoints()):
            score = convert.point_score(nodes.points, n)
            if score >= min_score:
                rows.append(Finding("candidate", nodes.points.GetNthControlPointLabel(n), score,
                                    tuple(nodes.points.GetNthControlPointPositionVector(n))))
    if nodes.segmentation is not None:
        mask = convert.segment_mask(nodes.segmentation, nodes.segment_id, nodes.input_volume, segmentations_logic)
        geometry = convert.volume_geometry(nodes.input_volume)
        labels, count = ndimage.label(mask)
        voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
        probability = convert.volume_array(nodes.probability) if nodes.probability is not None else None
        for n, zyx in enumerate(ndimage.center_of_mass(mask, labels, range(1, count + 1)), start=1):
            component = labels == n
            score = float(probability[component].max()) if probability is not None else None
            centre = lps_to_ras(geometry.index_to_lps(np.asarray(zyx)[::-1]))
            rows.append(Finding("component", f"component {n}", score, tuple(float(v) for v in centre),
                                f"{component.sum() * voxel_ml:.3g} ml"))
    for roi in nodes.boxes:
        score = convert.box_score(roi)
        if score >= min_score:
            center = [0.0, 0.0, 0.0]
            roi.GetCenter(center)
            size = roi.GetSize()
            rows.append(Finding("box", roi.GetName(), score, tuple(center),
                                " x ".join(f"{s:.1f}" for s in size) + " mm"))
    return rows


def centre_views(scene, center_ras) -> None:
    """Move every slice view so it is centred on a RAS point (MRML's own jump, no Qt)."""
    import slicer

    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *center_ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
