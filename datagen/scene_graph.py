"""The spatio-temporal scene graph: one object that answers every geometric question of the QA tasks.

Nodes:

- spatial nodes (:class:`InstanceNode`): one per object instance that questions may name, with the
  name they use (its ``category``) and its oriented box;
- temporal nodes (:class:`FrameNode`): one per *sampled* video frame, with its pose, intrinsics and
  the named instances visible in it.

Which objects are named, and how, is the question vocabulary (:mod:`datagen.vocabulary`): under
``"vsibench"`` an object whose raw label is outside the benchmark's vocabulary has no node, so no
category query (counts, scene- or frame-unique categories, first appearances) ever sees it, and
merged labels share one category ("trash can" and "recycling bin" are both "trash bin"). Such
objects stay in :attr:`SceneGraph.scene` as geometry: route obstacles, and the occluders the
readers already accounted for in each frame's visibility.

Frame sampling is the one rule of the system (:func:`vlm3r_core.video.sample_frame_indices`):
``linspace(0, N - 1, K, dtype=int)`` over the N video frames. "Frame k of K" in a question is the
k-th sampled frame (``rank = k - 1``). A sampled frame that the scene has no entry for (real sources
without a pose for every frame) has no node; questions never name it.

Conventions: world metres, right-handed, Z up. Cameras use OpenCV axes (x right, y down, z forward);
``cam_to_world`` is camera-to-world and the camera centre is its translation column ``t``
(the reference computed ``-R^T t`` in places, which is the world origin in camera coordinates).

Distances are exact: the closest-point distance between two oriented boxes (0 when they touch or
overlap) and between a point and a box, not the 5 cm point-grid approximation of the reference.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from datagen.vocabulary import VocabularyChoice, question_vocabulary
from vlm3r_core.scene import Intrinsics, Scene, Visibility
from vlm3r_core.video import DEFAULT_NUM_FRAMES, sample_frame_indices

_CORNER_SIGNS = np.array(
    [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64
)  # (8, 3)
# The 12 box edges as pairs of corner numbers (corners differing in exactly one sign).
_EDGES = np.array(
    [
        (i, j)
        for i, j in itertools.combinations(range(8), 2)
        if np.sum(_CORNER_SIGNS[i] != _CORNER_SIGNS[j]) == 1
    ]
)  # (12, 2)


@dataclass(frozen=True)
class InstanceNode:
    """One named object instance: category and oriented box (world metres).

    Attributes:
        category: the name questions use (the raw label mapped by the question vocabulary).
        center: (3,) box centre.
        extent: (3,) full side lengths along the box axes.
        rotation: (3, 3) columns are the box axes in world coordinates.
    """

    instance_id: int
    category: str
    center: np.ndarray
    extent: np.ndarray
    rotation: np.ndarray

    @cached_property
    def corners(self) -> np.ndarray:
        """(8, 3) world coordinates of the box corners."""
        return self.center + (_CORNER_SIGNS * (self.extent / 2)) @ self.rotation.T


@dataclass(frozen=True)
class FrameNode:
    """One sampled frame.

    Attributes:
        rank: 0-based position among the K sampled frames ("frame rank + 1 of K").
        index: frame number in the video.
        timestamp: ``index / fps`` seconds (the time line of the prompt uses the same value).
        cam_to_world: (4, 4) camera-to-world pose.
        visible: ids of the named instances visible in the frame, sorted.
        visibility: id -> 2D box (pixels of the video frame) and visible pixel count, for the
            instances in ``visible``.
    """

    rank: int
    index: int
    timestamp: float
    cam_to_world: np.ndarray
    intrinsics: Intrinsics
    visible: tuple[int, ...]
    visibility: Mapping[int, Visibility] = field(default_factory=dict)

    @property
    def camera_center(self) -> np.ndarray:
        """(3,) camera centre in world: the translation column ``t`` of ``cam_to_world``."""
        return self.cam_to_world[:3, 3]

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(M, 3) world points -> (M, 3) OpenCV camera coordinates of this frame: ``R^T (p - t)``."""
        rotation = self.cam_to_world[:3, :3]
        return (np.asarray(points, dtype=np.float64) - self.camera_center) @ rotation


class SceneGraph:
    """Instances and sampled frames of one scene, with the geometric queries of the QA tasks.

    Args:
        scene: a validated scene.
        num_samples: K, frames sampled from the video (32, the benchmark setting).
        vocabulary: which objects questions name (:func:`datagen.vocabulary.question_vocabulary`):
            ``"vsibench"``, the benchmark's names for the scene's dataset, or ``"all"``, every raw label.
    """

    def __init__(
        self, scene: Scene, num_samples: int = DEFAULT_NUM_FRAMES, vocabulary: VocabularyChoice = "vsibench"
    ):
        self.scene = scene
        self.num_samples = num_samples
        names = question_vocabulary(scene.dataset, vocabulary)
        self.instances: dict[int, InstanceNode] = {}
        for o in scene.objects:
            name = names.name(o.category)
            if name is not None:
                self.instances[o.instance_id] = InstanceNode(
                    o.instance_id, name, o.center, o.extent, o.rotation
                )
        self.sampled_indices = sample_frame_indices(scene.video.num_frames, num_samples)  # (K,)
        by_index = {f.index: f for f in scene.frames}
        self.frames: list[FrameNode] = []
        for rank, index in enumerate(self.sampled_indices.tolist()):
            f = by_index.get(index)
            if f is None:
                continue
            visibility = {v.instance_id: v for v in f.visible if v.instance_id in self.instances}
            self.frames.append(
                FrameNode(
                    rank,
                    index,
                    index / scene.video.fps,
                    f.cam_to_world,
                    f.intrinsics,
                    tuple(sorted(visibility)),
                    visibility,
                )
            )
        self.category_counts: Counter[str] = Counter(n.category for n in self.instances.values())
        self._box_distance_cache: dict[tuple[int, int], float] = {}

    # ---- time line -------------------------------------------------------------------------

    @property
    def timestamps(self) -> list[float]:
        """Seconds of the K sampled frames (``index / fps``), for the prompt's time line."""
        return [i / self.scene.video.fps for i in self.sampled_indices.tolist()]

    @property
    def duration_s(self) -> float:
        """Video length ``num_frames / fps`` in seconds."""
        return self.scene.video.num_frames / self.scene.video.fps

    def frame_description(self, frame: FrameNode) -> str:
        """``"frame k of K"`` for a sampled frame (k 1-based)."""
        return f"frame {frame.rank + 1} of {self.num_samples}"

    # ---- categories ------------------------------------------------------------------------

    def instances_of(self, category: str) -> list[InstanceNode]:
        return [n for n in self.instances.values() if n.category == category]

    def unique_categories(self) -> list[str]:
        """Categories with exactly one instance in the scene, sorted."""
        return sorted(c for c, n in self.category_counts.items() if n == 1)

    def unique_instance(self, category: str) -> InstanceNode:
        """The one instance of a scene-unique category."""
        found = self.instances_of(category)
        if len(found) != 1:
            raise ValueError(
                f"scene {self.scene.scene_id!r}: category {category!r} has {len(found)} instances, not 1"
            )
        return found[0]

    def frame_unique_instances(self, frame: FrameNode) -> dict[str, InstanceNode]:
        """Category -> instance for the categories with exactly one visible instance in the frame."""
        seen = Counter(self.instances[i].category for i in frame.visible)
        return {
            self.instances[i].category: self.instances[i]
            for i in frame.visible
            if seen[self.instances[i].category] == 1
        }

    def first_appearances(self) -> dict[str, FrameNode]:
        """Category -> the first sampled frame in which any of its instances is visible."""
        first: dict[str, FrameNode] = {}
        for frame in self.frames:
            for i in frame.visible:
                first.setdefault(self.instances[i].category, frame)
        return first

    # ---- distances -------------------------------------------------------------------------

    def box_distance(self, id_a: int, id_b: int) -> float:
        """Exact closest-point distance in metres between two instances' boxes (0 if they touch)."""
        key = (min(id_a, id_b), max(id_a, id_b))
        if key not in self._box_distance_cache:
            a, b = self.instances[id_a], self.instances[id_b]
            self._box_distance_cache[key] = obb_distance(
                a.center, a.extent, a.rotation, b.center, b.extent, b.rotation
            )
        return self._box_distance_cache[key]

    def category_distance(self, category_a: str, category_b: str) -> float:
        """Closest-point distance between two categories: minimum over their instance pairs."""
        return min(
            self.box_distance(a.instance_id, b.instance_id)
            for a in self.instances_of(category_a)
            for b in self.instances_of(category_b)
        )

    def camera_distance(self, frame: FrameNode, instance_id: int) -> float:
        """Distance in metres from the frame's camera centre to the nearest point of a box (0 inside)."""
        n = self.instances[instance_id]
        return float(point_box_distance(frame.camera_center[None], n.center, n.extent, n.rotation)[0])


def point_box_distance(
    points: np.ndarray, center: np.ndarray, extent: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Exact distance from points to an oriented box (0 for points inside).

    Args:
        points: (M, 3) world points.
        center, extent, rotation: the box, as in :class:`InstanceNode`.

    Returns:
        (M,) distances in metres.
    """
    local = (points - center) @ rotation  # (M, 3) in box axes
    outside = np.maximum(np.abs(local) - extent / 2, 0.0)  # (M, 3)
    return np.linalg.norm(outside, axis=1)


def obbs_overlap(c_a, e_a, r_a, c_b, e_b, r_b, eps: float = 1e-9) -> bool:
    """Separating-axis test on the 15 candidate axes: True when two oriented boxes intersect or touch."""
    cross = np.cross(r_a.T[:, None, :], r_b.T[None, :, :]).reshape(9, 3)  # (9, 3) edge-edge axes
    norms = np.linalg.norm(cross, axis=1)
    axes = np.concatenate([r_a.T, r_b.T, cross[norms > 1e-9] / norms[norms > 1e-9, None]])  # (<=15, 3)
    radius_a = np.abs(axes @ r_a) @ (e_a / 2)  # (<=15,) half-length of A's projection
    radius_b = np.abs(axes @ r_b) @ (e_b / 2)
    return bool(np.all(np.abs(axes @ (c_b - c_a)) <= radius_a + radius_b + eps))


def obb_distance(c_a, e_a, r_a, c_b, e_b, r_b) -> float:
    """Exact closest-point distance between two oriented boxes (0 when they touch or overlap).

    For disjoint convex polytopes the closest pair of points is realised either by a vertex of one
    box and the other box, or by interior points of an edge of each. So the distance is the minimum
    of the 16 vertex-to-box distances and of the edge-edge distances whose closest points lie inside
    both edges; overlap is decided by the separating-axis theorem.

    Args:
        c_a, e_a, r_a: centre (3,), full extents (3,), rotation (3, 3) of box A; same for B.
    """
    if obbs_overlap(c_a, e_a, r_a, c_b, e_b, r_b):
        return 0.0
    corners_a = c_a + (_CORNER_SIGNS * (e_a / 2)) @ r_a.T  # (8, 3)
    corners_b = c_b + (_CORNER_SIGNS * (e_b / 2)) @ r_b.T  # (8, 3)
    best = min(
        point_box_distance(corners_a, c_b, e_b, r_b).min(), point_box_distance(corners_b, c_a, e_a, r_a).min()
    )
    # Edge-edge: segments p + s u and q + t v, s, t in [0, 1]; 12 x 12 pairs.
    p = corners_a[_EDGES[:, 0]][:, None]  # (12, 1, 3)
    u = corners_a[_EDGES[:, 1]][:, None] - p  # (12, 1, 3)
    q = corners_b[_EDGES[:, 0]][None]  # (1, 12, 3)
    v = corners_b[_EDGES[:, 1]][None] - q  # (1, 12, 3)
    w = p - q  # (12, 12, 3)
    a, b, c = np.sum(u * u, -1), np.sum(u * v, -1), np.sum(v * v, -1)  # (12, 12)
    d, e = np.sum(u * w, -1), np.sum(v * w, -1)  # (12, 12)
    denom = a * c - b * b  # 0 for parallel edges (their closest points include an endpoint: covered above)
    ok = denom > 1e-12 * a * c
    safe = np.where(ok, denom, 1.0)
    s = (b * e - c * d) / safe
    t = (a * e - b * d) / safe
    ok &= (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
    if np.any(ok):
        gap = w + s[..., None] * u - t[..., None] * v  # (12, 12, 3)
        best = min(best, np.linalg.norm(gap[ok], axis=-1).min())
    return float(best)
