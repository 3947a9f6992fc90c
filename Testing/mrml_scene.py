"""A real, headless MRML scene for tests (slicer-core wheel; no Qt, no slicer.app).

Set up the way trame-slicer's `SlicerApp` mirrors qSlicerCoreApplication::setMRMLScene: an
application logic with the colour logic and its default colour nodes, then the module logics
that storage nodes and segmentations need, each given the scene and the application logic
and registered by module name.  The `mrml` fixture skips the test when slicer-core is absent.
Without Slicer's share folder the terminology logic logs that it found no terminology files;
that is expected and harmless here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

try:
    import slicer

    HAVE_SLICER = hasattr(slicer, "vtkMRMLScene")  # another package named "slicer" would lack it
except ImportError:
    slicer = None
    HAVE_SLICER = False

# module name -> logic class, as Slicer registers them
_MODULE_LOGICS = {
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Terminologies": "vtkSlicerTerminologiesModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}


@dataclass
class MRMLScene:
    scene: object
    app_logic: object
    logics: dict

    def logic(self, name: str):
        return self.logics[name]


def new_scene() -> MRMLScene:
    """A fresh scene with the application logic and the module logics registered."""
    if not HAVE_SLICER:
        pytest.skip("slicer-core (real MRML) is not installed")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    logics = {"Colors": color_logic}
    for module_name, class_name in _MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(module_name, logic)
        logics[module_name] = logic
    return MRMLScene(scene=scene, app_logic=app_logic, logics=logics)


@pytest.fixture
def mrml() -> MRMLScene:
    """A fresh scene per test, cleared afterwards."""
    s = new_scene()
    yield s
    s.scene.Clear(1)


# --- numpy <-> MRML volumes (what slicer.util does, without slicer.app) -----------------------

def vtk_matrix(m: np.ndarray):
    import vtk

    out = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            out.SetElement(i, j, float(m[i, j]))
    return out


def numpy_matrix(vtk_m) -> np.ndarray:
    return np.array([[vtk_m.GetElement(i, j) for j in range(4)] for i in range(4)])


def add_volume(mrml: MRMLScene, array_zyx: np.ndarray, geometry, class_name="vtkMRMLLabelMapVolumeNode",
               name="volume"):
    """A volume node holding `array_zyx` with `geometry` (IJK-to-RAS from Geometry.ijk_to_ras)."""
    import vtk
    from vtk.util import numpy_support

    array_zyx = np.ascontiguousarray(array_zyx)
    image = vtk.vtkImageData()
    image.SetDimensions(*geometry.size)
    vtk_array = numpy_support.numpy_to_vtk(array_zyx.ravel(), deep=1)
    image.GetPointData().SetScalars(vtk_array)
    node = mrml.scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(vtk_matrix(geometry.ijk_to_ras()))
    return node


def volume_array(node) -> np.ndarray:
    """The (z, y, x) voxel array of a volume node."""
    from vtk.util import numpy_support

    image = node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx).copy()


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return numpy_matrix(m)
