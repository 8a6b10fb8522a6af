"""Per-frame visibility (the ``visible`` list of a scene frame) from an instance mask.

Both the synthetic renderer and the dataset readers produce an instance mask per frame (rendered,
read from the source's own masks, or ray-cast from the object geometry with a depth test) and call
:func:`visibility_from_mask`.
"""

from __future__ import annotations

import numpy as np

from vlm3r_core.scene import Visibility

BACKGROUND = -1


def visibility_from_mask(
    instance_mask: np.ndarray, min_pixels: int = 1, size: tuple[int, int] | None = None
) -> tuple[Visibility, ...]:
    """Visible instances of one frame.

    One pass over the pixels whatever the number of instances: a histogram gives the pixel counts,
    and scattering each pixel's instance column into per-row and per-column hit tables gives the
    boxes.

    Args:
        instance_mask: (h, w) integer instance id per pixel, ``BACKGROUND`` (-1) where no object
            (ids are small integers: the histogram spans their range).
        min_pixels: instances covering fewer mask pixels are left out.
        size: (width, height) of the image the mask is a resize of (a mask cast or stored at lower
            resolution); boxes and pixel counts are given in its pixels, mask pixel ``(x, y)``
            covering ``[x * sx, (x + 1) * sx)`` with ``sx = width / w``, ``sy = height / h``, and
            ``pixels`` = mask pixels times ``sx * sy``, rounded. None: the mask's own pixels.

    Returns:
        One :class:`Visibility` per instance, sorted by instance id, with the tight pixel box
        ``[x0, y0, x1, y1]`` (inclusive-exclusive: ``x1 = last column + 1``) and the pixel count.
    """
    if instance_mask.ndim != 2:
        raise ValueError(f"instance mask must be (H, W), got shape {instance_mask.shape}")
    h, w = instance_mask.shape
    if instance_mask.size == 0:
        return ()
    low = min(int(instance_mask.min()), BACKGROUND)
    shifted = instance_mask.astype(np.int64) - low  # (h, w) >= 0: instance i -> i - low
    counts = np.bincount(shifted.ravel(), minlength=BACKGROUND - low + 1)  # (M,) pixels per shifted id
    counts[BACKGROUND - low] = 0  # background is no instance
    kept = np.flatnonzero(counts >= max(min_pixels, 1))  # (K,) shifted ids, ascending
    if not len(kept):
        return ()
    column = np.full(len(counts), len(kept))  # shifted id -> column of the hit tables (K: none)
    column[kept] = np.arange(len(kept))
    columns = column[shifted]  # (h, w)
    in_row = np.zeros((h, len(kept) + 1), dtype=bool)
    in_row[np.arange(h)[:, None], columns] = True
    in_col = np.zeros((w, len(kept) + 1), dtype=bool)
    in_col[np.arange(w)[None, :], columns] = True
    in_row, in_col = in_row[:, :-1], in_col[:, :-1]  # (h, K), (w, K)
    y0, y1 = in_row.argmax(0), h - in_row[::-1].argmax(0)  # (K,) first row, last row + 1
    x0, x1 = in_col.argmax(0), w - in_col[::-1].argmax(0)
    sx, sy = (1.0, 1.0) if size is None else (size[0] / w, size[1] / h)
    return tuple(
        Visibility(
            instance_id=int(value + low),
            bbox_2d=(float(x0[i] * sx), float(y0[i] * sy), float(x1[i] * sx), float(y1[i] * sy)),
            pixels=int(counts[value]) if size is None else int(round(counts[value] * sx * sy)),
        )
        for i, value in enumerate(kept.tolist())
    )
