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
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import LesionDetectError, input_error
from .files import as_new, atomic_dir, check_free_space, fault_point, read_json, refuse_existing, write_json

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

    def summary(self) -> str:
        """What a user deciding to run this model needs, in a few lines (`card_summary`)."""
        return "\n".join(card_summary(self))


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(out_dir: str | os.PathLike, state_dict: dict, card: ModelCard, overwrite: bool = False,
               drop=()) -> Path:
    """Write weights and card into `out_dir` (created) as a whole: both go into a temporary
    sibling folder that is swapped in (`files.atomic_dir`), so a process killed at any moment
    leaves no model (or the previous complete one), never weights without their card.  Other
    files in `out_dir` are kept, except those named in `drop` (e.g. the training checkpoint the
    model makes obsolete: it goes in the same swap).  Refuses to replace an existing
    model unless overwrite=True, and a file system without room for the weights."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if not overwrite:
        refuse_existing(out / card.weights_file)
        refuse_existing(out / CARD_FILE)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    check_free_space(out, weights_bytes(tensors) + 2**20, "the model")
    with atomic_dir(out, replaced=[card.weights_file, CARD_FILE, *drop]) as tmp:
        save_file(tensors, str(tmp / card.weights_file), metadata={"method": card.method, "version": card.version})
        as_new(tmp / card.weights_file)  # safetensors writes it private (0600): models are shared
        fault_point("model-between-files")
        card.weights_sha256 = sha256_of(tmp / card.weights_file)
        if not card.model_id:
            card.model_id = f"{card.method}-{card.version}-{card.weights_sha256[:8]}"
        write_json(tmp / CARD_FILE, asdict(card))
    return out


def weights_bytes(state_dict: dict) -> int:
    """Bytes the tensors of `state_dict` take (what their safetensors file needs, headers aside)."""
    return sum(int(v.numel()) * int(v.element_size()) for v in state_dict.values() if hasattr(v, "element_size"))


def read_card(path: str | os.PathLike) -> tuple[Path, ModelCard]:
    """(model directory, its card) for a model directory or its model.json."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.exists():
        raise input_error(path, f"is not a LesionDetect model (no {CARD_FILE} found)")
    doc = read_json(card_path, invalid="is not a valid model card")
    if not isinstance(doc, dict):
        raise input_error(card_path, "is not a valid model card (it must hold a JSON object)")
    for key, kind in (("method", str), ("modality", str), ("config", dict)):
        if not isinstance(doc.get(key), kind):
            raise input_error(card_path, f"is not a valid model card (\"{key}\" is missing or not a "
                                         f"{'name' if kind is str else 'JSON object'})")
    weights = doc.get("weights_file", WEIGHTS_FILE)
    if not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", ".."):
        raise input_error(card_path, f"is not a valid model card (\"weights_file\" {weights!r} must be a file name "
                                     "beside the card)")
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
    """The model shipped for `method` (version 1 in the model library, read-only): the
    extension's Resources/models/<method> (source tree or installed beside the library).
    Inference without --model runs `library.active_model_dir(method)`, which is this one
    unless the user made another version active."""
    here = Path(__file__).resolve().parent
    roots = [here.parent / "Resources" / "models", here / "Resources" / "models"]
    for root in roots:
        if (root / method / CARD_FILE).exists():
            return root / method
    return None


# --- checking a card before use -----------------------------------------------------------------

_POSITIVE = re.compile(r"size|pixels|stride|tile|batch|spacing|patch_mm|radius|width|base|depth|max_")


def card_problems(card: ModelCard, defaults: dict[str, Any]) -> list[str]:
    """Every problem of a card's values, checked against the method's full default config
    (`defaults`): numbers where numbers belong, finite, not negative where the default is
    not, above zero for sizes/spacings/batches, windows low < high, thresholds in [0, 1]."""
    problems = []
    if not isinstance(card.config, dict):
        return ["\"config\" must be an object"]
    problems += _config_problems(card.config, defaults, "config.")
    if not isinstance(card.thresholds, dict):
        problems.append("\"thresholds\" must be an object of numbers")
    else:
        for key, value in card.thresholds.items():
            if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
                problems.append(f"thresholds.{key} is {value!r}; a threshold is a number from 0 to 1")
    if not isinstance(card.class_names, list) or not all(isinstance(n, str) for n in card.class_names):
        problems.append("\"class_names\" must be a list of names")
    return problems


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config_problems(config: dict, defaults: dict, prefix: str) -> list[str]:
    problems = []
    for key, default in defaults.items():
        if key not in config:
            continue  # the method's default applies
        value, name = config[key], prefix + key
        if isinstance(default, bool):
            if not isinstance(value, bool):
                problems.append(f"{name} is {value!r}; expected true or false")
        elif isinstance(default, (int, float)):
            if not _is_number(value):
                problems.append(f"{name} is {value!r}; expected a finite number")
            elif default >= 0 and value < 0:
                problems.append(f"{name} is {value!r}; it cannot be negative")
            elif default > 0 and value <= 0 and _POSITIVE.search(key):
                problems.append(f"{name} is {value!r}; it must be above zero")
        elif isinstance(default, str):
            if not isinstance(value, str) and value is not None:  # None: "none of them" (e.g. no lr schedule)
                problems.append(f"{name} is {value!r}; expected a name such as {default!r}")
        elif isinstance(default, list) and default and all(_is_number(v) for v in default):
            if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
                problems.append(f"{name} is {value!r}; expected a list of finite numbers like {default!r}")
            elif "window" in key and len(value) == 2 and not value[0] < value[1]:
                problems.append(f"{name} is {value!r}; a window needs low < high")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                problems.append(f"{name} is {value!r}; expected an object")
            else:
                problems += _config_problems(value, default, name + ".")
    return problems


# --- what a card tells the user ----------------------------------------------------------------
#
# The card's user-facing facts live in `training` (free text, as the shipped-model scripts
# write them): "data" (what it was trained on: synthetic / real, which), "licence",
# "intended_use", "known_failure_modes"; and `metrics`: one object per evaluation set
# ({"what": ..., "auc": ..., ...}), or plain numbers for one set.  Optional, structured:
# training["synthetic_only"] (true/false) overrides the reading of the data text, and
# metrics["key_metric"] = "<set>.<metric>" names the number a summary shows.

CARD_FACTS = ("data", "licence", "intended_use", "known_failure_modes")  # the training texts a shipped card states
SYNTHETIC_WORDS = re.compile(r"synthetic|phantom|simulated|generated|LesionDetectLib\.synth", re.I)
# real data: the word itself, or the name of a real set (those in ../shared/data and the papers' sets)
REAL_DATA_WORDS = re.compile(r"\breal\b|open_ms_data|mslesseg|msseg|bs-?80k|blds|crlm|mirp|totalsegmentator|\blits\b|"
                             r"deeplesion|3d-?ircadb|\bmsd\b|\btcia\b", re.I)
NEGATED_REAL = re.compile(r"\b(?:no|not|without|never|none)\s+(?:[\w-]+\s+){0,3}?real\b", re.I)  # "no real data"
# which number is "the" metric: lesion-level detection first, then ranking, overlap, accuracy
KEY_METRICS = (("lesion_f1", "lesion F1"), ("froc_mean", "mean FROC sensitivity"), ("auc", "AUC"),
               ("average_precision", "average precision"), ("dice", "Dice"), ("f1", "F1"), ("f", "F-score"),
               ("accuracy", "accuracy"), ("recall", "recall"), ("sensitivity", "sensitivity"))
LESION_COUNTS = ("found", "lesions")  # a set holding these counted lesions: its "f1" is the lesion-level F1


def names_real_data(text: str) -> bool:
    """Whether `text` names real (patient) data: the word "real" (not negated: "no real data"
    does not count) or the name of a real set."""
    return bool(REAL_DATA_WORDS.search(NEGATED_REAL.sub(" ", text)))


def _training(card: ModelCard) -> dict:
    return card.training if isinstance(card.training, dict) else {}


def training_data_text(card: ModelCard) -> str:
    """What the model was trained on, in the card's words: training.data, else the dataset's
    name; "" when the card does not say."""
    training = _training(card)
    for key in ("data", "dataset"):
        if isinstance(training.get(key), str) and training[key].strip():
            return " ".join(training[key].split())
    return ""


def trained_on_synthetic_only(card: ModelCard) -> bool:
    """True when the card says the model saw synthetic data only.

    The rule: training.synthetic_only when it is true or false; otherwise the data text
    (training.data and training.dataset together) names synthetic data ("synthetic",
    "phantom", "simulated", "generated") and no real data (the word "real", or the name of a
    real set such as open_ms_data, BS-80K, BLDS, DeepLesion, LiTS).  A card that says nothing
    about its data is not called synthetic-only (there is nothing to base the notice on)."""
    training = _training(card)
    flag = training.get("synthetic_only")
    if isinstance(flag, bool):
        return flag
    text = " ".join(str(training.get(key) or "") for key in ("data", "dataset"))
    return bool(SYNTHETIC_WORDS.search(text)) and not names_real_data(text)


def synthetic_notice(card: ModelCard) -> str | None:
    """The one-line notice `infer` prints for a model trained only on synthetic data, else None."""
    if not trained_on_synthetic_only(card):
        return None
    return (f"notice: model {card.model_id or card.method} was trained on synthetic data only; its findings on "
            "real images are not validated (research use; see its model card)")


def key_metric(card: ModelCard) -> tuple[str, str, float] | None:
    """(label, evaluation set, value) of the number that sums the card's metrics up.

    metrics.key_metric ("<set>.<metric>") when the card names one; else the first of
    KEY_METRICS (a set's "f1" counts as "lesion_f1" when the set counted lesions: "found" /
    "lesions") in the sets measured on real data (name or "what" names real data and the name
    does not start with "synthetic"), then in the other sets, the demo study's last."""
    metrics = card.metrics if isinstance(card.metrics, dict) else {}
    sets = {name: m for name, m in metrics.items() if isinstance(m, dict)}
    flat = {k: v for k, v in metrics.items() if _is_number(v)}
    if flat:
        sets = {"": flat, **sets}
    labels = dict(KEY_METRICS)
    chosen = metrics.get("key_metric")
    if isinstance(chosen, str) and "." in chosen:
        name, _, path = chosen.partition(".")
        value, parent = sets.get(name, {}), {}
        for part in path.split("."):
            parent, value = value, value.get(part) if isinstance(value, dict) else None
        if _is_number(value):
            key = path.rsplit(".", 1)[-1]
            counted = key == "f1" and any(k in parent for k in LESION_COUNTS)
            label = labels["lesion_f1" if counted else key] if key in labels else key
            inner = path.rsplit(".", 1)[0].replace(".", " ") if "." in path else ""
            return (f"{label} ({inner})" if inner else label), name, float(value)

    def rank(item) -> int:
        name, m = item
        if names_real_data(f"{name} {m.get('what', '')}") and not name.startswith("synthetic"):
            return 0
        return 2 if name.startswith("demo") else 1

    def value_of(m: dict, key: str):
        if key == "lesion_f1" and not _is_number(m.get(key)) and any(k in m for k in LESION_COUNTS):
            key = "f1"
        return m.get(key)

    ordered = sorted(sets.items(), key=rank)
    for group in sorted({rank(item) for item in ordered}):
        for key, label in KEY_METRICS:
            for name, m in ordered:
                if rank((name, m)) != group:
                    continue
                if _is_number(value_of(m, key)):
                    return label, name, float(value_of(m, key))
                for inner, value in _nested_numbers(m, key):  # e.g. {"slice": {"bone_quality": {"accuracy": ..}}}
                    return f"{label} ({inner})", name, value
    return None


def _nested_numbers(m: dict, key: str, prefix: str = ""):
    """(path of the dicts above, value) of every number named `key` below the top level of `m`."""
    for name, value in m.items():
        if isinstance(value, dict):
            path = f"{prefix} {name}".strip()
            if _is_number(value.get(key)):
                yield path, float(value[key])
            yield from _nested_numbers(value, key, path)


def card_summary(card: ModelCard) -> list[str]:
    """The card in a few lines: method, version and id; training data; key metric; and for a
    synthetic-only model, that it is one."""
    lines = [f"{card.method} model, version {card.version}" + (f" ({card.model_id})" if card.model_id else "")]
    data = training_data_text(card)
    lines.append(f"trained on: {data or 'not stated in the model card'}")
    metric = key_metric(card)
    if metric is not None:
        label, where, value = metric
        lines.append(f"key metric: {label} {value:.3f}" + (f" ({where.replace('_', ' ')})" if where else ""))
    else:
        lines.append("key metric: none recorded in the model card")
    if trained_on_synthetic_only(card):
        lines.append("trained on synthetic data only: research use, not validated on real images")
    return lines


def card_fact_problems(card: ModelCard) -> list[str]:
    """What a shipped card fails to state: each of CARD_FACTS as non-empty text in `training`,
    at least one measured set in `metrics`, and the sha256 of its weights."""
    training = _training(card)
    problems = [f"training.{key} is missing or empty" for key in CARD_FACTS
                if not (isinstance(training.get(key), str) and training[key].strip())]
    if key_metric(card) is None:
        problems.append("metrics holds no measured number (" + ", ".join(k for k, _ in KEY_METRICS[:4]) + ", ...)")
    if not (isinstance(card.weights_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", card.weights_sha256)):
        problems.append("weights_sha256 is missing")
    return problems
