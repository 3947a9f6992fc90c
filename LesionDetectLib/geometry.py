"""Image geometry and the one place where coordinate systems meet.

Conventions (the same as SimpleITK and Slicer's files):
- arrays are indexed (z, y, x); SimpleITK sizes, indices, spacing and origin are (x, y, z);
- physical points are LPS millimetres, as in SimpleITK, NIfTI/NRRD headers read by ITK and
  Slicer's files;
- RAS (MRML's internal frame) differs from LPS by the sign of x and y.  `lps_to_ras` is the
  only conversion; the MRML adapter and the markups writer both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points) -> np.ndarray:
    """Flip x and y of one point (3,) or many (N, 3).  Its own inverse."""
    return np.asarray(points, dtype=float) * _LPS_TO_RAS


ras_to_lps = lps_to_ras


@dataclass(frozen=True)
class Geometry:
    """Where a 3-D voxel grid sits in physical (LPS) space.

    `direction` is row-major 3x3 whose columns are the directions of the index axes i, j, k.
    2-D images are treated as one-slice volumes (z spacing 1 mm).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError(f"Geometry needs 3 sizes, spacings, origin values and 9 direction values: {self}")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """The geometry of a 2-D or 3-D SimpleITK image."""
        dim = image.GetDimension()
        if dim == 3:
            return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        if dim == 2:
            d = image.GetDirection()
            return cls(
                (*image.GetSize(), 1),
                (*image.GetSpacing(), 1.0),
                (*image.GetOrigin(), 0.0),
                (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0),
            )
        raise ValueError(f"only 2-D and 3-D images have a Geometry, not {dim}-D")

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(d["size"], d["spacing"], d["origin"], d["direction"])

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    # --- arrays <-> images --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """The numpy (z, y, x) shape of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of `array` (z, y, x) with this geometry."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the geometry's (z, y, x) {self.shape}")
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def same_grid(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """Same size and, within `tol` (mm or direction cosine), the same physical placement."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
                and np.allclose(self.origin, other.origin, atol=tol, rtol=0)
                and np.allclose(self.direction, other.direction, atol=tol, rtol=0))

    # --- index <-> physical ---------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """3x3: continuous index (i, j, k) offsets to LPS mm offsets (direction @ diag(spacing))."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3) @ np.diag(self.spacing)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.matrix
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k, 1) to RAS mm (what MRML's IJKToRAS holds)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps()

    def index_to_lps(self, ijk) -> np.ndarray:
        """Continuous (x, y, z)-ordered indices, (3,) or (N, 3), to LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.matrix.T + np.asarray(self.origin)

    def lps_to_index(self, lps) -> np.ndarray:
        """LPS mm, (3,) or (N, 3), to continuous (x, y, z)-ordered indices."""
        lps = np.asarray(lps, dtype=float)
        return (lps - np.asarray(self.origin)) @ np.linalg.inv(self.matrix).T

    def contains(self, lps, margin: float = 0.5) -> np.ndarray:
        """Whether LPS points lie inside the image (voxel centres ± `margin` voxel)."""
        idx = np.atleast_2d(self.lps_to_index(lps))
        upper = np.asarray(self.size, dtype=float) - 1 + margin
        inside = np.all((idx >= -margin) & (idx <= upper), axis=1)
        return inside if np.ndim(lps) == 2 else bool(inside[0])

    def axis_aligned_box(self, index_min, index_max) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A box covering voxels index_min..index_max (inclusive, (x, y, z) order).

        Returns (centre LPS mm, size mm along the image axes, 3x3 axes matrix whose columns
        are the box's axis directions in LPS), the form `prediction.LesionBox` holds.
        """
        lo = np.asarray(index_min, dtype=float) - 0.5
        hi = np.asarray(index_max, dtype=float) + 0.5
        centre = self.index_to_lps((lo + hi) / 2)
        size = (hi - lo) * np.asarray(self.spacing)
        axes = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return centre, size, axes
