"""Turn user inputs (images, vectors, labels) into the JSON the server accepts.

The server takes images as base64 PNG/JPEG strings and vectors as lists of
numbers. Users have file paths, raw bytes, PIL images, numpy arrays or tensors.
This module does that conversion once, the same way for the sync and async
clients, and rejects ambiguous inputs (a channels-first array, floats outside
[0, 1], NaN) here, with a message, rather than letting the server guess.

Design choices:

* PNG and JPEG bytes (from a path or given directly) are sent unchanged: no
  re-encoding cost, no quality loss, and no Pillow needed for the common case.
* numpy arrays are written as PNG with a small stdlib encoder (zlib + struct),
  so arrays need numpy but not Pillow. PNG is lossless, so the server sees
  exactly the pixels the caller had.
* Pillow and numpy are imported lazily, only for inputs that need them, with an
  error that says which extra to install.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

__all__ = [
    "ImageInput",
    "Input",
    "Label",
    "Target",
    "encode_image",
    "encode_input",
    "encode_target",
    "encode_vector",
]

if TYPE_CHECKING:  # pragma: no cover - precise types for type checkers only
    import numpy as np
    from PIL import Image as PILImage

    ImageInput: TypeAlias = (
        str | os.PathLike[str] | bytes | bytearray | memoryview | PILImage.Image | np.ndarray
    )
else:
    # At runtime Pillow and numpy may be absent, so the alias cannot name them.
    ImageInput = Any
"""An image: a file path, encoded file bytes, a PIL image, or an HxW / HxWxC array."""

Input: TypeAlias = ImageInput | Sequence[float]
"""A support or query input: an image, or a feature vector for vector models."""

Label: TypeAlias = str | int
"""A classification label; returned by the server exactly as given."""

Target: TypeAlias = str | int | float | Sequence[float]
"""A support target: a classification label, or a number / vector for regression."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Modes Pillow can write to PNG without changing the pixel values.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
# PNG colour type by number of channels: grey, grey+alpha, RGB, RGBA.
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def _numpy_module() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - exercised only without numpy
        raise ImportError(
            "this input needs numpy; install it with: pip install 'innerloop-client[numpy]'"
        ) from exc
    return numpy


def _pil_image_module() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "converting this image to PNG needs Pillow; install it with: "
            "pip install 'innerloop-client[pillow]' "
            "(PNG/JPEG files and numpy arrays work without Pillow)"
        ) from exc
    return Image


def _is_ndarray(x: object) -> bool:
    """True for numpy arrays, without importing numpy if the caller never did."""
    np_mod = sys.modules.get("numpy")
    return np_mod is not None and isinstance(x, np_mod.ndarray)


def _is_pil_image(x: object) -> bool:
    """True for PIL images, without importing Pillow if the caller never did."""
    pil_mod = sys.modules.get("PIL.Image")
    return pil_mod is not None and isinstance(x, pil_mod.Image)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def _png_from_uint8(pixels: bytes, height: int, width: int, channels: int) -> bytes:
    """Encode 8-bit, row-major, interleaved pixels as a minimal PNG (filter 0, no extras)."""
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[row * stride : (row + 1) * stride] for row in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPE[channels], 0, 0, 0)
    return (
        _PNG_MAGIC
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _array_to_png(array: Any) -> bytes:
    """Encode a 2-D (H, W) or 3-D (H, W, C) array as PNG.

    uint8 is taken as is; bool as 0/255; other integers must already lie in
    0..255; floats must lie in [0, 1] and are scaled by 255 and rounded. Anything
    else is refused rather than silently rescaled, because a wrong intensity
    scale quietly ruins predictions.
    """
    np = _numpy_module()
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in _PNG_COLOUR_TYPE:
        raise ValueError(
            f"image arrays must be HxW or HxWxC with C in 1..4 (channels last); got shape "
            f"{tuple(np.shape(array))}. For a channels-first CxHxW tensor, transpose it first "
            "(e.g. arr.transpose(1, 2, 0))."
        )
    height, width, channels = (int(s) for s in arr.shape)
    if height == 0 or width == 0:
        raise ValueError(f"image array has an empty dimension: shape {tuple(arr.shape)}")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer image arrays must hold values in 0..255; got {lo}..{hi} "
                f"(dtype {arr.dtype}). Scale to uint8, or to floats in [0, 1]."
            )
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not bool(np.isfinite(arr).all()):
            raise ValueError("float image arrays must not contain NaN or infinity")
        lo_f, hi_f = float(arr.min()), float(arr.max())
        if lo_f < 0.0 or hi_f > 1.0:
            raise ValueError(
                f"float image arrays must hold values in [0, 1]; got {lo_f:g}..{hi_f:g}. "
                "Divide 0..255 data by 255, or pass a uint8 array."
            )
        out = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"unsupported image array dtype {arr.dtype}")
    return _png_from_uint8(np.ascontiguousarray(out).tobytes(), height, width, channels)


def _pil_to_png(image: Any) -> bytes:
    """Save a PIL image as PNG, converting only modes PNG cannot store."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame is the image
    if image.mode == "F":
        raise ValueError(
            "PIL images in mode 'F' (32-bit float) have no unambiguous 8-bit form; "
            "convert to 'L' yourself or pass a numpy float array in [0, 1]"
        )
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bytes_to_png_or_jpeg(data: bytes, source: str) -> bytes:
    """Pass PNG/JPEG through untouched; convert any other image format to PNG."""
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return data
    pil_image = _pil_image_module()
    try:
        with pil_image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_png(im)
    except pil_image.UnidentifiedImageError as exc:
        raise ValueError(f"{source} is not an image format Pillow can read") from exc


def encode_image(image: Any) -> str:
    """Encode one image as the base64 string the server expects.

    Accepts a file path (``str`` or ``os.PathLike``), encoded file bytes, a PIL
    image, or a numpy array (uint8, or float in [0, 1]; HxW or HxWxC) or any
    object exposing ``__array__`` (e.g. a CPU tensor laid out HxWxC). A string
    that already is a ``data:`` URL is passed through unchanged.
    """
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {os.fspath(path)!r}")
        return _b64(_bytes_to_png_or_jpeg(path.read_bytes(), repr(os.fspath(path))))
    if isinstance(image, bytes | bytearray | memoryview):
        return _b64(_bytes_to_png_or_jpeg(bytes(image), "the given bytes"))
    if _is_pil_image(image):
        return _b64(_pil_to_png(image))
    if _is_ndarray(image) or hasattr(image, "__array__"):
        return _b64(_array_to_png(image))
    raise TypeError(
        f"cannot use {type(image).__name__} as an image; pass a file path, bytes, "
        "a PIL image or an HxW/HxWxC array"
    )


def _finite_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a real number, not {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{where} must be finite, got {out}")
    return out


def encode_vector(vector: Any) -> list[float]:
    """Encode a feature vector (list, tuple or 1-D array) as a list of finite floats.

    NaN and infinity are refused here because JSON cannot carry them.
    """
    if _is_ndarray(vector) or (
        hasattr(vector, "__array__") and not isinstance(vector, list | tuple)
    ):
        arr = _numpy_module().asarray(vector)
        if arr.ndim != 1:
            raise ValueError(f"vectors must be 1-D; got shape {tuple(arr.shape)}")
        vector = arr.tolist()
    if not isinstance(vector, list | tuple):
        raise TypeError(f"vectors must be a list, tuple or 1-D array, not {type(vector).__name__}")
    return [_finite_float(v, f"vector element {i}") for i, v in enumerate(vector)]


def encode_input(x: Any) -> str | list[float]:
    """Encode one support or query input: vectors stay numeric, everything else is an image.

    Arrays are dispatched on their rank: 1-D is a feature vector, 2-D or 3-D an image.
    """
    if isinstance(x, list | tuple):
        return encode_vector(x)
    if _is_ndarray(x) or (hasattr(x, "__array__") and not _is_pil_image(x)):
        ndim = _numpy_module().ndim(x)
        if ndim == 1:
            return encode_vector(x)
        if ndim in (2, 3):
            return encode_image(x)
        raise ValueError(
            f"array inputs must be 1-D (vector), 2-D or 3-D (image); got {ndim}-D. "
            "Pass a batch as a list, one item per input."
        )
    return encode_image(x)


def encode_target(y: Any) -> str | int | float | list[float]:
    """Encode a support target: a ``str``/``int`` label, or a number / vector for regression.

    numpy scalars are unwrapped so that ``np.int64(3)`` is sent (and returned) as the
    label ``3``. ``bool`` is refused: JSON would send ``true``, which is neither a
    label the caller meant nor a number.
    """
    if isinstance(y, str):
        return str(y)
    if isinstance(y, bool) or (_is_ndarray(y) and y.dtype.kind == "b"):
        raise TypeError("labels must be str or int (or numbers for regression), not bool")
    if _is_ndarray(y):
        if y.ndim == 0:
            return encode_target(y.item())
        return encode_vector(y)
    if isinstance(y, numbers.Integral):
        return int(y)
    if isinstance(y, numbers.Real):
        return _finite_float(y, "target")
    if isinstance(y, list | tuple):
        return encode_vector(y)
    if hasattr(y, "__array__"):  # tensors and other array-likes: scalar label or target vector
        return encode_target(_numpy_module().asarray(y))
    raise TypeError(
        f"cannot use {type(y).__name__} as a target; use str or int labels, "
        "or a number / list of numbers for regression"
    )
