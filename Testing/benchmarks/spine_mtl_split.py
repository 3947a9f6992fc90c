"""How well the built-in split of spine-mtl finds the vertebrae (no segmentation given),
measured on synthetic spine CTs whose vertebrae are known:

    .venv/bin/python Testing/benchmarks/spine_mtl_split.py --data DS [--name spine-mtl-split]

Per study: vertebrae found vs drawn (those with labelled slices), and the slice agreement:
each drawn vertebra is matched to the found vertebra holding most of its labelled slices;
agreement = labelled slices that lie in their vertebra's match / all labelled slices.
Results: Resources/benchmarks/<name>.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.io import read_image  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.methods.spine_mtl.data import axial_volume, spine_centres  # noqa: E402
from LesionDetectLib.methods.spine_mtl.vertebrae import split_along_z  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--name", default="spine-mtl-split")
    args = ap.parse_args(argv)
    config = get_method("spine-mtl").defaults
    rows = []
    for case in load_dataset(args.data).cases:
        hu, geometry = axial_volume(read_image(case.image))
        centres, found = spine_centres(hu, geometry, config)
        owner = {k: v.name for v in split_along_z(hu, geometry, centres, found, config) for k in v.slices}
        drawn = [v for v in case.extra["vertebrae"] if v["slices"]]
        agree = sum(Counter(owner.get(k) for k in v["slices"]).most_common(1)[0][1] for v in drawn)
        total = sum(len(v["slices"]) for v in drawn)
        rows.append({"case": case.id, "drawn": len(drawn), "found": len(set(owner.values())),
                     "agreement": agree / total})
    counts = Counter(r["found"] - r["drawn"] for r in rows)
    summary = {"studies": len(rows), "mean_agreement": float(np.mean([r["agreement"] for r in rows])),
               "found_minus_drawn": {str(k): v for k, v in sorted(counts.items())}, "rows": rows,
               "command": " ".join(sys.argv)}
    out = ROOT / "Resources" / "benchmarks"
    write_json(out / f"{args.name}.json", summary, overwrite=True)
    text = (f"# spine-mtl built-in vertebra split on synthetic spine CT\n\nCommand: `{summary['command']}`\n\n"
            f"{len(rows)} studies ({args.data}); labelled slices in their vertebra's match: "
            f"**{summary['mean_agreement']:.3f}** (mean over studies); vertebra count found - drawn: "
            + ", ".join(f"{k}: {v} studies" for k, v in summary["found_minus_drawn"].items()) + "\n")
    write_text(out / f"{args.name}.md", text, overwrite=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
