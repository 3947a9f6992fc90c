"""Shared fixtures: paths to the project, the shared data beside it, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LESIONDETECT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session", autouse=True)
def private_model_library(tmp_path_factory):
    """Every test sees an empty model library of its own (LesionDetectLib/library.py), never the
    developer's ~/.lesiondetect/models: inference without --model then runs the shipped model."""
    folder = tmp_path_factory.mktemp("model-library")
    old = os.environ.get("LESIONDETECT_MODELS")
    os.environ["LESIONDETECT_MODELS"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("LESIONDETECT_MODELS", None)
    else:
        os.environ["LESIONDETECT_MODELS"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture
def run_cli(capsys):
    """Run `lesiondetect ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from LesionDetectLib.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
