"""The bone-scan-cls plug-in: metastasis or not in a planar bone scintigram (Magboo & Magboo,
pre-trained CNNs on whole-body bone scans; seed 001).

One probability per image from a classifier (network.py: the paper's ResNet50 / VGG19 /
DenseNet121, or the compact default).  Splits are by patient and stratified by label, the
paper's 30 % test and 85 / 15 train / validation of the rest; the loss weighs both classes
equally (BS-80K is 6.6 % positive) and the decision threshold is chosen on the validation
split (Youden's J by default).  What the user sees: the class probability, and where the
network looked, as a Grad-CAM map scaled by that probability on the image's own grid (so a
negative image's map stays under the threshold), and as scored points where strong activation
meets strong uptake.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...dataset import Dataset, cases_for, split_cases
from ...errors import LesionDetectError, input_error
from ...geometry import Geometry
from ...io import read_image
from ...metrics.classification import binary_metrics, bootstrap_ci
from ...metrics.thresholds import fmax_threshold, youden_threshold
from ...models import ModelCard
from ...prediction import ClassResult, LesionPoint, Prediction, Provenance
from ...progress import progress
from ..base import Method
from . import network
from .data import ScanSet, augmentation, class_weights, normalised, planar_array, to_input

CLASSES = ("normal", "metastasis")
SUMMARY_KEYS = ("accuracy", "recall", "precision", "f1", "auc", "average_precision", "specificity")


class BoneScanClassifier(Method):
    name = "bone-scan-cls"
    modality = "NM"
    paper = "001"
    inference_options = ("tta_flip",)
    defaults: dict[str, Any] = {
        "architecture": "compact",  # "compact" | "resnet50" | "vgg19" | "densenet121" (the paper's)
        "compact_widths": [16, 32, 64, 128],
        "dropout": 0.3,
        "input_size": [160, 64],  # rows, columns the image is scaled to (BS-80K crops: about 165 x 65)
        "augment_rotation_deg": 10.0,
        "augment_translate": 0.08,  # fraction of the image
        "augment_zoom": 0.1,  # scale 1 +- this
        "augment_shear_deg": 5.0,
        "augment_flip": True,
        "balance": "loss",  # "loss": both classes weigh half the loss | "none"
        "split": {"train": 0.595, "val": 0.105, "test": 0.3},  # the paper: 30 % test, 85 / 15 of the rest
        "split_seed": 0,
        "threshold_rule": "youden",  # "youden" | "fmax", on the validation split
        "tta_flip": True,  # average with the horizontally flipped image at inference
        "cam_points": 3,  # strongest peaks of activation x uptake written as points
        "cam_peak_fraction": 0.5,  # ... at least this fraction of the strongest
        "inference_batch": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "lr_schedule": "cosine",
        "epochs": 30,
        "batch_size": 32,
        "seed": 0,
    }

    # --- model ------------------------------------------------------------------------
    def build_model(self, config, pretrained=False):
        return network.build({**self.defaults, **config}, pretrained)

    # --- data -------------------------------------------------------------------------
    @staticmethod
    def label(case) -> int:
        if case.label is None:
            raise input_error(case.image, f'case "{case.id}" has no "label" (0 = normal, 1 = metastasis)')
        return int(bool(int(case.label)))

    def cases(self, dataset: Dataset, config, split: str) -> list:
        """Labelled cases of a split: the dataset's own splits, else the paper's fractions by
        patient, stratified by label."""
        labelled = [c for c in dataset.cases if c.label is not None]
        fractions, seed = config["split"], int(config["split_seed"])
        if split in ("train", "val"):
            return split_cases(labelled, fractions, seed, stratify=self.label)[split]
        return cases_for(labelled, split, fractions, seed, stratify=self.label)

    def scan_set(self, cases, config, augment: bool, weights: dict[int, float] | None = None) -> ScanSet:
        images, labels = [], []
        for case in progress(cases, desc="reading scintigrams", unit="image"):
            images.append(to_input(planar_array(read_image(case.image), case.image), config["input_size"]))
            labels.append(self.label(case))
        labels = np.asarray(labels, dtype=np.float32)
        weights = weights or class_weights(labels, config["balance"])
        rows, cols = (int(v) for v in config["input_size"])
        stacked = torch.stack(images) if images else torch.zeros((0, 1, rows, cols))
        return ScanSet(stacked, torch.from_numpy(labels), torch.tensor([weights[int(v)] for v in labels]),
                       transform=augmentation(config) if augment else None, case_ids=[c.id for c in cases])

    def training_data(self, dataset, config, seed):
        train = self.scan_set(self.cases(dataset, config, "train"), config, augment=True)
        val_cases = self.cases(dataset, config, "val")
        weights = class_weights(train.labels.numpy(), config["balance"])
        return train, (self.scan_set(val_cases, config, augment=False, weights=weights) if val_cases else None)

    def batch_loss(self, model, batch, device):
        images, labels, weights = (t.to(device) for t in batch)
        losses = F.binary_cross_entropy_with_logits(model(images), labels, reduction="none")
        return (losses * weights).mean()

    @torch.no_grad()
    def scores(self, model, samples: ScanSet, config, device) -> np.ndarray:
        """Metastasis probability of every image of a set (no activation map: fast)."""
        model.eval()
        batch, out = int(config["inference_batch"]), []
        for start in range(0, len(samples), batch):
            x = samples.images[start:start + batch].to(device)
            p = torch.sigmoid(model(x))
            if config["tta_flip"]:
                p = (p + torch.sigmoid(model(x.flip(-1)))) / 2
            out.append(p.float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def calibrate(self, model, dataset, config, device):
        """The decision threshold on the validation split (training split when it holds one
        class only) by `threshold_rule`."""
        samples = self.scan_set(self.cases(dataset, config, "val"), config, augment=False)
        if len(np.unique(samples.labels.numpy())) < 2:
            samples = self.scan_set(self.cases(dataset, config, "train"), config, augment=False)
        rule = {"youden": youden_threshold, "fmax": fmax_threshold}.get(config["threshold_rule"])
        if rule is None:
            raise LesionDetectError(f"unknown threshold_rule {config['threshold_rule']!r}; use youden or fmax")
        return {"image": rule(samples.labels.numpy(), self.scores(model, samples, config, device))}

    # --- use --------------------------------------------------------------------------
    def read_inputs(self, path):
        from ...planar import read_views

        return read_views(path)

    def predict(self, model, card: ModelCard, image: sitk.Image, device, threshold: float | None = None,
                **options) -> Prediction:
        self.check_inference_options(options)
        config = {**self.defaults, **card.config, **options}
        array = planar_array(image)
        threshold = float(card.thresholds.get("image", 0.5) if threshold is None else threshold)
        probability, cam = self.probability_and_cam(model, config, array, device)
        geometry = Geometry.of(image)
        heat = (probability * cam)[None].astype(np.float32)  # (1, rows, columns): a one-slice volume
        # points: where strong activation meets strong uptake (the map alone is as coarse as the
        # last block's grid, 8 pixels here, and puts its peaks beside a hot spot, not on it)
        focus = cam * normalised(ndimage.gaussian_filter(array, 1.0))
        points = [LesionPoint(tuple(geometry.index_to_lps([[x, y, 0.0]])[0]),
                              score=round(probability * float(cam[y, x]), 4), label="uptake")
                  for (y, x), _ in cam_peaks(focus, int(config["cam_points"]), float(config["cam_peak_fraction"]))]
        decision = CLASSES[1] if probability >= threshold else CLASSES[0]
        provenance = Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                parameters={"threshold": threshold, "decision": decision,
                                            "architecture": config["architecture"], "tta_flip": config["tta_flip"],
                                            "input_size": list(config["input_size"])})
        return Prediction(geometry=geometry, provenance=provenance, probability=heat, mask=heat >= threshold,
                          threshold=threshold, points=points,
                          classes=[ClassResult({CLASSES[0]: round(1 - probability, 6),
                                                CLASSES[1]: round(probability, 6)}, scope="image", decision=decision)])

    def probability_and_cam(self, model, config, array: np.ndarray, device) -> tuple[float, np.ndarray]:
        """(metastasis probability, activation map on the image's grid scaled to max 1)."""
        model.eval()
        x = to_input(array, config["input_size"])[None].to(device)
        batch = torch.cat([x, x.flip(-1)]) if config["tta_flip"] else x
        logits, cams = model.forward_with_cam(batch)
        cams = F.interpolate(cams[:, None], size=array.shape, mode="bilinear", align_corners=False)[:, 0]
        if config["tta_flip"]:
            cams = torch.stack([cams[0], cams[1].flip(-1)])  # the flipped image's map, flipped back
        probability = float(torch.sigmoid(logits).mean())
        cam = cams.mean(dim=0).float().cpu().numpy()
        peak = float(cam.max())
        return probability, (cam / peak if peak > 0 else np.zeros_like(cam))

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, model, card, dataset, device, split: str = "test", **options):
        config = {**self.defaults, **card.config}
        cases = self.cases(dataset, config, split)
        if not cases:
            raise input_error(dataset.root, f"has no labelled cases in split '{split}'")
        samples = self.scan_set(cases, config, augment=False)
        labels, scores = samples.labels.numpy(), self.scores(model, samples, config, device)
        metrics = binary_metrics(labels, scores, float(card.thresholds.get("image", 0.5)))
        if 0 < labels.sum() < len(labels):
            from sklearn.metrics import roc_auc_score

            metrics["auc_ci95"] = list(bootstrap_ci(labels, scores, roc_auc_score, seed=int(config["seed"])))
        metrics.update({"architecture": config["architecture"], "seed": int(config["seed"]), "split": split,
                        "model_id": card.model_id, "imagenet": bool(config.get("pretrained") or config.get("weights")),
                        "cases": [c.id for c in cases], "labels": labels.astype(int).tolist(),
                        "scores": [round(float(s), 6) for s in scores]})
        return metrics

    def combine(self, runs: list[dict]) -> dict:
        """Mean and SD (over seeds) of each metric, one row per architecture."""
        rows: dict[str, dict] = {}
        for run in runs:
            rows.setdefault(run["architecture"], []).append(run)
        table = {}
        for name, group in rows.items():
            row = {"runs": len(group), "imagenet": all(r["imagenet"] for r in group)}
            for key in SUMMARY_KEYS:
                values = np.array([r[key] for r in group], dtype=float)
                row[key], row[f"{key}_sd"] = float(np.nanmean(values)), float(np.nanstd(values, ddof=1)) \
                    if len(values) > 1 else 0.0
            row["confusion_matrix"] = {k: int(sum(r["confusion_matrix"][k] for r in group))
                                       for k in ("tp", "fp", "tn", "fn")}
            row["auc_ci95_per_run"] = [r.get("auc_ci95") for r in group]
            table[name] = row
        return {"rows": table, "runs": runs}

    def report(self, metrics):
        rows = metrics.get("rows") or {metrics["architecture"]: {**metrics, "runs": 1}}
        head = ["Accuracy", "Recall", "Precision", "F1", "AUC", "AP", "Specif."]
        labels = {name: name if row.get("imagenet") else f"{name} (ImageNet weights absent)"
                  for name, row in rows.items()}
        width = max(len(v) for v in labels.values())
        out = [f"{'network':{width}s} " + " ".join(f"{h:>15s}" for h in head)]
        for name, row in rows.items():
            label = labels[name]
            cells = [f"{row[k]:.3f} ± {row.get(k + '_sd', 0.0):.3f}" if row.get("runs", 1) > 1 else f"{row[k]:.3f}"
                     for k in SUMMARY_KEYS]
            out.append(f"{label:{width}s} " + " ".join(f"{c:>15s}" for c in cells))
        for name, row in rows.items():
            cm = row["confusion_matrix"]
            cis = [ci for ci in row.get("auc_ci95_per_run", [row.get("auc_ci95")]) if ci]
            out.append(f"  {name}: TP {cm['tp']} FP {cm['fp']} TN {cm['tn']} FN {cm['fn']}"
                       + (" (summed over runs)" if row.get("runs", 1) > 1 else "")
                       + ("; AUC 95 % bootstrap CI " + ", ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in cis) if cis else ""))
        return "\n".join(out)


def cam_peaks(cam: np.ndarray, count: int, fraction: float) -> list[tuple[tuple[int, int], float]]:
    """The strongest local maxima of an activation map (at least `fraction` of its maximum,
    one per neighbourhood of 1/8 of the image's larger side), highest first."""
    if count <= 0 or cam.max() <= 0:
        return []
    size = max(3, int(math.ceil(max(cam.shape) / 8)) | 1)
    peaks = (cam == ndimage.maximum_filter(cam, size=size, mode="nearest")) & (cam >= fraction * cam.max())
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-cam[ys, xs], kind="stable")[:count]
    return [((int(ys[i]), int(xs[i])), float(cam[ys[i], xs[i]])) for i in order]
