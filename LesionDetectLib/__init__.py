"""LesionDetectLib: the headless library behind the LesionDetect 3D Slicer extension.

It never imports slicer, vtk or qt, so it runs the same in Slicer's Python, in a plain
virtual environment and in CI.  Entry points: `LesionDetectLib.cli` (the `lesiondetect`
command), `LesionDetectLib.io` (images), `LesionDetectLib.prediction` (the one result type).
"""

__version__ = "0.1.0"
