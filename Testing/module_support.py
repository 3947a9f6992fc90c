"""Shared pieces of the module-logic tests (test_module_logic.py, test_module_learn.py): a
scripted stand-in for the child process (process.ChildProcess), the runner that hands them out,
a poll scheduler the test drives by hand (Slicer's is a QTimer) and a fresh real MRML scene
(slicer-core; the test is skipped without it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "LesionDetect") not in sys.path:
    sys.path.insert(0, str(ROOT / "LesionDetect"))

PYTHON = "/opt/Slicer/bin/PythonSlicer"  # what the logic is told to run; the fake runner never runs it


class ScriptedChild:
    """Answers poll() from a script and runs nothing: first the progress `steps`, then, unless
    its outcome is one of `hangs` (it runs until cancelled), `end()` writes what the real child
    would and gives the exit code."""

    hangs = ("hang",)

    def __init__(self, args, env, outcome, steps):
        self.args, self.env, self.outcome = args, env, outcome
        self.steps = [list(s) for s in steps]
        self.cancelled, self.code = False, None
        self.tail: list[str] = []

    def arg(self, flag: str) -> str:
        return self.args[self.args.index(flag) + 1]

    def on_poll(self) -> None:
        """Called on every poll before the script moves on."""

    def end(self) -> int:
        raise NotImplementedError

    def poll(self):
        if self.code is not None:
            return [], self.code
        self.on_poll()
        if self.steps:
            return self.steps.pop(0), None
        if self.outcome in self.hangs:
            return [], None
        self.code = self.end()
        return [], self.code

    def wait(self, timeout=None, on_progress=None):
        while True:
            reports, code = self.poll()
            for report in reports:
                if on_progress is not None:
                    on_progress(report)
            if code is not None:
                return code
            if self.outcome in self.hangs and not self.steps and not self.cancelled:
                raise AssertionError("the fake child would block forever")

    def cancel(self):
        self.cancelled, self.code = True, -15

    def output_tail(self) -> str:
        return "\n".join(self.tail)


class ScriptedRunner:
    """A Runner that hands out `child_class(args, env, outcome, steps, **options)` and keeps them."""

    child_class = ScriptedChild

    def __init__(self, outcome="succeed", steps=(), **options):
        self.outcome, self.steps, self.options = outcome, steps, options
        self.children: list = []

    def child_options(self) -> dict:
        return self.options

    def __call__(self, args, env=None):
        child = self.child_class(list(args), env, self.outcome, self.steps, **self.child_options())
        self.children.append(child)
        return child


class FakeScheduler:
    """A PollScheduler the test drives by hand: keeps the poll function, counts the stops."""

    def __init__(self):
        self.poll, self.stops = None, 0

    def __call__(self, poll):
        self.poll = poll
        return self.stop

    def stop(self):
        self.stops += 1


@pytest.fixture
def mrml():
    from LesionDetectMRML import headless

    try:
        s = headless.new_scene()
    except ImportError as exc:
        pytest.skip(str(exc))
    yield s
    s.close()
