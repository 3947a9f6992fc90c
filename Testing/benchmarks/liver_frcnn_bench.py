"""Speed and memory of liver-frcnn (ResNet-50 FPN Faster R-CNN, 512 x 512 slices) on this machine.

    .venv/bin/python Testing/benchmarks/liver_frcnn_bench.py [--threads 2]

Runs the benchmark registered as `lesiondetect bench liver-frcnn` (medians of 3 runs: one
slice, an 8-slice streamed volume, one training step of 2 slices) and writes
Resources/benchmarks/liver-frcnn_bench.json and .md with the machine, its load and the command.
The load average matters: on a shared 2-core machine other jobs can triple the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib.bench.liver_frcnn import benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is for 2 cores)")
    ap.add_argument("--results", type=Path, default=ROOT / "Resources" / "benchmarks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = benchmark()
    record = {"command": " ".join([".venv/bin/python", "Testing/benchmarks/liver_frcnn_bench.py", *sys.argv[1:]]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                         f"{torch.__version__}",
              "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              **results}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "liver-frcnn_bench.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in record.items())
    (args.results / "liver-frcnn_bench.md").write_text(
        "# liver-frcnn benchmark\n\nMedians of 3 runs; target: slice_s <= 1.0 on 2 CPU cores.\n\n"
        f"| key | value |\n|---|---|\n{rows}\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
