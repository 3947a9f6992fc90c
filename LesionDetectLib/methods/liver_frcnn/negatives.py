"""Training samples of liver-frcnn around detections a reviewer rejected (not in the paper).

A case exported from Slicer after review may name its rejected boxes ("negative_boxes", and
"negative_points" for rejected centres: dataset.hard_negatives).  Each becomes one Faster
R-CNN training sample: the 3-slice stack of the oriented (LPS) slice through its centre, with
the case's real lesion boxes on that slice as targets - usually none, which torchvision's
Faster R-CNN takes as an all-background image - and, when training on crops (`train_crop`),
a random crop that holds the rejected box, so the detector is shown exactly the place it was
wrong about.  A rejected box that overlaps a real lesion box on its slice is left out (a
duplicate of a lesion, not a lesion-free place).

Used by the method's `training_data` through `with_rejected` (config "rejected_negatives",
default on: a case without rejected detections adds nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ...dataset import Case, hard_negatives
from ...geometry import Geometry
from ...io import read_volume
from .data import network_scale_crop
from .slices import neighbour_offset, three_slice_stack

REJECTED_POINT_MM = 10.0  # in-plane size of the box given to a rejected point (a small lesion's)


def _pixel_box(geometry: Geometry, corners_lps: np.ndarray) -> tuple[int, list[float]]:
    """(slice, [x0, y0, x1, y1]) of a box's corners on an oriented grid (pixel i covers [i, i+1))."""
    idx = geometry.lps_to_index(corners_lps)
    lo, hi = idx.min(axis=0) + 0.5, idx.max(axis=0) + 0.5
    k = int(round(float(idx[:, 2].mean())))
    return k, [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def _point_corners(position, size_mm: float) -> np.ndarray:
    h = size_mm / 2
    return np.asarray(position, float) + np.array([[sx, sy, 0.0] for sx in (-h, h) for sy in (-h, h)])


def lesion_boxes_on_slice(case: Case, geometry: Geometry, k: int) -> np.ndarray:
    """The case's real lesion boxes (n, 4) that cross oriented slice k: its 3-D ROI boxes, and its
    key-slice boxes on that slice."""
    from ... import markups
    from .data import key_slices

    out = []
    if case.boxes is not None:
        for box in markups.read_boxes(case.boxes):
            idx = geometry.lps_to_index(box.corners())
            if idx[:, 2].min() - 0.5 <= k <= idx[:, 2].max() + 0.5:
                lo, hi = idx.min(axis=0) + 0.5, idx.max(axis=0) + 0.5
                out.append([lo[0], lo[1], hi[0], hi[1]])
    if case.extra.get("key_slices"):
        stored = read_volume(case.image, sitk.sitkFloat32)
        for ks, boxes in key_slices(case, stored).items():
            for x0, y0, x1, y1 in boxes:  # stored pixel corners -> physical -> oriented grid
                corners = np.array([stored.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, float(ks)))
                                    for x in (x0, x1) for y in (y0, y1)])
                kk, b = _pixel_box(geometry, corners)
                if kk == k:
                    out.append(b)
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def _overlaps(box, boxes: np.ndarray) -> bool:
    if not len(boxes):
        return False
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return bool(np.any((w > 0) & (h > 0)))


def rejected_items(case: Case, config: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(uint8 (3, y, x) stack, real lesion boxes (n, 4) on it, rejected box (4,))] for every
    rejected detection of a case inside its image, on the LPS-oriented grid."""
    points, boxes = hard_negatives(case)
    if not points and not boxes:
        return []
    image = sitk.DICOMOrient(read_volume(case.image, sitk.sitkFloat32), "LPS")
    geometry = Geometry.of(image)
    hu = sitk.GetArrayViewFromImage(image)
    offset = neighbour_offset(image.GetSpacing()[2], config["neighbour_mm"])
    found = [_pixel_box(geometry, b.corners()) for b in boxes]
    found += [_pixel_box(geometry, _point_corners(p.position, REJECTED_POINT_MM)) for p in points]
    out, truth_of = [], {}
    for k, box in found:
        if not 0 <= k < hu.shape[0] or box[2] <= 0 or box[3] <= 0 or box[0] >= hu.shape[2] or box[1] >= hu.shape[1]:
            continue
        if k not in truth_of:
            truth_of[k] = lesion_boxes_on_slice(case, geometry, k)
        if _overlaps(box, truth_of[k]):
            continue
        out.append((three_slice_stack(hu, k, offset, config["window"]), truth_of[k],
                    np.asarray(box, dtype=np.float32)))
    return out


class RejectedSamples(torch.utils.data.Dataset):
    """Faster R-CNN samples (float image (3, y, x) in [0, 1], {"boxes", "labels"}) centred on
    rejected detections; flipped and cropped as `KeySliceSamples` does in training, the crop
    holding the rejected box."""

    def __init__(self, cases: list[Case], config: dict[str, Any]):
        self.config = config
        self.items = [item for case in cases for item in rejected_items(case, config)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        stack, boxes, focus = self.items[i]
        image = torch.from_numpy(stack).float().div_(255.0)
        boxes, focus = torch.from_numpy(boxes.copy()), torch.from_numpy(focus.copy())[None]
        width = image.shape[-1]
        if self.config["flip"] and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes, focus = (torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
                            for b in (boxes, focus))
        if int(self.config["train_crop"]) > 0:
            image, boxes = network_scale_crop(image, boxes, self.config, focus=focus[0])
        return image, {"boxes": boxes.reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64)}


def with_rejected(train_set, cases: list[Case], config: dict[str, Any]):
    """`train_set` plus the samples round the cases' rejected detections (config
    "rejected_negatives", default on; Faster R-CNN only: the box regressors always predict a
    box); `train_set` itself when there are none."""
    if not config.get("rejected_negatives", True) or config["model"] != "faster_rcnn":
        return train_set
    rejected = RejectedSamples(cases, config)
    return torch.utils.data.ConcatDataset([train_set, rejected]) if len(rejected) else train_set
