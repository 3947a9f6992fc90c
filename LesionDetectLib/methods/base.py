"""What every method plug-in provides.  The shared trainer and the CLI call only this."""

from __future__ import annotations

from typing import Any

import SimpleITK as sitk
import torch

from ..dataset import Dataset
from ..errors import LesionDetectError
from ..models import ModelCard
from ..prediction import Prediction


class Method:
    name: str = ""
    modality: str = ""  # "CT", "MR" or "NM": checked against datasets and model cards
    paper: str = ""  # the seed text, e.g. "000"
    # The complete default configuration.  Experiment configs under Resources/configs/<name>/
    # hold only what differs (e.g. the paper's four 000 models); the merged result is stored
    # in the model card, so a model always knows how it was made.
    defaults: dict[str, Any] = {}
    # what `lesiondetect infer --set KEY=VALUE` may pass to `predict` for one run
    inference_options: tuple[str, ...] = ()

    # --- model ------------------------------------------------------------------------
    def build_model(self, config: dict[str, Any], pretrained: bool = False) -> torch.nn.Module:
        """The network for `config`.  `pretrained` asks for ImageNet/COCO initialisation
        (loaded from a local file, see models.load_pretrained_weights); loading a trained
        model passes False and then loads its own weights."""
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------
    def training_data(self, dataset: Dataset, config: dict[str, Any], seed: int
                      ) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        """(train, validation) sample sets made from the dataset's cases, split by patient."""
        raise NotImplementedError

    def collate(self, batch):
        """How samples form a batch (default: torch's)."""
        return torch.utils.data.default_collate(batch)

    def batch_loss(self, model: torch.nn.Module, batch, device: torch.device) -> torch.Tensor:
        """The training loss of one batch (model in train mode)."""
        raise NotImplementedError

    def hard_examples(self, model: torch.nn.Module, dataset: Dataset, config: dict[str, Any], seed: int,
                      device: torch.device):
        """Extra training samples mined with the model trained for `epochs` (e.g. its false
        detections), trained on with the others for the config's `hard_example_epochs`;
        None when the method or config mines none."""
        return None

    def calibrate(self, model: torch.nn.Module, dataset: Dataset, config: dict[str, Any], device: torch.device
                  ) -> dict[str, float]:
        """Decision thresholds chosen on training data after training (stored in the card)."""
        return {}

    # --- use --------------------------------------------------------------------------
    def read_inputs(self, path) -> list[tuple[str, sitk.Image]]:
        """The images one input file (or DICOM series folder) holds, each with a view name
        ("" for a single image).  `lesiondetect infer` runs `predict` on each and writes one
        result per view.  Default: the file as one image; a method whose files hold several
        views (e.g. a planar scan's anterior and posterior frames) overrides this."""
        from ..io import read_image

        return [("", read_image(path))]

    def check_input(self, image: sitk.Image, path=None, force: bool = False) -> list[str]:
        """The input gate for one image `read_inputs` gave (the header was checked when it was
        read): scalar, the dimension the method takes (2-D for planar "NM" methods, else 3-D),
        finite values, and the method's modality (`gate.modality_problem`: HU range for CT, no
        CT-like values for MR, a DICOM Modality tag that agrees).  Raises `LesionDetectError`
        naming `path`; `force` overrides only the modality check, and the problems it
        overrode are returned (infer records them in the prediction's provenance)."""
        from ..errors import input_error
        from ..gate import check_values, modality_problem

        check_values(image, path, dimensions=(2,) if self.modality == "NM" else (3,))
        problem = modality_problem(image, self.modality)
        if problem is None:
            return []
        if not force:
            raise input_error(path, f"{problem} by method '{self.name}'. If you know better (e.g. a CT stored without "
                                    "its HU rescale), pass --force: the result will record that it was forced.")
        return [problem]

    def predict(self, model: torch.nn.Module, card: ModelCard, image: sitk.Image, device: torch.device,
                **options) -> Prediction:
        """Run on one image; the Prediction has the image's geometry."""
        raise NotImplementedError

    def check_inference_options(self, options: dict[str, Any]) -> None:
        """Refuse options `predict` does not take, naming the valid ones (nearest first)."""
        import difflib

        unknown = sorted(set(options) - set(self.inference_options))
        if not unknown:
            return
        near = difflib.get_close_matches(unknown[0], self.inference_options, n=3)
        valid = near + [o for o in self.inference_options if o not in near]
        raise LesionDetectError(f"unknown {self.name} inference option(s) {', '.join(unknown)}; "
                                + (f"use {', '.join(valid)}" if valid else "it takes none"))

    def evaluate(self, model: torch.nn.Module, card: ModelCard, dataset: Dataset, device: torch.device,
                 **options) -> dict[str, Any]:
        """Metrics on a dataset's test cases (or all cases); keys as the method documents."""
        raise NotImplementedError

    def combine(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """One result from `evaluate`'s results of several models (e.g. seeds); methods that
        report mean ± SD override this."""
        return {"runs": runs}

    def report(self, metrics: dict[str, Any]) -> str:
        """Human-readable table of `evaluate`'s result (methods print the paper's layout)."""
        import json

        return json.dumps(metrics, indent=2)

