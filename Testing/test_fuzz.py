"""The fuzz suite: every input of fuzz_corpus.py through the CLI, in-process.

A run passes when no exception escapes `LesionDetectLib.cli.main` (only its own
`lesiondetect: error:` line or argparse's usage error), nothing prints a traceback, no run
takes longer than RUN_LIMIT_S, and an input of a refused kind ends with a non-zero exit
status, a message that names the file (or the option) at fault, and no result written.
The default suite runs a sample (every SAMPLE_STEP-th entry) and every planar (bone-scan) and spine entry,
a few seconds together; `pytest -m slow` all of them.
"""

from __future__ import annotations

import signal

import pytest

from fuzz_corpus import corpus
from LesionDetectLib.cli import main
from LesionDetectLib.models import shipped_model_dir

RUN_LIMIT_S = 60
SAMPLE_STEP = 41
CORPUS = corpus()
PLANAR = [e for e in CORPUS if e.kind == "planar"]
SPINE = [e for e in CORPUS if e.kind == "spine"]
needs_model = pytest.mark.skipif(any(shipped_model_dir(m) is None for m in ("ms-flair-fcn", "bone-scan-cls",
                                                                             "spine-mtl")),
                                 reason="no shipped ms-flair-fcn, bone-scan-cls or spine-mtl model")


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_entry(entry, folder, capsys) -> None:
    commands = entry.build(folder)
    assert commands, f"{entry.name}: builds no command"
    for argv in commands:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(RUN_LIMIT_S)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors: a clear message, no traceback
            code = exc.code
        except _Hang:
            pytest.fail(f"{entry.name}: `lesiondetect {' '.join(argv)}` ran past {RUN_LIMIT_S} s")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        out, err = capsys.readouterr()
        where = f"{entry.name}: `lesiondetect {' '.join(argv)}` -> {code}\n{err}{out[-2000:]}"
        assert "Traceback" not in err + out, where
        assert code in (0, 1, 2), where
        if entry.expect != "refuse":
            continue
        assert code != 0, where
        if argv[0] == "validate" and code == 1:
            assert "problem:" in out, where
            continue
        first = err.splitlines()[0] if err else ""
        assert first.startswith(("lesiondetect: error:", "usage:")) or "error:" in err, where
        if first.startswith("lesiondetect: error:"):
            assert str(folder) in first or "--threshold" in first, f"the message names no file: {where}"
        if entry.kind == "planar":  # one line naming the input file itself
            assert err.count("\n") == 1 and first.startswith(f"lesiondetect: error: {folder}/"), where
        assert not (folder / "out" / "prediction.json").exists(), where
        if entry.kind == "dataset":
            assert not (folder / "model" / "model.json").exists(), where


@needs_model
@pytest.mark.parametrize("entry", CORPUS[::SAMPLE_STEP], ids=lambda e: e.name)
def test_fuzz_sample(entry, tmp_path, capsys):
    run_entry(entry, tmp_path, capsys)


@needs_model
@pytest.mark.parametrize("entry", PLANAR, ids=lambda e: e.name)
def test_fuzz_planar(entry, tmp_path, capsys):
    run_entry(entry, tmp_path, capsys)


@needs_model
@pytest.mark.parametrize("entry", SPINE, ids=lambda e: e.name)
def test_fuzz_spine(entry, tmp_path, capsys):
    run_entry(entry, tmp_path, capsys)


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.name)
def test_fuzz_corpus(entry, tmp_path, capsys):
    run_entry(entry, tmp_path, capsys)


def test_corpus_is_large_and_deterministic():
    names = [e.name for e in CORPUS]
    assert len(names) >= 500 and len(set(names)) == len(names)
    assert [e.name for e in corpus()] == names
    assert sum(e.expect == "refuse" for e in CORPUS) >= 350
    assert {e.kind for e in CORPUS} == {"image", "dicom", "dataset", "card", "path", "planar", "spine"}
    assert len(PLANAR) >= 15 and all(e.expect == "refuse" for e in PLANAR)
    assert len(SPINE) >= 9 and all(e.expect == "refuse" for e in SPINE)
