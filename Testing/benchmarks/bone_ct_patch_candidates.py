"""How bone-ct-patch turns its parsed map into lesion candidates, compared by FROC (method 000):

    .venv/bin/python Testing/benchmarks/bone_ct_patch_candidates.py --model MODEL --data SYNTH_FULL \
        [--work /tmp/bone_ct_candidates] [--split test]

Each volume of the split is parsed once with the model (the map is cached in --work as
float16), then every candidate rule in RULES finds local maxima and scores them, and the
FROC against the annotated lesions is computed the way `evaluate` does (a candidate hits a
lesion within `hit_radius_mm` of its centre).  Rules:

- `peak, r mm`: local maxima of the map within r mm, scored by the map (r = 10 is the
  method's `candidate_radius_mm`);
- `bone mean sigma s mm`: the map averaged over the bone under a Gaussian of sigma s
  (smooth(p) / smooth(bone), so bone edges do not dilute it), local maxima within 10 mm
  on bone voxels, scored by that average: a lesion lights up a blob of nodes, a false
  candidate often a single node.

Results: Resources/benchmarks/bone-ct-candidates.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.methods.bone_ct_patch import parsing  # noqa: E402
from LesionDetectLib.metrics.matching import match_detections, point_hits  # noqa: E402
from LesionDetectLib.metrics.froc import froc_summary  # noqa: E402
from LesionDetectLib.prediction import LesionPoint  # noqa: E402
from LesionDetectLib.training import check_config, config_defaults, load_trained, merge_config  # noqa: E402

OUT = ROOT / "Resources" / "benchmarks"


def bone_mean(prob: np.ndarray, bone: np.ndarray, spacing_xyz, sigma_mm: float) -> np.ndarray:
    sigma = [sigma_mm / s for s in spacing_xyz[::-1]]
    num = ndimage.gaussian_filter(prob.astype(np.float32), sigma, mode="constant")
    den = ndimage.gaussian_filter(bone.astype(np.float32), sigma, mode="constant")
    return np.where(bone > 0, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


RULES = {"peak, 10 mm": ("peak", 10.0, 0.0), "peak, 20 mm": ("peak", 20.0, 0.0),
         "bone mean sigma 2 mm": ("mean", 10.0, 2.0), "bone mean sigma 4 mm": ("mean", 10.0, 4.0),
         "bone mean sigma 4 mm, 20 mm": ("mean", 20.0, 4.0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", default="/tmp/bone_ct_candidates")
    ap.add_argument("--split", default="test")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="parse option, e.g. parse_tile=64")
    args = ap.parse_args(argv)
    method, model, card, device = load_trained(args.model)
    options = parse_key_values(args.set)
    check_config(options, merge_config(config_defaults(method), card.config), "--set", method.name)
    config = {**card.config, **options}
    cases = method.split_cases(load_dataset(args.data), config)[args.split]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    found = {name: ([], []) for name in RULES}
    min_score, hit_mm = float(config["froc_min_score"]), float(config["hit_radius_mm"])
    for case in cases:
        hu, bone, geometry, lesions_zyx = method.load_case(case, config)
        cache = work / f"{case.id}.npy"
        if cache.exists():
            prob = np.load(cache).astype(np.float32)
        else:
            prob = method.parse(model, config, hu, bone, geometry, device)
            np.save(cache, prob.astype(np.float16))
        lesions = [LesionPoint(p) for p in geometry.index_to_lps(lesions_zyx[:, ::-1])]
        for name, (kind, radius, sigma) in RULES.items():
            score_map = prob if kind == "peak" else bone_mean(prob, bone, geometry.spacing, sigma)
            candidates = parsing.find_candidates(score_map, geometry, min_score, radius, int(config["max_candidates"]))
            fps, best = match_detections([c.score for c in candidates], point_hits(candidates, lesions, hit_mm))
            found[name][0].extend(fps)
            found[name][1].extend(best)
        print(case.id, "done", flush=True)
    results = []
    for name, (fps, best) in found.items():
        s = froc_summary(fps, best, n_images=len(cases))
        results.append({"rule": name, "froc": s["froc"], "froc_mean": round(s["froc_mean"], 3),
                        "lesions": s["lesions"], "found": sum(b is not None for b in best),
                        "false_candidates_per_volume": round(len(fps) / len(cases), 1)})
        print(results[-1], flush=True)
    doc = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "command": "python Testing/benchmarks/bone_ct_patch_candidates.py " + " ".join(argv or sys.argv[1:]),
           "model": str(args.model), "experiment": config.get("experiment"), "cases": [c.id for c in cases],
           "results": results}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "bone-ct-candidates.json", doc, overwrite=True)
    lines = ["# bone-ct-candidates: candidate rules compared by FROC", "", f"Command: `{doc['command']}`  ",
             f"Model: {doc['experiment']} ({doc['model']}); {len(cases)} {args.split} volumes", "",
             "| rule | FROC 0.5 / 1 / 2 / 4 / 8 | mean | lesions among candidates | false candidates per volume |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rule']} | {' / '.join(f'{v:.2f}' for v in r['froc'].values())} | {r['froc_mean']} | "
                     f"{r['found']} of {r['lesions']} | {r['false_candidates_per_volume']} |")
    write_text(OUT / "bone-ct-candidates.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
