"""The bone-ct-patch plug-in: bone lesions in CT with a 15 mm patch classifier
(Hofmanninger et al., DATRA@MICCAI 2018; seed 000).

Training: the paper's patches (data.py) at lesion centres (augmented) and at random bone
voxels clear of them, split by patient 72 / 10 / 18 % unless the dataset has splits; the
decision threshold is the F-max on the validation patches.  Inference parses the whole bone
mask densely (parsing.py) into a probability map with the CT's geometry; candidates are its
local maxima.  Evaluation: the paper's Table 2 on test patches and a lesion-level FROC of the
candidates (evaluation.py).  Without a `roi` in the dataset the bone mask comes from HU, so a
CT alone is enough.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ... import markups
from ...dataset import Dataset, cases_for, hard_negative_centres, read_mask, split_cases
from ...errors import LesionDetectError, input_error
from ...geometry import Geometry
from ...models import ModelCard
from ...prediction import Prediction, Provenance
from ...progress import progress
from ...io import read_image, require_scalar_volume
from ...metrics.froc import froc_summary
from ...metrics.matching import match_detections, point_hits
from ...metrics.thresholds import fmax_threshold
from ...prediction import LesionPoint
from ..base import Method
from . import data, evaluation, network, parsing

PARSE_OPTIONS = ("parse_stride", "parse_tile", "parse_precision")  # `infer --set` may change these


class BoneCTPatch(Method):
    name = "bone-ct-patch"
    modality = "CT"
    paper = "000"
    inference_options = PARSE_OPTIONS
    defaults: dict[str, Any] = {
        "experiment": "3C-RI",
        # patches
        "patch_mm": 15.0,
        "patch_pixels": 64,
        "augment": 5,
        "negatives_per_positive": 1.0,
        "exclusion_z_mm": 7.5,
        # > 0 (not in the paper): augmented positives also moved in-plane by up to this much, so
        # the classifier accepts a lesion off its patch centre, as the parsing grid sees most
        # lesions (grid nodes 3.75 mm apart are up to 2.65 mm from a lesion centre)
        "positive_shift_mm": 0.0,
        # "centre" (the paper): positives at annotated lesion centres; "mask" (not in the paper):
        # positives anywhere inside the lesion mask and negatives at least `negative_margin_mm`
        # from it, `near_negative_fraction` of them within `near_negative_mm` beyond that
        # margin, so the parsed map reads as a segmentation (data.mask_training_positions)
        "positive_sampling": "centre",
        "negative_margin_mm": 3.0,
        "near_negative_fraction": 0.0,
        "near_negative_mm": 10.0,
        "encoding": "3c",
        "grey_window": [-500.0, 1500.0],
        "windows_3c": {"low": [-1000.0, 100.0], "high": [400.0, 2000.0], "soft": [100.0, 400.0]},
        # bone mask when the dataset has no roi
        "bone_threshold_hu": 200.0,
        "bone_closing_mm": 3.0,
        "bone_min_component_mm3": 50.0,
        "bone_margin_mm": 5.0,
        # network
        "width": 1.0,
        "context_pixels": 0,  # image around the patch the classifier sees (network.py); paper: 0
        "batch_norm": False,  # VGG-16-BN (not in the paper): from-scratch training in few steps
        "fc_hidden": [256, 256],
        "dropout": 0.5,
        "pretrained": False,
        "weights": None,
        "frozen_layers": 6,
        # training (shared trainer)
        "optimizer": "sgd",
        "lr": 0.01,  # 0.001 did not move a from-scratch VGG-16 in 60 steps on the synthetic study
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "epochs": 40,
        "batch_size": 32,
        "seed": 0,
        # hard-negative mining (not in the paper): after `epochs`, this many of each training
        # volume's strongest false candidates become negatives for `hard_example_epochs` more
        "hard_negatives_per_volume": 0,
        # patches per mined location: the first as found, the others rotated and mirrored
        "hard_negative_augment": 1,
        # with lesion-mask sampling, mined locations at least this far from every lesion voxel: the
        # map's peak just outside a lesion is the lesion seen off-centre, not a false finding
        "hard_negative_margin_mm": 10.0,
        # detections a reviewer rejected in Slicer (a case's "negative_points" / "negative_boxes",
        # dataset.hard_negatives) become negative patches, `augment` per location (not in the paper)
        "rejected_negatives": True,
        "split": {"train": 0.72, "val": 0.10, "test": 0.18},
        "split_seed": 0,
        # volume parsing and candidates
        "parse_stride": 16,
        "parse_tile": 8,
        "parse_precision": "float32",
        "candidate_radius_mm": 10.0,
        "max_candidates": 200,
        # "peaks": candidates are the map's local maxima (the default); "components": connected
        # regions of the map >= the card's "lesion" threshold (else "patch"), those under
        # `min_lesion_mm3` dropped, each scored by the max or mean probability
        # (`component_score`) and placed at its probability-weighted centroid
        "candidates": "peaks",
        "min_lesion_mm3": 0.0,
        "component_score": "max",
        # lesion-level evaluation
        "evaluate_volumes": True,
        "froc_min_score": 0.05,
        "hit_radius_mm": 10.0,
    }

    # --- model ----------------------------------------------------------------------------
    def build_model(self, config, pretrained=False):
        return network.build(config, pretrained)

    # --- data -----------------------------------------------------------------------------
    def lesion_mask(self, case, geometry: Geometry) -> np.ndarray | None:
        """The case's lesion mask (zyx, any label > 0 is lesion), None when it has none."""
        return None if case.mask is None else (read_mask(case.mask, geometry) > 0).astype(np.uint8)

    def load_case(self, case, config) -> tuple[np.ndarray, np.ndarray, Geometry, np.ndarray]:
        """(HU zyx, bone mask zyx, geometry, lesion centres as continuous zyx indices)."""
        image = require_scalar_volume(read_image(case.image), case.image)
        geometry = Geometry.of(image)
        hu = data.hu_array(image)
        bone = read_mask(case.roi, geometry) if case.roi is not None else self.bone_mask(hu, geometry, config)
        lesions = data.lesion_centres_lps(case)
        zyx = geometry.lps_to_index(lesions)[:, ::-1] if len(lesions) else np.zeros((0, 3))
        return hu, bone, geometry, zyx

    @staticmethod
    def bone_mask(hu, geometry: Geometry, config) -> np.ndarray:
        return data.bone_mask_from_hu(hu, geometry.spacing, float(config["bone_threshold_hu"]),
                                         float(config["bone_closing_mm"]), float(config["bone_min_component_mm3"]),
                                         float(config["bone_margin_mm"]))

    @staticmethod
    def rejected_zyx(case, geometry: Geometry) -> np.ndarray:
        """The case's rejected detections (dataset.hard_negatives) inside the image, as
        continuous zyx indices."""
        lps = hard_negative_centres(case)
        if not len(lps):
            return np.zeros((0, 3))
        return geometry.lps_to_index(lps[np.asarray(geometry.contains(lps), bool).reshape(-1)])[:, ::-1].reshape(-1, 3)

    def split_cases(self, dataset: Dataset, config) -> dict[str, list]:
        """The dataset's own splits when it has them, else 72/10/18 by patient."""
        return split_cases(dataset.cases, config["split"], int(config["split_seed"]))

    def patch_set(self, cases, config, seed: int) -> data.PatchSet:
        """The paper's patches of `cases`, deterministic for a seed."""
        all_patches, all_labels, ids = [], [], []
        for case in cases:
            hu, bone, geometry, lesions = self.load_case(case, config)
            rng = np.random.default_rng([seed, zlib.crc32(case.id.encode())])
            sampling = config.get("positive_sampling", "centre")
            if sampling not in ("centre", "mask"):
                raise input_error(case.image, f"positive_sampling must be centre or mask, not {sampling!r}")
            mask = self.lesion_mask(case, geometry) if sampling == "mask" else None
            if sampling == "mask" and mask is None:
                raise input_error(case.image, "has no lesion mask, which positive_sampling 'mask' needs")
            if mask is not None:
                centres, labels, angles, mirror = data.mask_training_positions(
                    bone, mask, geometry.spacing, rng, int(config["augment"]),
                    float(config["negatives_per_positive"]), float(config["negative_margin_mm"]),
                    float(config["near_negative_fraction"]), float(config["near_negative_mm"]))
            else:
                centres, labels, angles, mirror = data.training_positions(
                    bone, lesions, geometry.spacing, rng, int(config["augment"]),
                    float(config["negatives_per_positive"]), float(config["patch_mm"]),
                    float(config["exclusion_z_mm"]), float(config.get("positive_shift_mm", 0.0)))
            if config.get("rejected_negatives", True):
                extra = data.rejected_positions(self.rejected_zyx(case, geometry), lesions, geometry.spacing, rng,
                                                int(config["augment"]), float(config["patch_mm"]),
                                                float(config["exclusion_z_mm"]),
                                                float(config.get("positive_shift_mm", 0.0)))
                centres, labels, angles, mirror = (np.concatenate([a, b]) for a, b in
                                                   zip((centres, labels, angles, mirror), extra))
            if len(centres) == 0:
                continue
            all_patches.append(data.extract_patches(hu, geometry.spacing, centres, float(config["patch_mm"]),
                                                       int(config["patch_pixels"]), angles, mirror,
                                                       context=int(config["context_pixels"])))
            all_labels.append(torch.from_numpy(labels))
            ids += [case.id] * len(labels)
        p = int(config["patch_pixels"]) + 2 * int(config["context_pixels"])
        if not all_patches:
            return data.PatchSet(torch.zeros((0, 1, p, p)), torch.zeros(0), [])
        return data.PatchSet(torch.cat(all_patches), torch.cat(all_labels), ids)

    def training_data(self, dataset, config, seed):
        splits = self.split_cases(dataset, config)
        val = self.patch_set(splits["val"], config, seed + 1) if splits["val"] else None
        return self.patch_set(splits["train"], config, seed), val

    def hard_examples(self, model, dataset, config, seed, device) -> data.PatchSet | None:
        """Hard-negative mining (not in the paper; `hard_negatives_per_volume` > 0): each
        training volume's strongest false candidates (`hard_negative_centres`) become extra
        negatives for the trainer's `hard_example_epochs`.  The paper's random bone negatives
        teach little about the bright, lesion-like bone the parsed map's false candidates
        come from."""
        if int(config.get("hard_negatives_per_volume", 0)) <= 0:
            return None
        found, ids = [], []
        for case in progress(self.split_cases(dataset, config)["train"], desc="hard negatives", unit="case"):
            hu, bone, geometry, lesions = self.load_case(case, config)
            mask = self.lesion_mask(case, geometry) if config.get("positive_sampling") == "mask" else None
            mined, _ = self.hard_negative_centres(model, config, hu, bone, geometry, lesions, device, mask)
            rng = np.random.default_rng([seed, 3, zlib.crc32(case.id.encode())])
            centres, angles, mirror = data.augmented(mined, rng, int(config.get("hard_negative_augment", 1)))
            if len(centres):
                found.append(data.extract_patches(hu, geometry.spacing, centres, float(config["patch_mm"]),
                                                     int(config["patch_pixels"]), angles, mirror,
                                                     context=int(config["context_pixels"])))
                ids += [case.id] * len(centres)
        return data.PatchSet(torch.cat(found), torch.zeros(len(ids)), ids) if found else None

    def hard_negative_centres(self, model, config, hu, bone, geometry: Geometry, lesions_zyx, device,
                              lesion_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(voxels zyx, scores) of the volume's highest-scoring candidates (local maxima of the
        parsed map, as `predict` finds them) clear of the lesions: the patch clear of every
        positive (the random negatives' rule), or with `lesion_mask` (the lesion-mask sampling) at
        least `hard_negative_margin_mm` from every lesion voxel; at most
        `hard_negatives_per_volume`, highest first."""
        prob = self.parse(model, config, hu, bone, geometry, device)
        peaks, scores = parsing.local_maxima(prob, geometry.spacing, float(config["froc_min_score"]),
                                             float(config["candidate_radius_mm"]), int(config["max_candidates"]))
        if lesion_mask is not None:
            clear = data.clear_of_lesion_mask(peaks, lesion_mask, geometry.spacing,
                                              float(config["hard_negative_margin_mm"]))
        else:
            clear = data.clear_of_positives(peaks, lesions_zyx, geometry.spacing, float(config["patch_mm"]),
                                            float(config["exclusion_z_mm"]),
                                            float(config.get("positive_shift_mm", 0.0)))
        n = int(config["hard_negatives_per_volume"])
        return peaks[clear][:n], scores[clear][:n]

    def batch_loss(self, model, batch, device):
        hu, labels = batch
        logits = model(hu.to(device))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(device).float())

    @torch.no_grad()
    def scores(self, model, samples: data.PatchSet, device, batch: int = 256) -> np.ndarray:
        model.eval()
        out = [torch.sigmoid(model(samples.patches[i:i + batch].to(device))).float().cpu()
               for i in range(0, len(samples), batch)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def calibrate(self, model, dataset, config, device):
        """F-max threshold on the validation patches (training patches when there is no val split)."""
        splits = self.split_cases(dataset, config)
        seed = int(config.get("seed", 0))
        samples = self.patch_set(splits["val"], config, seed + 1) if splits["val"] else None
        if samples is None or len(np.unique(samples.labels.numpy())) < 2:
            samples = self.patch_set(splits["train"], config, seed)
        return {"patch": fmax_threshold(samples.labels.numpy(), self.scores(model, samples, device))}

    # --- use ------------------------------------------------------------------------------
    def parse(self, model, config, hu, bone, geometry, device) -> np.ndarray:
        parser = parsing.DenseParser(model, parsing.ParseSettings.of(config), device)
        return parser.parse_volume(hu, bone, geometry.spacing)

    def predict(self, model, card: ModelCard, image: sitk.Image, device, threshold: float | None = None,
                bone_mask: np.ndarray | None = None, **options) -> Prediction:
        """`options`: the card's parse settings (PARSE_OPTIONS) to change for this run, e.g.
        `infer --set parse_tile=64` (speed and memory; with a context model, not the map)."""
        self.check_inference_options(options)
        config = {**card.config, **options}
        geometry = Geometry.of(image)
        hu = data.hu_array(image)
        bone = bone_mask if bone_mask is not None else self.bone_mask(hu, geometry, config)
        threshold = self.default_threshold(card) if threshold is None else float(threshold)
        prob = self.parse(model, config, hu, bone, geometry, device)
        points, mask = self.candidates(prob, geometry, config, threshold)
        provenance = Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                parameters={"threshold": threshold, "experiment": config.get("experiment"),
                                            "bone_mask": "given" if bone_mask is not None else "from HU",
                                            **{k: config[k] for k in ("patch_mm", "patch_pixels", "context_pixels",
                                                                      "encoding", *PARSE_OPTIONS)}})
        if config.get("candidates", "peaks") == "components":
            provenance.parameters.update({k: config[k] for k in ("candidates", "min_lesion_mm3", "component_score")})
        return Prediction(geometry=geometry, provenance=provenance, probability=prob,
                          mask=mask, threshold=threshold, points=points)

    @staticmethod
    def default_threshold(card: ModelCard) -> float:
        """The card's lesion threshold: "lesion" (chosen on volumes) when the card has one, else
        the patch threshold "patch", else 0.5."""
        return float(card.thresholds.get("lesion", card.thresholds.get("patch", 0.5)))

    @staticmethod
    def candidates(prob: np.ndarray, geometry: Geometry, config: dict, threshold: float
                   ) -> tuple[list[LesionPoint], np.ndarray]:
        """(lesion points, mask) from a parsed map by the config's `candidates` rule: "peaks"
        (local maxima >= threshold; mask = map >= threshold) or "components" (connected
        regions >= threshold of at least `min_lesion_mm3`, scored by `component_score`;
        mask = the kept regions)."""
        rule = config.get("candidates", "peaks")
        if rule == "components":
            return parsing.find_component_candidates(prob, geometry, threshold, float(config["min_lesion_mm3"]),
                                                     str(config["component_score"]), int(config["max_candidates"]))
        if rule != "peaks":
            raise LesionDetectError(f"candidates must be peaks or components, not {rule!r}")
        points = parsing.find_candidates(prob, geometry, threshold, float(config["candidate_radius_mm"]),
                                         int(config["max_candidates"]))
        return points, (prob >= threshold).astype(np.uint8)

    def evaluate(self, model, card, dataset, device, split: str = "test", **options):
        config = card.config
        cases = cases_for(dataset.cases, split, config["split"], int(config["split_seed"]))
        if not cases:
            raise input_error(dataset.root, f"has no cases in split '{split}'")
        seed = int(config.get("seed", 0))
        samples = self.patch_set(cases, config, seed + 2)
        metrics: dict[str, Any] = {"experiment": config.get("experiment"), "seed": seed, "split": split,
                                   "cases": [c.id for c in cases]}
        if len(samples):
            metrics.update(evaluation.patch_metrics(samples.labels.numpy(), self.scores(model, samples, device),
                                                    float(card.thresholds.get("patch", 0.5))))
        if config.get("evaluate_volumes", True):
            metrics.update(self.lesion_level(model, card, cases, device))
        return metrics

    def lesion_level(self, model, card: ModelCard, cases, device) -> dict:
        """FROC of `predict`'s candidates (down to `froc_min_score`) against the cases' lesion
        boxes, or lesion points when a case has no boxes."""
        config = card.config
        operating = self.default_threshold(card)
        # peaks: every local maximum down to froc_min_score; components: the regions at the
        # card's threshold (a lower one would merge neighbours), ranked by their scores
        low = operating if config.get("candidates", "peaks") == "components" else float(config["froc_min_score"])
        fp_scores, lesion_scores, per_case = [], [], {}
        for case in cases:
            image = require_scalar_volume(read_image(case.image), case.image)
            bone = read_mask(case.roi, Geometry.of(image)) if case.roi is not None else None
            candidates = self.predict(model, card, image, device, threshold=low, bone_mask=bone).points
            if case.boxes is not None:
                lesions = markups.read_boxes(case.boxes)
            else:
                lesions = [LesionPoint(p) for p in data.lesion_centres_lps(case)]
            fps, best = match_detections([c.score for c in candidates],
                                         point_hits(candidates, lesions, float(config["hit_radius_mm"])))
            fp_scores += fps
            lesion_scores += best
            per_case[case.id] = {"lesions": len(lesions), "candidates": len(candidates),
                                 "detected": sum(b is not None for b in best)}
        summary = froc_summary(fp_scores, lesion_scores, n_images=len(cases))
        return {**evaluation.lesion_f1(fp_scores, lesion_scores, operating), "froc": summary["froc"], "froc_mean": summary["froc_mean"], "lesions": summary["lesions"],
                "volumes": summary["images"], "curve": summary["curve"], "per_case": per_case}

    def combine(self, runs: list[dict]) -> dict:
        return evaluation.combine_runs(runs)

    def report(self, metrics):
        return evaluation.table2(metrics)
