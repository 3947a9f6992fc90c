"""Progress for long work: a tqdm bar for people, `PROGRESS` lines for the Slicer module.

With the environment variable LESIONDETECT_PROGRESS=lines (the CLI's `--progress lines`),
every step also prints one machine-readable line to stdout:

    PROGRESS <fraction 0..1> <description>

which the module's logic parses to drive its progress bar.  The bar itself goes to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
ENV = "LESIONDETECT_PROGRESS"


def machine_lines() -> bool:
    return os.environ.get(ENV, "") == "lines"


def report(fraction: float, description: str = "") -> None:
    """Print one PROGRESS line (only in machine-readable mode)."""
    if machine_lines():
        print(f"PROGRESS {max(0.0, min(1.0, fraction)):.4f} {description}".rstrip(), flush=True)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar (stderr) and, if asked, PROGRESS lines (stdout)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=machine_lines(), leave=False,
               dynamic_ncols=True)
    report(0.0, desc)
    for n, item in enumerate(bar, start=1):
        yield item
        if total:
            report(n / total, desc)
    bar.close()
