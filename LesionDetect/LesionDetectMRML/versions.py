"""The model library as the version selector shows it, read in process: every version of a
method with its key metric and lineage, the active one, and making another one active
(`lesiondetect models use`).  Part of "learn from corrections" (learn.py re-exports these names).

LesionDetectLib.library needs only the standard library, so this works in Slicer before torch
is installed; module-level imports are the standard library only, the library is imported in
functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# --- the model library, read in process ---------------------------------------------------------

@dataclass
class ModelVersion:
    """One version of a method's model, as the version selector lists it."""
    method: str
    version: str
    model_id: str
    path: Path
    active: bool = False
    shipped: bool = False
    key_metric: str = ""  # "lesion F1 0.810 (synthetic test)", "" when the card records none
    parent_id: str | None = None  # the model it was fine-tuned from (training.lineage)
    parent_version: str | None = None  # that model's version in this library, when it holds it
    problem: str | None = None  # why the card cannot be read (a damaged library folder)

    @property
    def label(self) -> str:
        """One line for the combo box: "v2 - fine-tuned from v1 - lesion F1 0.812 (synthetic test)"."""
        if self.problem:
            return f"v{self.version} - damaged: {self.problem}"
        if self.shipped:
            origin = "shipped"
        elif self.parent_id:
            origin = f"fine-tuned from v{self.parent_version}" if self.parent_version else \
                f"fine-tuned from {self.parent_id}"
        else:
            origin = "trained"
        return " - ".join([f"v{self.version}", origin, self.key_metric or "no key metric"])

    @property
    def tooltip(self) -> str:
        lines = [f"{self.method} version {self.version}" + (" (shipped, read-only)" if self.shipped else ""),
                 f"model id: {self.model_id or '?'}", f"folder: {self.path}"]
        if self.parent_id:
            lines.append(f"fine-tuned from: {self.parent_id}"
                         + (f" (version {self.parent_version})" if self.parent_version else ""))
        return "\n".join(lines)


def _metric_text(card) -> str:
    from LesionDetectLib.models import key_metric

    metric = key_metric(card) if card is not None else None
    if metric is None:
        return ""
    name, where, value = metric
    return f"{name} {value:.3f}" + (f" ({where})" if where else "")


def model_versions(method: str) -> list[ModelVersion]:
    """Every version of `method`'s model in the library ($LESIONDETECT_MODELS), oldest first,
    version 1 the shipped one; `active` marks the one inference runs without a model folder."""
    from LesionDetectLib import library

    entries = library.versions(method)
    active = library.active_version(method)
    by_id = {e.model_id: e.version for e in entries if e.model_id}
    out = []
    for e in entries:
        parent = e.lineage.get("parent_model_id") or None
        out.append(ModelVersion(method=method, version=e.version, model_id=e.model_id, path=e.path,
                                active=e.version == active, shipped=e.shipped, key_metric=_metric_text(e.card),
                                parent_id=parent, parent_version=by_id.get(parent) if parent else None,
                                problem=e.problem))
    return out


def active_version(method: str) -> str:
    from LesionDetectLib import library

    return library.active_version(method)


def active_model_dir(method: str) -> Path | None:
    """The model inference runs for `method` without a model folder (the library's active
    version; the shipped model for version 1); None when there is none."""
    from LesionDetectLib import library

    return library.active_model_dir(method)


def use_version(method: str, version: str) -> ModelVersion:
    """Make `version` the active one (`lesiondetect models use METHOD VERSION`: its weights are
    checked against its card first, so a damaged version never becomes active)."""
    from LesionDetectLib import library

    library.use(method, str(version))
    return next(v for v in model_versions(method) if v.version == str(version))
