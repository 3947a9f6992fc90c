"""The per-user model library: numbered versions of each method's model and which one is active.

Layout of the library folder ($LESIONDETECT_MODELS, else ~/.lesiondetect/models):

    <method>/<N>/model.json, model.safetensors   version N (2, 3, ...) of the method's model
    state.json                                   {"active": {method: "N"}, "last_version": {method: N}}

Version 1 of every method is the model shipped in Resources/models/<method>: read-only, never
copied, changed or removed.  Inference without --model runs the active version
(`active_model_dir`); a method without an active version set runs version 1, and rolling back
is `use` of an older version.  Every write is atomic (a version folder is swapped in whole,
state.json is replaced in one rename), so a process killed at any moment leaves the library
as it was or with the change complete.  Reading needs only the standard library (the Slicer
module reads cards before torch is installed).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import LesionDetectError, input_error
from .files import atomic_dir, fault_point, process_lock, read_json, write_json
from .models import CARD_FILE, ModelCard, read_card, sha256_of, shipped_model_dir

ENV = "LESIONDETECT_MODELS"
STATE_FILE = "state.json"
SHIPPED = "1"  # the shipped model's version
REMOVING = ".removing-"  # a version folder being deleted (renamed first, so it is never half a model)
LOCK_FILE = ".lock"  # held while a process changes the library (two fine-tunes registering at once)


def _changing(what: str):
    return process_lock(library_dir() / LOCK_FILE, what)


@dataclass
class Entry:
    """One version of a method's model.  `card` is None (and `problem` says why) for a
    library folder whose card cannot be read."""
    method: str
    version: str
    path: Path
    card: ModelCard | None
    shipped: bool = False
    problem: str | None = None

    @property
    def model_id(self) -> str:
        return self.card.model_id if self.card else ""

    @property
    def lineage(self) -> dict:
        training = self.card.training if self.card and isinstance(self.card.training, dict) else {}
        lineage = training.get("lineage")
        return lineage if isinstance(lineage, dict) else {}

    def is_parent_of(self, other: "Entry") -> bool:
        """Whether `other`'s lineage names this model (by id or by weights sha256)."""
        if self.card is None:
            return False
        named = other.lineage
        return bool((self.card.model_id and named.get("parent_model_id") == self.card.model_id)
                    or (self.card.weights_sha256 and named.get("parent_weights_sha256") == self.card.weights_sha256))


def library_dir() -> Path:
    """The library folder ($LESIONDETECT_MODELS, else ~/.lesiondetect/models); not created here."""
    folder = Path(os.environ.get(ENV) or Path.home() / ".lesiondetect" / "models").expanduser()
    if folder.exists() and not folder.is_dir():
        raise input_error(folder, f"is a file; the model library ({ENV}) must be a folder")
    return folder


# --- state: the active version of each method --------------------------------------------------

def _state() -> dict:
    path = library_dir() / STATE_FILE
    if not path.exists():
        return {"active": {}, "last_version": {}}
    doc = read_json(path, invalid="is not a valid model library state")
    fix = "; delete it to make version 1 of every method active again"
    if not isinstance(doc, dict) or not isinstance(doc.get("active", {}), dict) \
            or not isinstance(doc.get("last_version", {}), dict):
        raise input_error(path, "is not a valid model library state (\"active\" and \"last_version\" must be "
                                "objects)" + fix)
    if not all(isinstance(v, str) and v.isdigit() for v in doc.get("active", {}).values()):
        raise input_error(path, "is not a valid model library state (an active version is not a number)" + fix)
    return {"active": dict(doc.get("active", {})), "last_version": dict(doc.get("last_version", {}))}


def _write_state(state: dict) -> None:
    write_json(library_dir() / STATE_FILE, state, overwrite=True)  # one rename: never half a state


# --- versions ---------------------------------------------------------------------------------

def versions(method: str) -> list[Entry]:
    """Every version of `method`'s model, oldest first: the shipped version 1 (when the
    extension has one), then the library's."""
    out = []
    shipped = shipped_model_dir(method)
    if shipped is not None:
        out.append(Entry(method, SHIPPED, shipped, read_card(shipped)[1], shipped=True))
    folder = library_dir() / method
    numbered = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    for path in sorted(numbered, key=lambda p: int(p.name)):
        try:
            out.append(Entry(method, path.name, path, read_card(path)[1]))
        except LesionDetectError as exc:
            out.append(Entry(method, path.name, path, None, problem=str(exc)))
    return out


def methods_in_library() -> list[str]:
    """The methods this LesionDetect has, then any other method folder the library holds."""
    from .methods import method_names

    names = list(method_names())
    folder = library_dir()
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in names) if folder.is_dir() else []
    return names + extra


def find(method: str, ref: str | None = None) -> Entry:
    """The version of `method` that `ref` names: a version number ("2" or "v2") or a model id;
    None: the active version."""
    entries = versions(method)
    if ref is None:
        ref = active_version(method)
    number = ref[1:] if ref[:1] in ("v", "V") and ref[1:].isdigit() else ref
    for entry in entries:
        if entry.version == number or (entry.model_id and entry.model_id == ref):
            return entry
    have = ", ".join(e.version for e in entries) or "none"
    raise LesionDetectError(f"{library_dir()}: no version or model id '{ref}' of method '{method}' "
                            f"(versions: {have}; see `lesiondetect models list`)")


def active_version(method: str) -> str:
    """The active version of `method`: what `use` set, "1" when nothing was set."""
    return _state()["active"].get(method, SHIPPED)


def active_model_dir(method: str) -> Path | None:
    """The model inference runs when no --model is given: the active version's folder (the
    shipped model for version 1, or when the active version's folder has gone); None when
    neither exists."""
    version = active_version(method)
    if version != SHIPPED:
        path = library_dir() / method / version
        if (path / CARD_FILE).is_file():
            return path
    return shipped_model_dir(method)


def lineage_chain(entry: Entry) -> list[str]:
    """The entry and its ancestors, one line each: "<model id> (version N)", or "(not in the
    library)" for a parent this library does not hold."""
    known = {e.model_id: e for e in versions(entry.method) if e.model_id}
    lines, seen = [], set()
    current: Entry | None = entry
    while current is not None and current.model_id not in seen:
        seen.add(current.model_id)
        where = "shipped" if current.shipped else f"{current.path}"
        lines.append(f"{current.model_id or '?'} (version {current.version}, {where})")
        parent_id = current.lineage.get("parent_model_id")
        if not parent_id:
            break
        current = known.get(parent_id)
        if current is None:
            lines.append(f"{parent_id} (not in the library)")
    return lines


# --- changes ----------------------------------------------------------------------------------

def register(path: str | os.PathLike) -> Entry:
    """Copy a trained model folder into the library as the next version of its method.  The
    weights are checked against the card's sha256 (before and after the copy) and the card
    against the method; the same weights twice are refused.  The copy's card gets the
    version number; its model id stays (it names the weights)."""
    from .methods import method_names
    from .models import card_problems
    from .training import config_defaults

    model_dir, card = read_card(path)
    if card.method not in method_names():
        raise input_error(model_dir, f"is a model of method {card.method!r}, which this LesionDetect does not have")
    from .methods import get_method

    problems = card_problems(card, config_defaults(get_method(card.method)))
    if problems:
        raise input_error(model_dir / CARD_FILE, "is not a valid model card: " + "; ".join(problems))
    weights = model_dir / card.weights_file
    if not weights.is_file():
        raise input_error(weights, "model weights are missing")
    if not card.weights_sha256 or sha256_of(weights) != card.weights_sha256:
        raise input_error(weights, "weights do not match the sha256 in the model card; not registered")
    for entry in versions(card.method):
        if entry.card is not None and entry.card.weights_sha256 == card.weights_sha256:
            raise input_error(model_dir, f"is already in the library as {card.method} version {entry.version}")
    with _changing("adding a model to this library"):
        state = _state()
        taken = [int(e.version) for e in versions(card.method)] + [int(state["last_version"].get(card.method, 1))]
        version = str(max(taken) + 1)  # numbers are never reused, so an old note "version 3" stays true
        dest = library_dir() / card.method / version
        card.version = version
        with atomic_dir(dest) as tmp:
            shutil.copyfile(weights, tmp / card.weights_file)
            if sha256_of(tmp / card.weights_file) != card.weights_sha256:
                raise input_error(weights, "changed while it was copied into the library; not registered")
            write_json(tmp / CARD_FILE, asdict(card))
        fault_point("library-registered")
        state["last_version"][card.method] = int(version)
        _write_state(state)
    return Entry(card.method, version, dest, card)


def use(method: str, ref: str) -> Entry:
    """Make a version (number or model id) the one inference runs by default; its weights are
    checked first, so a damaged version never becomes active."""
    entry = find(method, ref)
    problem = verify(entry)
    if problem:
        raise LesionDetectError(f"{entry.path}: {problem}; version {entry.version} was not made active")
    with _changing("changing this library"):
        state = _state()
        if entry.version == SHIPPED:
            state["active"].pop(method, None)
        else:
            state["active"][method] = entry.version
        _write_state(state)
    return entry


def verify(entry: Entry) -> str | None:
    """None when the entry's weights match its card's sha256, else what is wrong."""
    if entry.card is None:
        return entry.problem or "the model card cannot be read"
    weights = entry.path / entry.card.weights_file
    if not weights.is_file():
        return f"the weights {weights.name} are missing"
    if not entry.card.weights_sha256:
        return "the model card records no weights sha256"
    if sha256_of(weights) != entry.card.weights_sha256:
        return f"{weights.name} does not match the sha256 in its card (corrupt or replaced)"
    return None


def remove(method: str, ref: str, force: bool = False) -> Entry:
    """Delete a library version.  Refused for the shipped version 1; for a model another
    model's lineage names, and for the active version, unless `force` (the active version
    then falls back to version 1)."""
    entry = find(method, ref)
    if entry.shipped:
        raise LesionDetectError(f"{entry.path}: version 1 of {method} is the shipped model; it cannot be removed "
                                "(`lesiondetect models use` another version instead)")
    children = [e for e in versions(method) if e is not entry and entry.is_parent_of(e)]
    if children and not force:
        named = ", ".join(f"version {e.version} ({e.model_id})" for e in children)
        raise LesionDetectError(f"{entry.path}: {method} version {entry.version} is the parent of {named}; "
                                "removing it breaks their lineage (--force removes it all the same)")
    with _changing("changing this library"):
        state = _state()
        if state["active"].get(method) == entry.version:
            if not force:
                raise LesionDetectError(f"{entry.path}: {method} version {entry.version} is the active version; "
                                        "`use` another first, or --force (version 1 becomes active)")
            del state["active"][method]
            _write_state(state)  # first: a kill after this leaves version 1 active and the folder still there
        trash = entry.path.parent / f"{REMOVING}{entry.version}-{os.getpid()}"
        os.rename(entry.path, trash)  # one step: the version is gone whole, never half a model
        shutil.rmtree(trash, ignore_errors=True)
        for stale in entry.path.parent.glob(REMOVING + "*"):  # what a killed removal left
            shutil.rmtree(stale, ignore_errors=True)
    return entry
