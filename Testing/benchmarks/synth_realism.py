"""How close are the synthetic studies to the real scans in ../shared/data?

    .venv/bin/python Testing/benchmarks/synth_realism.py [--cases 2] [--data ../shared/data]

Prints Markdown tables (used in README's "Synthetic studies" section) comparing the same
statistics, computed the same way, on real and synthetic images:
- CT: HU percentiles of the body (voxels > -300 HU), shares of fat-like (-150..-50) and
  bone-like (> 200) body voxels, HU percentiles of bone-like voxels, and a noise estimate
  (robust std of the difference to a 3x3 in-plane median in soft tissue -50..100 HU).
  Real: TotalSegmentator whole-body CT, its DICOM series, the MIRP contrast abdominal CT,
  the BLDS bone patches.  Synthetic: full-size bone-ct and liver-ct cases.
- FLAIR: brain (non-zero) intensity percentiles and plaque median, all divided by the brain
  median; plaque count and median plaque volume.  Real: the three ms_flair cases.
  Synthetic: full-size skull-stripped ms-flair cases (the real ones are skull-stripped).
- Bone scan: BS-80K anterior crops vs synthetic crops: size, share of black pixels, and
  percentiles of the non-black pixels divided by each image's 99th percentile, for
  negative and positive images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib import synth  # noqa: E402
from LesionDetectLib.io import read_image  # noqa: E402

PCT = (5, 25, 50, 75, 95, 99)


def ct_stats(hu: np.ndarray) -> dict:
    hu = hu.astype(np.float32)
    body = hu > -300
    values = hu[body]
    bone = values[values > 200]
    soft = (hu > -50) & (hu < 100)
    residual = hu - ndimage.median_filter(hu, size=(1, 3, 3))
    r = residual[soft]
    noise = 1.4826 * np.median(np.abs(r - np.median(r))) if r.size else float("nan")
    return {"body_pct": np.percentile(values, PCT), "fat_share": float(np.mean((values > -150) & (values < -50))),
            "bone_share": float(np.mean(values > 200)),
            "bone_pct": np.percentile(bone, (50, 90, 99)) if bone.size else [np.nan] * 3, "noise": float(noise)}


def flair_stats(image: np.ndarray, lesion: np.ndarray, spacing_mm3: float) -> dict:
    brain = image > 0
    median = float(np.median(image[brain]))
    labels, n = ndimage.label(lesion)
    sizes = np.bincount(labels.ravel())[1:] * spacing_mm3
    return {"brain_pct": np.percentile(image[brain], (5, 25, 75, 95)) / median,
            "lesion_median": float(np.median(image[lesion])) / median if lesion.any() else np.nan,
            "lesions": n, "lesion_mm3": float(np.median(sizes)) if n else np.nan}


def scan_stats(image: np.ndarray) -> dict:
    image = image.astype(np.float32)
    lit = image[image > 8]
    top = float(np.percentile(image, 99)) or 1.0
    return {"rows": image.shape[0], "cols": image.shape[1], "black": float(np.mean(image <= 8)),
            "pct": np.percentile(lit, (10, 50, 90)) / top if lit.size else [np.nan] * 3}


def fmt(values, digits=0) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def ct_section(data: Path, cases: int) -> list[str]:
    rows = []
    real = {
        "TotalSegmentator whole-body CT (3 mm)": data / "realistic_inputs" / "totalsegmentator_example_ct.nii.gz",
        "TotalSegmentator DICOM series (0.98 x 2 mm)": data / "realistic_inputs" / "totalsegmentator_example_ct_dicom",
        "MIRP contrast abdominal CT (0.8 x 5 mm)": data / "realistic_inputs" / "mirp_crlm_1004_ct_dicom",
    }
    for name, path in real.items():
        if path.exists():
            rows.append((name, ct_stats(sitk.GetArrayFromImage(read_image(path)))))
    blds = sorted((data / "bone_ct_blds").glob("*.nii.gz"))
    if blds:
        rows.append(("BLDS bone patches (5 x 96^3, 1 mm)",
                     ct_stats(np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in blds]))))
    for kind in ("bone-ct", "liver-ct"):
        arrays = [synth.make_case(kind, seed=0, index=i, size="full").array for i in range(cases)]
        rows.append((f"synthetic {kind} (full, {cases} cases)", ct_stats(np.concatenate(arrays))))
    out = ["| CT | body HU p5 / p25 / p50 / p75 / p95 / p99 | fat share | bone share | bone HU p50 / p90 / p99 "
           "| noise (HU) |", "|---|---|---|---|---|---|"]
    for name, s in rows:
        out.append(f"| {name} | {fmt(s['body_pct'])} | {s['fat_share']:.2f} | {s['bone_share']:.3f} "
                   f"| {fmt(s['bone_pct'])} | {s['noise']:.1f} |")
    return out


def flair_section(data: Path, cases: int) -> list[str]:
    rows = []
    for folder in sorted((data / "ms_flair").glob("*")):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "flair.nii.gz")))
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lesions.nii.gz"))) > 0
        rows.append((folder.name, flair_stats(image, lesion, 1.0)))
    for i in range(cases):
        case = synth.make_case("ms-flair", seed=0, index=i, size="full", params={"skull_stripped": True})
        rows.append((f"synthetic ms-flair #{i} (skull-stripped)", flair_stats(case.array, case.mask > 0, 1.0)))
    out = ["| FLAIR (/ brain median) | brain p5 / p25 / p75 / p95 | plaque median | plaques | median plaque mm³ |",
           "|---|---|---|---|---|"]
    for name, s in rows:
        out.append(f"| {name} | {fmt(s['brain_pct'], 2)} | {s['lesion_median']:.2f} | {s['lesions']} "
                   f"| {s['lesion_mm3']:.0f} |")
    return out


def scan_section(data: Path, cases: int) -> list[str]:
    from PIL import Image

    folder = data / "bone_scan_bs80k" / "anterior"
    labels = {}
    for line in (folder / "labels.tsv").read_text().splitlines()[1:]:
        if line.strip():
            name, value = line.split("\t")
            labels[name] = int(value)
    groups: dict[str, list[dict]] = {}
    for name, label in sorted(labels.items()):
        groups.setdefault(f"BS-80K {'positive' if label else 'negative'}", []).append(
            scan_stats(np.asarray(Image.open(folder / name).convert("L"))))
    for i in range(cases * 20):
        case = synth.make_case("bone-scan", seed=0, index=i, size="full", params={"view": "crop"})
        groups.setdefault(f"synthetic crop {'positive' if case.entry['label'] else 'negative'}", []).append(
            scan_stats(case.array))
    out = ["| bone-scan crops | images | rows x cols (median) | black share | lit p10 / p50 / p90 (/ image p99) |",
           "|---|---|---|---|---|"]
    for name, stats in groups.items():
        pct = np.nanmedian([s["pct"] for s in stats], axis=0)
        out.append(f"| {name} | {len(stats)} | {np.median([s['rows'] for s in stats]):.0f} x "
                   f"{np.median([s['cols'] for s in stats]):.0f} | {np.median([s['black'] for s in stats]):.2f} "
                   f"| {fmt(pct, 2)} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--cases", type=int, default=2, help="synthetic cases per kind")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: shared data not found", file=sys.stderr)
        return 2
    for section in (ct_section, flair_section, scan_section):
        print("\n".join(section(args.data, args.cases)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
