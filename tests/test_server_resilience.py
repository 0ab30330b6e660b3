"""The server survives what kills processes: a dead worker, SIGTERM with requests in flight,
crafted checkpoints beside good ones at start-up. Real ``innerloop serve`` subprocesses."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from crafted_checkpoints import crafted_card, write
from server_harness import ServerProcess, alive, descendants, image_request, make_checkpoints

GRACE_S = 60.0
REQUEST_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture models, plus two crafted files that used to stop start-up."""
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    write(folder / "card-is-a-number.safetensors", "5")
    write(
        folder / "four-terabytes.safetensors",
        crafted_card(
            lambda card: {**card, "architecture": {**card["architecture"], "filters": 10**6}}
        ),
    )
    return folder


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        checkpoints,
        tmp_path_factory.mktemp("logs") / "server.log",
        "--shutdown-grace",
        str(GRACE_S),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--max-work",
        "1000000",
        "--max-steps",
        "1000",
    )
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def _predict(server: ServerProcess, timeout_s: float = 120.0) -> httpx.Response:
    return httpx.post(server.url + "/v1/predict", json=image_request(3, 1, 1), timeout=timeout_s)


def test_crafted_checkpoints_do_not_stop_start_up(server: ServerProcess) -> None:
    names = {m["name"] for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert names == {"omniglot", "sine"}
    log = server.log_text()
    assert "card-is-a-number.safetensors" in log and "is not an innerloop-checkpoint card" in log
    assert "four-terabytes.safetensors" in log and "filters = 1000000" in log


def _inference_workers(main: int) -> set[int]:
    """LitServe spawns its inference workers (HTTP servers and the manager are forked)."""
    found = set()
    for pid in descendants(main):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.add(pid)
    return found


def _in_flight(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("innerloop_predict_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no innerloop_predict_in_flight in /metrics")


def test_a_killed_worker_is_restarted(server: ServerProcess) -> None:
    """The server stays up and serves again; the request the worker held gets 504 after
    --request-timeout (it used to wait forever, holding its in-flight slot)."""
    assert _predict(server).status_code == 200
    held: dict[str, httpx.Response] = {}

    def send() -> None:
        slow = image_request(
            20, 5, 50, steps=300
        )  # seconds of work, also after the group-norm speed-up
        held["answer"] = httpx.post(server.url + "/v1/predict", json=slow, timeout=120)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(1.5)  # the worker is on it now
    (worker,) = _inference_workers(server.process.pid)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 180
    replacement: set[int] = set()
    while time.monotonic() < deadline and not (replacement - {worker}):
        time.sleep(0.5)
        assert server.process.poll() is None, server.log_text()[-3000:]
        replacement = {p for p in _inference_workers(server.process.pid) if alive(p)}
    assert replacement and worker not in replacement, replacement
    while time.monotonic() < deadline:  # ready once it has loaded the models again
        if httpx.get(server.url + "/health", timeout=5).status_code == 200:
            break
        time.sleep(0.5)
    assert _predict(server).status_code == 200
    assert server.process.poll() is None
    thread.join(REQUEST_TIMEOUT_S + 60)
    assert held["answer"].status_code == 504, held["answer"].text
    assert "--request-timeout" in held["answer"].json()["detail"]
    assert _in_flight(server) == 0


def test_sigterm_drains_requests_in_flight(server: ServerProcess) -> None:
    """Runs last: stops the module's server. A slow request sent before SIGTERM is answered;
    one sent during the drain gets 503 with Retry-After; then every process exits."""
    # ~5 s of one CPU thread for the fixture model, also after group norm became 4.5x faster
    slow = image_request(20, 5, 50, steps=300)
    answers: dict[str, httpx.Response] = {}

    def send() -> None:
        answers["slow"] = httpx.post(server.url + "/v1/predict", json=slow, timeout=GRACE_S + 60)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(1.5)  # its small body is read and queued at once; the worker is on it now
    tree = descendants(server.process.pid)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    during = httpx.post(server.url + "/v1/predict", json=image_request(2, 1, 1), timeout=30)
    thread.join(GRACE_S + 90)
    assert during.status_code == 503, during.text
    assert during.headers["retry-after"] == "1"
    assert "shutting down" in during.json()["detail"]
    assert answers["slow"].status_code == 200, answers["slow"].text
    assert server.process.wait(GRACE_S + 60) == 0
    deadline = time.monotonic() + 30
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in tree)
    assert '"requests_still_in_flight": 0' in server.log_text()
