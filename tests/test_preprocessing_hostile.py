"""Images that used to be decoded wrongly with 200: 16-bit greys and EXIF orientations."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from server_harness import glyph

from innerloop.preprocessing import prepare_image


def _reopen(image: Image.Image, **options: object) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(("ink16", "ink8"), [(32768, 128), (0, 0), (16448, 64), (65535, 255)])
def test_16_bit_grey_is_scaled_not_clipped(ink16: int, ink8: int) -> None:
    strokes = np.asarray(glyph(4, 0)) < 128
    sixteen = _reopen(Image.fromarray(np.where(strokes, ink16, 65535).astype(np.uint16)))
    assert sixteen.mode.startswith("I;16")
    eight = Image.fromarray(np.where(strokes, ink8, 255).astype(np.uint8))
    np.testing.assert_array_equal(prepare_image(sixteen), prepare_image(eight))


def test_mid_grey_16_bit_ink_is_not_a_blank_page() -> None:
    strokes = np.asarray(glyph(4, 0)) < 128
    sixteen = _reopen(Image.fromarray(np.where(strokes, 32768, 65535).astype(np.uint16)))
    assert prepare_image(sixteen).max() >= 120  # Pillow's convert("L") gave all zeros


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
    ],
)
def test_exif_orientation_is_applied(orientation: int, stored_as: Image.Transpose) -> None:
    upright = glyph(5, 1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = _reopen(upright.transpose(stored_as), exif=exif)
    np.testing.assert_array_equal(prepare_image(tagged), prepare_image(upright))
    assert not np.array_equal(prepare_image(upright.transpose(stored_as)), prepare_image(upright))
