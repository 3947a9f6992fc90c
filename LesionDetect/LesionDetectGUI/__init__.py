"""LesionDetectGUI: the Qt parts of the LesionDetect widget beyond its core (LesionDetect.py's
LesionDetectWidget mixes them in).  Unlike LesionDetectMRML this package uses Qt and slicer; it
holds no logic of its own.
"""
