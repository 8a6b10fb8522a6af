"""Which instance each mesh triangle belongs to, and :class:`VisibilityRenderer`, which ray-casts
the mesh per frame (depth test included) into an instance mask and turns it into the frame's
``visible`` list.

Cameras OpenCV (x right, y down, z forward), ``cam_to_world`` 4x4. Shapes: ``V`` vertices, ``F``
triangles, ``H`` x ``W`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import open3d as o3d

from datagen.readers.ply import Mesh
from datagen.visibility import BACKGROUND, visibility_from_mask
from vlm3r_core.scene import Intrinsics, SceneObject, Visibility

VISIBILITY_MAX_SIDE = 256  # instance masks are ray-cast at most this many pixels wide/high


def triangle_labels_from_vertices(triangles: np.ndarray, vertex_labels: np.ndarray) -> np.ndarray:
    """(F,) instance per triangle: the label two of its three vertices share, else its first vertex's."""
    a, b, c = vertex_labels[triangles].T  # (F,) each
    return np.where(b == c, b, a)


def triangle_labels_from_boxes(
    mesh: Mesh, objects: Sequence[SceneObject], margin: float = 0.02
) -> np.ndarray:
    """(F,) instance per triangle: the smallest box (grown by ``margin``) holding its centroid, or -1."""
    centroids = mesh.vertices[mesh.triangles].mean(axis=1)  # (F, 3)
    labels = np.full(len(centroids), BACKGROUND, dtype=np.int64)
    volume = np.full(len(centroids), np.inf)
    for obj in objects:
        local = (centroids - obj.center) @ obj.rotation  # (F, 3) in box axes
        inside = np.all(np.abs(local) <= obj.extent / 2 + margin, axis=1)
        take = inside & (float(np.prod(obj.extent)) < volume)
        labels[take], volume[take] = obj.instance_id, float(np.prod(obj.extent))
    return labels


class VisibilityRenderer:
    """Ray-casts a labelled mesh from a camera into an instance mask (nearest surface wins).

    Masks are cast at reduced resolution (longest side at most ``max_side``); boxes and pixel counts
    are scaled back to the full image.
    """

    def __init__(self, mesh: Mesh, triangle_labels: np.ndarray, max_side: int = VISIBILITY_MAX_SIDE):
        if triangle_labels.shape != (len(mesh.triangles),):
            raise ValueError(
                f"need one label per triangle, got {triangle_labels.shape} for {len(mesh.triangles)}"
            )
        self.max_side = max_side
        self.triangle_labels = np.asarray(triangle_labels, dtype=np.int64)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(mesh.vertices.astype(np.float32)),
            o3d.core.Tensor(mesh.triangles.astype(np.uint32)),
        )

    def instance_mask(self, cam_to_world: np.ndarray, k: Intrinsics, width: int, height: int) -> np.ndarray:
        """(h, w) instance id per pixel (``BACKGROUND`` = -1) at the reduced resolution."""
        scale = min(1.0, self.max_side / max(width, height))
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        u = (np.arange(w) + 0.5) * (width / w)  # full-resolution x of each cast pixel centre
        v = (np.arange(h) + 0.5) * (height / h)
        x = np.broadcast_to(((u - k.cx) / k.fx)[None, :], (h, w))
        y = np.broadcast_to(((v - k.cy) / k.fy)[:, None], (h, w))
        dirs_cam = np.stack([x, y, np.ones((h, w))], axis=-1)  # (h, w, 3) OpenCV camera rays
        dirs = dirs_cam @ cam_to_world[:3, :3].T  # (h, w, 3) in world
        origins = np.broadcast_to(cam_to_world[:3, 3], (h, w, 3))
        rays = np.concatenate([origins, dirs], axis=-1).astype(np.float32)  # (h, w, 6)
        hit = self._scene.cast_rays(o3d.core.Tensor(rays))
        prim = hit["primitive_ids"].numpy().astype(np.int64)  # (h, w)
        valid = prim != o3d.t.geometry.RaycastingScene.INVALID_ID
        mask = np.full((h, w), BACKGROUND, dtype=np.int64)
        mask[valid] = self.triangle_labels[prim[valid]]
        return mask

    def visible(
        self, cam_to_world: np.ndarray, k: Intrinsics, width: int, height: int
    ) -> tuple[Visibility, ...]:
        """The frame's ``visible`` list in full-resolution pixels."""
        return visibility_from_mask(self.instance_mask(cam_to_world, k, width, height), size=(width, height))
