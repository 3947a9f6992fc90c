"""Offscreen pictures of slice views, drawn by MRML's own slice logic and displayable managers
(segmentations, markups) in an offscreen VTK render window: what Slicer's slice views show,
without the application (as trame-slicer's SliceView does).

`python -m LesionDetectMRML.render --bundle CASE.mrb --out CASE.png` renders the Red, Yellow
and Green views of a scene bundle side by side, centred on its best-scoring box or point.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# what the slice views draw besides the volume layers
DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")


def render_slice_view(slicer_scene, view: str = "Red", size: int = 400):
    """vtkImageData (RGB) of one slice view as it is set up in the scene (layers, offset, FOV)."""
    import slicer
    import vtk

    scene, app_logic = slicer_scene.scene, slicer_scene.app_logic
    slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
    if slice_node is None:
        raise ValueError(f"the scene has no {view} slice view")
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    # the slice image in layer 0, what the displayable managers draw in layer 1 above it, so
    # that translucent segment fills blend with the image
    image_renderer = vtk.vtkRenderer()
    renderer = vtk.vtkRenderer()
    renderer.SetLayer(1)
    for r in (image_renderer, renderer):
        r.GetActiveCamera().ParallelProjectionOn()
    window.SetNumberOfLayers(2)
    window.AddRenderer(image_renderer)
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers expect one
    interactor.SetRenderWindow(window)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for manager in DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    managers = slicer.vtkMRMLDisplayableManagerGroup()
    managers.Initialize(factory, renderer)

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    app_logic.GetSliceLogics().AddItem(logic)
    try:
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(slice_node)
        managers.SetMRMLDisplayableNode(slice_node)
        logic.ResizeSliceNode(size, size)
        # the slice image: the logic's blend of background, foreground and label layers (RGBA 0-255)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        mapper.SetInputConnection(logic.GetImageDataConnection())
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        image_renderer.AddViewProp(actor)
        window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.SetInputBufferTypeToRGB()
        grab.Update()
        image = vtk.vtkImageData()
        image.DeepCopy(grab.GetOutput())
    finally:
        app_logic.GetSliceLogics().RemoveItem(logic)
        managers.SetMRMLDisplayableNode(None)
        window.Finalize()
    return image


def render_views(slicer_scene, out_png, views=("Red", "Yellow", "Green"), size: int = 400, center_ras=None,
                 field_of_view_mm: float | None = None):
    """The slice views side by side in one PNG: fitted to the background volume, or showing
    `field_of_view_mm` around `center_ras` when given."""
    import slicer
    import vtk

    scene = slicer_scene.scene
    _fit_to_background(slicer_scene, views, size)
    if field_of_view_mm:
        for view in views:
            node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
            node.SetFieldOfView(field_of_view_mm, field_of_view_mm, node.GetFieldOfView()[2])
    if center_ras is not None:
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *center_ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    append = vtk.vtkImageAppend()
    append.SetAppendAxis(0)
    for view in views:
        append.AddInputData(render_slice_view(slicer_scene, view, size))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(out_png))
    writer.SetInputConnection(append.GetOutputPort())
    writer.Write()
    return Path(out_png)


def _fit_to_background(slicer_scene, views, size: int) -> None:
    import slicer

    for view in views:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(slicer_scene.app_logic)
        logic.SetMRMLScene(slicer_scene.scene)
        logic.SetSliceNode(slicer_scene.scene.GetNodeByID(f"vtkMRMLSliceNode{view}"))
        logic.ResizeSliceNode(size, size)
        logic.FitSliceToBackground()
        logic.SetMRMLScene(None)


def best_finding_ras(scene):
    """RAS centre of the best-scoring ROI, else of the best-scoring control point, else None."""
    from . import convert

    rois = [scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]
    if rois:
        center = [0.0, 0.0, 0.0]
        max(rois, key=convert.box_score).GetCenter(center)
        return center
    points = scene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    if points is not None and points.GetNumberOfControlPoints():
        best = max(range(points.GetNumberOfControlPoints()), key=lambda n: convert.point_score(points, n))
        return list(points.GetNthControlPointPositionVector(best))
    return None


def main(argv: list[str] | None = None) -> int:
    from . import headless

    parser = argparse.ArgumentParser(prog="python -m LesionDetectMRML.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a Slicer scene bundle (.mrb)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--size", type=int, default=400, help="pixels per view")
    parser.add_argument("--field-of-view", type=float, help="mm shown around the best finding (default: whole image)")
    args = parser.parse_args(argv)
    slicer_scene = headless.new_scene(slice_views=False)
    with tempfile.TemporaryDirectory() as tmp:
        if not slicer_scene.app_logic.OpenSlicerDataBundle(str(args.bundle), tmp):
            print(f"lesiondetect: error: {args.bundle}: could not be opened as a scene bundle", file=sys.stderr)
            return 2
        render_views(slicer_scene, args.out, size=args.size, center_ras=best_finding_ras(slicer_scene.scene),
                     field_of_view_mm=args.field_of_view)
    return 0


if __name__ == "__main__":
    sys.exit(main())
