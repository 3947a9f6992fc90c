"""`lesiondetect bench NAME [--quick] [--json [FILE]]` and `lesiondetect bench --list`.

Runs one benchmark of LesionDetectLib.bench and prints its measurements as a table, or as
JSON with --json (to stdout, or to FILE).
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory of a method",
                       description="Runs a benchmark (lesiondetect bench --list names them).")
    p.add_argument("name", nargs="?", help="the benchmark to run")
    p.add_argument("--list", action="store_true", help="name every benchmark and what it measures")
    p.add_argument("--quick", action="store_true",
                   help="the same measurements on tiny sizes (seconds; checks that the benchmark runs)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the measurements as JSON (or write them to FILE)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import bench
    from ..errors import LesionDetectError
    from ..files import write_json

    if args.list:
        names = bench.names()
        width = max(len(n) for n in names)
        for name in names:
            print(f"{name:{width}s}  {bench.describe(name)}")
        return 0
    if not args.name:
        raise LesionDetectError(f"name a benchmark: {', '.join(bench.names())} (or --list)")
    results = bench.run(args.name, quick=args.quick)
    if args.json == "-":
        print(json.dumps(results, indent=2))
    else:
        if args.json:
            write_json(args.json, results, overwrite=True)
        width = max(len(k) for k in results)
        for key, value in results.items():
            print(f"{key:{width}s}  {value}")
    return 0
