"""The liver-frcnn plug-in: liver lesion boxes in CT with Faster R-CNN on 3-slice input
(Aluko et al.; DeepLesion's protocol, Yan et al. 2018; seed 003).

Models (config "model"): "faster_rcnn" (torchvision, ResNet-50 FPN as the paper, or VGG-16 /
ResNet-18 / MobileNet backbones) and the paper's two baseline box regressors.  Inference
reorients the CT to LPS axial slices (DeepLesion: anterior up), detects on every slice,
links overlapping boxes on consecutive slices into 3-D lesions (volume.py) and writes them
as physical ROI boxes; boxes under the card's score threshold (chosen on validation key
slices at `calibrate_fp_per_image`) are dropped.  The default HU window [-160, 240] is the
abdominal soft-tissue window; neighbours sit 2 mm from the key slice (3DCE / MULAN).
"""

from __future__ import annotations

import math
from typing import Any

import SimpleITK as sitk
import torch
from torch.nn import functional as F

from ...dataset import cases_for, split_cases
from ...errors import LesionDetectError, input_error
from ...geometry import Geometry
from ...io import require_scalar_volume
from ...metrics.froc import threshold_at
from ...models import ModelCard
from ...prediction import Prediction, Provenance
from ...progress import progress
from ..base import Method
from . import network
from .data import KeySliceSamples, has_key_slices
from .evaluation import froc_of, regressor_metrics
from .negatives import with_rejected
from .network import detect
from .slices import neighbour_offset, parse_slice_range, stacks
from .volume import CHAIN_SCORES, SliceLinker, chains_to_boxes


MODELS = ("faster_rcnn", "cnn_regressor", "cnn_regressor_vgg")

DEFAULTS: dict[str, Any] = {
    "model": "faster_rcnn",
    "backbone": "resnet50",
    "pretrained": False,
    "pretrained_source": "imagenet",
    "trainable_layers": 3,
    # a small detector (the shipped model; Resources/configs/liver-frcnn/shipped.json): the ResNet
    # cut after this many stages (4 = whole), FPN channels, width of the two-layer box head
    "backbone_stages": 4,
    "fpn_channels": 256,
    "box_head_size": 1024,
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
    # training slices: "key" (the annotated key slices, the paper's DeepLesion protocol) or "mask"
    # (every slice where a lesion of the case's mask shows at least lesion_slice_fraction of its
    # largest cross-section: several times the samples from the same studies)
    "train_slices": "key",
    "lesion_slice_fraction": 0.3,
    # lesion-free training slices (empty targets) per lesion slice: the detector then also sees the
    # slices where it must find nothing, as whole-volume inference does
    "negative_slices": 0.0,
    # processes reading the training cases (0/1: in the trainer's process)
    "load_workers": 0,
    # detections a reviewer rejected in Slicer (dataset.hard_negatives) become training slices
    # around them, usually lesion-free (negatives.py; not in the paper)
    "rejected_negatives": True,
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
    # a 3-D lesion's score: its best slice ("max") or the mean over the slices it spans ("mean")
    "chain_score": "max",
    "max_boxes": 50,
    # 3-D lesions whose in-plane box is smaller than this (mm, the shorter side) are dropped
    "min_box_mm": 0.0,
    "calibrate_fp_per_image": 1.0,
    # evaluation
    "eval_iou": 0.5,
    "baseline_iou": 0.1,
}



class LiverFasterRCNN(Method):
    name = "liver-frcnn"
    modality = "CT"
    paper = "003"
    inference_options = ("slices",)
    defaults = DEFAULTS

    def build_model(self, config, pretrained=False):
        if config["model"] not in MODELS:
            raise LesionDetectError(f"unknown model '{config['model']}'; use one of {', '.join(MODELS)}")
        if config["model"] == "faster_rcnn":
            return network.build_faster_rcnn(config, pretrained)
        return network.build_regressor(config, pretrained)

    @staticmethod
    def cases(dataset, config, split: str, seed: int = 0) -> list:
        """Annotated cases of a split: the dataset's own splits, else `val_fraction` of the
        patients for validation; test cases never train, and a dataset without splits is
        evaluated whole."""
        annotated = [c for c in dataset.cases if has_key_slices(c)]
        fraction = float(config["val_fraction"])
        fractions = {"train": 1 - fraction, "val": fraction}
        if split in ("train", "val"):
            return split_cases(annotated, fractions, seed)[split]
        return cases_for(annotated, split, fractions, seed)

    def training_data(self, dataset, config, seed):
        train_cases, val_cases = self.cases(dataset, config, "train", seed), self.cases(dataset, config, "val", seed)
        val = KeySliceSamples(val_cases, config, train=False) if val_cases else None
        return with_rejected(KeySliceSamples(train_cases, config, train=True), train_cases, config), val

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
        seed = int(config.get("seed", 0))
        train_cases, val_cases = self.cases(dataset, config, "train", seed), self.cases(dataset, config, "val", seed)
        summary = froc_of(model.eval(), config, val_cases or train_cases, device, desc="calibrating")
        return {"score": threshold_at(summary["curve"]["fp_per_image"], summary["curve"]["threshold"],
                                      float(config["calibrate_fp_per_image"]), float(config["min_score"]))}

    def predict(self, model, card: ModelCard, image: sitk.Image, device, threshold: float | None = None,
                slices=None, **options) -> Prediction:
        self.check_inference_options(options)
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
        rule = config.get("chain_score", "max")
        if rule not in CHAIN_SCORES:
            raise LesionDetectError(f"model card: unknown chain_score '{rule}'; use one of {', '.join(CHAIN_SCORES)}")
        boxes = chains_to_boxes(linker.finish(), geometry, float(config["nms_iou_3d"]), threshold,
                                int(config["max_boxes"]), rule)
        min_mm = float(config.get("min_box_mm", 0.0))
        if min_mm > 0:
            boxes = [b for b in boxes if min(float(b.size[0]), float(b.size[1])) >= min_mm]
        provenance = Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                parameters={"threshold": threshold, "slices": [chosen[0], chosen[-1]],
                                            "window": config["window"], "neighbour_mm": config["neighbour_mm"],
                                            "backbone": config["backbone"], "min_box_mm": min_mm,
                                            "chain_score": rule})
        return Prediction(geometry=Geometry.of(image), provenance=provenance, threshold=threshold, boxes=boxes)

    def evaluate(self, model, card, dataset, device, split="test", **options):
        cases = self.cases(dataset, card.config, split, int(card.config.get("seed", 0)))
        if not cases:
            raise input_error(dataset.root, f"has no annotated cases in split '{split}'; use --split all")
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
