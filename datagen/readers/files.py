"""Source files read with clear errors: JSON objects, required keys, arrays of a shape, matrices
in text files, images and numbered files. Every failure names the file and the reason.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from datagen.readers.common import SourceFormatError
from vlm3r_core import storage


def read_json_object(uri: str) -> dict[str, Any]:
    """Reads a JSON file that must hold an object; malformed JSON raises :class:`SourceFormatError`."""
    try:
        data = storage.read_json(uri)
    except ValueError as e:
        raise SourceFormatError(uri, f"invalid JSON ({e.__cause__ or e})") from e
    if not isinstance(data, dict):
        raise SourceFormatError(uri, f"expected a JSON object, got {type(data).__name__}")
    return data


def require(d: Any, key: str, uri: str, where: str = "") -> Any:
    """``d[key]`` or a :class:`SourceFormatError` naming the file and the missing key."""
    if not isinstance(d, dict) or key not in d:
        raise SourceFormatError(uri, f"missing key {where}{key!r}")
    return d[key]


def as_array(value: Any, shape: tuple[int, ...], uri: str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (-1 = any), or a :class:`SourceFormatError`."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SourceFormatError(uri, f"{what} is not numeric ({e})") from e
    if a.ndim != len(shape) or any(s not in (-1, n) for s, n in zip(shape, a.shape, strict=True)):
        raise SourceFormatError(uri, f"{what} must have shape {shape}, got {a.shape}")
    return a


def read_matrix_txt(uri: str, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file (e.g. ScanNet ``pose/<i>.txt``); may hold ``-inf``."""
    text = storage.read_text(uri)
    try:
        values = [float(x) for x in text.split()]
    except ValueError as e:
        raise SourceFormatError(uri, f"not a numeric matrix ({e})") from e
    if len(values) != shape[0] * shape[1]:
        raise SourceFormatError(
            uri, f"expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]} numbers, got {len(values)}"
        )
    return np.asarray(values, dtype=np.float64).reshape(shape)


def read_image(uri: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB image (JPEG, PNG, ...)."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SourceFormatError(uri, f"cannot decode image ({e})") from e


def image_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SourceFormatError(uri, f"cannot read image header ({e})") from e


def list_numbered_files(folder: str, suffix: str) -> dict[int, str]:
    """``{number: uri}`` for files named ``<digits...><number>.<suffix>`` directly in ``folder``."""
    out = {}
    for uri in storage.list_files(folder, suffix, recursive=False):
        stem = uri.rsplit("/", 1)[-1][: -len(suffix)]
        digits = stem[len(stem.rstrip("0123456789")) :]
        if digits:
            out[int(digits)] = uri
    return dict(sorted(out.items()))
