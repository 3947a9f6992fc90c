"""Slicer scene bundles (.mrb) from a prediction, without importing slicer here.

`write_scene_bundle` runs the module's bundle writer (`python -m LesionDetectMRML.bundle`,
in the LesionDetect module's Qt-free adapter package) as a child process with the real MRML
library from the slicer-core wheel, so this library stays free of slicer, vtk and qt.  The
adapter package is found beside this package's folder: `<repo>/LesionDetect/` in the source
tree, or Slicer's qt-scripted-modules folder (which holds both) in an installed extension.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .errors import LesionDetectError, input_error
from .files import refuse_existing

ADAPTER_PACKAGE = "LesionDetectMRML"
NO_SLICER_EXIT = 3  # LesionDetectMRML.bundle's exit status when slicer-core is missing
INSTALL_HINT = "install the slicer-core wheel (`pip install slicer-core`) to write .mrb scene bundles"


def adapter_folder() -> Path:
    """The folder that holds the LesionDetectMRML package."""
    library_parent = Path(__file__).resolve().parent.parent
    for folder in (library_parent / "LesionDetect", library_parent):
        if (folder / ADAPTER_PACKAGE / "bundle.py").is_file():
            return folder
    raise LesionDetectError(f"the LesionDetect module's {ADAPTER_PACKAGE} package was not found beside "
                            f"{library_parent} (needed to write .mrb scene bundles)")


def write_scene_bundle(image_path: str | os.PathLike, prediction_dir: str | os.PathLike, out_mrb: str | os.PathLike,
                       threshold: float | None = None, opacity: float | None = None,
                       python: str | None = None, timeout_s: float = 600) -> Path:
    """Write `out_mrb`: the image, the styled probability map, the segmentation, boxes and points.

    `threshold` defaults to the prediction's own, `opacity` (of the probability overlay) to
    the adapter's default.  Raises LesionDetectError (one line) when slicer-core is not
    installed, the inputs are bad, or `out_mrb` exists.
    """
    out_mrb = Path(out_mrb)
    refuse_existing(out_mrb)
    python = python or sys.executable
    # quick answer for this interpreter; for any other the child's exit status tells
    if Path(python) == Path(sys.executable) and importlib.util.find_spec("slicer") is None:
        raise LesionDetectError(f"{out_mrb}: cannot write a scene bundle: slicer-core is not installed; {INSTALL_HINT}")
    folder = adapter_folder()
    args = [python, "-m", f"{ADAPTER_PACKAGE}.bundle", "--image", str(image_path),
            "--prediction", str(prediction_dir), "--out", str(out_mrb)]
    if threshold is not None:
        args += ["--threshold", repr(float(threshold))]
    if opacity is not None:
        args += ["--opacity", repr(float(opacity))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(Path(__file__).resolve().parent.parent),
                                         *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise input_error(out_mrb, f"writing the scene bundle took longer than {timeout_s:g} s") from None
    if done.returncode == NO_SLICER_EXIT:
        raise LesionDetectError(f"{out_mrb}: cannot write a scene bundle: slicer-core is not installed; {INSTALL_HINT}")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("lesiondetect: error: ")]
        if lines:
            raise LesionDetectError(lines[-1].removeprefix("lesiondetect: error: "))
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise LesionDetectError(f"{out_mrb}: the scene bundle writer failed (exit {done.returncode}): {tail}")
    if not out_mrb.is_file():
        raise LesionDetectError(f"{out_mrb}: the scene bundle writer ended without writing the file")
    return out_mrb
