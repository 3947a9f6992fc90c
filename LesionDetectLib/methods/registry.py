"""Method plug-ins by name: each method package's __init__ calls `register(ItsMethod)`."""

from __future__ import annotations

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make a Method findable by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls
