"""LesionDetectWeb: the review-and-correct loop in a web page (trame + trame-slicer).

`lesiondetect review --data DATASET` (LesionDetectLib/commands/review.py) starts it.  The page is
a thin front end: everything it does goes through LesionDetectMRML, the adapter the Slicer
module uses, on the real MRML scene of trame-slicer's SlicerApp:

- security: paths kept inside the dataset root, loopback by default, the token for other hosts;
- cases:    the dataset's cases with their review status, the next case to review;
- session:  one review session (open a case, detect in a child process, threshold, findings
            and their review, segment editing, boxes and points, export), without any UI;
- app:      the trame page bound to a session, and `serve()`.

Importing this package imports nothing heavy; trame, trame-slicer and slicer-core are imported
where they are used, so a missing one is reported as one line naming what to install.

trame-slicer (every release since 1.4) needs `slicer-layer-dm`, whose wheels are built for
slicer-core 5.11.0.* only (and vtk 9.6.0): the web app runs in an environment with
`pip install "trame-slicer[standalone]==2.0.0"` (slicer-core 5.11.0.6), not beside the
slicer-core 5.13 of the test extra.
"""

INSTALL = ('pip install "trame-slicer[standalone]==2.0.0" '
           "(brings slicer-core 5.11.0.6, slicer-layer-dm 2.0.0, vtk 9.6.0)")


def missing_requirement() -> str | None:
    """None when the web app can run here, else one line saying what is missing and what to install."""
    import importlib.util

    for module, package in (("slicer", "slicer-core"), ("trame", "trame"), ("trame_slicer", "trame-slicer"),
                            ("trame_vuetify", "trame-vuetify")):
        if importlib.util.find_spec(module) is None:
            return f"`lesiondetect review` needs {package}, which is not installed: {INSTALL}"
    try:
        import trame_slicer.core  # noqa: F401  (imports slicer-layer-dm's classes from `slicer`)
    except ImportError as exc:
        return (f"`lesiondetect review`: trame-slicer cannot run with the installed slicer-core ({exc}); "
                f"it needs slicer-core 5.11 with slicer-layer-dm: {INSTALL}")
    return None
