"""Real headless MRML for the format tests (Testing/test_markups.py, test_segnrrd.py).

The scene is the adapter's own (`LesionDetectMRML.headless`, set up as trame-slicer's
SlicerApp does), and volumes go in and out through the adapter's converters, so the format
tests and the adapter tests exercise one setup.  The `mrml` fixture skips without slicer-core.
"""

from __future__ import annotations

import numpy as np

from adapter_support import mrml, slicer  # noqa: F401  (mrml: fixture; skips without slicer-core)
from LesionDetectMRML import convert
from LesionDetectMRML.convert import numpy_matrix, vtk_matrix, volume_array  # noqa: F401


def add_volume(mrml, array_zyx: np.ndarray, geometry, class_name="vtkMRMLLabelMapVolumeNode", name="volume"):
    """A volume node holding `array_zyx` with `geometry`."""
    return convert.add_volume(mrml.scene, array_zyx, geometry, name, class_name=class_name)


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return numpy_matrix(m)
