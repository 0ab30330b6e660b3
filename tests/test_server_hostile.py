"""Hostile clients against a real ``innerloop serve``: every defect found by probing, replayed.

Issue 10 lists what a probe from outside broke. Each becomes a row of :data:`HOSTILE` (a 4xx
whose ``detail`` names the field, answered within :data:`ANSWER_WITHIN_S`, and a good request
answered right after it) or a test of its own below: half-sent bodies, 16-bit and EXIF images,
the OpenAPI document against what the server does, the SDK against the real server.

The server runs with the **default** request limits (so the rows replay the requests as they
were sent), plus a short ``--body-timeout``. Its ``sine`` model is the shipped checkpoint: a
random-initialised regressor does not overflow on a query of 3e38, the trained one did.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from innerloop_server.limits import Limits
from PIL import Image
from server_harness import (
    REPO,
    ServerProcess,
    encode,
    glyph,
    http_client,
    image_request,
    make_checkpoints,
    running,
)

BODY_TIMEOUT_S = 2.0
MAX_IN_FLIGHT = 4
ANSWER_WITHIN_S = 2.0  # issue 10's bound for a refused request; a refusal is cheap
SHIPPED_SINE = REPO / "checkpoints" / "sine.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not SHIPPED_SINE.exists():
        pytest.skip("checkpoints/sine.safetensors is not in this checkout")
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    shutil.copy(SHIPPED_SINE, folder / "sine.safetensors")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    limits = ("--body-timeout", str(BODY_TIMEOUT_S), "--max-in-flight", str(MAX_IN_FLIGHT))
    with running(folder, log, *limits) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server) as http:
        yield http


def png(image: Image.Image, **options: Any) -> str:
    return encode(image, "PNG", **options)


def good() -> dict[str, Any]:
    return image_request(2, 1, 1, seed=31)


def sine_request(query: list[float], **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "model": "sine",
        "support": [{"x": [float(x)], "y": [float(np.sin(x))]} for x in rng.uniform(-5, 5, 10)],
        "query": [query],
        **extra,
    }


WHITE = png(Image.new("L", (8, 8), 255))
SAME = png(glyph(3, 0))
STRIP_WIDE = png(Image.new("L", (1_048_576, 1), 255))  # ~1 KB, 1 Mpx; 1 Tpx as a square
STRIP_TALL = png(Image.new("L", (1, 1_048_576), 255))
STRIP_SLOW = png(Image.new("L", (149_796, 7), 255))  # was 16 s of worker time, then 200
MEGAPIXEL = png(Image.new("L", (1024, 1024), 255))  # allowed alone; 33 of them are not
LIMITS = Limits()


def _with_query(image: str) -> dict[str, Any]:
    return {**good(), "query": [image]}


def _surrogate_label() -> bytes:
    """JSON with the escape ``\\ud800``: valid JSON, a lone surrogate once parsed."""
    return (
        b'{"support": [{"x": "'
        + SAME.encode()
        + b'", "y": "\\ud800"}, {"x": "'
        + WHITE.encode()
        + b'", "y": "b"}], "query": ["'
        + SAME.encode()
        + b'"]}'
    )


# (id, body: JSON-able or raw bytes, status, text the detail must contain: the field first)
HOSTILE: list[tuple[str, Any, int, str]] = [
    # 1. thin images
    (
        "1048576x1 strip",
        _with_query(STRIP_WIDE),
        413,
        "query[0]: image is 1048576x1, which is 1048576x1048576 = 1099511.6 Mpx once padded",
    ),
    (
        "1x1048576 strip",
        _with_query(STRIP_TALL),
        413,
        "query[0]: image is 1x1048576, which is 1048576x1048576",
    ),
    ("149796x7 strip", _with_query(STRIP_SLOW), 413, "query[0]: image is 149796x7, which is"),
    (
        "four slow strips",
        {**good(), "query": [STRIP_SLOW] * 4},
        413,
        "query[0]: image is 149796x7",
    ),
    (
        "pixels per request",
        {**good(), "query": [MEGAPIXEL] * 40},
        413,
        "query[31]: this image brings the request to 33,556,000 pixels (each image counted "
        "padded to a square); at most 33,554,432 per request allowed",
    ),
    # 2. compute budget: 50-way 10-shot, 500 queries, 100 steps held the worker 335 s
    (
        "50-way 10-shot 500 queries 100 steps",
        {
            "support": [{"x": SAME, "y": f"c{i % 50}"} for i in range(500)],
            "query": [SAME] * 500,
            "steps": 100,
        },
        413,
        "steps: 500 support items x 100 steps + 500 queries = 50500 units of work; at most "
        f"{LIMITS.max_work} allowed per request (--max-work)",
    ),
    # 4. NaN/infinity serialised as null with 200
    (
        "query 3e38 overflows sine",
        sine_request([3e38]),
        422,
        "query: adaptation diverged or the query inputs overflow the model",
    ),
    (
        "steps 100 lr 10 diverges",
        sine_request([1.0], steps=100, lr=10.0),
        422,
        "lr: adaptation diverged: the support loss became NaN or infinite after 100 steps at "
        "lr 10.0; lower lr or steps",
    ),
    # 5. lone surrogate label: plain-text 500 and a reset connection
    (
        "lone surrogate label",
        _surrogate_label(),
        422,
        "support[0].y: label is not valid Unicode text",
    ),
]


def _post(client: httpx.Client, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(
            "/v1/predict", content=body, headers={"content-type": "application/json"}
        )
    return client.post("/v1/predict", json=body)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_request_is_refused_quickly_and_the_server_still_answers(
    client: httpx.Client, body: Any, status: int, expected: str
) -> None:
    started = time.monotonic()
    response = _post(client, body)
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert expected in detail, detail
    assert elapsed < ANSWER_WITHIN_S, f"refused after {elapsed:.1f} s"
    after = client.post("/v1/predict", json=good())
    assert after.status_code == 200, after.text
    assert all(np.isfinite(list(p["scores"].values())).all() for p in after.json()["predictions"])


def test_a_finite_sine_answer_is_still_200(client: httpx.Client) -> None:
    """The divergence check refuses only non-finite answers: a large but finite query passes."""
    response = client.post("/v1/predict", json=sine_request([1e3]))
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert np.isfinite(prediction["y"]).all()


# ---- 3. half-sent bodies ------------------------------------------------------------------------
def _half_sent(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + b'{"model":'
    )
    return sock


def _read_answer(sock: socket.socket, timeout_s: float) -> str:
    """Everything the server sends until it closes the connection (bounded by time and size)."""
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def test_half_sent_bodies_do_not_lock_out_predict(
    server: ServerProcess, client: httpx.Client
) -> None:
    """More half-sent bodies than --max-in-flight: good requests still get 200, and the
    half-sent ones get 408 once --body-timeout has passed."""
    sockets = [_half_sent(server.url) for _ in range(3 * MAX_IN_FLIGHT)]
    try:
        time.sleep(0.3)  # let the server start reading all of them
        for _ in range(2):
            response = client.post("/v1/predict", json=good())
            assert response.status_code == 200, response.text
        answers = [_read_answer(sock, BODY_TIMEOUT_S + 30) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for answer in answers:
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "body: not received completely within 2 s (--body-timeout)" in answer


# ---- 7. images decoded wrongly with 200 ----------------------------------------------------------
def _sixteen_bit(image: Image.Image, ink: int, background: int) -> Image.Image:
    pixels = np.asarray(image)
    return Image.fromarray(np.where(pixels < 128, ink, background).astype(np.uint16))


def _eight_bit(image: Image.Image, ink: int) -> Image.Image:
    pixels = np.asarray(image)
    return Image.fromarray(np.where(pixels < 128, ink, 255).astype(np.uint8))


def test_16_bit_png_with_mid_grey_ink_is_the_8_bit_drawing(client: httpx.Client) -> None:
    """Mid-grey ink (32768 of 65535) is the 8-bit drawing with ink 128, not a blank page."""
    drawings = [glyph(c, s) for c in range(3) for s in range(2)]
    labels = ["a", "a", "b", "b", "c", "c"]
    query = glyph(1, 7)

    def request(convert: Any) -> dict[str, Any]:
        return {
            "support": [
                {"x": png(convert(d)), "y": y} for d, y in zip(drawings, labels, strict=True)
            ],
            "query": [png(convert(query))],
        }

    eight = client.post("/v1/predict", json=request(lambda d: _eight_bit(d, 128)))
    sixteen = client.post("/v1/predict", json=request(lambda d: _sixteen_bit(d, 32768, 65535)))
    blank = client.post(
        "/v1/predict",
        json={
            **request(lambda d: _eight_bit(d, 128)),
            "query": [png(Image.new("L", (28, 28), 255))],
        },
    )
    assert eight.status_code == sixteen.status_code == blank.status_code == 200
    assert sixteen.json()["predictions"] == eight.json()["predictions"]
    assert sixteen.json()["predictions"] != blank.json()["predictions"]


def test_exif_orientation_is_applied(client: httpx.Client) -> None:
    """A drawing stored rotated with EXIF orientation 6 is answered like the upright one."""
    body = image_request(3, 2, 1, seed=12)
    upright = glyph(1200 + 1, 60)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    reference = client.post("/v1/predict", json={**body, "query": [png(upright)]})
    tagged = client.post("/v1/predict", json={**body, "query": [png(stored, exif=exif)]})
    untagged = client.post("/v1/predict", json={**body, "query": [png(stored)]})
    assert reference.status_code == tagged.status_code == untagged.status_code == 200
    assert tagged.json()["predictions"] == reference.json()["predictions"]
    # the rotation matters to the model, so the tag was really applied
    assert untagged.json()["predictions"] != reference.json()["predictions"]


# ---- 10. the OpenAPI document says what the server does ------------------------------------------
@pytest.fixture(scope="module")
def openapi(client: httpx.Client) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_openapi_422_is_our_error_body(client: httpx.Client, openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/v1/predict"]["post"]["responses"]
    schema = responses["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    error = openapi["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["detail"]["type"] == "string"
    real = client.post("/v1/predict", json={**good(), "steps": "5"}).json()
    assert isinstance(real["detail"], str)
    assert set(real) <= set(error["properties"])
    assert {"field", "message"} == set(real["errors"][0])


def test_openapi_documents_every_status_the_middleware_sends(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "400", "401", "404", "408", "413", "422", "503", "504"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_openapi_example_is_a_request_the_server_accepts(
    client: httpx.Client, openapi: dict[str, Any]
) -> None:
    (example,) = openapi["components"]["schemas"]["PredictRequest"]["examples"]
    response = client.post("/v1/predict", json=example)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_openapi_content_types_of_health_and_metrics(
    client: httpx.Client, openapi: dict[str, Any], path: str
) -> None:
    documented = set(openapi["paths"][path]["get"]["responses"]["200"]["content"])
    real = client.get(path)
    assert real.status_code == 200
    assert documented == {"text/plain"}
    assert real.headers["content-type"].split(";")[0] == "text/plain"


# ---- 11. the SDK against the real server ---------------------------------------------------------
def test_sdk_reads_the_real_model_cards(server: ServerProcess) -> None:
    from innerloop_client import Client

    with Client(server.url) as sdk:
        cards = {card.name: card for card in sdk.models()}
    assert cards["omniglot"].max_ways == 20  # the fixture's card, capped by --max-ways (100)
    assert cards["omniglot"].task == "classification"
    assert cards["sine"].max_ways is None  # regression: no ways
    assert cards["omniglot"].input["size"] == 28


def test_sdk_predicts_against_the_real_server(server: ServerProcess) -> None:
    from innerloop_client import Client

    support = {"ring": [glyph(1, 0), glyph(1, 1)], "cross": [glyph(2, 0), glyph(2, 1)]}
    with Client(server.url) as sdk:
        result = sdk.predict(support, [glyph(1, 5), glyph(2, 5)], top_k=2)
    assert result.task == "classification"
    assert len(result.predictions) == 2
    assert {label for p in result.predictions for label in p.scores} == {"ring", "cross"}
    assert result.adaptation.steps == 2


def test_sdk_raises_the_servers_message_for_a_diverged_adaptation(server: ServerProcess) -> None:
    from innerloop_client import BadRequestError, Client

    with Client(server.url) as sdk, pytest.raises(BadRequestError) as caught:
        sdk.predict(
            [([float(x)], [float(np.sin(x))]) for x in np.linspace(-5, 5, 10)],
            [[1.0]],
            model="sine",
            steps=100,
            lr=10.0,
        )
    assert caught.value.status_code == 422
    assert caught.value.message.startswith("lr: adaptation diverged")


def test_sdk_raises_the_servers_message_for_a_thin_image(server: ServerProcess) -> None:
    from innerloop_client import Client, PayloadTooLargeError

    strip = Image.new("L", (149_796, 7), 255)
    with Client(server.url) as sdk, pytest.raises(PayloadTooLargeError) as caught:
        sdk.predict({"a": [glyph(1, 0)], "b": [glyph(2, 0)]}, [strip])
    assert "query[0]: image is 149796x7" in caught.value.message


def test_no_server_error_was_logged(server: ServerProcess) -> None:
    """Runs last: nothing above made the server log a traceback or answer a 5xx."""
    text = server.log_text()
    assert "Traceback" not in text
    assert '"status": 500' not in text
