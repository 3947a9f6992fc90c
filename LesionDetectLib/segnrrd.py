"""Slicer segmentation files (`.seg.nrrd`) without Slicer, through slicerio.

The format (Slicer's vtkMRMLSegmentationStorageNode; docs "Segmentation labelmap file
format"): a standard NRRD in LPS space whose voxels hold segment label values, one 3-D
volume per layer (4-D `list domain domain domain` when segments overlap), plus header fields
`Segmentation_*` and `Segment<N>_*` naming each segment, its colour, layer, label value and
tags (TerminologyEntry, Segmentation.Status).

Geometry: `Segmentation.geometry` is the grid of the image the segmentation refers to.  It is
taken from the "Reference image geometry" conversion parameter Slicer (and this writer) store;
without it, from the stored buffer moved back by `Segmentation_ReferenceImageExtentOffset`
(the buffer's first voxel sits at that index of the reference grid).  `mask()` places a
segment on that grid, or on any other, with nearest-neighbour resampling where grids differ.

Lesion terminology: Slicer's bundled terminologies have no plain "Lesion" type.  We use
category "Morphologically Altered Structure" / type "Mass" (SCT 4147007) of the "3D Slicer
General Anatomy list": it is in both that list and the DICOM master list, so Slicer's
terminology selector shows it, and its recommended colour (144, 238, 144) is used.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nrrd
import numpy as np
import SimpleITK as sitk
import slicerio
from slicerio.segmentation import terminology_entry_from_string, terminology_entry_to_string

from .errors import input_error
from .files import atomic_path
from .geometry import Geometry

STATUSES = ("notstarted", "inprogress", "completed", "flagged")

LESION_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list"
                      "~SCT^49755003^Morphologically Altered Structure"
                      "~SCT^4147007^Mass"
                      "~^^"
                      "~Anatomic codes - DICOM master list"
                      "~^^"
                      "~^^")
LESION_COLOR = (144 / 255, 238 / 255, 144 / 255)  # recommendedDisplayRGBValue of "Mass"

_REFERENCE_GEOMETRY = "Reference image geometry"
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # homogeneous form of geometry.lps_to_ras


@dataclass
class Segment:
    """One segment: which label value in which layer, and how Slicer names and shows it.

    `terminology` is a Slicer TerminologyEntry string (7 '~'-separated parts, "" for none);
    `status` becomes the Segmentation.Status tag; `extra_tags` are written as further tags.
    """

    id: str
    name: str
    label_value: int = 1
    color: tuple[float, float, float] = LESION_COLOR
    terminology: str = LESION_TERMINOLOGY
    status: str = "inprogress"
    layer: int = 0
    extra_tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.label_value = int(self.label_value)
        self.layer = int(self.layer)
        self.color = tuple(float(c) for c in self.color)


def lesion_segment(name: str = "Lesion", status: str = "inprogress", segment_id: str = "lesion",
                   label_value: int = 1, layer: int = 0) -> Segment:
    """A segment with the lesion terminology entry and its colour (see the module docstring)."""
    return Segment(id=segment_id, name=name, label_value=label_value, color=LESION_COLOR,
                   terminology=LESION_TERMINOLOGY, status=status, layer=layer)


# --- writing -------------------------------------------------------------------------------

def write_segmentation(path: str | os.PathLike, labelmap: np.ndarray, geometry: Geometry,
                       segments: list[Segment], overwrite: bool = False) -> Path:
    """Write a .seg.nrrd that Slicer opens as a segmentation on `geometry`.

    `labelmap` is (z, y, x) of label values, or (layers, z, y, x) for overlapping segments;
    each segment names its layer and label value.  Atomic; refuses to overwrite by default.
    """
    labelmap = np.asarray(labelmap)
    layers = labelmap if labelmap.ndim == 4 else labelmap[np.newaxis]
    _check_for_writing(layers, geometry, segments)
    dtype = np.uint8 if max((s.label_value for s in segments), default=0) <= 255 else np.uint16
    buffer = layers.astype(dtype)
    segmentation = {
        # slicerio (pynrrd, Fortran order) takes voxels (x, y, z) or (layers, x, y, z)
        "voxels": buffer[0].transpose(2, 1, 0) if labelmap.ndim == 3 else buffer.transpose(0, 3, 2, 1),
        "ijkToLPS": geometry.ijk_to_lps(),
        "encoding": "gzip",
        "masterRepresentation": "Binary labelmap",
        "containedRepresentationNames": ["Binary labelmap"],
        "referenceImageExtentOffset": [0, 0, 0],
        "conversionParameters": [{
            "name": _REFERENCE_GEOMETRY,
            "value": _reference_geometry_string(geometry),
            "description": "Image geometry description string determining the geometry of the labelmap "
                           "that is created in course of conversion.",
        }],
        "segments": [_segment_fields(s, buffer[s.layer]) for s in segments],
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)
    return Path(path)


def _check_for_writing(layers: np.ndarray, geometry: Geometry, segments: list[Segment]) -> None:
    if layers.ndim != 4 or layers.shape[1:] != geometry.shape:
        raise ValueError(f"labelmap shape {layers.shape} is neither the geometry's (z, y, x) {geometry.shape} "
                         f"nor (layers, z, y, x)")
    if not (np.issubdtype(layers.dtype, np.integer) or layers.dtype == bool):
        raise ValueError(f"labelmap must hold integer label values, not {layers.dtype}")
    if len({s.id for s in segments}) != len(segments):
        raise ValueError(f"segment ids must be unique: {[s.id for s in segments]}")
    if len({(s.layer, s.label_value) for s in segments}) != len(segments):
        raise ValueError("two segments share a layer and label value")
    for s in segments:
        if not 0 <= s.layer < layers.shape[0]:
            raise ValueError(f"segment {s.id!r}: layer {s.layer} is not in the labelmap's {layers.shape[0]} layers")
        if not 0 < s.label_value <= 65535:
            raise ValueError(f"segment {s.id!r}: label value {s.label_value} must be in 1..65535")
        if s.status not in STATUSES:
            raise ValueError(f"segment {s.id!r}: status {s.status!r} is not one of {STATUSES}")
        if s.terminology and s.terminology.count("~") != 6:
            raise ValueError(f"segment {s.id!r}: terminology entry must have 7 '~'-separated parts: {s.terminology!r}")
        texts = [s.id, s.name, s.terminology, *s.extra_tags, *map(str, s.extra_tags.values())]
        if any(ch in t for t in texts for ch in "\n\r|"):
            raise ValueError(f"segment {s.id!r}: id, name, terminology and tags cannot contain '|' or line breaks")
        if any(":" in k for k in s.extra_tags):
            raise ValueError(f"segment {s.id!r}: tag names cannot contain ':'")


def _segment_fields(s: Segment, layer: np.ndarray) -> dict:
    fields = {
        "id": s.id, "name": s.name, "nameAutoGenerated": False,
        "color": list(s.color), "colorAutoGenerated": False,
        "labelValue": s.label_value, "layer": s.layer,
        "extent": _extent(layer == s.label_value),
        "status": s.status,
    }
    if s.terminology:
        fields["terminology"] = terminology_entry_from_string(s.terminology)
    if s.extra_tags:
        fields["tags"] = {str(k): str(v) for k, v in s.extra_tags.items()}
    return fields


def _extent(mask_zyx: np.ndarray) -> list[int]:
    """Slicer's "i0 i1 j0 j1 k0 k1" bounding box of a mask; "0 -1 0 -1 0 -1" when empty."""
    if not mask_zyx.any():
        return [0, -1, 0, -1, 0, -1]
    extent = []
    for axis in (2, 1, 0):  # i = x, j = y, k = z
        hit = np.flatnonzero(mask_zyx.any(axis=tuple(a for a in range(3) if a != axis)))
        extent += [int(hit[0]), int(hit[-1])]
    return extent


def _reference_geometry_string(geometry: Geometry) -> str:
    """Slicer's geometry string: IJK-to-RAS 4x4 row-major, then the extent, ';'-separated."""
    ijk_to_ras = _RAS_FROM_LPS @ geometry.ijk_to_lps()
    extent = [v for n in geometry.size for v in (0, n - 1)]
    return "".join(f"{float(v)!r};" for v in ijk_to_ras.ravel()) + "".join(f"{v};" for v in extent)


# --- reading -------------------------------------------------------------------------------

@dataclass
class Segmentation:
    """A .seg.nrrd read into memory: segments, the reference grid and the stored voxel buffer."""

    path: Path
    geometry: Geometry  # the reference image's grid
    segments: list[Segment]
    layers: np.ndarray  # (layers, z, y, x) label values on `buffer_geometry`
    buffer_geometry: Geometry

    def segment(self, segment_id: str) -> Segment:
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise input_error(self.path, f'has no segment "{segment_id}" (segments: {[s.id for s in self.segments]})')

    def mask(self, segment_id: str, geometry: Geometry | None = None) -> np.ndarray:
        """uint8 (z, y, x) mask of one segment on `geometry` (default: the reference grid)."""
        s = self.segment(segment_id)
        return self._place((self.layers[s.layer] == s.label_value).astype(np.uint8), geometry)

    def union_mask(self, geometry: Geometry | None = None) -> np.ndarray:
        """uint8 (z, y, x): voxels in any segment."""
        union = np.zeros(self.buffer_geometry.shape, dtype=np.uint8)
        for s in self.segments:
            union |= (self.layers[s.layer] == s.label_value)
        return self._place(union, geometry)

    def _place(self, mask: np.ndarray, geometry: Geometry | None) -> np.ndarray:
        target = geometry or self.geometry
        if target.same_grid(self.buffer_geometry, tol=1e-6):
            return mask
        reference = sitk.Image([int(v) for v in target.size], sitk.sitkUInt8)
        reference.SetSpacing(target.spacing)
        reference.SetOrigin(target.origin)
        reference.SetDirection(target.direction)
        placed = sitk.Resample(self.buffer_geometry.image(mask), reference, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(placed)


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a .seg.nrrd written by Slicer, slicerio or `write_segmentation`."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "not found")
    try:
        raw = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error, nrrd.NRRDError) as exc:
        raise input_error(path, f"not a readable segmentation (.seg.nrrd) file: {exc}") from None
    voxels = raw.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        raise input_error(path, "not a segmentation: a .seg.nrrd holds a 3-D or 4-D (layers) voxel array")
    if not (np.issubdtype(voxels.dtype, np.integer) or voxels.dtype == bool):
        raise input_error(path, f"not a segmentation: voxels are {voxels.dtype}, not integer label values")
    # (x, y, z) or (layers, x, y, z) -> (layers, z, y, x)
    layers = voxels.transpose(2, 1, 0)[np.newaxis] if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)
    buffer_geometry = _geometry_from_matrix(path, np.asarray(raw["ijkToLPS"], dtype=float),
                                            layers.shape[:0:-1])
    is_segmentation = "referenceImageExtentOffset" in raw or raw["segments"]
    segments = (_segments_from_header(path, raw["segments"], layers) if is_segmentation
                else _segments_from_label_values(layers))
    offset = raw.get("referenceImageExtentOffset", [0, 0, 0])
    geometry = (_reference_geometry(path, raw.get("conversionParameters", []))
                or _shifted_back(buffer_geometry, offset))
    return Segmentation(path=path, geometry=geometry, segments=segments, layers=np.ascontiguousarray(layers),
                        buffer_geometry=buffer_geometry)


def _geometry_from_matrix(path: Path, ijk_to_lps: np.ndarray, size_xyz) -> Geometry:
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if not np.all(np.isfinite(ijk_to_lps)) or np.any(spacing == 0):
        raise input_error(path, "has no valid voxel geometry (space directions / origin)")
    return Geometry(size=tuple(int(n) for n in size_xyz), spacing=spacing, origin=ijk_to_lps[:3, 3],
                    direction=(columns / spacing).ravel())


def _reference_geometry(path: Path, parameters: list[dict]) -> Geometry | None:
    """The "Reference image geometry" conversion parameter as a Geometry, if present."""
    for p in parameters:
        if p.get("name") != _REFERENCE_GEOMETRY or not p.get("value"):
            continue
        try:
            values = [float(v) for v in p["value"].split(";") if v.strip()]
        except ValueError:
            return None
        if len(values) != 22:
            return None
        ijk_to_lps = _RAS_FROM_LPS @ np.array(values[:16]).reshape(4, 4)  # diag(-1,-1,1,1) is its own inverse
        extent = np.array(values[16:], dtype=int).reshape(3, 2)
        start, size = extent[:, 0], extent[:, 1] - extent[:, 0] + 1
        if np.any(size < 1):
            return None
        ijk_to_lps[:3, 3] = ijk_to_lps[:3, :3] @ start + ijk_to_lps[:3, 3]
        return _geometry_from_matrix(path, ijk_to_lps, size)
    return None


def _shifted_back(buffer: Geometry, offset) -> Geometry:
    """The reference grid whose index `offset` is the buffer's first voxel."""
    offset = np.asarray(offset, dtype=float)
    origin = np.asarray(buffer.origin) - buffer.matrix @ offset
    size = np.maximum(np.asarray(buffer.size) + offset.astype(int), 1)
    return Geometry(size=size, spacing=buffer.spacing, origin=origin, direction=buffer.direction)


def _segments_from_header(path: Path, fields: list[dict], layers: np.ndarray) -> list[Segment]:
    segments = []
    for n, f in enumerate(fields):
        layer = int(f.get("layer", 0))
        if not 0 <= layer < layers.shape[0]:
            raise input_error(path, f"segment {n} ({f.get('id')}) is in layer {layer}, but the file has "
                                    f"{layers.shape[0]} layer(s)")
        terminology = f.get("terminology")
        segments.append(Segment(
            id=f["id"],
            name=f.get("name", f["id"]),
            label_value=int(f.get("labelValue", 1)),
            color=tuple(f.get("color", LESION_COLOR)),
            terminology=terminology_entry_to_string(terminology) if terminology else "",
            status=f.get("status", "notstarted"),  # no tag: Slicer reports "not started"
            layer=layer,
            extra_tags=dict(f.get("tags", {})),
        ))
    return segments


def _segments_from_label_values(layers: np.ndarray) -> list[Segment]:
    """A plain labelmap NRRD: one segment per label value, as Slicer imports it."""
    values = [int(v) for v in np.unique(layers[0]) if v != 0]
    return [Segment(id=f"Segment_{v}", name=f"Segment_{v}", label_value=v, terminology="", status="notstarted")
            for v in values]
