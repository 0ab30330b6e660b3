"""The HTTP contract end to end, against a real ``innerloop serve`` subprocess and real models.

One server for the whole module (starting one costs seconds): invariances, the bad-input
table, error isolation inside a batch, 32 concurrent clients, metrics, logs and the model list.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from innerloop_server.app import GZIP_MINIMUM_BYTES
from PIL import Image
from server_harness import (
    ServerProcess,
    encode,
    glyph,
    http_client,
    image_request,
    make_checkpoints,
    running,
    vector_request,
)

LIMIT_ARGS = (
    "--max-body-bytes",
    "1048576",
    "--max-image-bytes",
    "65536",
    "--max-support",
    "120",
    "--max-query",
    "50",
    "--max-steps",
    "20",
    "--max-batch-size",
    "16",
    "--batch-timeout",
    "0.02",
)
TOLERANCE = 1e-5  # batched vs solo: float32 summation order only (see innerloop_server.batching)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    with running(folder, tmp_path_factory.mktemp("logs") / "server.log", *LIMIT_ARGS) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server) as http:
        yield http


def predict(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def scores_by_query(result: dict[str, Any]) -> list[dict[str, float]]:
    return [p["scores"] for p in result["predictions"]]


def assert_close(a: list[dict[str, float]], b: list[dict[str, float]], tol: float) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert set(row_a) == set(row_b)
        for label in row_a:
            assert abs(row_a[label] - row_b[label]) <= tol, (label, row_a[label], row_b[label])


# ---- the happy path -------------------------------------------------------------------------
def test_health_models_and_schema(client: httpx.Client, server: ServerProcess) -> None:
    assert client.get("/health").text == "ok"
    listing = client.get("/v1/models").json()
    assert listing["default"] == "omniglot"
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"omniglot", "sine"}  # broken.safetensors skipped, others served
    omniglot = by_name["omniglot"]
    assert omniglot["task"] == "classification"
    assert omniglot["ways"] == {"min": 2, "max": 20}
    assert omniglot["input"]["size"] == 28
    assert omniglot["inner_loop"]["steps"] == 2
    assert omniglot["algorithm"] == "random-init (test fixture)"
    assert omniglot["evaluation"]["test"]["mean"] == 0.5
    assert by_name["sine"]["input"] == {"kind": "vector", "features": 3, "targets": 2}
    assert "broken.safetensors" in server.log_text()
    assert "not a safetensors file" in server.log_text()
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"PredictRequest", "SupportItem", "PredictResponse"} <= set(schema)


def test_classification_response(client: httpx.Client) -> None:
    body = image_request(4, 2, 3, labels=["a", "b", "c", "d"])
    body["query"][0] = body["support"][2]["x"]  # an exact copy of a support image of "b"
    result = predict(client, body)
    assert result["model"] == "omniglot" and result["task"] == "classification"
    assert result["adaptation"]["steps"] == 2 and result["adaptation"]["lr"] == 0.01
    assert len(result["adaptation"]["support_loss"]) == 2
    assert result["adaptation"]["ms"] > 0
    assert len(result["predictions"]) == 3
    for prediction in result["predictions"]:
        scores = prediction["scores"]
        assert set(scores) == {"a", "b", "c", "d"}
        assert abs(sum(scores.values()) - 1.0) < 1e-5
        assert list(scores.values()) == sorted(scores.values(), reverse=True)
        assert prediction["label"] == next(iter(scores))
    assert result["predictions"][0]["label"] == "b"


def test_integer_labels_top_k_and_overrides(client: httpx.Client) -> None:
    body = image_request(5, 1, 2, labels=[10, 20, 30, 40, 50], steps=3, lr=0.02, top_k=2)
    result = predict(client, body)
    assert result["adaptation"]["steps"] == 3 and result["adaptation"]["lr"] == 0.02
    for prediction in result["predictions"]:
        assert isinstance(prediction["label"], int)
        assert len(prediction["scores"]) == 2
        assert str(prediction["label"]) == next(iter(prediction["scores"]))
    wide = predict(client, {**body, "top_k": 99})  # more than the ways: all of them
    assert len(wide["predictions"][0]["scores"]) == 5


def test_data_urls_and_lossless_formats_give_the_same_answer(client: httpx.Client) -> None:
    body = image_request(3, 1, 1)
    plain = predict(client, body)
    body["support"][0]["x"] = encode(glyph(0, 0), "PNG", data_url=True)
    body["support"][1]["x"] = encode(glyph(1, 0), "BMP")
    body["support"][2]["x"] = encode(glyph(2, 0), "WEBP", data_url=True, lossless=True)
    wrapped = encode(glyph(0, 50), "GIF")
    body["query"] = ["\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))]
    assert predict(client, body)["predictions"] == plain["predictions"]


def test_regression_response(client: httpx.Client) -> None:
    result = predict(client, vector_request(10, 4))
    assert result["model"] == "sine" and result["task"] == "regression"
    assert [len(p["y"]) for p in result["predictions"]] == [2, 2, 2, 2]
    assert result["adaptation"]["steps"] == 3
    # a scalar target is accepted when the model predicts one value... here it predicts two
    bad = vector_request(2, 1)
    bad["support"][0]["y"] = 1.5
    response = client.post("/v1/predict", json=bad)
    assert response.status_code == 422
    assert response.json()["detail"] == "support[0].y: has 1 values; model 'sine' predicts 2"


# ---- invariances (DESIGN principle 2) ---------------------------------------------------------
def test_support_order_does_not_matter(client: httpx.Client) -> None:
    body = image_request(5, 3, 4, seed=3)
    reference = predict(client, body)
    shuffled = dict(body, support=random.Random(0).sample(body["support"], len(body["support"])))
    # canonical support order makes the tensors, and so the answers, bit-identical
    assert predict(client, shuffled)["predictions"] == reference["predictions"]


def test_label_names_do_not_matter(client: httpx.Client) -> None:
    body = image_request(4, 2, 3, seed=4)
    reference = predict(client, body)
    rename = {f"class-{c}": name for c, name in enumerate(["zulu", "alpha", "mike", "bravo"])}
    renamed = dict(body, support=[{"x": s["x"], "y": rename[s["y"]]} for s in body["support"]])
    result = predict(client, renamed)
    for before, after in zip(reference["predictions"], result["predictions"], strict=True):
        assert after["label"] == rename[before["label"]]
        assert after["scores"] == {rename[k]: v for k, v in before["scores"].items()}
    as_ints = dict(
        body, support=[{"x": s["x"], "y": int(s["y"][6:]) * 11} for s in body["support"]]
    )
    ints = predict(client, as_ints)
    assert [p["label"] for p in ints["predictions"]] == [
        int(p["label"][6:]) * 11 for p in reference["predictions"]
    ]


def test_other_queries_do_not_matter(client: httpx.Client) -> None:
    body = image_request(4, 2, 6, seed=5)
    together = scores_by_query(predict(client, body))
    alone = [scores_by_query(predict(client, dict(body, query=[q])))[0] for q in body["query"]]
    assert_close(together, alone, TOLERANCE)
    reversed_order = scores_by_query(predict(client, dict(body, query=body["query"][::-1])))
    assert_close(together, reversed_order[::-1], TOLERANCE)


def test_same_request_twice_is_identical(client: httpx.Client) -> None:
    body = image_request(3, 2, 2, seed=6)
    first, second = predict(client, body), predict(client, body)
    assert first["predictions"] == second["predictions"]
    assert first["adaptation"]["support_loss"] == second["adaptation"]["support_loss"]


def test_unbalanced_support_and_many_ways(client: httpx.Client) -> None:
    body = image_request(20, 1, 2, seed=7)
    body["support"] += [{"x": encode(glyph(700, s)), "y": "class-0"} for s in range(1, 5)]
    result = predict(client, body)
    assert len(result["predictions"][0]["scores"]) == 20


# ---- bad inputs -------------------------------------------------------------------------------
def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> str:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1), 255)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(bytes(data)).decode()


def _good() -> dict[str, Any]:
    return image_request(2, 1, 1, seed=9)


def _with(path: str, value: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """``_good()`` with one field replaced, e.g. ``support.0.y``."""
    body = body or _good()
    target: Any = body
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return body


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8))
REAL_BIG = Image.new("L", (1100, 1100), 255)
SAME = encode(glyph(3, 0))

# (id, request: JSON-able body or raw bytes, status, expected text in detail)
BAD_INPUTS: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"support": [', 422, "body: not valid JSON"),
    ("empty body", b"", 422, "body: a JSON object is required"),
    ("JSON array", b"[1, 2]", 422, "body: Input should be a valid dictionary"),
    ("huge integer literal", b'{"steps": ' + b"9" * 5000 + b"}", 400, "body: could not be parsed"),
    ("unknown field", {**_good(), "step": 5}, 422, "step: unknown field"),
    (
        "steps is false",
        {**_good(), "steps": False},
        422,
        "steps: Input should be a valid integer (got boolean)",
    ),
    ("steps is a string", {**_good(), "steps": "5"}, 422, "steps: Input should be a valid integer"),
    (
        "too many steps",
        {**_good(), "steps": 21},
        422,
        "steps: 21 is outside the allowed range 0..20",
    ),
    ("negative steps", {**_good(), "steps": -1}, 422, "steps: -1 is outside the allowed range"),
    ("lr zero", {**_good(), "lr": 0.0}, 422, "lr: 0.0 is outside the allowed range (0, 10.0]"),
    ("lr too big", {**_good(), "lr": 11}, 422, "lr: 11.0 is outside the allowed range"),
    ("top_k zero", {**_good(), "top_k": 0}, 422, "top_k: 0 must be at least 1"),
    (
        "unknown model",
        {**_good(), "model": "nope"},
        404,
        "model: unknown model 'nope'; this server has: omniglot, sine",
    ),
    ("model is a number", {**_good(), "model": 3}, 422, "model: Input should be a valid string"),
    ("no support", {**_good(), "support": []}, 422, "support: at least one support item"),
    ("no query", {**_good(), "query": []}, 422, "query: at least one query item"),
    ("query missing", {"support": _good()["support"]}, 422, "query: Field required"),
    (
        "bad base64",
        _with("support.1.x", "iVBOR$$$not base64"),
        422,
        "support[1].x: not valid base64",
    ),
    (
        "bad data URL",
        _with("support.0.x", "data:text/plain;base64,aGVsbG8="),
        422,
        "support[0].x: a data URL must look like 'data:image/png;base64,<data>'",
    ),
    (
        "not an image",
        _with("query.0", base64.b64encode(b"hello world").decode()),
        422,
        "query[0]: not a PNG, JPEG, WebP, GIF or BMP image",
    ),
    (
        "truncated PNG",
        _with("support.0.x", base64.b64encode(_png_bytes(NOISE)[:200]).decode()),
        422,
        "support[0].x: PNG image data is truncated",
    ),
    (
        "decompression bomb",
        _with("query.0", _png_declaring(50_000, 50_000)),
        413,
        "query[0]: image is 2500.0 Mpx; at most 1.0 Mpx allowed",
    ),
    (
        "small decompression bomb",
        _with("query.0", _png_declaring(5000, 5000)),
        413,
        "query[0]: image is 5000x5000 = 25.0 Mpx; at most 1.0 Mpx allowed",
    ),
    (
        "image too many pixels",
        _with("support.1.x", encode(REAL_BIG)),
        413,
        "support[1].x: image is 1100x1100 = 1.2 Mpx; at most 1.0 Mpx allowed",
    ),
    (
        "image too many bytes",
        _with("support.0.x", encode(NOISE)),
        413,
        "support[0].x: image is about 90",
    ),
    (
        "vector for an image model",
        _with("support.0.x", [1.0, 2.0]),
        422,
        "support[0].x: model 'omniglot' takes images",
    ),
    (
        "image for a vector model",
        _with("support.0.x", SAME, vector_request(2, 1)),
        422,
        "support[0].x: model 'sine' takes vectors of 3 numbers, not a string",
    ),
    (
        "wrong vector length",
        _with("query.0", [1.0, 2.0], vector_request(2, 1)),
        422,
        "query[0]: has 2 values; model 'sine' takes 3",
    ),
    (
        "NaN literal",
        b'{"model": "sine", "support": [{"x": [NaN, 1, 2], "y": [1, 2]}], "query": [[1, 2, 3]]}',
        422,
        "support[0].x[0]: Input should be a finite",
    ),
    (
        "Infinity target",
        b'{"model": "sine", "support": [{"x": [0, 1, 2], "y": [1, Infinity]}],'
        b' "query": [[1, 2, 3]]}',
        422,
        "support[0].y[1]: Input should be a finite",
    ),
    (
        "beyond float32",
        _with("query.0", [1e39, 0.0, 0.0], vector_request(2, 1)),
        422,
        "query[0][0]: must be a finite number within float32 range",
    ),
    (
        "label is null",
        _with("support.0.y", None),
        422,
        "support[0].y: Input should be a valid string, integer, number or list (got null)",
    ),
    (
        "label is a number",
        _with("support.0.y", 1.5),
        422,
        "support[0].y: model 'omniglot' is a classifier: a label must be a string or an integer",
    ),
    ("label is a boolean", _with("support.0.y", True), 422, "(got boolean)"),
    (
        "mixed label types",
        _with("support.1.y", 1),
        422,
        "support[1].y: labels must be all strings or all integers",
    ),
    (
        "label too long",
        _with("support.0.y", "x" * 201),
        422,
        "support[0].y: label is 201 characters; at most 200 allowed",
    ),
    (
        "one class only",
        _with("support.1.y", "class-0"),
        422,
        "support: needs at least 2 classes; got 1",
    ),
    (
        "too many ways",
        image_request(21, 1, 1),
        422,
        "support: 21 classes; model 'omniglot' accepts at most 20",
    ),
    (
        "too many shots",
        {"support": [{"x": SAME, "y": f"c{i % 2}"} for i in range(121)], "query": [SAME]},
        413,
        "support: 121 items; at most 120 allowed",
    ),
    (
        "too many queries",
        {**_good(), "query": [SAME] * 51},
        413,
        "query: 51 items; at most 50 allowed",
    ),
    (
        "top_k for regression",
        {**vector_request(2, 1), "top_k": 1},
        422,
        "top_k: model 'sine' is a regression model",
    ),
    ("target for a classifier", _with("support.0.y", [1.0]), 422, "a label must be a string"),
    (
        "oversized body",
        {**_good(), "model": "m" * 1_100_000},
        413,
        "bytes; at most 1048576 allowed",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_4xx_naming_the_field(
    client: httpx.Client, body: Any, status: int, expected: str
) -> None:
    started = time.monotonic()
    if isinstance(body, bytes):
        response = client.post(
            "/v1/predict", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/v1/predict", json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert expected in detail, detail
    assert elapsed < 2.0, f"refused after {elapsed:.1f} s"  # issue 10: a refusal is cheap
    predict(client, _good())  # and the server answers a good request right after


def test_oversized_chunked_body_is_refused(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"support": [], "query": ["'
        for _ in range(20):
            yield b"A" * 65536
        yield b'"]}'

    response = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_server_answers_after_bad_inputs(client: httpx.Client) -> None:
    predict(client, _good())
    predict(client, vector_request(3, 1))


def test_a_bad_request_does_not_fail_its_batch(client: httpx.Client) -> None:
    """Good and bad requests sent together (batched by the worker) each get their own answer."""
    good = [image_request(3, 1, 2, seed=20 + i) for i in range(6)]
    solo = [scores_by_query(predict(client, body)) for body in good]
    bad = [
        _with("support.0.x", "%%%"),
        _with("support.1.y", "class-0"),
        _with("query.0", _png_declaring(9000, 9000)),
    ]
    bodies = [*good, *bad]
    results: list[httpx.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(base_url=client.base_url, timeout=60.0) as own:
            barrier.wait()
            results[i] = own.post("/v1/predict", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [r.status_code if r is not None else None for r in results]
    assert statuses == [200] * 6 + [422, 422, 413], statuses
    for i, expected in enumerate(solo):
        response = results[i]
        assert response is not None
        assert_close(scores_by_query(response.json()), expected, TOLERANCE)


# ---- concurrency --------------------------------------------------------------------------------
def _mixed_requests(count: int) -> list[dict[str, Any]]:
    bodies = []
    for i in range(count):
        if i % 8 == 7:
            bodies.append(vector_request(5 + i % 3, 1 + i % 4, seed=i))
        else:
            ways, shots, queries = 2 + i % 5, 1 + i % 3, 1 + i % 4
            body = image_request(ways, shots, queries, seed=100 + i)
            if i % 4 == 3:
                body["steps"] = 1  # a second group: different steps cannot share a call
            bodies.append(body)
    return bodies


def _answers(result: dict[str, Any]) -> list[Any]:
    return [p.get("scores", p.get("y")) for p in result["predictions"]]


def test_32_concurrent_clients_get_their_solo_answers(client: httpx.Client) -> None:
    bodies = _mixed_requests(32)
    solo = [predict(client, body) for body in bodies]
    results: list[dict[str, Any] | str] = [""] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        with httpx.Client(base_url=client.base_url, timeout=120.0) as own:
            barrier.wait()
            response = own.post("/v1/predict", json=bodies[i])
            results[i] = response.json() if response.status_code == 200 else response.text

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (alone, together) in enumerate(zip(solo, results, strict=True)):
        assert isinstance(together, dict), f"request {i}: {together}"
        assert together["model"] == alone["model"]
        if alone["task"] == "classification":
            assert [p["label"] for p in together["predictions"]] == [
                p["label"] for p in alone["predictions"]
            ]
            assert_close(scores_by_query(together), scores_by_query(alone), TOLERANCE)
        else:
            np.testing.assert_allclose(_answers(together), _answers(alone), atol=TOLERANCE)
    # the worker really did adapt several requests in one call
    calls = _metric_samples(client, "innerloop_adapt_call_tasks")
    assert calls["innerloop_adapt_call_tasks_sum"] > calls["innerloop_adapt_call_tasks_count"]


# ---- metrics and logs -------------------------------------------------------------------------
def _metric_samples(client: httpx.Client, prefix: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_metrics_count_requests_errors_and_batches(client: httpx.Client) -> None:
    predict(client, _good())
    client.post("/v1/predict", json={**_good(), "steps": 999})
    text = client.get("/metrics").text
    assert 'innerloop_http_requests_total{method="POST",path="/v1/predict",status="200"}' in text
    assert 'innerloop_http_errors_total{path="/v1/predict",status="422"}' in text
    assert "innerloop_http_request_duration_seconds_bucket" in text
    assert 'innerloop_adaptation_seconds_count{model="omniglot"}' in text
    assert 'innerloop_queries_total{model="sine"}' in text
    assert _metric_samples(client, "innerloop_batch_requests")["innerloop_batch_requests_count"] > 0


def test_logs_are_json_lines_without_payloads(client: httpx.Client, server: ServerProcess) -> None:
    secret_label = "label-that-must-not-be-logged"
    body = image_request(2, 1, 1, seed=42, labels=[secret_label, "other"])
    predict(client, body)
    client.post(
        "/v1/predict",
        json=_with(
            "support.0.x", "%%%", image_request(2, 1, 1, seed=42, labels=[secret_label, "other"])
        ),
    )
    text = server.log_text()
    assert secret_label not in text
    assert body["support"][0]["x"][:40] not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [e for e in events if e.get("event") == "http_request"]
    assert requests and {"method", "path", "status", "ms", "request_id"} <= set(requests[-1])
    assert any(e.get("event") == "batch" for e in events)


def test_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_only_large_answers_are_gzipped(client: httpx.Client) -> None:
    gzip = {"accept-encoding": "gzip"}
    small = client.post("/v1/predict", json=image_request(5, 1, 5), headers=gzip)
    assert small.status_code == 200 and "content-encoding" not in small.headers
    assert 1000 < len(small.content) < GZIP_MINIMUM_BYTES  # LitServe alone gzipped these
    large = client.post("/v1/predict", json=image_request(20, 1, 40), headers=gzip)
    assert large.status_code == 200 and large.headers["content-encoding"] == "gzip"
    assert len(large.json()["predictions"]) == 40  # httpx decoded it


def test_cli_models_lists_a_running_server(server: ServerProcess, tmp_path: Path) -> None:
    from innerloop.cli import main

    assert main(["models", "--url", server.url]) == 0
