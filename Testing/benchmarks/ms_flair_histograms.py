"""Intensity histograms of the FLAIR inputs before and after ms-flair-fcn's normalisations:

    .venv/bin/python Testing/benchmarks/ms_flair_histograms.py [--data ../shared/data]

Raw intensities, the original median scaling and the white-matter-peak scaling (data.normalise,
"wm_peak"), each inside the Otsu foreground, for the three shared labelled cases, the raw
scanner FLAIR of realistic_inputs and the demo's synthetic head (ms-flair seed 7, full); the
plaque voxels' intensities are marked.  Writes Resources/benchmarks/ms_flair_histograms.png
and .json (white-matter peak, median, plaque median, FLAIR check per volume).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from LesionDetectLib.files import write_json  # noqa: E402
from LesionDetectLib.methods.ms_flair_fcn.data import flair_check, histogram_peak, normalise  # noqa: E402


def volumes(data: Path, work: Path):
    from LesionDetectLib.dataset import load_dataset
    from LesionDetectLib.synth import generate

    for case in ("open_ms_data_patient07", "open_ms_data_patient19", "mslesseg_P18"):
        yield case, data / "ms_flair" / case / "flair.nii.gz", data / "ms_flair" / case / "lesions.nii.gz"
    yield ("raw scanner FLAIR (open_ms_data long. 01)",
           data / "realistic_inputs/open_ms_data_longitudinal_patient01/flair_raw.nii.gz", None)
    study = generate("ms-flair", work / "demo", cases=1, seed=7, size="full")
    case = load_dataset(study).cases[0]
    yield "demo synthetic head (seed 7)", case.image, case.mask


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--out", default=str(ROOT / "Resources/benchmarks/ms_flair_histograms"))
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, image_path, mask_path in volumes(Path(args.data), Path(tmp)):
            raw = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float32)
            by_median, fg = normalise(raw, "median")
            by_peak, _ = normalise(raw, "wm_peak")
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0 if mask_path else None
            row = {"foreground_voxels": int(fg.sum()), "raw_wm_peak": round(histogram_peak(raw[fg]), 2),
                   "raw_median": round(float(np.median(raw[fg])), 2), **flair_check(by_peak, fg)}
            for ax, values, label in ((axes[0], raw, "raw"), (axes[1], by_median, "median"), (axes[2], by_peak, "wm_peak")):
                high = np.percentile(values[fg], 99.9)
                line = ax.hist(values[fg], bins=200, range=(0, high), histtype="step", density=True, label=name)[2][0]
                if mask is not None and mask.any():
                    plaque = float(np.median(values[mask]))
                    ax.axvline(plaque, color=line.get_edgecolor(), ls=":", lw=1)
                    row[f"plaque_median_{label}"] = round(plaque, 3)
            summary[name] = row
    for ax, title in zip(axes, ("raw intensities (Otsu foreground)", "/ foreground median (old)",
                                "/ white-matter peak (new, wm_peak)")):
        ax.set_title(title)
        ax.set_yscale("log")
    axes[2].set_xlim(0, 2.5)
    axes[1].set_xlim(0, 2.5)
    axes[0].legend(fontsize=7)
    fig.suptitle("ms-flair-fcn input intensities; dotted: median of the plaque voxels")
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=80)
    write_json(out.with_suffix(".json"), {"command": "python Testing/benchmarks/ms_flair_histograms.py",
                                          "volumes": summary}, overwrite=True)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
