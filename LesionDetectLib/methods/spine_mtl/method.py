"""The spine-mtl plug-in: bone quality (normal, blastic, mixed, lytic) and posterolateral
involvement (normal, unilateral, bilateral) of every axial CT slice through the spine, and of
every vertebra by the slices' vote (Zhang et al., multi-task DenseNet with self-paced
learning; seed 002).

Training takes the labelled slices of a dataset's cases (entry "slices", as the spine-ct
generator writes them), cropped around the spine (data.py), split by patient; normal slices
are sub-sampled to at most `normal_per_lesion` per lesion slice, as the paper sub-samples.
The loss is 2 L_blastic + 2 L_lytic + 2 L_boneQuality + L_PI (`loss_weights`), cross-entropy
each, with the trainer's label smoothing and self-paced learning (one loss per sample).
After training, the vertebra vote's minimum fractions are chosen on the validation cases.

What the user sees: a table with one row per slice (index, z in mm, the four bone-quality
and three posterolateral probabilities), one row per vertebra with its vote, and a labelled,
scored point at each vertebral body ("L2: lytic, bilateral"; score = 1 - mean normal
probability of its slices); with a vertebra segmentation, the involved vertebrae (any lesion
type or posterolateral involvement) as labelled regions, one segment each coloured by type.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...dataset import Dataset, cases_for, split_cases
from ...errors import input_error
from ...io import read_image
from ...models import ModelCard
from ...prediction import ClassResult, LesionPoint, Prediction, Provenance, Region
from ...progress import progress
from ..base import Method
from . import evaluation, network
from .data import (BONE_QUALITY, PI_NAMES, POSTEROLATERAL, SliceSet, axial_volume, check_axial, class_weights, crop_slices,
                   slice_targets, spine_centres)
from .vertebrae import read_segmentation, split_along_z, vote

# the settings a slice crop depends on, and the crops of the cases read so far
INPUT_KEYS = ("input_size", "crop_mm", "bone_hu", "bone_area", "bone_margin_mm", "window", "centre_radius_mm")
_CROPS: dict[tuple, dict] = {}
# an involved vertebra's segment colour by its bone quality (blastic bone-white, mixed orange,
# lytic red; purple for posterolateral involvement alone)
TYPE_COLORS = {"blastic": (0.95, 0.9, 0.55), "mixed": (0.95, 0.55, 0.15), "lytic": (0.85, 0.2, 0.2),
               "normal": (0.6, 0.35, 0.8)}


class SpineMTL(Method):
    name = "spine-mtl"
    modality = "CT"
    paper = "002"
    inference_options = ("vertebrae", "vertebra_labels")
    defaults: dict[str, Any] = {
        # network (network.py); the paper's DenseNet121 is blocks 6 12 24 16, growth 32, 64 initial
        "sharing": "hard",  # "single" | "soft" | "hard"
        "shared_blocks": 4,  # hard sharing: stages shared by all tasks (3 or 4 in the paper)
        "posterolateral": True,
        "mlp": True,
        "mlp_hidden": 10,
        "blocks": [3, 6, 12, 8],
        "growth_rate": 12,
        "init_features": 32,
        "loss_weights": {"blastic": 2.0, "lytic": 2.0, "bone_quality": 2.0, "posterolateral": 1.0},
        "soft_sharing_weights": [0.1, 0.1, 0.1, 0.1],
        # input (data.py)
        "input_size": 96,  # pixels of the square crop (the paper: 224)
        "crop_mm": 128.0,
        "bone_hu": 200.0,
        "bone_area": True,
        "bone_margin_mm": 3.0,
        "window": [-200.0, 1500.0],
        "centre_radius_mm": 40.0,
        "augment_shift": 6,
        "augment_intensity": 0.1,
        "normal_per_lesion": 1.0,  # sub-sampling of normal slices in training (<= 0: keep all)
        # "loss": each bone-quality and posterolateral class weighs the same in the loss (the rare
        # mixed, unilateral and bilateral slices were never predicted without it) | "none" (the paper)
        "class_balance": "loss",
        "split": {"train": 0.85, "val": 0.15},
        "split_seed": 0,
        # vertebra level (vertebrae.py); the vote's minimum lengths are chosen on training data
        "vertebra_min_height_mm": 15.0,
        "disc_hu": 110.0,  # the built-in split: a disc's mean HU is at most this
        "vertebra_labels": "v2",  # TotalSegmentator class numbers of a multilabel file: v2 | v1
        "inference_batch": 32,
        # the paper's training (TRAINER_DEFAULTS keys): SGD 0.001 momentum 0.9, warm-up + cosine, 50 epochs
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "lr_schedule": "warmup_cosine",
        "warmup_epochs": 2,
        "label_smoothing": 0.1,
        "self_paced_start": 0.7,
        "self_paced_epochs": 10,
        "epochs": 20,
        "batch_size": 32,
        "seed": 0,
    }

    # --- model ------------------------------------------------------------------------
    def build_model(self, config, pretrained=False):
        config = {**self.defaults, **config}
        model = network.build(config, pretrained)
        model.config = config  # batch_loss reads the loss weights and label smoothing from it
        return model

    def check_input(self, image, path=None, force=False):
        """The shared gate, then: an axial 3-D CT with some bone in it."""
        overridden = super().check_input(image, path, force)
        check_axial(image, path)
        bone_hu = float(self.defaults["bone_hu"])
        if float(sitk.GetArrayViewFromImage(image).max()) < bone_hu:
            raise input_error(path or "input", f"holds no bone (no voxel at or above {bone_hu:g} HU); spine-mtl "
                                               "needs a CT through the spine")
        return overridden

    # --- data -------------------------------------------------------------------------
    def cases(self, dataset: Dataset, config, split: str) -> list:
        labelled = [c for c in dataset.cases if c.extra.get("slices")]
        fractions, seed = config["split"], int(config["split_seed"])
        if split in ("train", "val"):
            return split_cases(labelled, fractions, seed)[split]
        return cases_for(labelled, split, fractions, seed)

    def case_inputs(self, case, config) -> dict:
        """A labelled case's slice crops, targets and the vertebra of each labelled slice
        (kept for the process's next runs on the same cases, e.g. the rows of an ablation)."""
        key = (str(case.image), *(json.dumps(config[k]) for k in INPUT_KEYS))
        if key not in _CROPS:
            if len(_CROPS) >= 256:
                _CROPS.pop(next(iter(_CROPS)))
            _CROPS[key] = self._case_inputs(case, config)
        return dict(_CROPS[key])

    def _case_inputs(self, case, config) -> dict:
        hu, geometry = axial_volume(read_image(case.image), case.image)
        index, quality, side, vertebra = slice_targets(case)
        if max(index) >= hu.shape[0] or min(index) < 0:
            raise input_error(case.image, f'case "{case.id}" labels slice {max(index)}, beyond its '
                                          f'{hu.shape[0]} slices')
        centres, _ = spine_centres(hu, geometry, config)
        return {"images": crop_slices(hu, geometry, centres, config, index), "index": index,
                "quality": np.asarray(quality), "side": np.asarray(side), "vertebra": vertebra}

    def slice_set(self, cases, config, augment: bool, seed: int = 0) -> SliceSet:
        images, quality, side, keys = [], [], [], []
        for case in progress(cases, desc="cropping spine slices", unit="case"):
            got = self.case_inputs(case, config)
            images.append(got["images"])
            quality += got["quality"].tolist()
            side += got["side"].tolist()
            keys += [(case.id, i, v) for i, v in zip(got["index"], got["vertebra"])]
        size = int(config["input_size"])
        images = torch.cat(images) if images else torch.zeros((0, 1, size, size))
        quality, side = np.asarray(quality, int), np.asarray(side, int)
        keep = np.arange(len(quality))
        ratio = float(config["normal_per_lesion"])
        if augment and ratio > 0:  # the paper's sub-sampling of the (many) normal slices
            normal, lesion = keep[quality == 0], keep[quality != 0]
            n = min(len(normal), max(1, int(round(ratio * len(lesion)))))
            normal = np.random.default_rng(seed).choice(normal, size=n, replace=False) if len(normal) else normal
            keep = np.sort(np.concatenate([normal, lesion]))
        weights = (class_weights(quality[keep], 4, config["class_balance"]),
                   class_weights(side[keep], 3, config["class_balance"])) if augment else None
        return SliceSet(images[keep].half(), torch.from_numpy(quality[keep]), torch.from_numpy(side[keep]),
                        augment=config if augment else None, keys=[keys[i] for i in keep], weights=weights)

    def training_data(self, dataset, config, seed):
        train = self.slice_set(self.cases(dataset, config, "train"), config, augment=True, seed=seed)
        val_cases = self.cases(dataset, config, "val")
        val = self.slice_set(val_cases, config, augment=False) if val_cases else None
        if val is not None:
            val.weights = train.weights  # the validation loss weighs classes as training does
        return train, val

    def batch_loss(self, model, batch, device):
        """One loss per sample (the trainer's self-paced learning picks the easy ones)."""
        images, quality, side, w_quality, w_side = (t.to(device) for t in batch)
        out = model(images.float(), with_features=model.sharing == "soft")
        weights = model_weights(model, model.config)
        smooth = model.config.get("label_smoothing", 0.0)

        def ce(logits, target):
            return F.cross_entropy(logits, target, reduction="none", label_smoothing=float(smooth))

        loss = torch.zeros(len(quality), device=device)
        w_quality, w_side = w_quality.float(), w_side.float()  # the samples' class weights
        if "blastic" in model.heads:
            loss = loss + weights["blastic"] * w_quality * ce(out["blastic"], ((quality == 1) | (quality == 2)).long())
            loss = loss + weights["lytic"] * w_quality * ce(out["lytic"], ((quality == 3) | (quality == 2)).long())
        if model.sharing == "single" or model.use_mlp:  # a learnt 4-way output has its own loss
            loss = loss + weights["bone_quality"] * w_quality * ce(out["bone_quality"], quality)
        if model.use_pi:
            loss = loss + weights["posterolateral"] * w_side * ce(out["posterolateral"], side)
        if model.sharing == "soft":
            loss = loss + network.soft_sharing_penalty(out["features"], model.config["soft_sharing_weights"])
        return loss

    # --- slice and vertebra predictions ---------------------------------------------------
    @torch.no_grad()
    def slice_probabilities(self, model, images: torch.Tensor, config, device) -> tuple[np.ndarray, np.ndarray | None]:
        """(bone-quality probabilities (n, 4), posterolateral probabilities (n, 3) or None)."""
        model.eval()
        batch, quality, side = int(config["inference_batch"]), [], []
        for start in range(0, len(images), batch):
            out = model(images[start:start + batch].float().to(device))
            quality.append(F.softmax(out["bone_quality"].float(), 1).cpu())
            if "posterolateral" in out:
                side.append(F.softmax(out["posterolateral"].float(), 1).cpu())
        q = torch.cat(quality).numpy() if quality else np.zeros((0, 4), np.float32)
        return q, (torch.cat(side).numpy() if side else None)

    def case_predictions(self, model, cases, config, device) -> list[dict]:
        """Per case: truth and predicted classes of its labelled slices, and its vertebrae."""
        out = []
        for case in progress(cases, desc="spine slices", unit="case"):
            got = self.case_inputs(case, config)
            q, s = self.slice_probabilities(model, got["images"], config, device)
            got.update(pred_quality=q.argmax(1), pred_side=s.argmax(1) if s is not None else None,
                       truth_vertebrae={v["name"]: v for v in case.extra.get("vertebrae", [])})
            got.pop("images")
            out.append(got)
        return out

    def vertebra_table(self, predictions: list[dict], min_fraction: float, pi_min_fraction: float) -> dict:
        """Truth and voted class ids of every labelled vertebra (its slices = the labelled ones)."""
        truth_q, pred_q, truth_s, pred_s = [], [], [], []
        for got in predictions:
            names = np.asarray(got["vertebra"])
            for name in dict.fromkeys(got["vertebra"]):
                sel = names == name
                side = got["pred_side"][sel] if got["pred_side"] is not None else np.zeros(sel.sum(), int)
                quality, pi, _ = vote(got["pred_quality"][sel], side, min_fraction, pi_min_fraction)
                truth = got["truth_vertebrae"].get(name, {})
                truth_q.append(BONE_QUALITY.index(truth.get("bone_quality", BONE_QUALITY[int(got["quality"][sel].max())])))
                truth_s.append(POSTEROLATERAL.index(truth.get("posterolateral", POSTEROLATERAL[int(got["side"][sel].max())])))
                pred_q.append(BONE_QUALITY.index(quality))
                pred_s.append(POSTEROLATERAL.index(pi))
        return {"truth_quality": truth_q, "pred_quality": pred_q, "truth_side": truth_s, "pred_side": pred_s}

    def calibrate(self, model, dataset, config, device):
        """The vertebra vote's minimum fractions of slices, chosen on the validation cases (the
        training cases when there are none: a network fits its own training slices, which
        would push the fraction to 0) by the mean of (sensitivity + specificity) / 2 over the
        classes (the smallest of equals)."""
        cases = self.cases(dataset, config, "val") or self.cases(dataset, config, "train")
        predictions = self.case_predictions(model, cases, config, device)
        candidates = [round(0.05 * n, 2) for n in range(13)]

        def score(fraction, pi_fraction, task):
            table = self.vertebra_table(predictions, fraction, pi_fraction)
            if task == "quality":
                return evaluation.balanced_score(table["truth_quality"], table["pred_quality"], BONE_QUALITY)
            return evaluation.balanced_score(table["truth_side"], table["pred_side"], POSTEROLATERAL)

        best = max(candidates, key=lambda f: (score(f, 0.0, "quality"), -f))
        best_pi = max(candidates, key=lambda f: (score(best, f, "side"), -f))
        return {"vertebra_min_fraction": best, "vertebra_pi_min_fraction": best_pi}

    # --- use --------------------------------------------------------------------------
    def predict(self, model, card: ModelCard, image: sitk.Image, device, threshold: float | None = None,
                **options) -> Prediction:
        self.check_inference_options(options)
        config = {**self.defaults, **card.config}
        hu, geometry = axial_volume(image)
        centres, found = spine_centres(hu, geometry, config)
        quality, side = self.slice_probabilities(model, crop_slices(hu, geometry, centres, config), config, device)
        if side is None:
            side = np.tile([1.0, 0.0, 0.0], (len(quality), 1))
        z_mm = [float(geometry.index_to_lps([0, 0, k])[2]) for k in range(hu.shape[0])]
        classes = []
        for k in range(hu.shape[0]):
            probabilities = {c: round(float(quality[k, i]), 6) for i, c in enumerate(BONE_QUALITY)}
            probabilities.update({PI_NAMES[c]: round(float(side[k, i]), 6) for i, c in enumerate(POSTEROLATERAL)})
            decision = f"{BONE_QUALITY[int(quality[k].argmax())]}, {POSTEROLATERAL[int(side[k].argmax())]}" \
                if found[k] else "no spine found in this slice"
            classes.append(ClassResult(probabilities, scope="slice", index=k, decision=decision, z_mm=round(z_mm[k], 3)))
        if options.get("vertebrae"):
            vertebrae = read_segmentation(options["vertebrae"], geometry,
                                          options.get("vertebra_labels") or config["vertebra_labels"])
            source = f"segmentation {options['vertebrae']}"
        else:
            vertebrae = split_along_z(hu, geometry, centres, found, config)
            source = "built-in split along z"
        min_fraction = float(card.thresholds.get("vertebra_min_fraction", 0.0))
        pi_min_fraction = float(card.thresholds.get("vertebra_pi_min_fraction", 0.0))
        points, regions, names = [], np.zeros(geometry.shape, np.uint16) if options.get("vertebrae") else None, []
        for n, v in enumerate(vertebrae):
            sel = np.asarray(v.slices)
            bone_quality, pi, fractions = vote(quality[sel].argmax(1), side[sel].argmax(1), min_fraction, pi_min_fraction)
            involved = 1.0 - float(quality[sel, 0].mean())
            decision = bone_quality if pi == "normal" else f"{bone_quality}, {pi}"
            fractions = {k: round(f, 4) for k, f in fractions.items()}
            classes.append(ClassResult(fractions, scope="vertebra", index=n, decision=f"{v.name}: {decision}",
                                       z_mm=round(float(v.centre[2]), 3)))
            points.append(LesionPoint(v.centre, score=round(involved, 4), label=f"{v.name}: {decision}"))
            if regions is not None and (bone_quality, pi) != ("normal", "normal"):
                regions[v.mask] = len(names) + 1
                names.append(Region(len(names) + 1, f"{v.name}: {decision}", TYPE_COLORS[bone_quality]))
        provenance = Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                parameters={"vertebrae": source, "vertebra_min_fraction": min_fraction,
                                            "vertebra_pi_min_fraction": pi_min_fraction, "input_size": config["input_size"],
                                            "crop_mm": config["crop_mm"]})
        return Prediction(geometry=geometry, provenance=provenance, points=points, classes=classes, regions=regions,
                          region_names=names)

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, model, card, dataset, device, split: str = "test", **options):
        config = {**self.defaults, **card.config}
        cases = self.cases(dataset, config, split)
        if not cases:
            raise input_error(dataset.root, f"has no cases with slice labels in split '{split}'")
        predictions = self.case_predictions(model, cases, config, device)
        truth_q = np.concatenate([p["quality"] for p in predictions])
        truth_s = np.concatenate([p["side"] for p in predictions])
        pred_q = np.concatenate([p["pred_quality"] for p in predictions])
        vert = self.vertebra_table(predictions, float(card.thresholds.get("vertebra_min_fraction", 0.0)),
                                   float(card.thresholds.get("vertebra_pi_min_fraction", 0.0)))
        metrics = {"slice": {"bone_quality": evaluation.per_class(truth_q, pred_q, BONE_QUALITY)},
                   "vertebra": {"bone_quality": evaluation.per_class(vert["truth_quality"], vert["pred_quality"],
                                                                     BONE_QUALITY)},
                   "slices": int(len(truth_q)), "vertebrae": len(vert["truth_quality"]),
                   "cases": [c.id for c in cases], "split": split, "model_id": card.model_id}
        if predictions[0]["pred_side"] is not None:
            pred_s = np.concatenate([p["pred_side"] for p in predictions])
            metrics["slice"]["posterolateral"] = evaluation.per_class(truth_s, pred_s, POSTEROLATERAL)
            metrics["vertebra"]["posterolateral"] = evaluation.per_class(vert["truth_side"], vert["pred_side"],
                                                                         POSTEROLATERAL)
        return metrics

    def combine(self, runs):
        return evaluation.combine(runs)

    def report(self, metrics):
        return evaluation.report(metrics)


def model_weights(model, config) -> dict[str, float]:
    weights = {**SpineMTL.defaults["loss_weights"], **(config.get("loss_weights") or {})}
    if model.sharing == "single":
        weights["bone_quality"] = 1.0  # the single-task baseline has one loss
    return weights
