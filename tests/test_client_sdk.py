"""Tests of the Python SDK (``clients/python``) against a real local HTTP server.

The server here is a small stdlib ``http.server`` test double that speaks the v1
HTTP contract and records every request, so the tests exercise the client's
real encoding, transport, retry and error handling end to end over TCP. Its
responses can be scripted (status, body, headers, a dropped connection, a
delay) to produce exactly the failures the retry policy must handle. The real
innerloop server is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

try:
    import innerloop_client
except ImportError:  # not installed: use the source tree (pip install -e ./clients/python)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))
    import innerloop_client

from innerloop_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConnectionFailedError,
    InnerloopError,
    ModelCard,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    Prediction,
    PredictResult,
    RegressionPrediction,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
    encode_image,
    encode_input,
    encode_target,
    encode_vector,
)

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")


# --------------------------------------------------------------------------- server double


@dataclass
class Scripted:
    """One scripted response; ``drop`` closes the connection without answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """A contract-speaking HTTP server on 127.0.0.1 with a queue of scripted responses."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Scripted] = deque()
        self.api_key: str | None = None
        self.ready = True
        self.models_body: dict[str, Any] = {
            "models": [
                {
                    "name": "omniglot",
                    "task": "classification",
                    "input": {"kind": "image", "size": [28, 28], "channels": 1},
                    "algorithm": "maml",
                    "max_ways": 20,
                    "inner_loop": {"steps": 5, "lr": 0.4},
                    "trained_on": "omniglot background",
                    "evaluation": {"5way1shot": 0.97},
                    "architecture": {"name": "conv4"},
                },
                {"name": "sine", "task": "regression", "max_ways": None},
            ],
            "default": "omniglot",
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # silence the test log
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append(
                    Recorded(self.command, self.path, dict(self.headers.items()), body)
                )
                scripted = fake.script.popleft() if fake.script else None
                if scripted is not None and scripted.delay:
                    time.sleep(scripted.delay)
                if scripted is not None and scripted.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if scripted is None:
                    scripted = fake.default_response(self.command, self.path, self.headers, body)
                payload = scripted.body
                if isinstance(payload, str | bytes):
                    data = payload.encode() if isinstance(payload, str) else payload
                    ctype = "text/plain; charset=utf-8"
                else:
                    data = json.dumps(payload).encode()
                    ctype = "application/json"
                self.send_response(scripted.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in scripted.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def default_response(self, method: str, path: str, headers: Any, body: bytes) -> Scripted:
        """Answer like the real server would, for the parts the client depends on."""
        if self.api_key is not None:
            bearer = headers.get("Authorization", "")
            if headers.get("X-API-Key") != self.api_key and bearer != f"Bearer {self.api_key}":
                return Scripted(401, {"detail": "Invalid or missing API key"})
        if path == "/health":
            return Scripted(200, "ok") if self.ready else Scripted(503, "not ready")
        if path == "/v1/models" and method == "GET":
            return Scripted(200, self.models_body)
        if path == "/v1/predict" and method == "POST":
            req = json.loads(body)
            labels: list[Any] = []
            for item in req["support"]:
                if item["y"] not in labels:
                    labels.append(item["y"])
            adaptation = {"steps": req.get("steps", 5), "lr": req.get("lr", 0.4)}
            adaptation |= {"support_loss": [1.5, 0.2], "ms": 3.25}
            if all(isinstance(y, float | list) for y in labels):  # regression
                preds: list[dict[str, Any]] = [{"y": [float(len(q))]} for q in req["query"]]
                task = "regression"
            else:  # first label wins, scores decreasing in support order
                weights = [2.0**-i for i in range(len(labels))]
                total = sum(weights)
                scores = {str(lab): w / total for lab, w in zip(labels, weights, strict=True)}
                if req.get("top_k"):
                    scores = dict(list(scores.items())[: req["top_k"]])
                preds = [{"label": labels[0], "scores": scores} for _ in req["query"]]
                task = "classification"
            return Scripted(
                200,
                {
                    "model": req.get("model") or "omniglot",
                    "task": task,
                    "predictions": preds,
                    "adaptation": adaptation,
                },
            )
        return Scripted(404, {"detail": "Not Found"})

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(kind: str, url: str, method: str, *args: Any, **client_kwargs: Any) -> Any:
    """Run ``method`` on a fresh sync or async client, so each test covers both twins."""
    kwargs = {"backoff": 0.01, **client_kwargs}
    if kind == "sync":
        with Client(url, **kwargs) as client:
            return getattr(client, method)(*args)

    async def run() -> Any:
        async with AsyncClient(url, **kwargs) as client:
            return await getattr(client, method)(*args)

    return asyncio.run(run())


both = pytest.mark.parametrize("kind", ["sync", "async"])


# --------------------------------------------------------------------------- image helpers


def decode_png(b64: str) -> Any:
    """Decode what the client sent back into a pixel array, as the server would."""
    data = base64.b64decode(b64, validate=True)
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def png_bytes(array: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rng() -> Any:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("shape", [(28, 28), (5, 7, 3), (6, 4, 4), (3, 9, 2)])
def test_numpy_uint8_round_trips_exactly(rng: Any, shape: tuple[int, ...]) -> None:
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    assert np.array_equal(decode_png(encode_image(arr)), arr)


def test_numpy_hxwx1_is_greyscale(rng: Any) -> None:
    arr = rng.integers(0, 256, size=(8, 9, 1), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_image(arr)), arr[:, :, 0])


def test_numpy_float_in_unit_interval_is_scaled_and_rounded(rng: Any) -> None:
    arr = rng.random((10, 12))
    arr[0, 0], arr[0, 1] = 0.0, 1.0
    expected = np.rint(arr * 255).astype(np.uint8)
    assert np.array_equal(decode_png(encode_image(arr)), expected)
    assert np.array_equal(decode_png(encode_image(arr.astype(np.float32))), expected)


def test_numpy_bool_and_small_ints() -> None:
    mask = np.eye(4, dtype=bool)
    assert np.array_equal(decode_png(encode_image(mask)), mask.astype(np.uint8) * 255)
    ints = np.arange(12, dtype=np.int64).reshape(3, 4) * 20
    assert np.array_equal(decode_png(encode_image(ints)), ints.astype(np.uint8))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((4, 4), 1.5), r"\[0, 1\]"),
        (np.full((4, 4), -0.1), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), 300, dtype=np.int32), "0..255"),
        (np.zeros((3, 28, 28), dtype=np.uint8), "channels last"),
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), "1-D"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
    ],
)
def test_ambiguous_arrays_are_refused(array: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_input(array)


def test_png_path_and_bytes_are_sent_unchanged(tmp_path: Path, rng: Any) -> None:
    arr = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    data = png_bytes(arr)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), memoryview(data)):
        encoded = encode_image(source)
        assert base64.b64decode(encoded) == data
        assert np.array_equal(decode_png(encoded), arr)


def test_jpeg_is_sent_unchanged(tmp_path: Path, rng: Any) -> None:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "img.jpg"
    path.write_bytes(buf.getvalue())
    assert base64.b64decode(encode_image(path)) == buf.getvalue()


def test_other_formats_are_converted_to_png_losslessly(tmp_path: Path, rng: Any) -> None:
    arr = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    path = tmp_path / "img.bmp"
    Image.fromarray(arr).save(path, format="BMP")
    for source in (path, path.read_bytes()):
        encoded = encode_image(source)
        assert base64.b64decode(encoded).startswith(b"\x89PNG")
        assert np.array_equal(decode_png(encoded), arr)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_pil_images_round_trip_exactly(rng: Any, mode: str) -> None:
    channels = len(mode)
    shape = (13, 7) if channels == 1 else (13, 7, channels)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image = Image.fromarray(arr, mode=mode) if channels != 2 else Image.fromarray(arr)
    assert image.mode == mode
    assert np.array_equal(decode_png(encode_image(image)), np.asarray(image))


def test_pil_palette_and_cmyk(rng: Any) -> None:
    rgb = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
    pal = rgb.convert("P")
    assert np.array_equal(decode_png(encode_image(pal)), np.asarray(pal))
    cmyk = rgb.convert("CMYK")
    assert np.array_equal(decode_png(encode_image(cmyk)), np.asarray(cmyk.convert("RGB")))
    with pytest.raises(ValueError, match="'F'"):
        encode_image(rgb.convert("F"))


def test_data_url_passes_through_and_missing_files_fail() -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    assert encode_image(url) == url
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        encode_image("nope.png")
    with pytest.raises(TypeError, match="cannot use int as an image"):
        encode_image(3)
    with pytest.raises(ValueError, match="not an image format"):
        encode_image(b"definitely not an image")


def test_pillow_missing_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rng: Any
) -> None:
    arr = rng.integers(0, 256, size=(5, 5), dtype=np.uint8)
    png = png_bytes(arr)
    bmp = io.BytesIO()
    Image.fromarray(arr).save(bmp, format="BMP")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert base64.b64decode(encode_image(png)) == png  # PNG needs no Pillow
    assert np.array_equal(decode_png_without_pil(encode_image(arr)), arr)  # nor do arrays
    with pytest.raises(ImportError, match=r"innerloop-client\[pillow\]"):
        encode_image(bmp.getvalue())


def decode_png_without_pil(b64: str) -> Any:
    """Decode our own 8-bit greyscale PNG output with zlib only (Pillow is hidden)."""
    import struct
    import zlib

    data = base64.b64decode(b64)
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif tag == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:]


def test_vectors_and_targets() -> None:
    assert encode_input([1, 2.5, np.float32(0.5)]) == [1.0, 2.5, 0.5]
    assert encode_input((0, 1)) == [0.0, 1.0]
    assert encode_input(np.arange(3)) == [0.0, 1.0, 2.0]
    assert encode_vector(np.array([0.25])) == [0.25]
    with pytest.raises(ValueError, match="finite"):
        encode_vector([1.0, float("nan")])
    with pytest.raises(TypeError, match="vector element 1"):
        encode_vector([1.0, True])
    assert encode_target("cat") == "cat"
    assert encode_target(np.int64(3)) == 3 and type(encode_target(np.int64(3))) is int
    assert encode_target(np.str_("dog")) == "dog"
    assert encode_target(0.5) == 0.5
    assert encode_target(np.array([0.5, 1.0])) == [0.5, 1.0]
    with pytest.raises(TypeError, match="bool"):
        encode_target(True)


# --------------------------------------------------------------------------- predict


@both
def test_predict_sends_contract_body_and_parses_result(
    server: FakeServer, rng: Any, tmp_path: Path, kind: str
) -> None:
    a = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    b = rng.random((28, 28))
    q = Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8))
    path = tmp_path / "b2.png"
    path.write_bytes(png_bytes(a))
    support = [(a, 7), (b, "b"), (path, "b")]

    result = call(kind, server.url, "predict", support, [q, a], "omniglot", 3, 0.5, 2)

    (req,) = server.requests
    assert (req.method, req.path) == ("POST", "/v1/predict")
    assert req.headers["Content-Type"] == "application/json"
    body = req.json()
    assert set(body) == {"model", "support", "query", "steps", "lr", "top_k"}
    assert (body["model"], body["steps"], body["lr"], body["top_k"]) == ("omniglot", 3, 0.5, 2)
    assert [item["y"] for item in body["support"]] == [7, "b", "b"]  # labels as given
    assert np.array_equal(decode_png(body["support"][0]["x"]), a)
    assert np.array_equal(decode_png(body["support"][1]["x"]), np.rint(b * 255))
    assert np.array_equal(decode_png(body["support"][2]["x"]), a)
    assert np.array_equal(decode_png(body["query"][0]), np.asarray(q))
    assert len(body["query"]) == 2

    assert isinstance(result, PredictResult)
    assert result.model == "omniglot" and result.task == "classification"
    assert result.labels == [7, 7]  # an int label stays an int
    first = result.predictions[0]
    assert isinstance(first, Prediction)
    assert first.top(1) == [("7", pytest.approx(2 / 3))]
    assert [lab for lab, _ in first.top()] == ["7", "b"]
    assert result.adaptation.steps == 3 and result.adaptation.lr == 0.5
    assert result.adaptation.support_loss == (1.5, 0.2)
    assert result.adaptation.ms == 3.25


@both
def test_predict_mapping_support_and_defaults_omitted(
    server: FakeServer, rng: Any, kind: str
) -> None:
    imgs = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    support = {"x": [imgs[0], imgs[1]], 2: imgs[2:4]}  # a stacked array also works
    result = call(kind, server.url, "predict", support, [imgs[0]])
    body = server.requests[0].json()
    assert set(body) == {"support", "query"}  # None fields are not sent: server defaults apply
    assert [item["y"] for item in body["support"]] == ["x", "x", 2, 2]
    for item, img in zip(body["support"], imgs, strict=True):
        assert np.array_equal(decode_png(item["x"]), img)
    assert result.predictions[0].label == "x"


@both
def test_predict_regression_with_vectors(server: FakeServer, kind: str) -> None:
    support: list[Any] = [([0.0, 1.0], [0.5]), {"x": [1.0, 2.0], "y": 0.25}]
    result = call(kind, server.url, "predict", support, [[0.5, 0.5], np.zeros(3)])
    body = server.requests[0].json()
    assert body["support"] == [{"x": [0.0, 1.0], "y": [0.5]}, {"x": [1.0, 2.0], "y": 0.25}]
    assert body["query"] == [[0.5, 0.5], [0.0, 0.0, 0.0]]
    assert result.task == "regression"
    assert all(isinstance(p, RegressionPrediction) for p in result.predictions)
    assert [p.y for p in result.predictions] == [[2.0], [3.0]]
    with pytest.raises(TypeError, match="classification"):
        _ = result.labels


@pytest.mark.parametrize(
    ("support", "query", "error", "match"),
    [
        ([], ["a"], ValueError, "at least one"),
        ({"a": "img.png"}, ["a"], TypeError, "wrap a single example"),
        ([("a.png",)], ["a"], TypeError, r"support\[0\]"),
        ([([1.0], "a")], "q.png", TypeError, "wrap a single input"),
        ([([1.0], "a")], [], ValueError, "at least one"),
        ([([1.0], "a")], [[float("inf")]], ValueError, r"query\[0\]"),
        ([([1.0], True)], [[1.0]], TypeError, "bool"),
    ],
)
def test_invalid_requests_fail_before_sending(
    server: FakeServer, support: Any, query: Any, error: type[Exception], match: str
) -> None:
    with Client(server.url) as client, pytest.raises(error, match=match):
        client.predict(support, query)
    assert server.requests == []


def test_invalid_options_fail_before_sending(server: FakeServer) -> None:
    with Client(server.url) as client:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"steps": -1}, "steps"),
            ({"steps": True}, "steps"),
            ({"top_k": 0}, "top_k"),
            ({"lr": float("nan")}, "lr"),
        ]
        for kwargs, match in cases:
            with pytest.raises((TypeError, ValueError), match=match):
                client.predict([([1.0], "a")], [[1.0]], **kwargs)
    assert server.requests == []


# --------------------------------------------------------------------------- retries


@both
def test_retries_on_503_then_succeeds(server: FakeServer, kind: str) -> None:
    busy = {"detail": "server overloaded, retry later"}
    server.script.extend([Scripted(503, busy, {"Retry-After": "0"}), Scripted(503, busy)])
    result = call(kind, server.url, "predict", [([1.0], "a")], [[1.0]])
    assert result.predictions[0].label == "a"
    assert len(server.requests) == 3
    assert server.requests[0].body == server.requests[2].body  # the same request, resent


@both
def test_503_exhausts_retries_with_overloaded_error(server: FakeServer, kind: str) -> None:
    busy = Scripted(503, {"detail": "queue full"}, {"Retry-After": "0"})
    server.script.extend([busy] * 10)
    with pytest.raises(OverloadedError) as info:
        call(kind, server.url, "predict", [([1.0], "a")], [[1.0]], retries=2)
    assert len(server.requests) == 3  # 1 + 2 retries
    err = info.value
    assert isinstance(err, ServerError)
    assert (err.status_code, err.message, err.retry_after, err.attempts) == (
        503,
        "queue full",
        0.0,
        3,
    )
    assert "after 3 attempts" in str(err)


@both
def test_retry_after_is_honoured(server: FakeServer, kind: str) -> None:
    server.script.append(Scripted(503, {"detail": "busy"}, {"Retry-After": "1"}))
    start = time.monotonic()
    call(kind, server.url, "models", backoff=0.001)
    assert time.monotonic() - start >= 0.9
    assert len(server.requests) == 2


@both
def test_retry_after_is_capped(server: FakeServer, kind: str) -> None:
    server.script.append(Scripted(503, {"detail": "busy"}, {"Retry-After": "3600"}))
    start = time.monotonic()
    call(kind, server.url, "models", max_backoff=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 3.0
    assert len(server.requests) == 2


def test_backoff_grows_exponentially_within_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    from innerloop_client import _client

    waits: list[float] = []
    monkeypatch.setattr(_client, "_sleep", waits.append)
    url = f"http://127.0.0.1:{free_port()}"
    with (
        Client(url, retries=4, backoff=0.1) as client,
        pytest.raises(ConnectionFailedError) as info,
    ):
        client.models()
    assert info.value.attempts == 5 and info.value.status_code is None
    assert len(waits) == 4
    for i, wait in enumerate(waits):  # equal jitter: between half and all of 0.1 * 2**i
        assert 0.05 * 2**i <= wait <= 0.1 * 2**i


@both
@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (400, {"detail": "support[0].x: not a PNG or JPEG image"}, BadRequestError, None),
        (
            422,
            {
                "detail": [
                    {"type": "int_type", "loc": ["body", "steps"], "msg": "Input should be int"}
                ]
            },
            BadRequestError,
            "body.steps: Input should be int",
        ),
        (401, {"detail": "Invalid API key"}, AuthenticationError, None),
        (404, {"detail": "unknown model 'nope'; available: omniglot"}, NotFoundError, None),
        (413, {"detail": "body exceeds 10485760 bytes"}, PayloadTooLargeError, None),
        (500, {"detail": "Internal server error"}, ServerError, None),
        (504, "upstream timed out", ServerError, "upstream timed out"),
        (409, {"detail": "conflict"}, InnerloopError, None),
    ],
)
def test_errors_are_typed_and_never_retried(
    server: FakeServer,
    kind: str,
    status: int,
    body: Any,
    cls: type[InnerloopError],
    message: str | None,
) -> None:
    server.script.extend([Scripted(status, body)] * 5)
    with pytest.raises(cls) as info:
        call(kind, server.url, "predict", [([1.0], "a")], [[1.0]])
    assert len(server.requests) == 1  # not retried
    err = info.value
    assert type(err) is cls
    assert err.status_code == status
    assert err.message == (message or body["detail"])
    assert err.body == body
    assert err.attempts == 1


@both
def test_retries_after_dropped_connection(server: FakeServer, kind: str) -> None:
    server.script.extend([Scripted(drop=True), Scripted(drop=True)])
    result = call(kind, server.url, "predict", [([1.0], "a")], [[1.0]])
    assert result.predictions[0].label == "a"
    assert len(server.requests) == 3


@both
def test_connection_refused_raises_after_retries(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailedError, match="could not reach") as info:
        call(kind, url, "predict", [([1.0], "a")], [[1.0]], retries=2, backoff=0.001)
    assert info.value.attempts == 3


@both
def test_read_timeout_is_not_retried(server: FakeServer, kind: str) -> None:
    server.script.append(Scripted(delay=1.0))
    with pytest.raises(RequestTimeoutError):
        call(kind, server.url, "predict", [([1.0], "a")], [[1.0]], timeout=0.2)
    assert len(server.requests) == 1


@both
def test_unexpected_response_shape_is_reported(server: FakeServer, kind: str) -> None:
    server.script.append(Scripted(200, {"predictions": "nope"}))
    with pytest.raises(ResponseFormatError, match="v1 contract"):
        call(kind, server.url, "predict", [([1.0], "a")], [[1.0]])


# --------------------------------------------------------------------------- auth, models, health


@both
def test_api_key_is_sent_as_x_api_key(server: FakeServer, kind: str) -> None:
    server.api_key = "s3cret"
    call(kind, server.url, "predict", [([1.0], "a")], [[1.0]], api_key="s3cret")
    assert server.requests[-1].headers["X-API-Key"] == "s3cret"
    assert "Authorization" not in server.requests[-1].headers
    with pytest.raises(AuthenticationError) as info:
        call(kind, server.url, "models")
    assert info.value.status_code == 401 and info.value.message == "Invalid or missing API key"
    with pytest.raises(AuthenticationError):
        call(kind, server.url, "models", api_key="wrong")
    assert "X-API-Key" not in server.requests[-2].headers


@both
def test_models_parses_cards_and_keeps_extra_fields(server: FakeServer, kind: str) -> None:
    cards = call(kind, server.url, "models")
    assert [c.name for c in cards] == ["omniglot", "sine"]
    card = cards[0]
    assert isinstance(card, ModelCard)
    assert (card.task, card.algorithm, card.max_ways) == ("classification", "maml", 20)
    assert card.inner_loop == {"steps": 5, "lr": 0.4}
    assert card.evaluation == {"5way1shot": 0.97}
    assert card.model_dump()["architecture"] == {"name": "conv4"}  # extra field kept
    assert cards[1].max_ways is None
    assert call(kind, server.url, "model_list").default == "omniglot"


@both
def test_health(server: FakeServer, kind: str) -> None:
    assert call(kind, server.url, "health") is True
    server.ready = False
    assert call(kind, server.url, "health") is False
    assert len(server.requests) == 2  # a failing probe is not retried
    server.api_key = "k"
    with pytest.raises(AuthenticationError):
        call(kind, server.url, "health")
    assert call(kind, server.url, "health", api_key="k") is False
    assert call(kind, f"http://127.0.0.1:{free_port()}", "health") is False


def test_client_is_reusable_and_closes(server: FakeServer) -> None:
    client = Client(server.url + "/", retries=0)
    for _ in range(3):
        assert client.predict([([1.0], "a"), ([2.0], "b")], [[1.5]]).labels == ["a"]
    assert client.base_url == server.url
    client.close()
    with pytest.raises(RuntimeError):
        client.models()


def test_result_models_validate_task() -> None:
    adaptation = {"steps": 1, "lr": 0.1, "support_loss": [1.0, 0.5], "ms": 1.0}
    inferred = PredictResult.model_validate(
        {"model": "m", "predictions": [{"y": [1.0]}], "adaptation": adaptation}
    )
    assert inferred.task == "regression"
    with pytest.raises(ValueError, match="task"):
        PredictResult.model_validate(
            {
                "model": "m",
                "task": "classification",
                "predictions": [{"y": [1.0]}],
                "adaptation": adaptation,
            }
        )
    pred = Prediction(label="a", scores={"a": 0.5, "b": 0.5, "c": 0.0})
    assert pred.top(2) == [("a", 0.5), ("b", 0.5)]  # ties broken by label
    assert pred.top(0) == []


def test_public_api_is_exported() -> None:
    for name in innerloop_client.__all__:
        assert hasattr(innerloop_client, name), name
    assert innerloop_client.__version__


def test_package_builds_without_torch(tmp_path: Path) -> None:
    """The SDK must install next to any app: its wheel may depend only on httpx and pydantic."""
    import email.parser
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "clients" / "python",
        src,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*command, "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("innerloop_client-*.whl")
    assert f"-{innerloop_client.__version__}-" in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = email.parser.Parser().parsestr(
            zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
    assert "innerloop_client/py.typed" in names
    requires = metadata.get_all("Requires-Dist") or []
    unconditional = sorted(r for r in requires if "extra ==" not in r)
    assert unconditional == ["httpx>=0.27", "pydantic>=2.6"]
    assert not any("torch" in r for r in requires)
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"pillow", "numpy"} <= extras


def test_constructor_rejects_bad_settings() -> None:
    for kwargs in ({"retries": -1}, {"backoff": -1.0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            Client(**kwargs)
