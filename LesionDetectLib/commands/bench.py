"""`lesiondetect bench NAME [--json [FILE]]`: timing and memory benchmarks, one per name.

A benchmark is a function registered with `@register_benchmark("name")` in a method module
(methods are imported when the parser is built, so their benchmarks are found).  It takes
no arguments and returns a flat dict of measurements; this command prints it as a table, or
as JSON with --json (to stdout, or to FILE).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable

BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {}


def register_benchmark(name: str):
    """Decorator: make a benchmark function runnable as `lesiondetect bench NAME`."""
    def decorate(fn: Callable[[], dict[str, Any]]):
        BENCHMARKS[name] = fn
        return fn

    return decorate


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls of fn (warm up before calling this)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_parser(sub) -> None:
    from ..methods import method_names

    method_names()  # imports every method module, which registers its benchmarks
    p = sub.add_parser("bench", help="measure speed and memory of a method",
                       description="Runs a registered benchmark: " + ", ".join(sorted(BENCHMARKS)) + ".")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the measurements as JSON (or write them to FILE)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..files import write_json

    results = BENCHMARKS[args.name]()
    if args.json == "-":
        print(json.dumps(results, indent=2))
    else:
        if args.json:
            write_json(args.json, results, overwrite=True)
        width = max(len(k) for k in results)
        for key, value in results.items():
            print(f"{key:{width}s}  {value}")
    return 0
