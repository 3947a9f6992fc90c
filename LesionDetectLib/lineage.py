"""What a fine-tuned model's card records about where it came from (training.lineage): the
parent model (id, weights sha256), the sha256 of every file of the fine-tuning data, the config
changes against the parent and the validation metrics before and after.  `train --init` writes
it (training.py), `lesiondetect models` reads it (library.py)."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from .models import CARD_FACTS, ModelCard, sha256_of, training_data_text


def metric_numbers(metrics) -> dict:
    """The finite numbers of a metrics dict, nested dicts kept, lists dropped (small cards)."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            inner = metric_numbers(value)
            if inner:
                out[key] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = round(float(value), 6) if isinstance(value, float) else value
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file; of a folder (a DICOM series), over its files' relative names and contents."""
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    h = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_of(item).encode())
    return h.hexdigest()


CASE_FILES = ("image", "mask", "roi", "points", "boxes")


def case_file_hashes(dataset) -> dict:
    """{case id: {"image": sha256, "mask": sha256, ...}} of every case's files: which data a
    fine-tuned model saw, so a later change of a corrected case is visible."""
    return {case.id: {key: file_sha256(getattr(case, key)) for key in CASE_FILES if getattr(case, key) is not None}
            for case in dataset.cases}


def config_changes(parent: dict, child: dict, prefix: str = "") -> dict:
    """{"key" or "outer.inner": {"parent": value, "new": value}} for every value that differs."""
    changes = {}
    for key in sorted(set(parent) | set(child), key=str):
        a, b, name = parent.get(key), child.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, name + "."))
        elif a != b:
            changes[name] = {"parent": a, "new": b}
    return changes


def describe_finetune(card: ModelCard, parent: ModelCard, parent_path, before: dict, dataset, after: dict,
                      recalibrated: bool) -> None:
    """Complete a fine-tuned model's card: version "<parent's>-ft", training.lineage (parent
    id and weights sha256, every case's file hashes, config changes, whether the thresholds
    were chosen again, validation metrics before and after), the parent's licence/intended
    use/failure modes, and the validation numbers after fine-tuning as its metrics."""
    card.version = f"{parent.version}-ft"
    validation_cases = [c.id for c in dataset.cases if c.split in ("val", "validation")]
    card.training["lineage"] = {
        "parent_model_id": parent.model_id,
        "parent_weights_sha256": parent.weights_sha256,
        "parent_version": parent.version,
        "parent_path": str(Path(parent_path).resolve()),
        "dataset_cases": case_file_hashes(dataset),
        "config_changes": config_changes(parent.config, card.config),
        "thresholds": "chosen again on this dataset" if recalibrated else "the parent's",
        "validation": {"cases": validation_cases or "the method's own validation share of the cases",
                       "before": before, "after": after},
    }
    inherited = training_data_text(parent) or "not stated in its card"
    card.training["data"] = f"{dataset.name}, fine-tuned from {parent.model_id}, which was trained on: {inherited}"
    for key in CARD_FACTS:
        if key != "data" and isinstance(parent.training.get(key), str):
            card.training[key] = parent.training[key]
    if after.get("evaluate") and "error" not in after["evaluate"]:
        card.metrics["finetune_validation"] = {"what": f"validation cases of {dataset.name}, after fine-tuning",
                                               **after["evaluate"]}
