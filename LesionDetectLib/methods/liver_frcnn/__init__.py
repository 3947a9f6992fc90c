"""Method 003 `liver-frcnn`: liver lesion boxes in CT with Faster R-CNN on 3-slice input
(Aluko, Hari, Piccini Yakubenko, "Liver Lesion Localization using Deep Convolutional Neural
Networks"; protocol of DeepLesion, Yan et al. 2018).

Input.  DeepLesion-style key slices: each case of the dataset lists
`"key_slices": [{"slice": k, "box": [x0, y0, x1, y1], "lesion": n}, ...]` (box in pixels of
slice k, torchvision's convention: pixel i covers [i, i+1)).  A sample is the key slice with
one neighbour `neighbour_mm` above and below (interpolated along z when the slice spacing is
not a divisor, so thin and thick series give the same context), HU-windowed and scaled to
[0, 255] (uint8), then resized by the network to `image_size` (512, the paper's size; a
512 x 512 slice is not resampled).  The default window [-160, 240] HU is the abdominal
soft-tissue window (level 40, width 400): liver parenchyma (~60 HU with contrast) sits
mid-grey, hypodense metastases and cysts (0-40 HU) and hyperdense lesions stay separable,
and fat/air/bone, irrelevant here, saturate.  The default neighbour distance of 2 mm is the
slice interval 3DCE and MULAN normalise DeepLesion to.

Models (config "model"):
  faster_rcnn        torchvision Faster R-CNN, two classes, anchors 16, 24, 32, 48, 96 with
                     ratios 1:2, 1:1, 2:1 (one size per FPN level), min/max size = image_size;
                     "backbone": resnet50 (paper), vgg16 (the paper's future work), resnet18 or
                     mobilenet_v3_large (small, for tests and CPU experiments).
  cnn_regressor      the paper's baseline: 4 conv + dense -> 4 box coordinates, MSE loss.
  cnn_regressor_vgg  the baseline on the input concatenated with upsampled VGG-16 features.
Pretrained weights: `"pretrained": true` (or `--weights FILE`) loads torchvision's ImageNet file
(`"pretrained_source": "coco"` for the COCO R50-FPN detector) from $TORCH_HOME/hub/checkpoints;
otherwise random initialisation.

Training and inference both see the CT reoriented to LPS axial slices (sitk.DICOMOrient:
anterior up, the patient's left on the right, as DeepLesion); the dataset's key slices and boxes
refer to the stored grid and are mapped onto the oriented one through physical space.
Inference (`lesiondetect infer`; slice indices and 2-D boxes below refer to the oriented grid,
which for an axial series stored from feet to head is the input's own z) runs the detector
over all slices (or `--set slices=a:b`), `slice_batch` slices at a time, links overlapping
boxes on consecutive slices into 3-D lesion boxes (volume.py), suppresses overlapping 3-D
boxes and writes ROI boxes in physical (LPS) coordinates; each box's `extra` holds its per-slice 2-D boxes.  Boxes scoring below the card's
threshold (chosen on validation key slices at `calibrate_fp_per_image` false positives per
image) are dropped; `--threshold` overrides it.

Evaluation: Faster R-CNN by FROC on the test key slices (DeepLesion protocol: IoU >= 0.5
with torchvision.ops.box_iou, each lesion counted once, duplicates neither hit nor false
positive; sensitivity at 0.5, 1, 2, 4, 8 FP per image and their mean, keys `froc`,
`froc_mean`) plus the baselines' metric for comparison; baselines by the fraction of lesions
whose predicted box has IoU > 0.1 (the paper's accuracy = sensitivity).
Experiment configs: Resources/configs/liver-frcnn/.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections import defaultdict
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

from ...commands.bench import register_benchmark
from ...dataset import Case, Dataset, split_by_patient
from ...errors import LesionDetectError, input_error
from ...geometry import Geometry
from ...io import read_volume, require_scalar_volume
from ...metrics.froc import froc_curve, froc_summary
from ...models import ModelCard
from ...prediction import Prediction, Provenance
from ...progress import progress
from .. import register
from ..base import Method
from . import networks
from .slices import neighbour_offset, parse_slice_range, stacks, three_slice_stack
from .volume import SliceLinker, chains_to_boxes

MODELS = ("faster_rcnn", "cnn_regressor", "cnn_regressor_vgg")

DEFAULTS: dict[str, Any] = {
    "model": "faster_rcnn",
    "backbone": "resnet50",
    "pretrained": False,
    "pretrained_source": "imagenet",
    "trainable_layers": 3,
    "window": [-160.0, 240.0],
    "neighbour_mm": 2.0,
    "image_size": 512,
    "anchor_sizes": [16, 24, 32, 48, 96],
    "aspect_ratios": [0.5, 1.0, 2.0],
    # 300 proposals at test time as 3DCE/MULAN use (torchvision's 1000 is for 80 COCO classes)
    "rpn_proposals_test": 300,
    # RoIs sampled per image for the box head in training: torchvision's 512 is for COCO's
    # many objects; a CT slice holds a few lesions (keras-frcnn, the paper's code, samples 32)
    "roi_samples_per_image": 128,
    "min_score": 0.05,
    "slice_nms_iou": 0.5,
    "detections_per_slice": 20,
    "regressor_width": 16,
    "dropout": 0.0,
    "flip": True,
    # > 0: train Faster R-CNN on random crops of this many pixels (at the network's scale) that
    # contain a lesion, about (image_size / train_crop)^2 times cheaper per step; 0: whole slices
    "train_crop": 0,
    "val_fraction": 0.15,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_schedule": "warmup_cosine",
    "warmup_epochs": 1,
    "epochs": 20,
    "batch_size": 2,
    "seed": 0,
    # whole-volume inference
    "slice_batch": 2,
    "link_iou": 0.3,
    "nms_iou_3d": 0.3,
    "max_boxes": 50,
    "calibrate_fp_per_image": 1.0,
    # evaluation
    "eval_iou": 0.5,
    "baseline_iou": 0.1,
}


# --- samples --------------------------------------------------------------------------------

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
    from ... import markups
    from ...geometry import Geometry
    from ...io import read_image

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


def read_ct(path) -> np.ndarray:
    """HU (z, y, x) float32 of a CT volume."""
    return sitk.GetArrayFromImage(read_volume(path, sitk.sitkFloat32))


def case_stacks(case: Case, config: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(uint8 (3, y, x) stack, boxes (n, 4))] for every key slice of a case, on the LPS-oriented
    grid that inference detects on (key slices and boxes are given on the stored grid)."""
    stored = read_volume(case.image, sitk.sitkFloat32)
    image = sitk.DICOMOrient(stored, "LPS")
    hu = sitk.GetArrayViewFromImage(image)
    offset = neighbour_offset(image.GetSpacing()[2], config["neighbour_mm"])
    out = []
    for k, boxes in sorted(key_slices(case, stored).items()):
        if not 0 <= k < stored.GetSize()[2]:
            raise input_error(case.image, f'case "{case.id}": key slice {k} is outside the '
                                          f"{stored.GetSize()[2]}-slice image")
        k_lps, boxes_lps = key_slice_on_lps_grid(stored, image, k, boxes, case)
        out.append((three_slice_stack(hu, k_lps, offset, config["window"]), boxes_lps))
    return out


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
        for case in cases:
            for stack, boxes in case_stacks(case, config):
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
                image, boxes = self._network_scale_crop(image, boxes)
            return image, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return regressor_input(image, self.config), boxes[0] / torch.tensor([width, height, width, height])


    def _network_scale_crop(self, image: torch.Tensor, boxes: torch.Tensor):
        """Scale as the network's transform would (it is told to skip resizing in training), then,
        for training, a random train_crop square holding one of the lesions whole."""
        scale = int(self.config["image_size"]) / max(image.shape[-2:])
        if scale != 1:
            image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)[0]
            boxes = boxes * scale
        if not self.train:
            return image, boxes
        height, width = image.shape[-2:]
        crop_h, crop_w = min(int(self.config["train_crop"]), height), min(int(self.config["train_crop"]), width)
        x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), ()))].tolist()
        left = _random_start(x1 - crop_w, x0, width - crop_w)
        top = _random_start(y1 - crop_h, y0, height - crop_h)
        image = image[:, top:top + crop_h, left:left + crop_w]
        boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, crop_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, crop_h)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
        return image.contiguous(), boxes[keep]


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


def split_cases(dataset: Dataset, config: dict[str, Any], seed: int) -> tuple[list[Case], list[Case]]:
    """(train, validation) cases with key slices: the dataset's own split when it has one,
    otherwise by patient; test cases are never used."""
    labelled = [c for c in dataset.cases if has_key_slices(c)]
    if any(c.split for c in labelled):
        return ([c for c in labelled if c.split == "train"],
                [c for c in labelled if c.split in ("val", "validation")])
    fraction = float(config["val_fraction"])
    if fraction <= 0 or len({c.patient for c in labelled}) < 2:
        return labelled, []
    parts = split_by_patient(labelled, {"train": 1 - fraction, "val": fraction}, seed)
    return parts["train"], parts["val"]


def evaluation_cases(dataset: Dataset, split: str) -> list[Case]:
    cases = [c for c in dataset.cases if has_key_slices(c)]
    if split == "all" or not any(c.split for c in cases):
        return cases
    chosen = [c for c in cases if c.split == split]
    if not chosen:
        raise input_error(dataset.root, f"has no annotated cases in split '{split}'; use --split all")
    return chosen


# --- detection and matching -------------------------------------------------------------------

@torch.no_grad()
def detect(model: torch.nn.Module, stack_batch: np.ndarray, device: torch.device
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(boxes (n, 4) in the slice's pixels, scores (n,))] for uint8 stacks (b, 3, y, x)."""
    # oneDNN and cuDNN convolutions run fastest on NHWC: 0.86 -> 0.59 s per 512 px slice on 2
    # CPU cores (ResNet-50 FPN); a no-op once the backbone is converted
    if isinstance(getattr(model, "backbone", None), torch.nn.Module):
        model.backbone.to(memory_format=torch.channels_last)
    images = [torch.from_numpy(s).to(device).float().div_(255.0) for s in stack_batch]
    return [(o["boxes"].cpu().numpy(), o["scores"].cpu().numpy()) for o in model(images)]


def match_detections(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_threshold: float
                     ) -> tuple[list[float], list[float | None]]:
    """(scores of false positives, best score per true lesion or None) for one image.

    A detection hits the lesion it overlaps most if that IoU >= threshold; every lesion counts
    once (its best hit), and further hits on it are neither hits nor false positives."""
    lesion_scores: list[float | None] = [None] * len(truth)
    if len(boxes) == 0:
        return [], lesion_scores
    if len(truth) == 0:
        return [float(s) for s in scores], lesion_scores
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(truth, dtype=torch.float32)).numpy()
    fp = []
    for i, score in enumerate(scores):
        j = int(np.argmax(iou[i]))
        if iou[i, j] >= iou_threshold:
            if lesion_scores[j] is None or score > lesion_scores[j]:
                lesion_scores[j] = float(score)
        else:
            fp.append(float(score))
    return fp, lesion_scores


def _key_slice_detections(model, config, cases, device, desc):
    """Yield (detected boxes, scores, true boxes) for every key slice of `cases`."""
    for case in progress(cases, desc=desc, unit="case"):
        items = case_stacks(case, config)
        for start in range(0, len(items), int(config["slice_batch"])):
            part = items[start:start + int(config["slice_batch"])]
            for (boxes, scores), (_, truth) in zip(detect(model, np.stack([s for s, _ in part]), device), part):
                yield boxes, scores, truth


def froc_of(model, config, cases, device, desc="evaluating") -> dict[str, Any]:
    fp_scores, lesion_scores, n_images, top1_hits = [], [], 0, 0
    for boxes, scores, truth in _key_slice_detections(model, config, cases, device, desc):
        fp, hits = match_detections(boxes, scores, truth, float(config["eval_iou"]))
        fp_scores += fp
        lesion_scores += hits
        n_images += 1
        if len(boxes):  # the baselines' metric on the best box: IoU > 0.1 with a lesion
            best = box_iou(torch.as_tensor(boxes[:1]), torch.as_tensor(truth)).max()
            top1_hits += int(best > float(config["baseline_iou"]))
    if n_images == 0:
        raise LesionDetectError("no key slices to evaluate")
    summary = froc_summary(fp_scores, lesion_scores, n_images)
    summary["top1_iou_0.1_sensitivity"] = top1_hits / n_images
    return summary


@torch.no_grad()
def regressor_metrics(model, config, cases, device) -> dict[str, Any]:
    hits, ious, errors = 0, [], []
    samples = KeySliceSamples(cases, config, train=False)
    for i in progress(range(len(samples)), desc="evaluating", unit="lesion"):
        image, target = samples[i]
        stack = samples.items[i][0]
        height, width = stack.shape[-2:]
        pred = model(image[None].to(device))[0].cpu()
        errors.append(float(((pred - target) ** 2).mean()))
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        iou = float(box_iou((pred * scale)[None], (target * scale)[None])[0, 0])
        ious.append(iou)
        hits += int(iou > float(config["baseline_iou"]))
    if not samples:
        raise LesionDetectError("no key slices to evaluate")
    return {"sensitivity_iou_0.1": hits / len(samples), "mean_iou": float(np.mean(ious)),
            "mse": float(np.mean(errors)), "lesions": len(samples)}


# --- the plug-in ------------------------------------------------------------------------------

@register
class LiverFasterRCNN(Method):
    name = "liver-frcnn"
    modality = "CT"
    paper = "003"
    defaults = DEFAULTS

    def build_model(self, config, pretrained=False):
        if config["model"] not in MODELS:
            raise LesionDetectError(f"unknown model '{config['model']}'; use one of {', '.join(MODELS)}")
        if config["model"] == "faster_rcnn":
            return networks.build_faster_rcnn(config, pretrained)
        return networks.build_regressor(config, pretrained)

    def training_data(self, dataset, config, seed):
        train_cases, val_cases = split_cases(dataset, config, seed)
        val = KeySliceSamples(val_cases, config, train=False) if val_cases else None
        return KeySliceSamples(train_cases, config, train=True), val

    def collate(self, batch):
        if isinstance(batch[0][1], dict):  # detection: images may differ in size
            return [b[0] for b in batch], [b[1] for b in batch]
        return torch.utils.data.default_collate(batch)

    def batch_loss(self, model, batch, device):
        images, targets = batch
        if isinstance(images, list):
            losses = model([im.to(device) for im in images],
                           [{k: v.to(device) for k, v in t.items()} for t in targets])
            return sum(losses.values())
        return F.mse_loss(model(images.to(device)), targets.to(device))

    def calibrate(self, model, dataset, config, device):
        """The score threshold giving `calibrate_fp_per_image` false positives per key slice on
        the validation cases (training cases when there are none)."""
        if config["model"] != "faster_rcnn":
            return {}
        train_cases, val_cases = split_cases(dataset, config, int(config.get("seed", 0)))
        summary = froc_of(model.eval(), config, val_cases or train_cases, device, desc="calibrating")
        fps = np.asarray(summary["curve"]["fp_per_image"])
        thr = np.asarray(summary["curve"]["threshold"])
        ok = fps <= float(config["calibrate_fp_per_image"])
        return {"score": float(thr[ok].min()) if ok.any() else float(config["min_score"])}

    def predict(self, model, card: ModelCard, image: sitk.Image, device, threshold: float | None = None,
                slices=None, **options) -> Prediction:
        config = card.config
        if config["model"] != "faster_rcnn":
            raise LesionDetectError(f"a '{config['model']}' model regresses one box per key slice and cannot say "
                                    "where no lesion is; run whole-volume detection with a faster_rcnn model, and "
                                    "measure baselines with `lesiondetect evaluate`")
        image = require_scalar_volume(image)
        # Detect on axial slices seen as in training (DeepLesion: anterior up, patient's left
        # on the right): a NIfTI stored RAS or a sagittal series is reoriented first.  Boxes are
        # physical, so they fit the input whatever grid found them.
        oriented = sitk.DICOMOrient(image, "LPS")
        geometry = Geometry.of(oriented)
        hu = sitk.GetArrayViewFromImage(oriented)  # a view: slices are windowed a few at a time
        try:
            chosen = parse_slice_range(slices, hu.shape[0])
        except ValueError as exc:
            raise LesionDetectError(str(exc)) from None
        if threshold is None:
            threshold = float(card.thresholds.get("score", config["min_score"]))
        offset = neighbour_offset(geometry.spacing[2], config["neighbour_mm"])
        chunk = int(config["slice_batch"])
        linker = SliceLinker(config["link_iou"])
        model.eval()
        for part, batch in progress(stacks(hu, chosen, offset, config["window"], chunk),
                                    total=math.ceil(len(chosen) / chunk), desc="detecting lesions", unit="batch"):
            for k, (boxes, scores) in zip(part, detect(model, batch, device)):
                linker.add(k, boxes, scores)
        boxes = chains_to_boxes(linker.finish(), geometry, float(config["nms_iou_3d"]), threshold,
                                int(config["max_boxes"]))
        provenance = Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                parameters={"threshold": threshold, "slices": [chosen[0], chosen[-1]],
                                            "window": config["window"], "neighbour_mm": config["neighbour_mm"],
                                            "backbone": config["backbone"]})
        return Prediction(geometry=Geometry.of(image), provenance=provenance, threshold=threshold, boxes=boxes)

    def evaluate(self, model, card, dataset, device, split="test", **options):
        cases = evaluation_cases(dataset, split)
        config = card.config
        if config["model"] == "faster_rcnn":
            metrics = froc_of(model.eval(), config, cases, device)
        else:
            metrics = regressor_metrics(model.eval(), config, cases, device)
        metrics.update({"model": config["model"], "backbone": config.get("backbone"), "cases": len(cases),
                        "split": split})
        return metrics

    def report(self, metrics):
        if "froc" in metrics:
            rates = "  ".join(f"{k:>5s}" for k in metrics["froc"])
            values = "  ".join(f"{v:5.3f}" for v in metrics["froc"].values())
            return (f"liver-frcnn {metrics['model']} ({metrics['backbone']}), {metrics['images']} key slices, "
                    f"{metrics['lesions']} lesions\n"
                    f"FP per image  {rates}   mean\nsensitivity   {values}   {metrics['froc_mean']:.3f}\n"
                    f"best box IoU > 0.1: {metrics['top1_iou_0.1_sensitivity']:.3f}")
        return (f"liver-frcnn {metrics['model']}: {metrics['lesions']} lesions, sensitivity (IoU > 0.1) "
                f"{metrics['sensitivity_iou_0.1']:.3f}, mean IoU {metrics['mean_iou']:.3f}, MSE {metrics['mse']:.5f}")


# --- benchmark --------------------------------------------------------------------------------

@register_benchmark("liver-frcnn")
def benchmark(config: dict[str, Any] | None = None, slices: int = 8, repeats: int = 3) -> dict[str, Any]:
    """Speed and memory of the default ResNet-50 Faster R-CNN on 512 x 512 CT slices: median
    seconds per slice (inference), per `slices`-slice volume (streamed inference with linking),
    per training step (batch of 2 slices with 2 boxes each), and peak resident memory.
    Uses the shipped model when there is one, else an untrained network (which keeps more
    proposals than a trained one, so its timings are an upper bound)."""
    from ...models import shipped_model_dir
    from ...training import load_trained

    shipped = shipped_model_dir("liver-frcnn") if config is None else None
    config = {**DEFAULTS, **(config or {})}
    device = torch.device("cpu")
    if shipped is not None:
        _, model, card, _ = load_trained(shipped, device="cpu")
    else:
        torch.manual_seed(0)
        model = LiverFasterRCNN().build_model(config).eval()
        card = ModelCard(method="liver-frcnn", modality="CT", config=config, thresholds={"score": 0.5})
    rng = np.random.default_rng(0)
    size = int(config["image_size"])
    volume = rng.normal(40, 30, size=(slices, size, size)).astype(np.float32)
    volume[:, size // 3:size // 3 + 40, size // 2:size // 2 + 40] = -20  # one dark "lesion"
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 2.5))

    def median_time(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    one = next(stacks(volume, [slices // 2], 1.0, config["window"], 1))[1]
    detect(model, one, device)  # warm-up
    slice_s = median_time(lambda: detect(model, one, device))
    predictor = LiverFasterRCNN()
    volume_s = median_time(lambda: predictor.predict(model, card, image, device, threshold=0.5))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    batch = ([torch.from_numpy(one[0]).float() / 255] * 2,
             [{"boxes": torch.tensor([[200.0, 170, 240, 210], [100, 100, 130, 126]]),
               "labels": torch.ones(2, dtype=torch.int64)}] * 2)

    def step():
        loss = predictor.batch_loss(model, batch, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    train_step_s = median_time(step)
    return {
        "slice_s": round(slice_s, 3),
        "volume_s": round(volume_s, 3),
        "volume_slices": slices,
        "train_step_s": round(train_step_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "backbone": config["backbone"],
        "image_size": size,
        "model": "shipped" if shipped is not None else "untrained",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
