"""The ms-flair-fcn plug-in: MS plaques in FLAIR MRI with a fully convolutional filter
(Stasiak et al., BIOIMAGING 2017; seed 004).

Training uses the paper's tiles (data.py); inference runs whole axial slices inside the
foreground box and maps the probabilities back onto the input's grid.  The pixel threshold
is the F-max over every pixel of the full training slices (not tiles); each 3-D component
of the mask becomes a box carrying its volume, centroid and maximum probability.  Evaluation:
pixel P/R/F/Dice and the Anima lesion-wise scores (metrics/lesionwise.py).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...dataset import Dataset, cases_for, read_mask, split_cases
from ...errors import input_error
from ...geometry import Geometry
from ...io import read_image
from ...metrics import lesionwise
from ...metrics.thresholds import fmax_threshold
from ...models import ModelCard
from ...prediction import LesionBox, Prediction, Provenance
from ...progress import progress
from ..base import Method
from .data import ModelGrid, TileSet, case_tiles, foreground_box, normalise, slice_stack
from .network import build_network, soft_dice_loss

SPLIT = {"train": 1.0}  # without dataset splits every labelled case trains (and is evaluated)


class MSFlairFCN(Method):
    name = "ms-flair-fcn"
    modality = "MR"
    paper = "004"
    defaults = {
        "architecture": "unet",  # "paper" (six-layer filter) | "unet" (the stronger default)
        "context_slices": 1,  # neighbouring slices on each side read as extra channels
        "unet_base": 16,
        "unet_depth": 3,
        "unet_norm": "batch",  # "batch" | "group"
        "spacing_mm": 1.0,  # model pixel spacing; inputs are resampled to it
        "tile_size": 64,
        "tile_jitter": 8,  # margin for random crops (pixels)
        "negative_ratio": 1.0,  # lesion-free tiles per lesion tile (the paper's 0.5 = one third of all)
        "tiles_per_epoch": None,  # random draws per epoch (a fixed step count); None = one pass over all tiles
        "lesion_tile_fraction": None,  # share of draws that are lesion tiles; None = their share of the tiles
        "intensity_augment": 0.15,
        "loss": "bce_dice",  # "mse" (paper) | "bce_dice"
        "optimizer": "adam",
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "epochs": 10,
        "batch_size": 32,
        "inference_batch": 8,
        "seed": 0,
    }

    # --- model ------------------------------------------------------------------------
    def build_model(self, config, pretrained=False):
        return build_network({**self.defaults, **config})

    # --- training ---------------------------------------------------------------------
    @staticmethod
    def _cases(dataset: Dataset, split: str) -> list:
        """Labelled cases of a split (a dataset without splits trains and tests on all of them)."""
        labelled = [c for c in dataset.cases if c.mask is not None]
        if split in ("train", "val"):
            return split_cases(labelled, SPLIT)[split]
        return cases_for(labelled, split, SPLIT)

    def load_case(self, case, config):
        """(model grid, normalised volume, foreground, mask) of a labelled case, on the model grid."""
        image = read_image(case.image)
        grid = ModelGrid(image, config)
        volume, foreground = normalise(grid.image(image))
        mask_img = sitk.GetImageFromArray(read_mask(case.mask))
        mask_img.CopyInformation(image)
        mask = grid.image(mask_img, label=True) > 0.5
        return grid, volume, foreground, mask

    def training_data(self, dataset, config, seed):
        rng = np.random.default_rng(seed)
        train_cases = self._cases(dataset, "train")
        val_cases = self._cases(dataset, "val")

        def tiles(cases, augment):
            images, labels = [], []
            for case in progress(cases, desc="cutting tiles", unit="case"):
                _, volume, foreground, mask = self.load_case(case, config)
                im, lab = case_tiles(volume, foreground, mask, config, rng)
                images += im
                labels += lab
            if not images:
                size = int(config["tile_size"]) + 2 * int(config["tile_jitter"])
                return TileSet(np.zeros((0, 1, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                               int(config["tile_size"]), augment, 0.0)
            draws = config.get("tiles_per_epoch") if augment else None
            fraction = config.get("lesion_tile_fraction")
            return TileSet(np.stack(images), np.stack(labels), int(config["tile_size"]), augment,
                           float(config["intensity_augment"]) if augment else 0.0,
                           draws=None if draws is None else int(draws),
                           lesion_fraction=None if fraction is None else float(fraction))

        return tiles(train_cases, True), (tiles(val_cases, False) if val_cases else None)

    def batch_loss(self, model, batch, device):
        images, labels = (t.to(device) for t in batch)
        target = labels.float()
        if model.loss == "mse":
            return F.mse_loss(model(images), target)
        logits = model.logits(images)
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(torch.sigmoid(logits), target)

    # --- probabilities ---------------------------------------------------------------
    @torch.inference_mode()
    def probability(self, model, config, volume: np.ndarray, foreground: np.ndarray, device) -> np.ndarray:
        """Probability on the model grid: whole slices inside the foreground's bounding box,
        `inference_batch` slices at a time; zero outside the box."""
        context, batch = int(config["context_slices"]), int(config.get("inference_batch", 8))
        box = foreground_box(foreground, margin=16)
        out = np.zeros(volume.shape, dtype=np.float32)
        crop = volume[:, box[1], box[2]]
        zs = np.arange(box[0].start, box[0].stop)
        model.eval()
        for start in range(0, len(zs), batch):
            z = zs[start:start + batch]
            x = torch.from_numpy(np.ascontiguousarray(slice_stack(crop, z, context))).to(device)
            out[z[0]:z[-1] + 1, box[1], box[2]] = model(x)[:, 0].float().cpu().numpy()
        return out

    def probability_map(self, model, config, image: sitk.Image, device) -> np.ndarray:
        """Probability (z, y, x) on the input image's own grid."""
        grid = ModelGrid(image, config)
        volume, foreground = normalise(grid.image(image))
        return np.clip(grid.back(self.probability(model, config, volume, foreground, device)), 0.0, 1.0)

    def calibrate(self, model, dataset, config, device):
        """Exhaustive F-max threshold over all pixels of the full training slices."""
        scores, truths = [], []
        for case in progress(self._cases(dataset, "train"), desc="threshold search", unit="case"):
            image = read_image(case.image)
            prob = self.probability_map(model, config, image, device)
            truth = read_mask(case.mask).astype(bool)
            keep = (prob > 0) | truth  # pixels at probability 0 are negative at every threshold > 0
            scores.append(prob[keep])
            truths.append(truth[keep])
        return {"pixel": fmax_threshold(np.concatenate(truths), np.concatenate(scores))}

    # --- use --------------------------------------------------------------------------
    def predict(self, model, card: ModelCard, image, device, threshold: float | None = None, **options):
        self.check_inference_options(options)
        config = {**self.defaults, **card.config}
        threshold = float(card.thresholds.get("pixel", 0.5) if threshold is None else threshold)
        geometry = Geometry.of(image)
        probability = self.probability_map(model, config, image, device)
        mask = (probability >= threshold).astype(np.uint8)
        return Prediction(geometry=geometry, probability=probability, mask=mask, threshold=threshold,
                          boxes=lesion_boxes(mask, probability, geometry),
                          provenance=Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                                parameters={"threshold": threshold,
                                                            "architecture": config["architecture"]}))

    def evaluate(self, model, card, dataset, device, split="test", threshold=None, **options):
        cases = self._cases(dataset, split)
        if not cases:
            raise input_error(dataset.root, f"has no labelled cases in split '{split}'")
        per_case, totals = [], {"tp": 0, "fp": 0, "fn": 0}
        lesion_totals = {"truth": 0, "pred": 0, "detected": 0, "true_pred": 0}
        for case in progress(cases, desc="evaluating", unit="case"):
            image = read_image(case.image)
            pred = self.predict(model, card, image, device, threshold=threshold)
            truth = read_mask(case.mask)
            counts = lesionwise.pixel_counts(truth, pred.mask)
            lesions = lesionwise.lesion_detection(truth, pred.mask, spacing=image.GetSpacing())
            for k in totals:
                totals[k] += counts[k]
            lesion_totals["truth"] += lesions.n_truth
            lesion_totals["pred"] += lesions.n_pred
            lesion_totals["detected"] += int(lesions.truth_detected.sum())
            lesion_totals["true_pred"] += int(lesions.pred_true.sum())
            per_case.append({"case": case.id, **lesionwise.pixel_scores(counts), **lesions.scores(), **counts,
                             "lesions": lesionwise.lesion_rows(lesions, pred.geometry, pred.probability)})
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        summary = {k: _nanmean([c[k] for c in per_case]) for k in keys}
        sens = lesion_totals["detected"] / lesion_totals["truth"] if lesion_totals["truth"] else math.nan
        prec = lesion_totals["true_pred"] / lesion_totals["pred"] if lesion_totals["pred"] else math.nan
        pooled = {**lesionwise.pixel_scores(totals), "lesion_sensitivity": sens, "lesion_precision": prec,
                  "lesion_f1": lesionwise.f1_score(prec, sens)}
        return {**summary, "threshold": float(card.thresholds.get("pixel", 0.5) if threshold is None else threshold),
                "cases": per_case, "pooled": pooled, "split": split, "model_id": card.model_id}

    def report(self, metrics):
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        head = ["case", "P", "R", "F", "Dice", "L-sens", "L-prec", "L-F1", "GT", "pred"]
        lines = [f"ms-flair-fcn, threshold {metrics['threshold']:.4f} (paper: best pixel F 0.55)",
                 "  ".join(f"{h:>8s}" if i else f"{h:28s}" for i, h in enumerate(head))]
        for c in metrics["cases"]:
            lines.append(f"{c['case']:28s}  " + "  ".join(f"{c[k]:8.3f}" for k in keys)
                         + f"  {c['truth_lesions']:8d}  {c['predicted_lesions']:8d}")
        lines.append(f"{'mean':28s}  " + "  ".join(f"{metrics[k]:8.3f}" for k in keys))
        lines.append(f"{'pooled':28s}  " + "  ".join(f"{metrics['pooled'][k]:8.3f}" for k in keys))
        return "\n".join(lines)


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan



def lesion_boxes(mask: np.ndarray, probability: np.ndarray, geometry: Geometry) -> list[LesionBox]:
    """One box per face-connected 3-D lesion component: the table of volume, centroid, max probability."""
    image = geometry.image(mask.astype(np.uint8))
    components = sitk.ConnectedComponent(image, False)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(components)
    intensity = sitk.LabelStatisticsImageFilter()
    intensity.Execute(geometry.image(probability.astype(np.float32)), components)
    boxes = []
    for label in shape.GetLabels():
        x0, y0, z0, w, h, d = shape.GetBoundingBox(label)
        boxes.append(LesionBox.from_index_range(
            geometry, (x0, y0, z0), (x0 + w - 1, y0 + h - 1, z0 + d - 1), score=intensity.GetMaximum(label),
            extra={"volume_mm3": round(shape.GetPhysicalSize(label), 3), "voxels": shape.GetNumberOfPixels(label),
                   "centroid_lps": [round(v, 2) for v in shape.GetCentroid(label)],
                   "max_probability": round(intensity.GetMaximum(label), 4)}))
    return sorted(boxes, key=lambda b: -b.extra["volume_mm3"])
