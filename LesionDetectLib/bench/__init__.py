"""Benchmarks: speed and memory of the methods, measured the same way every time.

A layer above the methods: each module here imports the methods it measures (never the other
way round) and defines `NAME` (what `lesiondetect bench NAME` calls it; the method's name
where it benchmarks one method) and `run(quick=False) -> dict`, a flat dict of measurements.
`quick=True` runs the same code on tiny sizes in seconds, so the default test suite runs
every benchmark end to end; a module placed here is registered by being here (measure.py
holds the shared timing helpers).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from ..errors import LesionDetectError


def _modules() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME"):  # measure.py holds the shared timing helpers
            found[module.NAME] = module
    return found


def names() -> list[str]:
    return sorted(_modules())


def describe(name: str) -> str:
    """The first line of a benchmark module's docstring."""
    return (get(name).__doc__ or "").strip().splitlines()[0]


def get(name: str) -> ModuleType:
    modules = _modules()
    if name not in modules:
        raise LesionDetectError(f"unknown benchmark '{name}'; available: {', '.join(sorted(modules))}")
    return modules[name]


def run(name: str, quick: bool = False) -> dict[str, Any]:
    return get(name).run(quick=quick)
