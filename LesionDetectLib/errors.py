"""The one error type a user sees: it names the file and the problem.

The CLI prints `lesiondetect: error: <message>` for it, exits with status 2 and shows no
traceback (unless --debug).  Anything else escaping is a bug in LesionDetectLib.
"""

from __future__ import annotations

import os


class LesionDetectError(Exception):
    """Bad input or an impossible request, explained in one line."""


def input_error(path: str | os.PathLike | None, problem: str) -> LesionDetectError:
    """`LesionDetectError("<path>: <problem>")`, or just the problem when there is no file."""
    return LesionDetectError(f"{os.fspath(path)}: {problem}" if path is not None else problem)
