"""Whole-CT parsing time of a trained bone-ct-patch model (method 000), what `infer` does:

    .venv/bin/python Testing/benchmarks/bone_ct_patch_volume.py --model MODEL --data SYNTH_FULL \
        [--cases 3] [--settings parse_tile=64,parse_precision=bfloat16 parse_tile=8,parse_precision=bfloat16]

For each settings group (comma-separated `--set` options of `infer`) it runs
`BoneCtPatch.predict` (bone mask from HU, dense parsing, candidates) on the first --cases
images of a full-size synthetic dataset (`lesiondetect synth bone-ct --size full`: 512 x 512
x 100 trunk CTs), timing each volume, and reports the median seconds per volume and per
slice, the bone fraction, and the process's peak RSS.  The `bone-ct-parse` benchmark times
generated pelvis slices; this one whole CTs, from the chest to the pelvis.  Results:
Resources/benchmarks/bone-ct-volume.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.io import read_image  # noqa: E402
from LesionDetectLib.training import load_trained  # noqa: E402

OUT = ROOT / "Resources" / "benchmarks"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="full-size synthetic bone-ct dataset")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=["parse_tile=64,parse_precision=bfloat16"])
    args = ap.parse_args(argv)
    method, model, card, device = load_trained(args.model, device="cpu")
    cases = load_dataset(args.data).cases[:args.cases]
    images = [read_image(c.image) for c in cases]
    results = []
    for text in args.settings:
        options = parse_key_values(text.split(","))
        times, bone = [], []
        for case, image in zip(cases, images):
            t = time.perf_counter()
            pred = method.predict(model, card, image, device, **options)
            times.append(time.perf_counter() - t)
            bone.append(float((pred.probability > 0).mean()))
            print(case.id, text, f"{times[-1]:.1f} s", flush=True)
        slices = images[0].GetSize()[2]
        results.append({"settings": options, "volume_s": [round(x, 1) for x in times],
                        "median_volume_s": round(float(np.median(times)), 1),
                        "median_s_per_slice": round(float(np.median(times)) / slices, 3),
                        "bone_fraction": round(float(np.median(bone)), 4),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    doc = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}",
           "command": "python Testing/benchmarks/bone_ct_patch_volume.py " + " ".join(argv or sys.argv[1:]),
           "model": str(args.model), "experiment": card.config.get("experiment"),
           "cases": [c.id for c in cases], "size": list(images[0].GetSize()), "results": results}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "bone-ct-volume.json", doc, overwrite=True)
    lines = ["# bone-ct-volume: whole-CT parsing (`infer`) time", "", f"Command: `{doc['command']}`  ",
             f"Machine: {doc['machine']} (load average {os.getloadavg()[0]:.1f} at the end)  ",
             f"Model: {doc['experiment']} ({doc['model']}); cases {', '.join(doc['cases'])}, "
             f"{' x '.join(map(str, doc['size']))} voxels", "",
             "| settings | median s per volume | s per slice | volumes (s) | bone fraction | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {', '.join(f'{k}={v}' for k, v in r['settings'].items())} | {r['median_volume_s']} | "
                     f"{r['median_s_per_slice']} | {', '.join(map(str, r['volume_s']))} | {r['bone_fraction']} | "
                     f"{r['peak_rss_mb']} |")
    write_text(OUT / "bone-ct-volume.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
