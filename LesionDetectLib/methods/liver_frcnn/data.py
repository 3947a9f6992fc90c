"""Training samples of liver-frcnn: DeepLesion-style key slices as 3-slice uint8 stacks.

A case lists `"key_slices": [{"slice": k, "box": [x0, y0, x1, y1]}, ...]` (pixels of slice k,
torchvision's convention: pixel i covers [i, i+1)); cases exported from Slicer with 3-D boxes
get one key slice through each box centre.  Training sees the CT reoriented to LPS axial
slices (as inference does), so key slices and boxes are mapped onto that grid through
physical space.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from ... import markups
from ...dataset import Case
from ...errors import input_error
from ...geometry import Geometry
from ...io import read_image, read_volume
from .slices import neighbour_offset, three_slice_stack


def key_slices(case: Case, image: sitk.Image | None = None) -> dict[int, list[list[float]]]:
    """{slice index: [box, ...]} of a case's DeepLesion-style key-slice annotations.

    Cases without "key_slices" but with 3-D boxes (e.g. exported from Slicer after an
    annotator corrected them) get one key slice per box: the slice through its centre
    (`image`: the case's image when the caller has read it already)."""
    out: dict[int, list[list[float]]] = defaultdict(list)
    entries = case.extra.get("key_slices")
    if not entries and case.boxes is not None:
        entries = key_slices_from_boxes(case, image)
    for entry in entries or []:
        try:
            k, box = int(entry["slice"]), [float(v) for v in entry["box"]]
        except (KeyError, TypeError, ValueError):
            raise input_error(case.image, f'case "{case.id}": key_slices entries need "slice" and "box" '
                                          f"[x0, y0, x1, y1]; got {entry!r}") from None
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise input_error(case.image, f'case "{case.id}": key-slice box {box} is not [x0, y0, x1, y1] '
                                          "with x1 > x0 and y1 > y0")
        out[k].append(box)
    return dict(out)


def key_slices_from_boxes(case: Case, image: sitk.Image | None = None) -> list[dict[str, Any]]:
    """Key-slice entries for a case's 3-D ROI boxes: the slice nearest each box centre and the
    box's pixel extent there (its corners projected onto the image grid; pixel coordinates
    put voxel i on [i, i + 1), as the key-slice boxes of the synthetic studies do)."""
    geometry = Geometry.of(read_image(case.image) if image is None else image)
    entries = []
    for n, box in enumerate(markups.read_boxes(case.boxes)):
        corners = geometry.lps_to_index(box.corners())  # (8, 3) continuous (x, y, z) indices
        lo, hi = corners.min(axis=0) + 0.5, corners.max(axis=0) + 0.5
        k = int(round(float(geometry.lps_to_index(box.center)[2])))
        if hi[0] > lo[0] and hi[1] > lo[1] and 0 <= k < geometry.size[2]:
            entries.append({"slice": k, "box": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])],
                            "lesion": n + 1})
    return entries


def has_key_slices(case: Case) -> bool:
    return bool(case.extra.get("key_slices")) or case.boxes is not None


def case_stacks(case: Case, config: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(uint8 (3, y, x) stack, boxes (n, 4))] of a case's training slices, on the LPS-oriented
    grid that inference detects on.  `train_slices` "key": its key slices (given on the stored
    grid); "mask": every slice where a lesion of its mask shows at least `lesion_slice_fraction`
    of its largest cross-section, each lesion's box on that slice from the mask.  `negative_slices`
    adds that many lesion-free slices per lesion slice (empty targets: what inference sees on most
    slices of a volume)."""
    stored = read_volume(case.image, sitk.sitkFloat32)
    image = sitk.DICOMOrient(stored, "LPS")
    hu = sitk.GetArrayViewFromImage(image)
    offset = neighbour_offset(image.GetSpacing()[2], config["neighbour_mm"])
    if config["train_slices"] == "mask" and case.mask is not None:
        slice_boxes = mask_slice_boxes(case, stored, image, float(config["lesion_slice_fraction"]))
    else:
        slice_boxes = {}
        for k, boxes in sorted(key_slices(case, stored).items()):
            if not 0 <= k < stored.GetSize()[2]:
                raise input_error(case.image, f'case "{case.id}": key slice {k} is outside the '
                                              f"{stored.GetSize()[2]}-slice image")
            k_lps, boxes_lps = key_slice_on_lps_grid(stored, image, k, boxes, case)
            slice_boxes[k_lps] = boxes_lps
    out = [(three_slice_stack(hu, k, offset, config["window"]), boxes) for k, boxes in sorted(slice_boxes.items())]
    for k in negative_slices(case, hu.shape[0], slice_boxes, float(config["negative_slices"]), offset):
        out.append((three_slice_stack(hu, k, offset, config["window"]), np.zeros((0, 4), dtype=np.float32)))
    return out


def mask_slice_boxes(case: Case, stored: sitk.Image, oriented: sitk.Image, fraction: float) -> dict[int, np.ndarray]:
    """{slice: boxes (n, 4)} on the LPS-oriented grid from the case's lesion mask: one box per 3-D
    lesion on each slice where its cross-section is at least `fraction` of its largest (the
    slivers at a lesion's poles are not what a reader would box)."""
    from scipy import ndimage

    from ...dataset import read_mask

    mask = read_mask(case.mask, Geometry.of(stored))
    if mask.shape != tuple(reversed(stored.GetSize())):
        raise input_error(case.mask, f'case "{case.id}": the lesion mask is not on the image grid')
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(stored)
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(mask_image, "LPS"))  # a copy: the image is temporary
    labels, n = ndimage.label(mask > 0)
    out: dict[int, list[list[float]]] = defaultdict(list)
    for lesion, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        block = labels[where] == lesion
        areas = block.sum(axis=(1, 2))
        for dz in np.flatnonzero(areas >= fraction * areas.max()):
            ys, xs = np.nonzero(block[dz])
            y0, x0 = ys.min() + where[1].start, xs.min() + where[2].start
            y1, x1 = ys.max() + where[1].start + 1, xs.max() + where[2].start + 1
            out[int(dz) + where[0].start].append([float(x0), float(y0), float(x1), float(y1)])
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def negative_slices(case: Case, n_slices: int, lesion_slices, per_lesion_slice: float, offset: float) -> list[int]:
    """Lesion-free slices (no lesion slice within the stack's reach), `per_lesion_slice` times as
    many as the lesion slices, drawn reproducibly per case."""
    if per_lesion_slice <= 0 or not lesion_slices:
        return []
    reach = int(np.ceil(offset)) + 1
    near = {k + d for k in lesion_slices for d in range(-reach, reach + 1)}
    free = [k for k in range(n_slices) if k not in near]
    count = min(len(free), int(round(per_lesion_slice * len(lesion_slices))))
    rng = np.random.default_rng(int.from_bytes(case.id.encode()[-8:], "little"))
    return sorted(int(k) for k in rng.choice(free, size=count, replace=False)) if count else []


def key_slice_on_lps_grid(stored: sitk.Image, oriented: sitk.Image, k: int, boxes: list[list[float]], case: Case
                          ) -> tuple[int, np.ndarray]:
    """(slice, boxes (n, 4)) of stored slice k's boxes on the LPS-oriented grid: each box's
    corners (pixel i covers [i, i + 1)) go through physical space.  A stored slice that is not
    an axial slice of the oriented grid (a sagittal series, say) is an error."""
    out, slices = [], set()
    for x0, y0, x1, y1 in boxes:
        corners = [oriented.TransformPhysicalPointToContinuousIndex(
            stored.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, float(k))))
            for x in (x0, x1) for y in (y0, y1)]
        c = np.asarray(corners)
        if np.ptp(c[:, 2]) > 0.5:
            raise input_error(case.image, f'case "{case.id}": key slice {k} is not an axial slice of the image '
                                          "(the detector works on axial slices); reorient the series")
        slices.add(int(round(float(c[:, 2].mean()))))
        out.append([c[:, 0].min() + 0.5, c[:, 1].min() + 0.5, c[:, 0].max() + 0.5, c[:, 1].max() + 0.5])
    (k_lps,) = slices  # one stored slice is one oriented slice
    return k_lps, np.asarray(out, dtype=np.float32)


class KeySliceSamples(torch.utils.data.Dataset):
    """Key-slice samples of a list of cases, held as uint8 stacks.

    Faster R-CNN: (float image (3, y, x) in [0, 1], {"boxes", "labels"}) with every box on the
    slice.  Regressors: (float image (3, S, S), box (4,) as fractions of width/height), one
    sample per lesion (the paper's single-box output)."""

    def __init__(self, cases: list[Case], config: dict[str, Any], train: bool):
        self.config, self.train = config, train
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        regressor = config["model"] != "faster_rcnn"
        for stacks_of_case in _case_stacks_of(cases, config):
            for stack, boxes in stacks_of_case:
                if not len(boxes) and (regressor or not train):
                    continue  # lesion-free slices train the detector; validation and regressors need a box
                if regressor:
                    self.items += [(stack, boxes[i:i + 1]) for i in range(len(boxes))]
                else:
                    self.items.append((stack, boxes))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        stack, boxes = self.items[i]
        image = torch.from_numpy(stack).float().div_(255.0)
        boxes = torch.from_numpy(boxes.copy())
        width, height = image.shape[-1], image.shape[-2]
        if self.train and self.config["flip"] and torch.rand(()) < 0.5:  # torchvision's detection recipe
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        if self.config["model"] == "faster_rcnn":
            if int(self.config["train_crop"]) > 0:
                image, boxes = network_scale_crop(image, boxes, self.config, self.train)
            return image, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return regressor_input(image, self.config), boxes[0] / torch.tensor([width, height, width, height])


def network_scale_crop(image: torch.Tensor, boxes: torch.Tensor, config: dict[str, Any], train: bool = True,
                       focus: torch.Tensor | None = None):
    """Scale as the network's transform would (it is told to skip resizing in training), then,
    for training, a random train_crop square holding `focus` whole (default: one of the lesions;
    anywhere on a lesion-free slice)."""
    scale = int(config["image_size"]) / max(image.shape[-2:])
    if scale != 1:
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)[0]
        boxes = boxes * scale
        focus = None if focus is None else focus * scale
    if not train:
        return image, boxes
    height, width = image.shape[-2:]
    crop_h, crop_w = min(int(config["train_crop"]), height), min(int(config["train_crop"]), width)
    if focus is None:
        focus = boxes[int(torch.randint(len(boxes), ()))] if len(boxes) else torch.tensor([0.0, 0.0, width, height])
    x0, y0, x1, y1 = focus.tolist()
    left = _random_start(x1 - crop_w, x0, width - crop_w)
    top = _random_start(y1 - crop_h, y0, height - crop_h)
    image = image[:, top:top + crop_h, left:left + crop_w]
    boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, crop_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, crop_h)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
    return image.contiguous(), boxes[keep]


def _case_stacks_of(cases: list[Case], config: dict[str, Any]):
    """case_stacks of each case, read by `load_workers` processes when more than one (reading and
    reorienting full CTs is most of the set-up on a many-core training machine)."""
    workers = min(int(config["load_workers"]), len(cases))
    if workers <= 1:
        return (case_stacks(case, config) for case in cases)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: a fork after torch has started its threads (or CUDA) can hang the child
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(case_stacks, cases, [config] * len(cases)))


def _random_start(lowest: float, highest: float, limit: int) -> int:
    """A random crop start in [lowest, highest] (the crop then holds the box) within [0, limit]."""
    lo = max(0, int(np.ceil(lowest)))
    hi = min(limit, int(np.floor(highest)))
    if hi < lo:  # box larger than the crop: centre on it
        return int(np.clip(round((lowest + highest) / 2), 0, limit))
    return int(torch.randint(lo, hi + 1, ()))


def regressor_input(image: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """A (3, y, x) image resized to the regressor's fixed (S, S) input."""
    size = int(config["image_size"])
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
