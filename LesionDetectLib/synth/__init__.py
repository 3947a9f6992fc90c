"""Synthetic studies with ground truth, one generator per method's kind of data.

    from LesionDetectLib import synth
    root = synth.generate("bone-ct", "out/bone", cases=4, seed=0, size="small")   # a dataset folder
    case = synth.make_case("ms-flair", seed=0, index=0, size="small")            # one case in memory

Kinds: bone-ct, ms-flair, liver-ct, bone-scan, spine-ct (see each module's docstring and
PARAMS).  Everything is a function of (kind, seed, case index, size, parameters): the same
call writes byte-identical files.  Every generator shares the difficulty knobs in
`common.COMMON_PARAMS` (contrast, lesion_size, lesion_count, noise) and has its own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..dataset import write_dataset_json
from ..errors import LesionDetectError, input_error
from ..progress import progress
from .common import COMMON_PARAMS, SIZES, SynthCase, resolve_params

# kind -> module in this package (imported when first used)
GENERATORS = {"bone-ct": "bone_ct", "ms-flair": "ms_flair", "liver-ct": "liver_ct", "bone-scan": "bone_scan",
              "spine-ct": "spine_ct"}
KINDS = tuple(GENERATORS)

__all__ = ["KINDS", "SIZES", "SynthCase", "generate", "make_case", "parameters", "write_case"]


def _generator(kind: str):
    if kind not in GENERATORS:
        raise LesionDetectError(f"unknown synthetic kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(f"{__name__}.{GENERATORS[kind]}")


def parameters(kind: str) -> dict[str, tuple[Any, str]]:
    """{name: (default, help)} of every parameter a kind accepts."""
    gen = _generator(kind)
    return {k: (p.default, p.help) for k, p in {**COMMON_PARAMS, **gen.PARAMS}.items()}


def make_case(kind: str, seed: int = 0, index: int = 0, size: str = "small",
              params: dict[str, Any] | None = None) -> SynthCase:
    """Case number `index` of the study (kind, seed, size, params), in memory.

    Returns a `SynthCase`: SimpleITK image, uint8 lesion mask and ROI arrays (z, y, x),
    lesion points / boxes in LPS mm, extra dataset.json keys in `entry`, drawn lesions in
    `findings`.  The same arguments always give the same case, alone or inside `generate`.
    """
    gen = _generator(kind)
    if size not in SIZES:
        raise LesionDetectError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    values = resolve_params(gen.PARAMS, params)
    return gen.make_case(int(seed), int(index), size, values)


def write_case(case: SynthCase, root: Path) -> dict[str, Any]:
    """Write one case's files under `root` in the dataset layout; returns its dataset.json entry."""
    from .. import markups
    from ..io import write_image

    entry: dict[str, Any] = {"id": case.id, "patient": case.patient}
    entry["image"] = f"images/{case.id}.nii.gz"
    write_image(case.image, root / entry["image"])
    for key, array, name in (("mask", case.mask, f"labels/{case.id}.nii.gz"),
                             ("roi", case.roi, f"labels/{case.id}_roi.nii.gz")):
        if array is not None:
            img = sitk.GetImageFromArray(np.asarray(array, np.uint8))
            img.CopyInformation(case.image)
            write_image(img, root / name)
            entry[key] = name
    if case.points:
        entry["points"] = f"points/{case.id}.mrk.json"
        markups.write_points(root / entry["points"], case.points)
    if case.boxes:
        entry["boxes"] = f"boxes/{case.id}.mrk.json"
        markups.write_boxes(root / entry["boxes"], case.boxes)
    entry.update(case.entry)
    return entry


def _make_and_write(kind: str, seed: int, index: int, size: str, values: dict[str, Any], out: Path,
                    preview: bool) -> tuple[dict[str, Any], Any]:
    """One case made and written (a process-pool task; cases depend only on (seed, index))."""
    case = make_case(kind, seed, index, size, values)
    entry = write_case(case, out)
    if preview:
        from .preview import save_preview

        save_preview(case, out / "preview" / f"{case.id}.png", _generator(kind).WINDOW, title=kind)
    return entry, case.mask_labels


def generate(kind: str, out: str | os.PathLike, cases: int = 4, seed: int = 0, size: str = "small",
             params: dict[str, Any] | None = None, preview: bool = False, jobs: int = 1) -> Path:
    """Write a whole synthetic dataset (dataset.json + files) into the new or empty folder
    `out`; returns `out`.  dataset.json's "generator" key records everything needed to make
    it again.  `jobs` > 1 makes cases in that many processes; the files are the same."""
    gen = _generator(kind)
    out = Path(out)
    if cases < 1:
        raise LesionDetectError(f"--cases must be at least 1 (got {cases})")
    if jobs < 1:
        raise LesionDetectError(f"--jobs must be at least 1 (got {jobs})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise input_error(out, "already exists and is not an empty folder; refusing to overwrite it")
    values = resolve_params(gen.PARAMS, params)
    out.mkdir(parents=True, exist_ok=True)
    tasks = zip(*[(kind, int(seed), index, size, values, out, preview) for index in range(cases)])
    with ProcessPoolExecutor(min(jobs, cases)) if jobs > 1 else contextlib.nullcontext() as pool:
        done = (pool.map if pool else map)(_make_and_write, *tasks)  # both keep the case order
        results = list(progress(done, total=cases, desc=f"synth {kind}", unit="case"))
    entries = [entry for entry, _ in results]
    mask_labels = results[-1][1]
    spec = {**COMMON_PARAMS, **gen.PARAMS}
    recorded = [k for k in values if not (spec[k].quiet and values[k] == spec[k].default)]
    generator = {"kind": kind, "seed": int(seed), "cases": int(cases), "size": size,
                 "params": {k: values[k] for k in recorded},
                 "param_help": {k: spec[k].help for k in recorded},
                 "lesiondetect_version": __version__}
    write_dataset_json(out, name=f"synthetic {kind} (seed {seed}, {size})", modality=gen.MODALITY,
                       labels=mask_labels, cases=entries, generator=generator,
                       description=(gen.__doc__ or "").strip())
    return out
