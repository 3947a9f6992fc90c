"""The ms-flair-fcn plug-in: MS plaques in FLAIR MRI with a fully convolutional filter
(Stasiak et al., BIOIMAGING 2017; seed 004).

Training uses the paper's tiles (data.py, optional strong augmentation); inference runs whole
axial slices inside the foreground box (optionally averaged over in-plane flips, `tta`) and maps
the probabilities back onto the input's grid.  Two operating points are calibrated on the full
training volumes: "pixel" (the F-max threshold over every voxel) and "lesion", the default
(threshold, minimum component volume and component max/mean probability chosen for the best
mean Anima lesion F1, `lesion_grid_search`); the mask's face-connected 3-D components are the
lesions (`filter_components`), each a box carrying its volume, centroid and maximum probability.
Inputs that do not look like FLAIR get a warning in the provenance (data.flair_check).
Evaluation: pixel P/R/F/Dice, the Anima lesion-wise scores and lesion detection by size bin
(metrics/lesionwise.py).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...dataset import Dataset, cases_for, hard_negative_centres, read_mask, split_cases
from ...errors import LesionDetectError, input_error
from ...geometry import Geometry
from ...io import read_image
from ...metrics import lesionwise
from ...metrics.thresholds import fmax_threshold
from ...models import ModelCard
from ...prediction import LesionBox, Prediction, Provenance
from ...progress import progress
from ..base import Method
from .data import ModelGrid, TileSet, case_tiles, flair_check, foreground_box, normalise, slice_stack, tiles_at
from .network import build_network, lesion_balanced_bce, lesion_weights, soft_dice_loss

STRONG_AUGMENTATIONS = ("gamma", "contrast", "bias", "blur", "noise", "spatial")
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
        # a tile centred on every detection a reviewer rejected in Slicer (a case's "negative_points" /
        # "negative_boxes", dataset.hard_negatives), besides the lesion-free tiles above (not in the paper)
        "rejected_negatives": True,
        "tiles_per_epoch": None,  # random draws per epoch (a fixed step count); None = one pass over all tiles
        "lesion_tile_fraction": None,  # share of draws that are lesion tiles; None = their share of the tiles
        "intensity_augment": 0.15,
        "loss": "bce_dice",  # "mse" (paper) | "bce_dice"
        # weight of a lesion-size-balanced term added to the loss (network.lesion_balanced_bce: every
        # true lesion of a batch counts the same, so small plaques are not outweighed by big ones); 0 = off
        "small_lesion_loss": 0.0,
        "optimizer": "adam",
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "epochs": 10,
        "batch_size": 32,
        "inference_batch": 8,
        "seed": 0,
        # --- intensities (data.normalise): "median" (original) | "wm_peak" (white-matter peak = 1)
        "normalisation": "median",
        # --- strong augmentation (data.intensity_augment / spatial_augment); 0 = off
        "augment_gamma": 0.0,
        "augment_contrast": 0.0,
        "augment_bias": 0.0,
        "augment_blur": 0.0,
        "augment_noise": 0.0,
        "augment_spatial": 0.0,
        # --- inference
        "tta": False,  # average the probabilities over in-plane flips (4 passes); inference option `tta`
        # "lesion": threshold thresholds.lesion, then drop components under min_lesion_mm3 or whose
        # component score (max or mean probability) is under thresholds.component; "pixel": the
        # plain pixel F-max threshold thresholds.pixel.  Cards without thresholds.lesion use "pixel".
        "operating_point": "lesion",
        "min_lesion_mm3": 0.0,  # chosen on the training cases by calibrate (lesion F1)
        "component_score": "max",  # "max" | "mean"
    }
    inference_options = ("tta",)

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
        volume, foreground = normalise(grid.image(image), config.get("normalisation", "median"))
        mask_img = sitk.GetImageFromArray(read_mask(case.mask))
        mask_img.CopyInformation(image)
        mask = grid.image(mask_img, label=True) > 0.5
        return grid, volume, foreground, mask

    @staticmethod
    def rejected_zyx(case, grid: ModelGrid) -> np.ndarray:
        """The case's rejected detections (dataset.hard_negatives) as model-grid (z, y, x) indices."""
        lps = hard_negative_centres(case)
        xyz = [grid.reference.TransformPhysicalPointToContinuousIndex([float(v) for v in p]) for p in lps]
        return np.asarray(xyz, float).reshape(-1, 3)[:, ::-1]

    def training_data(self, dataset, config, seed):
        rng = np.random.default_rng(seed)
        train_cases = self._cases(dataset, "train")
        val_cases = self._cases(dataset, "val")

        def tiles(cases, augment):
            images, labels = [], []
            for case in progress(cases, desc="cutting tiles", unit="case"):
                grid, volume, foreground, mask = self.load_case(case, config)
                im, lab = case_tiles(volume, foreground, mask, config, rng)
                if config.get("rejected_negatives", True):
                    more = tiles_at(volume, mask, self.rejected_zyx(case, grid), config)
                    im, lab = im + more[0], lab + more[1]
                images += im
                labels += lab
            if not images:
                size = int(config["tile_size"]) + 2 * int(config["tile_jitter"])
                return TileSet(np.zeros((0, 1, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                               int(config["tile_size"]), augment, 0.0)
            draws = config.get("tiles_per_epoch") if augment else None
            fraction = config.get("lesion_tile_fraction")
            strong = {k: config.get(f"augment_{k}", 0.0) for k in STRONG_AUGMENTATIONS} if augment else None
            return TileSet(np.stack(images), np.stack(labels), int(config["tile_size"]), augment,
                           float(config["intensity_augment"]) if augment else 0.0,
                           draws=None if draws is None else int(draws),
                           lesion_fraction=None if fraction is None else float(fraction), strong=strong)

        return tiles(train_cases, True), (tiles(val_cases, False) if val_cases else None)

    def batch_loss(self, model, batch, device):
        images, labels = batch
        weight = getattr(model, "small_lesion_loss", 0.0)
        lesions = torch.from_numpy(lesion_weights(labels.cpu().numpy())).to(device) if weight else None
        images, labels = images.to(device), labels.to(device)
        target = labels.float()
        logits = model.logits(images)
        if model.loss == "mse":
            loss = F.mse_loss(torch.sigmoid(logits), target)
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(torch.sigmoid(logits), target)
        return loss + weight * lesion_balanced_bce(logits, lesions) if weight else loss

    # --- probabilities ---------------------------------------------------------------
    @torch.inference_mode()
    def probability(self, model, config, volume: np.ndarray, foreground: np.ndarray, device) -> np.ndarray:
        """Probability on the model grid: whole slices inside the foreground's bounding box,
        `inference_batch` slices at a time; zero outside the box.  With config `tta` the mean
        over the four in-plane flips (none, x, y, both)."""
        context, batch = int(config["context_slices"]), int(config.get("inference_batch", 8))
        box = foreground_box(foreground, margin=16)
        out = np.zeros(volume.shape, dtype=np.float32)
        crop = volume[:, box[1], box[2]]
        zs = np.arange(box[0].start, box[0].stop)
        model.eval()
        for start in range(0, len(zs), batch):
            z = zs[start:start + batch]
            x = torch.from_numpy(np.ascontiguousarray(slice_stack(crop, z, context))).to(device)
            if config.get("tta"):
                flips = ((), (-1,), (-2,), (-2, -1))
                p = sum(torch.flip(model(torch.flip(x, f) if f else x), f) if f else model(x) for f in flips) / 4
            else:
                p = model(x)
            out[z[0]:z[-1] + 1, box[1], box[2]] = p[:, 0].float().cpu().numpy()
        return out

    def probability_map(self, model, config, image: sitk.Image, device, checks: dict | None = None) -> np.ndarray:
        """Probability (z, y, x) on the input image's own grid; `checks` (a dict) receives the
        input checks (flair_check: does it look like FLAIR?)."""
        _check_volume(image)
        grid = ModelGrid(image, config)
        raw = grid.image(image)
        volume, foreground = normalise(raw, config.get("normalisation", "median"))
        if checks is not None:  # flair_check finds the white-matter peak itself: any scaling will do
            checks.update(flair_check(volume, foreground))
            low = float(np.percentile(raw, 1))
            if low < -100:
                checks["looks_like_flair"] = False
                checks["warning"] = (f"the intensities do not look like MR FLAIR: 1 % of the voxels are below {low:.0f} "
                                     "(CT Hounsfield units?); the lesion map is unreliable")
        return np.clip(grid.back(self.probability(model, config, volume, foreground, device)), 0.0, 1.0)

    def calibrate(self, model, dataset, config, device):
        """Both operating points, chosen on the training cases' full volumes:

        pixel: the exhaustive F-max threshold over all their voxels (thresholds.pixel);
        lesion: the voxel threshold (thresholds.lesion), minimum component volume
            (config.min_lesion_mm3) and minimum component score (thresholds.component, the
            component's max or mean probability, config.component_score) that maximise the
            mean Anima lesion F1 of the cases (ties: the higher mean Dice), by grid search
            (lesion_grid_search).  The chosen size goes into `config`, which becomes the card's.
        """
        scores, truths, volumes = [], [], []
        for case in progress(self._cases(dataset, "train"), desc="threshold search", unit="case"):
            image = read_image(case.image)
            prob = self.probability_map(model, config, image, device)
            truth = read_mask(case.mask).astype(bool)
            keep = (prob > 0) | truth  # pixels at probability 0 are negative at every threshold > 0
            scores.append(prob[keep])
            truths.append(truth[keep])
            volumes.append((prob, truth, image.GetSpacing()))
        thresholds = {"pixel": fmax_threshold(np.concatenate(truths), np.concatenate(scores))}
        best = lesion_grid_search(volumes, score=config.get("component_score", "max"))
        thresholds["lesion"], thresholds["component"] = best["threshold"], best["component"]
        config["min_lesion_mm3"] = best["min_lesion_mm3"]
        return thresholds

    def operating_point(self, card: ModelCard, threshold: float | None = None) -> dict:
        """{"threshold", "min_lesion_mm3", "component", "score", "name"}: how `predict` turns the
        probability into a mask.  A threshold given by the caller is a plain pixel threshold."""
        config = {**self.defaults, **card.config}
        if threshold is not None:
            return {"name": "given threshold", "threshold": float(threshold), "min_lesion_mm3": 0.0,
                    "component": 0.0, "score": "max"}
        if config.get("operating_point") == "lesion" and "lesion" in card.thresholds:
            return {"name": "lesion", "threshold": float(card.thresholds["lesion"]),
                    "min_lesion_mm3": float(config.get("min_lesion_mm3", 0.0)),
                    "component": float(card.thresholds.get("component", 0.0)),
                    "score": config.get("component_score", "max")}
        return {"name": "pixel", "threshold": float(card.thresholds.get("pixel", 0.5)), "min_lesion_mm3": 0.0,
                "component": 0.0, "score": "max"}

    # --- use --------------------------------------------------------------------------
    def predict(self, model, card: ModelCard, image, device, threshold: float | None = None, **options):
        self.check_inference_options(options)
        config = {**self.defaults, **card.config}
        if "tta" in options:
            config["tta"] = bool(options["tta"])
        point = self.operating_point(card, threshold)
        _check_volume(image)
        geometry = Geometry.of(image)
        checks: dict = {}
        probability = self.probability_map(model, config, image, device, checks=checks)
        mask = filter_components(probability >= point["threshold"], probability, geometry.spacing,
                                 point["min_lesion_mm3"], point["component"], point["score"])
        parameters = {"threshold": point["threshold"], "operating_point": point["name"],
                      "min_lesion_mm3": point["min_lesion_mm3"], "component_threshold": point["component"],
                      "component_score": point["score"], "tta": bool(config.get("tta")),
                      "normalisation": config.get("normalisation", "median"),
                      "architecture": config["architecture"], "input_check": checks}
        if checks.get("warning"):
            parameters["warning"] = checks["warning"]
        return Prediction(geometry=geometry, probability=probability, mask=mask.astype(np.uint8),
                          threshold=point["threshold"], boxes=lesion_boxes(mask, probability, geometry),
                          provenance=Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                                parameters=parameters))

    def evaluate(self, model, card, dataset, device, split="test", threshold=None, **options):
        cases = self._cases(dataset, split)
        if not cases:
            raise input_error(dataset.root, f"has no labelled cases in split '{split}'")
        per_case, totals = [], {"tp": 0, "fp": 0, "fn": 0}
        lesion_totals = {"truth": 0, "pred": 0, "detected": 0, "true_pred": 0}
        size_totals: dict = {}
        for case in progress(cases, desc="evaluating", unit="case"):
            image = read_image(case.image)
            pred = self.predict(model, card, image, device, threshold=threshold)
            truth = read_mask(case.mask)
            counts = lesionwise.pixel_counts(truth, pred.mask)
            lesions = lesionwise.lesion_detection(truth, pred.mask, spacing=image.GetSpacing())
            bins = lesionwise.detection_by_size(lesions, image.GetSpacing())
            for name, row in bins.items():
                size_totals.setdefault(name, {"truth": 0, "detected": 0, "pred": 0, "true_pred": 0})
                for k in ("truth", "detected", "pred", "true_pred"):
                    size_totals[name][k] += row[k]
            for k in totals:
                totals[k] += counts[k]
            lesion_totals["truth"] += lesions.n_truth
            lesion_totals["pred"] += lesions.n_pred
            lesion_totals["detected"] += int(lesions.truth_detected.sum())
            lesion_totals["true_pred"] += int(lesions.pred_true.sum())
            per_case.append({"case": case.id, **lesionwise.pixel_scores(counts), **lesions.scores(), **counts,
                             "by_size": bins, "input_check": pred.provenance.parameters.get("input_check", {}),
                             "lesions": lesionwise.lesion_rows(lesions, pred.geometry, pred.probability)})
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        summary = {k: _nanmean([c[k] for c in per_case]) for k in keys}
        sens = lesion_totals["detected"] / lesion_totals["truth"] if lesion_totals["truth"] else math.nan
        prec = lesion_totals["true_pred"] / lesion_totals["pred"] if lesion_totals["pred"] else math.nan
        pooled = {**lesionwise.pixel_scores(totals), "lesion_sensitivity": sens, "lesion_precision": prec,
                  "lesion_f1": lesionwise.f1_score(prec, sens)}
        point = self.operating_point(card, threshold)
        by_size = {name: {**row, "sensitivity": row["detected"] / row["truth"] if row["truth"] else math.nan,
                          "precision": row["true_pred"] / row["pred"] if row["pred"] else math.nan}
                   for name, row in size_totals.items()}
        return {**summary, "threshold": point["threshold"], "operating_point": point, "by_size": by_size,
                "cases": per_case, "pooled": pooled, "split": split, "model_id": card.model_id}

    def report(self, metrics):
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        head = ["case", "P", "R", "F", "Dice", "L-sens", "L-prec", "L-F1", "GT", "pred"]
        point = metrics.get("operating_point", {})
        lines = [f"ms-flair-fcn, {point.get('name', 'pixel')} operating point: threshold {metrics['threshold']:.4f}"
                 + (f", components >= {point['min_lesion_mm3']:g} mm3 with {point['score']} probability >= "
                    f"{point['component']:.3f}" if point.get("name") == "lesion" else "")
                 + " (paper: best pixel F 0.55)",
                 "  ".join(f"{h:>8s}" if i else f"{h:28s}" for i, h in enumerate(head))]
        for c in metrics["cases"]:
            lines.append(f"{c['case']:28s}  " + "  ".join(f"{c[k]:8.3f}" for k in keys)
                         + f"  {c['truth_lesions']:8d}  {c['predicted_lesions']:8d}")
        lines.append(f"{'mean':28s}  " + "  ".join(f"{metrics[k]:8.3f}" for k in keys))
        lines.append(f"{'pooled':28s}  " + "  ".join(f"{metrics['pooled'][k]:8.3f}" for k in keys))
        if metrics.get("by_size"):
            lines.append("lesion detection by size (Anima rules, all test cases pooled):")
            for name, row in metrics["by_size"].items():
                lines.append(f"  {name:>14s}: {row['detected']}/{row['truth']} true lesions found, "
                             f"{row['true_pred']}/{row['pred']} predicted lesions true")
        return "\n".join(lines)


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan



def _check_volume(image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LesionDetectError(
            f"ms-flair-fcn needs one scalar 3-D FLAIR volume; this image is {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} value(s) per voxel (a 4-D series or a vector image?): "
            "extract the FLAIR volume first; nothing was written")


def filter_components(mask: np.ndarray, probability: np.ndarray, spacing, min_volume_mm3: float = 0.0,
                      min_score: float = 0.0, score: str = "max") -> np.ndarray:
    """`mask` (bool, z y x) without its face-connected 3-D components (the lesions the
    Anima metrics count) smaller than `min_volume_mm3` or whose score - the max or mean of
    `probability` over the component - is under `min_score`.  `spacing` is (x, y, z) mm."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or (min_volume_mm3 <= 0 and min_score <= 0):
        return mask
    if score not in ("max", "mean"):
        raise LesionDetectError(f"unknown component_score {score!r}; use max or mean")
    # a copy: a view of the temporary image would read freed memory once it is collected
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False))
    inside = labels[mask].astype(np.int64)  # component of each mask voxel (1..n)
    values = np.asarray(probability, dtype=np.float32)[mask]
    n = int(inside.max())
    voxels = np.bincount(inside, minlength=n + 1)
    if score == "max":
        scores = np.zeros(n + 1)
        np.maximum.at(scores, inside, values)
    else:
        scores = np.bincount(inside, weights=values, minlength=n + 1) / np.maximum(voxels, 1)
    keep = (voxels * float(np.prod(spacing)) >= min_volume_mm3) & (scores >= min_score)
    keep[0] = False
    out = np.zeros(mask.shape, dtype=bool)
    out[mask] = keep[inside]
    return out


LESION_GRID = {"threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
               "min_lesion_mm3": (0.0, 5.0, 10.0, 20.0, 40.0),
               "component": (0.0, 0.8, 0.9, 0.95, 0.98)}


def lesion_grid_search(volumes, score: str = "max", grid: dict | None = None) -> dict:
    """The (threshold, min_lesion_mm3, component) of `grid` (LESION_GRID) with the highest
    mean lesion F1 over `volumes` [(probability, truth, spacing (x, y, z))], ties broken by
    the mean Dice; returns them with "lesion_f1" and "dice".

    The same numbers as filter_components + lesionwise.lesion_detection for every grid point,
    computed fast: per case and threshold the components are labelled once and their overlap
    table with the truth lesions is counted once; each (size, score) rule then keeps a subset
    of the columns (the dropped ones become background) and Anima's rules run on that table."""
    grid = grid or LESION_GRID
    if score not in ("max", "mean"):
        raise LesionDetectError(f"unknown component_score {score!r}; use max or mean")
    low = min(grid["threshold"])
    results: dict[tuple, list] = {}
    for prob, truth, spacing in volumes:
        box = foreground_box((prob >= low) | truth, margin=2)
        box = (slice(max(0, box[0].start - 2), min(prob.shape[0], box[0].stop + 2)),) + box[1:]  # z unpadded
        prob, truth = prob[box], np.asarray(truth[box], bool)
        voxel = float(np.prod(spacing))
        anima_min = lesionwise.min_component_voxels(spacing)
        truth_labels, n_truth = lesionwise.lesion_labels(truth, spacing)
        truth_voxels = int(truth.sum())
        for t in grid["threshold"]:
            mask = prob >= t
            labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                                    False)).astype(np.int64)
            n = int(labels.max())
            voxels = np.bincount(labels.ravel(), minlength=n + 1)
            if score == "max":
                scores = np.zeros(n + 1)
                np.maximum.at(scores, labels[mask], prob[mask])
            else:
                scores = np.bincount(labels[mask], weights=prob[mask], minlength=n + 1) / np.maximum(voxels, 1)
            table = lesionwise.overlap_table(truth_labels, n_truth, labels, n)  # (n_truth + 1, n + 1)
            hits = np.bincount(labels[truth], minlength=n + 1)  # voxels of each component inside the truth mask
            for mm3 in grid["min_lesion_mm3"]:
                for comp in grid["component"]:
                    if comp and comp <= t:
                        continue
                    keep = (voxels * voxel >= mm3) & (scores >= comp)
                    keep[0] = False
                    kept = np.nonzero(keep)[0]
                    tp = int(hits[kept].sum())
                    pred_voxels = int(voxels[kept].sum())
                    dice = 2 * tp / (truth_voxels + pred_voxels) if truth_voxels + pred_voxels else math.nan
                    counted = kept[voxels[kept] >= anima_min]  # Anima drops components of <= 3 mm^3
                    counted = counted[np.argsort(-voxels[counted], kind="stable")]  # numbered by size, as Anima
                    sub = np.zeros((n_truth + 1, len(counted) + 1), dtype=np.int64)
                    sub[:, 1:] = table[:, counted]
                    sub[:, 0] = table.sum(axis=1) - sub[:, 1:].sum(axis=1)
                    detected = lesionwise.detected_rows(sub)
                    true_pred = lesionwise.detected_rows(sub.T)
                    sens = float(detected.mean()) if n_truth else math.nan
                    prec = float(true_pred.mean()) if len(counted) else math.nan
                    results.setdefault((t, mm3, comp), []).append((lesionwise.f1_score(prec, sens), dice))
    best = None
    for (t, mm3, comp), rows in results.items():
        key = tuple(-1.0 if math.isnan(k) else k for k in (_nanmean([r[0] for r in rows]), _nanmean([r[1] for r in rows])))
        if best is None or key > best[0]:
            best = (key, {"threshold": t, "min_lesion_mm3": mm3, "component": comp, "lesion_f1": key[0], "dice": key[1]})
    return best[1]


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
