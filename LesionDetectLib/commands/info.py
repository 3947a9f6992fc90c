"""`lesiondetect info IMAGE [--json] [--check]`: size, spacing, origin, direction, type, modality."""

from __future__ import annotations

import json

from ..io import image_info, read_image, require_scalar_volume


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe an image file or DICOM series folder",
                       description="Print an image's geometry and pixel type as SimpleITK reads it "
                                   "(physical coordinates are LPS millimetres, as in DICOM and ITK).")
    p.add_argument("image", help="image file (NIfTI, NRRD, MHA, DICOM, PNG/JPEG/TIFF) or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON (keys: size, spacing, origin, direction, "
                                                       "dimension, pixel_type, components, modality_guess, "
                                                       "value_range)")
    p.add_argument("--check", action="store_true",
                   help="also fail (exit 2) unless the image can be a detector's input: one greyscale 2-D image "
                        "or 3-D volume with finite values")
    p.set_defaults(func=run)


def run(args) -> int:
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
