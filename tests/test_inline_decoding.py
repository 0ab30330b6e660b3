"""Small requests decode on the HTTP process's event loop, large ones in a thread, alike.

``decode_small_inline`` must give exactly what ``decode_request`` gives, whichever way it
decodes, refuse bad input with the same 4xx, and give up on the event loop *before* decoding
an image that would take the request past its inline pixel cap.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi import HTTPException
from innerloop_server.app import INLINE_DECODE_ITEMS, INLINE_DECODE_PIXELS, decode_small_inline
from innerloop_server.decoding import Task, TooLargeToDecodeInline, decode_request
from innerloop_server.limits import Limits
from innerloop_server.registry import Registry
from innerloop_server.schemas import AdaptRequest, PredictRequest
from server_harness import encode, glyph, image_request, make_checkpoints, vector_request


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    (folder / "broken.safetensors").unlink()
    return Registry.from_folder(folder)


def _same(a: Task, b: Task) -> None:
    assert (a.model, a.steps, a.lr, a.labels, a.kind) == (b.model, b.steps, b.lr, b.labels, b.kind)
    np.testing.assert_array_equal(a.support_x, b.support_x)
    np.testing.assert_array_equal(a.support_y, b.support_y)
    np.testing.assert_array_equal(a.query_x, b.query_x)


def _with_big_query(side: int) -> PredictRequest:
    body = image_request(3, 2, 2, seed=4)
    body["query"].append(encode(glyph(1, 9).resize((side, side))))
    return PredictRequest.model_validate(body)


def test_small_request_decodes_inline_as_in_a_thread(registry: Registry) -> None:
    limits = Limits()
    request = PredictRequest.model_validate(image_request(5, 1, 5, seed=2))
    inline = decode_request(request, registry, limits, inline_pixels=INLINE_DECODE_PIXELS)
    _same(inline, decode_request(request, registry, limits))
    _same(asyncio.run(decode_small_inline(request, registry, limits)), inline)


def test_inline_decode_stops_before_a_large_image(registry: Registry) -> None:
    side = int(INLINE_DECODE_PIXELS**0.5) + 1  # one image past the cap on its own
    request = _with_big_query(side)
    with pytest.raises(TooLargeToDecodeInline) as stopped:
        decode_request(request, registry, Limits(), inline_pixels=INLINE_DECODE_PIXELS)
    assert str(stopped.value) == "query[2]"  # the big one, not an earlier drawing
    # the route then decodes it in a thread: the same task as a plain decode
    expected = decode_request(request, registry, Limits())
    _same(asyncio.run(decode_small_inline(request, registry, Limits())), expected)
    assert expected.query_x.shape[0] == 3


def test_many_items_go_to_the_thread_and_decode_alike(registry: Registry) -> None:
    ways = INLINE_DECODE_ITEMS // 2 + 1  # ways x 2 shots + 1 query > the inline item count
    request = PredictRequest.model_validate(image_request(ways, 2, 1, seed=5))
    assert len(request.support or []) + len(request.query) > INLINE_DECODE_ITEMS
    decoded = asyncio.run(decode_small_inline(request, registry, Limits()))
    _same(decoded, decode_request(request, registry, Limits()))


def test_bad_input_gets_the_same_4xx_either_way(registry: Registry) -> None:
    body = image_request(3, 1, 1, seed=1)
    body["query"][0] = "not base64 !!"
    request = PredictRequest.model_validate(body)
    with pytest.raises(HTTPException) as inline:
        asyncio.run(decode_small_inline(request, registry, Limits()))
    with pytest.raises(HTTPException) as plain:
        decode_request(request, registry, Limits())
    assert (inline.value.status_code, inline.value.detail) == (
        plain.value.status_code,
        plain.value.detail,
    )
    assert inline.value.status_code == 422


@pytest.mark.parametrize("side", [90, 700])  # the 413 is raised inline / after the thread hop
def test_request_pixel_limit_still_refuses(registry: Registry, side: int) -> None:
    # 8 drawings of 28x28 (6,272 pixels) fit; the last query takes the request past the limit
    limits = Limits(max_request_pixels=10_000)
    assert side * side + 8 * 28 * 28 > limits.max_request_pixels
    with pytest.raises(HTTPException) as refused:
        asyncio.run(decode_small_inline(_with_big_query(side), registry, limits))
    assert refused.value.status_code == 413
    assert "--max-request-pixels" in str(refused.value.detail)
    assert "query[2]" in str(refused.value.detail)


def test_adapt_and_vector_requests(registry: Registry) -> None:
    adapt = AdaptRequest.model_validate(
        {k: v for k, v in image_request(4, 2, 0, seed=3).items() if k != "query"}
    )
    _same(
        asyncio.run(decode_small_inline(adapt, registry, Limits())),
        decode_request(adapt, registry, Limits()),
    )
    vectors = PredictRequest.model_validate(vector_request(6, 3))
    _same(
        asyncio.run(decode_small_inline(vectors, registry, Limits())),
        decode_request(vectors, registry, Limits()),
    )
