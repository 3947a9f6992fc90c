"""A real MRML scene without the Slicer application (slicer-core wheel: no Qt, no slicer.app).

Set up the way trame-slicer's `SlicerApp` mirrors qSlicerCoreApplication::setMRMLScene: an
application logic with the colour logic and its default colour nodes, then the module logics
that storage nodes, segmentations, markups and tables need, each given the scene and the
application logic and registered by module name, and the default slice views (Red, Yellow,
Green) so that overlay settings have slice composite nodes to live in.  The `.mrb` writer and
the tests share it.  Inside Slicer none of this is needed: the application has done it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# module name -> logic class, as Slicer registers them.  (Terminologies is left out: its
# logic needs the application's share folder of .term.json files, which the wheel lacks;
# the adapter writes terminology tags as strings.)
MODULE_LOGICS = {
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
}

# Slicer's conventional slice views: layout name -> orientation preset
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}

# The file-based colour tables of Slicer's share folder are not in the wheel; the ones the
# adapter uses are rebuilt from matplotlib (where Slicer's files come from) under Slicer's own
# node ID, so a saved scene refers to Slicer's table when it is opened in the application.
MATPLOTLIB_TABLES = {"Inferno.txt": "inferno", "Viridis.txt": "viridis"}


def import_slicer():
    """The slicer-core `slicer` package, or ImportError saying what is missing."""
    try:
        import slicer
    except ImportError as exc:
        raise ImportError(f"slicer-core is not installed ({exc}); install it with `pip install slicer-core`") from None
    if not hasattr(slicer, "vtkMRMLScene"):
        raise ImportError("the installed `slicer` package is not slicer-core (another package uses the name)")
    return slicer


@dataclass
class HeadlessSlicer:
    """A scene with the logics the adapter functions take as arguments."""

    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)

    def logic(self, name: str):
        return self.logics[name]

    def close(self):
        self.scene.Clear(1)


def new_scene(slice_views: bool = True) -> HeadlessSlicer:
    """A fresh scene with the application logic, the module logics and (optionally) slice views."""
    slicer = import_slicer()
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    add_matplotlib_color_tables(scene, color_logic)
    import vtk

    app_logic.SetSliceLogics(vtk.vtkCollection())  # filled by views (render.py), as Slicer's layout does
    app_logic.SetViewLogics(vtk.vtkCollection())
    logics = {"Colors": color_logic}
    for module_name, class_name in MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(module_name, logic)
        logics[module_name] = logic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    if slice_views:
        add_slice_views(scene)
    return HeadlessSlicer(scene=scene, app_logic=app_logic, logics=logics)


def add_matplotlib_color_tables(scene, color_logic) -> None:
    """Slicer's Inferno/Viridis tables (256 colours), as singletons that are not saved with the scene."""
    import matplotlib

    slicer = import_slicer()
    for file_name, cmap_name in MATPLOTLIB_TABLES.items():
        if scene.GetNodeByID(color_logic.GetFileColorNodeID(file_name)) is not None:
            continue
        cmap = matplotlib.colormaps[cmap_name]
        table = slicer.vtkMRMLColorTableNode()
        table.SetTypeToFile()
        table.SetName(file_name.removesuffix(".txt"))
        table.SetSingletonTag(color_logic.GetFileColorNodeSingletonTag(file_name))
        table.SetSaveWithScene(False)
        table.SetNumberOfColors(256)
        for i in range(256):
            r, g, b, _ = cmap(i / 255)
            table.SetColor(i, f"{cmap_name}{i}", r, g, b, 1.0)
        scene.AddNode(table)


def add_slice_views(scene) -> None:
    """Red/Yellow/Green slice nodes with their composite nodes, as Slicer's layout creates them."""
    slicer = import_slicer()
    colors = {"Red": slicer.vtkMRMLAbstractViewNode.GetRedColor(),
              "Yellow": slicer.vtkMRMLAbstractViewNode.GetYellowColor(),
              "Green": slicer.vtkMRMLAbstractViewNode.GetGreenColor()}
    for name, orientation in SLICE_VIEWS.items():
        slice_node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        slice_node.SetLayoutLabel(name[0])
        slice_node.SetLayoutColor(*colors[name])
        slice_node.SetOrientation(orientation)
        scene.AddNode(slice_node)
        slice_node.UnRegister(None)  # CreateNodeByClass hands over a reference
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
