"""The Python packages LesionDetectLib needs, and getting them into Slicer's Python.

`LesionDetect/Resources/requirements.txt` is the only place that states them with their
versions: pyproject.toml reads it for installs outside Slicer, and the module reads it here.
Inside Slicer the packages come from three places: torch and torchvision from the PyTorch
extension's PyTorchUtils (it picks the build for the GPU) at exactly the listed pins; numpy,
SimpleITK, scipy and pydicom ship with Slicer and are never replaced (Slicer's SimpleITK has
its own IO); pip installs the rest.  `plan_install` decides what is missing from an
installed-version lookup that tests replace; `ensure` carries the plan out with installers it
is given (Slicer's pip, PyTorchUtils), so nothing here imports slicer.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
FROM_PYTORCH_EXTENSION = ("torch", "torchvision")  # canonical names, installed together by PyTorchUtils
BUNDLED_WITH_SLICER = ("numpy", "simpleitk", "scipy", "pydicom")


def read_requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    requirements = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            requirements.append(Requirement(line))
    return requirements


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_pins(requirements: Iterable[Requirement]) -> dict[str, str]:
    """torch's and torchvision's specifiers as the requirements state them (canonical name ->
    specifier text): what PyTorchUtils is asked for."""
    return {canonicalize_name(r.name): str(r.specifier) for r in requirements
            if canonicalize_name(r.name) in FROM_PYTORCH_EXTENSION}


@dataclass
class InstallPlan:
    """What an environment lacks, by who installs it."""

    torch: dict[str, str] = field(default_factory=dict)  # pins for PyTorchUtils; empty when both match
    pip: list[Requirement] = field(default_factory=list)  # missing or at a version outside the pin
    bundled_missing: list[Requirement] = field(default_factory=list)  # ship with Slicer, absent here
    found: dict[str, str | None] = field(default_factory=dict)  # canonical name -> installed version

    @property
    def complete(self) -> bool:
        return not (self.torch or self.pip or self.bundled_missing)


def plan_install(requirements: Iterable[Requirement],
                 installed: Callable[[str], str | None] = installed_version) -> InstallPlan:
    """What to install so that `requirements` hold, given `installed(name) -> version or None`.

    torch and torchvision are planned together (PyTorchUtils installs both) and only ever at
    their pins; a bundled package is never replaced, whatever its version, only reported
    when absent.  Requirements whose environment marker does not apply are skipped.
    """
    requirements = [r for r in requirements if r.marker is None or r.marker.evaluate()]
    plan = InstallPlan()
    torch_ok = True
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        version = installed(requirement.name)
        plan.found[name] = version
        satisfied = version is not None and requirement.specifier.contains(version, prereleases=True)
        if name in FROM_PYTORCH_EXTENSION:
            torch_ok = torch_ok and satisfied
        elif name in BUNDLED_WITH_SLICER:
            if version is None:
                plan.bundled_missing.append(requirement)
        elif not satisfied:
            plan.pip.append(requirement)
    if not torch_ok:
        plan.torch = torch_pins(requirements)
    return plan


def ensure(plan: InstallPlan, *, install_torch: Callable[[dict[str, str]], object],
           pip_install: Callable[[list[Requirement]], None]) -> None:
    """Carry out `plan`: `install_torch(pins)` (falsy result: not installed), then `pip_install(requirements)`.

    Raises RuntimeError, before installing anything, when a package that ships with Slicer is
    missing (no installer may replace Slicer's own), and when torch was not installed.
    """
    if plan.bundled_missing:
        names = ", ".join(r.name for r in plan.bundled_missing)
        raise RuntimeError(f"This Slicer's Python lacks {names}, which LesionDetect expects Slicer to ship; "
                           "use a Slicer release (5.10 or later).")
    if plan.torch and not install_torch(plan.torch):
        raise RuntimeError("LesionDetect needs PyTorch ({}); it was not installed.".format(
            ", ".join(f"{name}{pin}" for name, pin in plan.torch.items())))
    if plan.pip:
        pip_install(list(plan.pip))


def ensure_requirements(path: str | Path = REQUIREMENTS_FILE, *, pip_install: Callable[[list[Requirement]], None],
                        install_torch: Callable[[dict[str, str]], object] | None = None) -> None:
    """Install what is missing of the requirements file at `path` (`plan_install`, then `ensure`);
    torch and torchvision through PyTorchUtils unless `install_torch` is given."""
    plan = plan_install(read_requirements(path))
    if not plan.complete:
        ensure(plan, install_torch=install_torch or install_torch_with_pytorch_utils, pip_install=pip_install)


def install_torch_with_pytorch_utils(pins: dict[str, str]):
    """torch and torchvision at `pins` through the PyTorch extension (runs inside Slicer only).

    Returns the torch module, or None when the user declined.  Replacing a torch that this
    session has already imported needs a restart, which the error says.
    """
    import sys

    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("LesionDetect needs PyTorch: install the 'PyTorch' extension from the Extensions "
                           "Manager, restart Slicer and try again.") from None
    already_imported = "torch" in sys.modules
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=pins.get("torch"),
        torchvisionVersionRequirement=pins.get("torchvision"))
    if torch is not None and already_imported:
        raise RuntimeError("PyTorch was replaced by the version LesionDetect needs; restart Slicer to use it.")
    return torch
