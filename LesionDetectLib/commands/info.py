"""`lesiondetect info IMAGE [--json]`: size, spacing, origin, direction, type, modality."""

from __future__ import annotations

import json

from ..io import image_info, read_image


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe an image file or DICOM series folder",
                       description="Print an image's geometry and pixel type as SimpleITK reads it.")
    p.add_argument("image", help="image file (NIfTI, NRRD, MHA, DICOM, PNG/JPEG/TIFF) or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON (keys: size, spacing, origin, direction, "
                                                       "pixel_type, components, modality_guess)")
    p.set_defaults(func=run)


def run(args) -> int:
    info = image_info(read_image(args.image))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:15s} {value}")
    return 0
