"""Model files: weights in safetensors plus a JSON model card, and offline pretrained weights.

A model is a directory holding

    model.safetensors   the weights (never a pickle)
    model.json          the model card: method, version, modality, the full config (spacing,
                        HU windows, channels, ...), class names, decision thresholds chosen on
                        training data, training data summary and metrics, sha256 of the weights

`load_model(path, method=...)` checks the sha256 and that the card belongs to the method
and modality the caller expects, so a FLAIR model cannot silently run on a CT.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import LesionDetectError, input_error
from .files import atomic_path, read_json, write_json

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


@dataclass
class ModelCard:
    method: str
    modality: str
    config: dict[str, Any]
    version: str = "1"
    model_id: str = ""
    class_names: list[str] = field(default_factory=lambda: ["background", "lesion"])
    thresholds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    lesiondetect_version: str = __version__


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(out_dir: str | os.PathLike, state_dict: dict, card: ModelCard, overwrite: bool = False) -> Path:
    """Write weights and card into `out_dir` (created); refuses to replace an existing model."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(out / card.weights_file, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"method": card.method, "version": card.version})
    card.weights_sha256 = sha256_of(out / card.weights_file)
    if not card.model_id:
        card.model_id = f"{card.method}-{card.version}-{card.weights_sha256[:8]}"
    write_json(out / CARD_FILE, asdict(card), overwrite=overwrite)
    return out


def read_card(path: str | os.PathLike) -> tuple[Path, ModelCard]:
    """(model directory, its card) for a model directory or its model.json."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.exists():
        raise input_error(path, f"is not a LesionDetect model (no {CARD_FILE} found)")
    doc = read_json(card_path, invalid="is not a valid model card")
    try:
        return card_path.parent, ModelCard(**doc)
    except TypeError as exc:
        raise input_error(card_path, f"is not a valid model card ({exc})") from None


def load_model(path: str | os.PathLike, method: str | None = None, modality: str | None = None):
    """(state_dict, card, model directory), checked against the expected method/modality."""
    from safetensors.torch import load_file

    model_dir, card = read_card(path)
    if method is not None and card.method != method:
        raise input_error(model_dir, f"is a model for method '{card.method}', not '{method}'")
    if modality is not None and card.modality != modality:
        raise input_error(model_dir, f"is a model for {card.modality} images, not {modality}")
    weights = model_dir / card.weights_file
    if not weights.exists():
        raise input_error(weights, "model weights are missing")
    if card.weights_sha256 and sha256_of(weights) != card.weights_sha256:
        raise input_error(weights, "weights do not match the sha256 in the model card (corrupt or replaced file)")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise input_error(weights, f"cannot be read as safetensors weights ({exc})") from None
    return state, card, model_dir


# --- offline ImageNet / COCO weights -------------------------------------------------------

def torch_checkpoint_dir() -> Path:
    """Where torchvision keeps downloaded weights: $TORCH_HOME/hub/checkpoints."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_file(weights_enum) -> str:
    """torchvision's cache file name of a weights enum value, e.g. ResNet50_Weights.IMAGENET1K_V1
    -> 'resnet50-0676ba61.pth' (what load_pretrained_weights looks for)."""
    return Path(weights_enum.url).name


def load_pretrained_weights(file_name: str, path: str | os.PathLike | None = None) -> dict:
    """Load a torchvision weight file (e.g. 'vgg16-397923af.pth') from `path` or from
    $TORCH_HOME/hub/checkpoints, with weights_only=True.  Nothing is downloaded: a missing
    file is a clear error telling the user where to put it."""
    import torch

    candidate = Path(path) if path is not None else torch_checkpoint_dir() / file_name
    if not candidate.exists():
        raise LesionDetectError(
            f"{candidate}: pretrained weights not found. Transfer learning needs torchvision's '{file_name}'; "
            f"copy it to {torch_checkpoint_dir()} (or pass --weights PATH), or train from random initialisation.")
    try:
        return torch.load(candidate, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise input_error(candidate, f"cannot be read as torch weights ({exc})") from None


def shipped_model_dir(method: str) -> Path | None:
    """The default model shipped for `method`: $LESIONDETECT_MODELS/<method>, else the
    extension's Resources/models/<method> (source tree or installed beside the library)."""
    here = Path(__file__).resolve().parent
    roots = [Path(os.environ["LESIONDETECT_MODELS"])] if os.environ.get("LESIONDETECT_MODELS") else []
    roots += [here.parent / "Resources" / "models", here / "Resources" / "models"]
    for root in roots:
        if (root / method / CARD_FILE).exists():
            return root / method
    return None
