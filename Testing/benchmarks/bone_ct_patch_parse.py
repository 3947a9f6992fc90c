"""Dense vs per-patch volume parsing (method 000), with trained models, one command:

    .venv/bin/python Testing/benchmarks/bone_ct_patch_parse.py [--model PAPER_MODEL] [--fast-model FAST_MODEL] \
        [--context [--context-model CONTEXT_MODEL]] [--tiles 16 64] [--precisions float32 bfloat16] \
        [--slices 3] [--patch-sample 128]

Runs `LesionDetectLib.bench.bone_ct_parse` (what `lesiondetect bench bone-ct-parse` runs with a
randomly initialised paper network) with the given trained models, so that max |dp| is
measured on a network whose probabilities actually vary.  The fast model (config fast.json:
32 px patches) is also run at parse stride 32.  `--context` adds the paper network with 96 px
of context (config 3c-ri-context.json; randomly initialised at full width for the timing, and
`--context-model` for a trained one's |dp|), at each largest band height in --tiles.  The fast and
context runs are repeated for each dense precision in --precisions.  Results:
Resources/benchmarks/bone-ct-parse.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.bench.bone_ct_parse import bone_ct_parse  # noqa: E402
from LesionDetectLib.training import load_trained  # noqa: E402

OUT = ROOT / "Resources" / "benchmarks"
KEYS = ("dense_s_per_slice", "per_patch_s_per_slice", "ratio", "ratio_vs_paper_patches", "max_abs_dp",
        "max_abs_dp_voxels", "mean_abs_dp_voxels", "peak_rss_mb", "flop_efficiency", "machine_gflops",
        "dense_gflop_per_slice", "volume_512x512x100_dense_s", "per_patch_probability_sd")


def run(label: str, model_path, slices: int, sample: int, **settings) -> dict:
    model, config = None, {}
    if model_path:
        _, model, card, _ = load_trained(model_path, device="cpu")
        config = dict(card.config)
    config.update(settings)
    result = bone_ct_parse(slices=slices, patch_sample=sample, model=model, config=config)
    result["model"] = str(model_path) if model_path else "paper network, random initialisation"
    result["label"] = label
    print(label, {k: result[k] for k in KEYS}, flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="trained paper model (patch_pixels 64)")
    ap.add_argument("--fast-model", help="trained fast-mode model (patch_pixels 32)")
    ap.add_argument("--context", action="store_true", help="also run the paper network with 96 px of context")
    ap.add_argument("--context-model", help="trained model with context (config 3c-ri-context.json)")
    ap.add_argument("--tiles", nargs="+", type=int, default=[8], help="band heights (node rows) for --context")
    ap.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--patch-sample", type=int, default=128)
    args = ap.parse_args(argv)
    results = [run("paper model, stride 16", args.model, args.slices, args.patch_sample)]
    for precision in args.precisions:
        p = {"parse_precision": precision}
        if args.fast_model:
            results.append(run(f"fast model (32 px), stride 16, {precision}", args.fast_model, args.slices,
                               args.patch_sample, **p))
            results.append(run(f"fast model (32 px), stride 32, {precision}", args.fast_model, args.slices,
                               args.patch_sample, parse_stride=32, **p))
        if args.context:
            for tile in args.tiles:
                results.append(run(f"paper network + 96 px context (random init), tile {tile}, {precision}", None,
                                   args.slices, args.patch_sample, context_pixels=96, parse_tile=tile, **p))
        if args.context_model:
            for tile in args.tiles:
                results.append(run(f"trained model with context, tile {tile}, {precision}", args.context_model,
                                   args.slices, args.patch_sample, parse_tile=tile, **p))
    doc = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}",
           "command": "python Testing/benchmarks/bone_ct_patch_parse.py " + " ".join(argv or sys.argv[1:]),
           "results": results}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "bone-ct-parse.json", doc, overwrite=True)
    lines = ["# bone-ct-parse: dense vs per-patch volume parsing", "", f"Command: `{doc['command']}`  ",
             f"Machine: {doc['machine']} (load average {os.getloadavg()[0]:.1f} at the end; medians over {args.slices} generated 512 x 512 slices, 8 % bone)",
             "", "| run | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for r in results:
        lines.append(f"| {r['label']} | " + " | ".join(f"{r[k]:.4g}" for k in KEYS) + " |")
    write_text(OUT / "bone-ct-parse.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
