"""Turn any drawing into the exact model input a checkpoint expects.

Training data loaders and the server both call :func:`prepare_image`, so a drawing sent over
HTTP becomes byte-for-byte the tensor that ``innerloop evaluate`` saw for the same drawing.
That is what makes "served accuracy equals evaluated accuracy" hold.

Conventions (also written into every image checkpoint's card under ``preprocessing``):
- one channel, ``size`` x ``size`` pixels, uint8, **ink is high** (255 = ink, 0 = background);
- polarity is detected from the border: a drawing whose border is mostly light is inverted,
  so dark-on-light scans and light-on-dark canvases both work;
- non-square images are padded with background to a square before resizing, so strokes keep
  their aspect ratio;
- 16-bit greyscale is scaled to 8 bits (``v / 257``), not clipped: Pillow's own ``convert("L")``
  clips every value above 255, which turns mid-grey ink on a 16-bit PNG into a blank page;
- an EXIF orientation tag is applied first, so a phone photo is seen the way its owner saw it;
- the model sees ``uint8 / 255`` as float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageSpec:
    """How raw images become model inputs; stored in the checkpoint card."""

    size: int = 28
    channels: int = 1
    polarity: str = "ink-high (auto-inverted from a light border)"
    scale: str = "uint8 / 255"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ImageSpec:
        size = data.get("size", 28)
        channels = data.get("channels", 1)
        if not isinstance(size, int) or not isinstance(channels, int):
            raise ValueError("preprocessing.size and preprocessing.channels must be integers")
        return cls(size=size, channels=channels)


def _border_is_light(pixels: np.ndarray) -> bool:
    """Whether the border's median is above mid-grey (a light background to invert).

    The median of the two middle values, as ``np.median`` computes it, without its ~15 us of
    Python overhead per drawing (every served image passes here)."""
    border = np.sort(np.concatenate([pixels[0, :], pixels[-1, :], pixels[:, 0], pixels[:, -1]]))
    middle_sum = int(border[(border.size - 1) // 2]) + int(border[border.size // 2])
    return middle_sum > 254


def prepare_image(image: Image.Image | np.ndarray, size: int = 28) -> np.ndarray:
    """Return the canonical ``uint8 [size, size]`` ink-high image for any input drawing.

    Accepts a PIL image in any mode (transparency is composited onto white) or a 2-D array
    (bool arrays use Omniglot's convention, ``True`` = background).
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    image = _upright(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = _to_gray(image)
    if _border_is_light(gray):
        gray = 255 - gray
    height, width = gray.shape
    if height != width:
        side = max(height, width)
        canvas = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top : top + height, left : left + width] = gray
        gray = canvas
    if gray.shape[0] != size:
        resized = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BOX)
        gray = np.asarray(resized, dtype=np.uint8)
    return np.ascontiguousarray(gray)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (rotations and mirrors), if there is one."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # unreadable EXIF: use the pixels as stored
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _to_gray(image: Image.Image) -> np.ndarray:
    """Any mode -> ``uint8 [H, W]``; 16- and 32-bit integer greys are scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT_MODES or float(values.max(initial=0.0)) > 255.0:
            values = values / 257.0  # 65535 -> 255
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if image.mode == "L":  # no copy through convert()
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array
    if array.dtype == np.bool_:
        return Image.fromarray(np.where(array, 255, 0).astype(np.uint8), mode="L")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array, initial=0.0)) <= 1.0:
            array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255)
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def images_to_tensor_array(images: np.ndarray) -> np.ndarray:
    """``uint8 [..., H, W]`` -> ``float32 [..., 1, H, W]`` in [0, 1]: the model's input."""
    return (images.astype(np.float32) / 255.0)[..., None, :, :]
