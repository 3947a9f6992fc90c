"""The method plug-ins, one package per paper, registered by name.

    bone_ct_patch/  000  bone lesions in CT: 15 mm patch classifier, dense volume parsing
    liver_frcnn/    003  liver lesions in CT: Faster R-CNN on 3-slice input
    ms_flair_fcn/   004  MS plaques in FLAIR: fully convolutional filter

Every package has the same shape: `__init__.py` registers and re-exports, `method.py` holds
the `base.Method` subclass, `network.py` the torch modules, `data.py` preprocessing and
training samples, and any further method-specific part a file of its own.  The training
loop is shared (`LesionDetectLib.training`); evaluation measures come from
`LesionDetectLib.metrics`; benchmarks live above the methods in `LesionDetectLib.bench`.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import LesionDetectError
from .base import Method
from .registry import _REGISTRY, register

__all__ = ["Method", "get_method", "method_names", "register"]


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _load_all()
    if name not in _REGISTRY:
        raise LesionDetectError(f"unknown method '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
