"""`lesiondetect synth KIND --out DIR`: write a synthetic study with ground truth."""

from __future__ import annotations

from .. import synth
from ..synth.common import parse_param_strings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate a synthetic dataset with ground truth (deterministic by seed)",
        description="Write a dataset (dataset.json + images/, labels/, points/, boxes/) of synthetic "
                    f"studies of one kind: {', '.join(synth.KINDS)}. The same kind, options and seed "
                    "give byte-identical files. Use --list-params to see a kind's parameters.")
    p.add_argument("kind", choices=synth.KINDS)
    p.add_argument("--out", help="new or empty output folder (required unless --list-params)")
    p.add_argument("--cases", type=int, default=4, help="number of cases (bone-scan: images; default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=synth.SIZES, default="small",
                   help="small: tiny grids for tests (seconds); full: the real scans' sizes for benchmarks")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="set a generator parameter, e.g. contrast=0.5 noise=2 skull_stripped=1 (repeatable)")
    p.add_argument("--preview", action="store_true", help="also write PNG montages under preview/")
    p.add_argument("--jobs", type=int, default=1, help="make cases in this many processes (same files; default 1)")
    p.add_argument("--list-params", action="store_true", help="print the kind's parameters and defaults, then exit")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_params:
        for name, (default, help_text) in synth.parameters(args.kind).items():
            print(f"{name:26s} {default!s:10s} {help_text}")
        return 0
    if not args.out:
        from ..errors import LesionDetectError

        raise LesionDetectError("synth: --out DIR is required")
    out = synth.generate(args.kind, args.out, cases=args.cases, seed=args.seed, size=args.size,
                         params=parse_param_strings(args.param), preview=args.preview, jobs=args.jobs)
    print(f"{out}: {args.cases} synthetic {args.kind} case(s), seed {args.seed}, size {args.size}")
    return 0
