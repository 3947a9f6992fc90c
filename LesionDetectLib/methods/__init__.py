"""The method plug-ins, one module per paper, registered by name.

    bone_ct_patch.py   000  bone lesions in CT: 15 mm patch classifier, dense volume parsing
    ms_flair_fcn.py    004  MS plaques in FLAIR: six-layer fully convolutional filter
    liver_frcnn.py     003  liver lesions in CT: Faster R-CNN on 3-slice input

Every plug-in subclasses `base.Method`; `get_method(name)` finds it.  The training loop,
checkpointing, device selection and seeding are shared (`LesionDetectLib.training`).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import LesionDetectError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method findable by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _load_all()
    if name not in _REGISTRY:
        raise LesionDetectError(f"unknown method '{name}'; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]()
