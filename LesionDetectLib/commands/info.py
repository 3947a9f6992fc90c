"""`lesiondetect info IMAGE [--json] [--check]`: size, spacing, origin, direction, type, modality.

`lesiondetect info MODEL_FOLDER` (a folder with model.json, or the model.json) prints the model
card's summary instead, and `lesiondetect info --models` lists every method with the summary of
the model shipped for it (method, version, training data, key metric).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LesionDetectError


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe an image file or DICOM series folder",
                       description="Print an image's geometry and pixel type as SimpleITK reads it "
                                   "(physical coordinates are LPS millimetres, as in DICOM and ITK).")
    p.add_argument("image", nargs="?",
                   help="image file (NIfTI, NRRD, MHA, DICOM, PNG/JPEG/TIFF) or DICOM series folder; or a model "
                        "folder (with model.json) to summarise its card")
    p.add_argument("--models", action="store_true",
                   help="list every method and the model shipped for it (its card's summary)")
    p.add_argument("--json", action="store_true", help="print JSON (keys: size, spacing, origin, direction, "
                                                       "dimension, pixel_type, components, modality_guess, "
                                                       "value_range)")
    p.add_argument("--check", action="store_true",
                   help="also fail (exit 2) unless the image can be a detector's input: one greyscale 2-D image "
                        "or 3-D volume with finite values")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import image_info, read_image, require_scalar_volume
    from ..models import CARD_FILE

    if args.models:
        return _list_models(args)
    if args.image is None:
        raise LesionDetectError("info needs an image (or a model folder), or --models")
    path = Path(args.image)
    if (path.is_dir() and (path / CARD_FILE).is_file()) or (path.is_file() and path.name == CARD_FILE):
        return _describe_model(path, args.json)
    image = read_image(args.image)
    if args.check:
        require_scalar_volume(image, args.image, allow_2d=True)
    info = image_info(image)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_as_text(args.image, info))
    return 0


def _num(v: float) -> str:
    return f"{v:.6g}"


def _as_text(path: str, info: dict) -> str:
    dim = info["dimension"]
    axes = "x y z t"[:2 * dim - 1]
    rows = [
        ("file", path),
        (f"size ({axes})", " x ".join(str(s) for s in info["size"]) + " voxels"),
        ("spacing", " x ".join(_num(s) for s in info["spacing"]) + " mm"),
        ("origin (LPS)", ", ".join(_num(s) for s in info["origin"]) + " mm"),
        ("direction", "; ".join(" ".join(_num(v) for v in info["direction"][r * dim:(r + 1) * dim])
                                for r in range(dim))),
        ("pixel type", f'{info["pixel_type"]}, {info["components"]} component(s) per voxel'),
    ]
    if "value_range" in info:
        rows.append(("value range", " .. ".join(_num(v) for v in info["value_range"])))
    rows.append(("modality guess", info["modality_guess"]))
    return "\n".join(f"{name:16s}{value}" for name, value in rows)


# --- model cards ---------------------------------------------------------------------------------

def _card_dict(card, model_dir) -> dict:
    from ..models import card_summary, key_metric, trained_on_synthetic_only, training_data_text

    metric = key_metric(card)
    return {"method": card.method, "version": card.version, "model_id": card.model_id, "path": str(model_dir),
            "training_data": training_data_text(card), "synthetic_only": trained_on_synthetic_only(card),
            "key_metric": None if metric is None else {"name": metric[0], "set": metric[1], "value": metric[2]},
            "summary": card_summary(card)}


def _describe_model(path: Path, as_json: bool) -> int:
    from ..models import read_card

    model_dir, card = read_card(path)
    if as_json:
        print(json.dumps(_card_dict(card, model_dir), indent=2))
    else:
        print(f"{'model':16s}{model_dir}")
        for line in card_lines(card):
            print(line)
    return 0


def card_lines(card) -> list[str]:
    """The card summary as `info` prints it: 'name: value' lines, names in a 16-character column."""
    lines = card.summary().splitlines()
    out = [f"{'card':16s}{lines[0]}"]
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        out.append(f"{name:16s}{value}" if sep and len(name) < 16 else f"{'':16s}{line}")
    return out


def _list_models(args) -> int:
    from ..methods import method_names
    from ..models import read_card, shipped_model_dir

    listing = {}
    for name in method_names():
        model_dir = shipped_model_dir(name)
        listing[name] = None if model_dir is None else _card_dict(read_card(model_dir)[1], model_dir)
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for name, entry in listing.items():
        print(f"{'method':16s}{name}")
        if entry is None:
            print(f"{'model':16s}none shipped (train one and pass --model)")
        else:
            print(f"{'model':16s}{entry['path']}")
            for line in card_lines(read_card(entry["path"])[1]):
                print(line)
        print()
    return 0
