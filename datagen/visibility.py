"""Per-frame visibility (the ``visible`` list of a scene frame) from an instance mask.

Both the synthetic renderer and the dataset readers produce an instance mask per frame (rendered,
read from the source's own masks, or ray-cast from the object geometry with a depth test) and call
:func:`visibility_from_mask`.
"""

from __future__ import annotations

import numpy as np

from datagen.scene import Visibility

BACKGROUND = -1


def visibility_from_mask(instance_mask: np.ndarray, min_pixels: int = 1) -> tuple[Visibility, ...]:
    """Visible instances of one frame.

    Args:
        instance_mask: (H, W) integer instance id per pixel, ``BACKGROUND`` (-1) where no object.
        min_pixels: instances covering fewer pixels are left out.

    Returns:
        One :class:`Visibility` per instance, sorted by instance id, with the tight pixel box
        ``[x0, y0, x1, y1]`` (inclusive-exclusive: ``x1 = last column + 1``) and the pixel count.
    """
    if instance_mask.ndim != 2:
        raise ValueError(f"instance mask must be (H, W), got shape {instance_mask.shape}")
    ids, counts = np.unique(instance_mask[instance_mask != BACKGROUND], return_counts=True)
    out = []
    for instance_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if count < min_pixels:
            continue
        ys, xs = np.nonzero(instance_mask == instance_id)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        out.append(Visibility(instance_id=int(instance_id), bbox_2d=box, pixels=int(count)))
    return tuple(out)
